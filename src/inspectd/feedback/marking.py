"""Marking: an operator's verdict on a rejected item becomes a spool record. The one way a mark is made.

good = a false reject (the model was wrong: the image goes to the collector's `train/good/`);
bad  = a confirmed defect (kept as a labelled defect candidate: the collector's `test/confirmed_defect/`).

`Marker.mark(mark=..., source=..., seq= | plc= | reject_id=)` is the one call: the control socket (`inspectd mark`),
the PLC's register 21 (through `submit`, which queues it so the Modbus server never waits for an fsync) and any
other front end (a recheck-station page) use it. It never raises: it returns a `MarkResult` whose `outcome` is
`marked` or `already` (ok), or a refusal with a reason a person can act on:

    unknown      no stored reject has that seq or id (it passed, was never stored, or has been evicted)
    conflict     it was marked the other way before (a mark is final on the line: correct it in the collected data)
    invalid      the request itself is wrong (mark not good/bad, seq out of range, not exactly one of seq/plc/id)
    failed       the disk refused the spool record or the journal entry: nothing was marked, try again
    busy         (submit only) too many marks waiting
    unavailable  (the caller's, e.g. the control socket) marking is not configured

Rules: the seq resolves to the NEWEST stored reject with that seq (the daemon's own seq from the CLI, the 16-bit
wrapped one from the PLC); marking again the same way changes nothing and answers with the same record id; the
record id is the reject's id, so a mark repeated after a crash never produces a second record.

What is durable when `marked` is answered, in this order (inspectd/feedback/journal.py says why):
  1. the spool record, fsynced but held back from the sender;
  2. the mark journal entry, fsynced: this is the commit point, and the truth for every later mark;
  3. the record is handed to the sender; the reject store's JSON gets a copy of the mark (not fsynced, may fail).
A failure in 1 or 2 withdraws what was written and answers `failed`. A crash between 1 and 2 leaves a spool record
without a journal entry: at the next start it is taken as the mark it says (`recover`), so the line and the
collector still agree.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import structlog

from inspectd.core import untrusted
from inspectd.core.clock import iso_utc
from inspectd.feedback.journal import MarkJournal
from inspectd.feedback.protocol import png_size
from inspectd.feedback.rejects import RejectStore, StoredReject
from inspectd.feedback.spool import Spool, SpoolError

log = structlog.get_logger("inspectd.marking")

# fields of a stored reject's JSON that are local to the line PC (file names, bookkeeping), not sent
_LOCAL_FIELDS = ("image", "overlay", "mark", "wall_time")
OK_OUTCOMES = ("marked", "already")
REFUSALS = ("unknown", "conflict", "invalid", "failed", "busy", "unavailable")


@dataclass(frozen=True)
class MarkResult:
    """What became of one mark request. `ok` when it is marked (now or before, the same way)."""

    outcome: str  # one of OK_OUTCOMES or REFUSALS
    reason: str = ""  # why it was refused (empty when ok)
    mark: str | None = None
    record_id: str | None = None
    seq: int | None = None
    plc_seq: int | None = None
    item_id: int | None = None
    score: float | None = None
    time: str | None = None
    spool_depth: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in OK_OUTCOMES

    def as_dict(self) -> dict:
        """The control socket's answer: {"ok": true, "already": ..., "record_id": ...} or {"ok": false, "error",
        "kind"}."""
        if not self.ok:
            return {"ok": False, "error": self.reason, "kind": self.outcome}
        return {"ok": True, "already": self.outcome == "already", **asdict(self)}


def refused(kind: str, reason: str) -> MarkResult:
    return MarkResult(outcome=kind, reason=reason)


class _RefusedError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class Marker:
    def __init__(self, store: RejectStore, spool: Spool, journal: MarkJournal, *, queue_size: int = 1024) -> None:
        self.store = store
        self.spool = spool
        self.journal = journal
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

    # --- the queued path (PLC register 21): returns at once, answers through on_done ----------------------

    def submit(
        self,
        plc_seq: int,
        *,
        mark: str = "good",
        source: str = "plc",
        on_done: Callable[[MarkResult], None] | None = None,
    ) -> None:
        """Mark the reject with this 16-bit seq in the marker's thread; `on_done(result)` when it is decided."""
        try:
            self._queue.put_nowait((plc_seq, mark, source, on_done))
        except queue.Full:
            result = refused("busy", f"PLC seq {plc_seq}: {self._queue.maxsize} marks already waiting; try again")
            log.error("false_reject_failed", seq=plc_seq, source=source, error=result.reason, kind=result.outcome)
            _call(on_done, result)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            plc, mark, source, on_done = item
            result = self.mark(mark=mark, source=source, plc=plc)
            if not result.ok:
                (log.error if result.outcome == "failed" else log.warning)(
                    "false_reject_failed", seq=plc, source=source, error=result.reason, kind=result.outcome
                )
            _call(on_done, result)

    # --- the one way a mark is made -----------------------------------------------------------------------

    def mark(
        self,
        *,
        mark: str,
        source: str,
        seq: int | None = None,
        plc: int | None = None,
        reject_id: str | None = None,
    ) -> MarkResult:
        """Mark one stored reject good or bad. Never raises: a MarkResult, ok or a refusal with its reason."""
        try:
            return self._mark(mark, source, seq, plc, reject_id)
        except _RefusedError as r:
            return refused(r.kind, r.reason)
        except Exception as exc:  # a bug or a disk error nobody expected: refused, never half-marked
            log.exception("mark_failed", seq=seq, plc_seq=plc, id=reject_id)
            return refused("failed", f"the mark could not be made ({exc!r}); nothing was marked, try again")

    def _mark(self, mark: str, source: str, seq: int | None, plc: int | None, reject_id: str | None) -> MarkResult:
        if mark not in ("good", "bad"):
            raise _RefusedError("invalid", f"mark must be 'good' or 'bad', got {mark!r}")
        if sum(x is not None for x in (seq, plc, reject_id)) != 1:
            raise _RefusedError("invalid", "give exactly one of seq, PLC seq or reject id")
        what = f"reject {reject_id}" if reject_id is not None else f"seq {seq}" if seq is not None else f"PLC seq {plc}"
        if (seq is not None and seq < 1) or (plc is not None and not 1 <= plc <= 65535):
            raise _RefusedError("invalid", f"{what}: out of range (seq >= 1; PLC seq 1..65535)")
        with self._lock:
            entry = self._find(seq, plc, reject_id)
            if entry is None:
                s = self.store.stats()
                raise _RefusedError(
                    "unknown",
                    f"unknown or expired {what}: no stored reject has it (it passed, was not a reject, was never "
                    f"stored, or has been evicted: the store keeps the newest {self.store.cfg.max_count} rejects, "
                    f"{s['count']} now)",
                )
            earlier = self.earlier_mark(entry.id, entry)
            if earlier is not None:
                if earlier["mark"] != mark:
                    raise _RefusedError(
                        "conflict",
                        f"{what} (reject {entry.id}) was already marked {earlier['mark']} at {earlier.get('at')} by "
                        f"{earlier.get('by')}; a mark cannot be changed on the line (correct it in the collected data)",
                    )
                return self._result(entry, mark, "already")
            self._commit(entry, mark, source, what)
            return self._result(entry, mark, "marked")

    def _commit(self, entry: StoredReject, mark: str, source: str, what: str) -> None:
        try:
            image = self.store.read_image(entry)
            png_size(image)  # a damaged image file must not become a record
        except (OSError, ValueError) as exc:  # evicted this very moment, or damaged on disk
            raise _RefusedError("unknown", f"{what} (reject {entry.id}): its image cannot be read: {exc}") from exc
        now = iso_utc(time.time())
        meta = {k: v for k, v in entry.meta.items() if k not in _LOCAL_FIELDS}
        meta.update(mark=mark, marked_at=now, marked_by=source)
        note = {"id": entry.id, "mark": mark, "at": now, "by": source, "record_id": entry.id}
        try:
            self.spool.put(entry.id, meta, image, publish=False)  # 1. durable, held back from the sender
        except OSError as exc:
            raise _RefusedError(
                "failed", f"{what}: the spool record could not be written ({exc}); nothing was marked, try again"
            ) from exc
        try:
            self.journal.append(note)  # 2. the commit point
        except OSError as exc:
            self.spool.discard(entry.id)
            raise _RefusedError(
                "failed", f"{what}: the mark could not be recorded ({exc}); nothing was marked, try again"
            ) from exc
        self.spool.publish(entry.id)  # 3. to the collector
        try:
            self.store.record_mark(entry, {k: v for k, v in note.items() if k != "id"})
        except OSError as exc:  # the store's disk is full: the journal has it, so nothing is lost or contradicted
            log.warning("mark_not_saved_in_store", id=entry.id, error=str(exc), detail="the mark journal has it")
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

    def earlier_mark(self, reject_id: str, entry: StoredReject | None = None) -> dict | None:
        """The mark this reject already has: the journal's; failing that (only if a journal write failed at start,
        see `recover`) a waiting spool record's, or the store's copy, which is only ever written after a commit."""
        note = self.journal.get(reject_id)
        if note is None and reject_id in self.spool:
            try:
                meta = untrusted.loads(self.spool.read(reject_id)[0])
                note = {"mark": meta["mark"], "at": meta.get("marked_at"), "by": meta.get("marked_by")}
            except (SpoolError, ValueError, KeyError, TypeError):
                note = None
        if note is None and entry is not None and entry.mark is not None:
            note = entry.mark
        return note

    # --- start-up -----------------------------------------------------------------------------------------

    def recover(self) -> dict:
        """At start: make the journal whole and the store agree with it. Spool records without a journal entry
        (a crash between writing the record and the journal) are taken into the journal; marks only the store
        knows (a store from before the journal existed) too; marks of rejects gone from store and spool are
        dropped. The store's entries then carry the journal's marks. Returns counts for the log."""
        recovered = adopted = 0
        for rid in self.spool.ids():
            if self.journal.get(rid) is None:
                note = self.earlier_mark(rid)
                if note is not None and self._append({"id": rid, "record_id": rid, **note}):
                    recovered += 1
                    log.warning("mark_recovered", id=rid, mark=note["mark"], source="spool record")
        for entry in self.store.entries():
            if entry.mark is not None and self.journal.get(entry.id) is None:
                note = {"id": entry.id, "record_id": entry.id, **{k: entry.mark.get(k) for k in ("mark", "at", "by")}}
                if note["mark"] in ("good", "bad") and self._append(note):
                    adopted += 1
        dropped = 0
        try:
            dropped = self.journal.compact({e.id for e in self.store.entries()} | set(self.spool.ids()))
        except OSError as exc:
            log.error("mark_journal_compact_failed", error=str(exc))
        disagree = self.store.apply_marks(self.journal)
        counts = {"marks": len(self.journal), "recovered": recovered, "adopted": adopted, "dropped": dropped}
        log.info("mark_journal_opened", file=str(self.journal.path), store_corrected=disagree, **counts)
        return counts

    def _append(self, note: dict) -> bool:
        try:
            self.journal.append(note)
            return True
        except OSError as exc:
            log.error("mark_journal_write_failed", id=note["id"], error=str(exc))
            return False

    # --- helpers ------------------------------------------------------------------------------------------

    def _find(self, seq: int | None, plc: int | None, reject_id: str | None) -> StoredReject | None:
        entry = self.store.find(seq=seq, plc=plc, reject_id=reject_id)
        if entry is None and self.store.wait_idle(2.0):  # marked within moments of the reject: let it land
            entry = self.store.find(seq=seq, plc=plc, reject_id=reject_id)
        return entry

    def _result(self, entry: StoredReject, mark: str, outcome: str) -> MarkResult:
        return MarkResult(
            outcome=outcome,
            mark=mark,
            record_id=entry.id,
            seq=entry.seq,
            plc_seq=entry.plc_seq,
            item_id=entry.meta.get("item_id", 0),
            score=entry.meta.get("score"),
            time=entry.meta.get("time"),
            spool_depth=self.spool.depth,
        )


def _call(on_done: Callable[[MarkResult], None] | None, result: MarkResult) -> None:
    if on_done is None:
        return
    try:
        on_done(result)
    except Exception as exc:  # the caller's (the PLC link's) problem; the mark itself is decided
        log.error("mark_answer_failed", error=repr(exc))
