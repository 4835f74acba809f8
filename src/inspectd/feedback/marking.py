"""Marking: an operator's verdict on a rejected item becomes a spool record.

good = a false reject (the model was wrong: the image goes to the collector's `train/good/`);
bad  = a confirmed defect (kept as a labelled defect candidate: the collector's `test/confirmed_defect/`).

Rules (the same for the PLC's register 21 and for `inspectd mark`):
- the seq resolves to the NEWEST stored reject with that seq: the daemon's own seq from the CLI (or the reject's
  id), the 16-bit wrapped seq from the PLC; a seq that is not (or no longer) in the reject store is an error that
  says so;
- idempotent: marking a reject again with the same mark changes nothing and answers with the same record id;
- a mark is final on the line: marking a good-marked reject bad (or the other way round) is refused with an error
  naming the earlier mark (correct it in the collected data set instead);
- the record id is the reject's id, so a mark repeated after a crash can never produce a second record.

Marks are serialised (one at a time). The PLC path only enqueues (`submit`): a worker thread does the disk work,
so the Modbus server never waits for an fsync.
"""

from __future__ import annotations

import queue
import threading
import time

import structlog

from inspectd.core.clock import iso_utc
from inspectd.feedback.protocol import png_size
from inspectd.feedback.rejects import RejectStore, StoredReject
from inspectd.feedback.spool import Spool

log = structlog.get_logger("inspectd.marking")

# fields of a stored reject's JSON that are local to the line PC (file names, bookkeeping), not sent
_LOCAL_FIELDS = ("image", "overlay", "mark", "wall_time")


class MarkError(Exception):
    """A mark that cannot be made. kind: unknown (no such reject), conflict (marked otherwise), invalid, failed."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Marker:
    def __init__(self, store: RejectStore, spool: Spool, *, queue_size: int = 1024) -> None:
        self.store = store
        self.spool = spool
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name="marker", daemon=True)
        self._started = False

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def close(self, timeout: float = 5.0) -> None:
        if self._started and self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)

    # --- the PLC path: enqueue only -----------------------------------------------------------------------

    def submit_plc_good(self, plc_seq: int, source: str = "plc") -> None:
        """Register 21: the operator found rejected item `plc_seq` (16-bit) good. Returns at once."""
        try:
            self._queue.put_nowait((plc_seq, source))
        except queue.Full:
            log.error("false_reject_failed", seq=plc_seq, source=source, error="mark queue full")

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            plc, source = item
            try:
                self.mark(mark="good", source=source, plc=plc)
            except MarkError as exc:
                log.warning("false_reject_failed", seq=plc, source=source, error=str(exc), kind=exc.kind)
            except Exception as exc:  # disk trouble: logged, never fatal
                log.error("false_reject_failed", seq=plc, source=source, error=repr(exc), kind="failed")

    # --- the one way a mark is made -----------------------------------------------------------------------

    def mark(
        self, *, mark: str, source: str, seq: int | None = None, plc: int | None = None, reject_id: str | None = None
    ) -> dict:
        """Mark one stored reject good or bad; returns what was done. Raises MarkError."""
        if mark not in ("good", "bad"):
            raise MarkError(f"mark must be 'good' or 'bad', got {mark!r}", "invalid")
        if sum(x is not None for x in (seq, plc, reject_id)) != 1:
            raise MarkError("give exactly one of seq, PLC seq or reject id", "invalid")
        what = f"reject {reject_id}" if reject_id is not None else f"seq {seq}" if seq is not None else f"PLC seq {plc}"
        if (seq is not None and seq < 1) or (plc is not None and not 1 <= plc <= 65535):
            raise MarkError(f"{what}: out of range (seq >= 1; PLC seq 1..65535)", "invalid")
        with self._lock:
            entry = self._find(seq, plc, reject_id)
            if entry is None:
                s = self.store.stats()
                msg = (
                    f"unknown or expired {what}: no stored reject has it (it passed, was not a reject, was never "
                    f"stored, or has been evicted: the store keeps the newest {self.store.cfg.max_count} rejects, "
                    f"{s['count']} now)"
                )
                raise MarkError(msg, "unknown")
            earlier = entry.mark
            if earlier is not None:
                if earlier["mark"] != mark:
                    msg = (
                        f"{what} (reject {entry.id}) was already marked {earlier['mark']} at {earlier['at']} by "
                        f"{earlier['by']}; a mark cannot be changed on the line (correct it in the collected data)"
                    )
                    raise MarkError(msg, "conflict")
                return self._answer(entry, mark, already=True)
            try:
                image = self.store.read_image(entry)
                png_size(image)  # a damaged image file must not become a record
            except (OSError, ValueError) as exc:  # evicted this very moment, or damaged on disk
                raise MarkError(f"{what} (reject {entry.id}): its image cannot be read: {exc}", "unknown") from exc
            now = time.time()
            meta = {k: v for k, v in entry.meta.items() if k not in _LOCAL_FIELDS}
            meta.update(mark=mark, marked_at=iso_utc(now), marked_by=source)
            try:
                self.spool.put(entry.id, meta, image)  # durable when this returns
            except OSError as exc:
                msg = f"{what}: the spool record could not be written ({exc}); nothing was marked, try again"
                raise MarkError(msg, "failed") from exc
            try:
                self.store.record_mark(entry, {"mark": mark, "at": iso_utc(now), "by": source, "record_id": entry.id})
            except OSError as exc:  # the store's disk is full: the spool record (the durable copy) is made anyway
                entry.meta = dict(
                    entry.meta, mark={"mark": mark, "at": iso_utc(now), "by": source, "record_id": entry.id}
                )  # this run still knows it is marked
                log.warning(
                    "mark_not_saved_in_store",
                    id=entry.id,
                    error=str(exc),
                    detail="the record is spooled; the mark is lost from the store's JSON at a restart",
                )
            log.info(
                "marked",
                mark=mark,
                seq=entry.seq,
                plc_seq=entry.plc_seq,
                item_id=entry.meta.get("item_id"),
                id=entry.id,
                by=source,
                spool_depth=self.spool.depth,
            )
            return self._answer(entry, mark, already=False)

    def _find(self, seq: int | None, plc: int | None, reject_id: str | None) -> StoredReject | None:
        entry = self.store.find(seq=seq, plc=plc, reject_id=reject_id)
        if entry is None and self.store.wait_idle(2.0):  # marked within moments of the reject: let it land
            entry = self.store.find(seq=seq, plc=plc, reject_id=reject_id)
        return entry

    def _answer(self, entry: StoredReject, mark: str, *, already: bool) -> dict:
        return {
            "ok": True,
            "already": already,
            "mark": mark,
            "record_id": entry.id,
            "seq": entry.seq,
            "plc_seq": entry.plc_seq,
            "item_id": entry.meta.get("item_id", 0),
            "score": entry.meta.get("score"),
            "time": entry.meta.get("time"),
            "spool_depth": self.spool.depth,
        }
