"""The reject store: recent rejects on disk (image, score-map overlay, metadata), bounded, surviving restarts.

A Sink. `emit()` only hands a reject to a small writer thread through a bounded queue, so inspection never waits
for PNG encoding or the disk: when the queue is full (the disk is slower than the reject rate) or a write fails
(disk full, permissions), the reject is not stored, which is logged and counted, and inspection goes on.

Per reject, in `rejects.dir` (each file written whole, then renamed into place; the JSON last, so a reject whose
JSON exists is complete):

    <id>.png          the frame as the camera delivered it (lossless: this is the training data)
    <id>.overlay.png  the frame with the score map as a heat map and the defect regions boxed (rejects.overlay)
    <id>.json         metadata: line, camera, model, seq, PLC seq, item id, score, regions, time; and the mark

The store keeps at most `max_count` rejects and `max_mb` MiB; the oldest go first. At start the index is rebuilt
from the JSON files, so rejects (and their marks) survive restarts; leftovers of interrupted writes are removed.
Store files are not fsynced (a power cut may lose the last seconds of rejects). A mark is copied into the reject's
JSON for people browsing the store, but the truth is the fsynced mark journal (inspectd/feedback/journal.py): at
start every entry is given the journal's mark.

The id (`<line>-<UTC time>-<seq>-<random>`) is made when the reject is stored; a mark's record carries the same id.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import structlog

from inspectd.core import untrusted
from inspectd.core.clock import compact_utc, iso_utc
from inspectd.core.durable import remove_temp_files, write_atomic
from inspectd.core.types import Code, Verdict, plc_seq
from inspectd.feedback.config import RejectsConfig

log = structlog.get_logger("inspectd.rejects")

MIB = 1024 * 1024
_STOP = object()


def safe_name(text: str, limit: int = 40) -> str:
    return (re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._-") or "line")[:limit]


def render_overlay(image: np.ndarray, score_map: np.ndarray, threshold: float, regions) -> np.ndarray:
    """BGR image: the frame, with the score map as a JET heat map (threshold = mid-scale) and regions boxed."""
    base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    scaled = np.clip(np.asarray(score_map, dtype=np.float32) / max(float(threshold), 1e-6), 0.0, 2.0) * 127.5
    heat = cv2.applyColorMap(scaled.astype(np.uint8), cv2.COLORMAP_JET)
    if heat.shape[:2] != base.shape[:2]:
        heat = cv2.resize(heat, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(base, 0.55, heat, 0.45, 0.0)
    for r in regions:
        cv2.rectangle(out, (r.x, r.y), (r.x + r.w - 1, r.y + r.h - 1), (255, 255, 255), 1)
    return out


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        msg = f"PNG encoding failed for an image of shape {image.shape}"
        raise ValueError(msg)
    return buf.tobytes()


@dataclass
class StoredReject:
    id: str
    seq: int
    plc_seq: int
    wall_time: float
    nbytes: int
    meta: dict

    @property
    def mark(self) -> dict | None:
        return self.meta.get("mark")


class RejectStore:
    """Sink that keeps recent rejects on disk; `find`, `read_image` and `record_mark` serve the marking path."""

    name = "rejects"

    def __init__(
        self,
        cfg: RejectsConfig,
        *,
        line: str,
        camera: str,
        model_sha256: str,
        model_name: str = "",
        pixel_threshold: float = 0.5,
    ) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.max_bytes = int(cfg.max_mb * MIB)
        self._context = {
            "line": line,
            "camera": camera[:256],
            "model_sha256": model_sha256,
            "model_name": model_name[:128],
        }
        self._line_tag = safe_name(line)
        self.pixel_threshold = float(pixel_threshold)
        self._lock = threading.Lock()
        self._index: OrderedDict[str, StoredReject] = OrderedDict()  # oldest first
        self._bytes = 0
        self.dropped = 0  # queue full: not stored
        self.write_failures = 0  # disk full, permissions, encoding
        self.evicted = 0
        self._pending = 0
        self._idle = threading.Condition()
        self._queue: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rebuild()
        self._thread = threading.Thread(target=self._writer, name="reject-writer", daemon=True)
        self._thread.start()

    # --- Sink ---------------------------------------------------------------------------------------------

    def emit(self, verdict: Verdict) -> None:
        if verdict.code is not Code.REJECT or verdict.image is None:
            return
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(verdict)
        except queue.Full:
            self._done()
            self.dropped += 1
            if self.dropped <= 3 or self.dropped % 100 == 0:
                log.warning(
                    "reject_not_stored",
                    seq=verdict.seq,
                    reason="writer queue full (disk slower than rejects)",
                    dropped=self.dropped,
                )

    def close(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.error("reject_store_close_timeout", detail="writer queue still full")
            return
        self._thread.join(timeout)

    # --- lookups for marking ------------------------------------------------------------------------------

    def find(
        self, *, seq: int | None = None, plc: int | None = None, reject_id: str | None = None
    ) -> StoredReject | None:
        """The newest stored reject with this daemon seq, PLC (16-bit) seq or id; None when there is none."""
        with self._lock:
            if reject_id is not None:
                return self._index.get(reject_id)
            for entry in reversed(self._index.values()):
                if (seq is not None and entry.seq == seq) or (plc is not None and entry.plc_seq == plc):
                    return entry
        return None

    def recent(self, limit: int) -> list[StoredReject]:
        """The newest `limit` stored rejects, newest first (copies: a later mark does not change them)."""
        with self._lock:
            out: list[StoredReject] = []
            for entry in reversed(self._index.values()):
                if len(out) >= limit:
                    break
                out.append(StoredReject(entry.id, entry.seq, entry.plc_seq, entry.wall_time, entry.nbytes, entry.meta))
            return out

    def file_of(self, reject_id: str, which: str) -> Path | None:
        """The path of a stored reject's `image` or `overlay` PNG; None when there is no such reject or file."""
        with self._lock:
            entry = self._index.get(reject_id)
            name = entry.meta.get(which) if entry is not None and which in ("image", "overlay") else None
        return self.dir / name if name else None

    def read_image(self, entry: StoredReject) -> bytes:
        with self._lock:
            return (self.dir / entry.meta["image"]).read_bytes()

    def record_mark(self, entry: StoredReject, mark: dict) -> None:
        """Keep a copy of an operator's mark in the reject's JSON, for people and pages browsing the store. Not
        fsynced and allowed to fail (OSError): the mark journal (inspectd/feedback/journal.py) is the truth. The
        entry carries the mark from now on either way."""
        with self._lock:
            entry.meta = dict(entry.meta, mark=mark)
            write_atomic(self.dir / f"{entry.id}.json", _json(entry.meta), fsync=False)

    def entries(self) -> list[StoredReject]:
        with self._lock:
            return list(self._index.values())

    def apply_marks(self, journal) -> int:
        """At start: give every entry the mark the journal holds for it (the store's JSON may have lost it to a
        power cut or a full disk); returns how many entries were corrected."""
        corrected = 0
        for entry in self.entries():
            note = journal.get(entry.id)
            if note is None:  # the journal lacks it only if a write failed: keep what the store says
                continue
            want = {k: note.get(k) for k in ("mark", "at", "by", "record_id")}
            have = entry.mark
            if have is not None and have.get("mark") == want["mark"]:
                continue
            corrected += 1
            log.warning("reject_store_mark_corrected", id=entry.id, store=have and have.get("mark"), journal=want)
            try:
                self.record_mark(entry, want)
            except OSError as exc:
                log.warning("mark_not_saved_in_store", id=entry.id, error=str(exc), detail="the mark journal has it")
        return corrected

    def set_model(self, *, model_sha256: str, model_name: str, pixel_threshold: float) -> None:
        """A model hot reload: rejects stored from now on carry the new model's sha256, name and threshold."""
        with self._lock:
            self._context = {**self._context, "model_sha256": model_sha256, "model_name": model_name[:128]}
            self.pixel_threshold = float(pixel_threshold)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every reject handed to emit() so far is written (or failed); True when idle."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stats(self) -> dict:
        with self._lock:
            return {
                "count": len(self._index),
                "bytes": self._bytes,
                "queued": self._pending,
                "dropped": self.dropped,
                "write_failures": self.write_failures,
                "evicted": self.evicted,
            }

    def __len__(self) -> int:
        return len(self._index)

    # --- writer thread ------------------------------------------------------------------------------------

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            if not self._pending:
                self._idle.notify_all()

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._store(item)
            except Exception as exc:  # disk full, permissions, encoding: logged and counted, never raised
                self.write_failures += 1
                if self.write_failures <= 3 or self.write_failures % 100 == 0:
                    log.error("reject_store_write_failed", seq=item.seq, error=str(exc), failures=self.write_failures)
            finally:
                self._done()

    def _store(self, v: Verdict) -> None:
        stamp = compact_utc(v.wall_time)
        rid = f"{self._line_tag}-{stamp}-{v.seq}-{secrets.token_hex(4)}"
        image = np.ascontiguousarray(v.image)
        files = {"image": f"{rid}.png"}
        blobs = {f"{rid}.png": _png(image)}
        if self.cfg.overlay and v.score_map is not None:
            files["overlay"] = f"{rid}.overlay.png"
            blobs[files["overlay"]] = _png(render_overlay(image, v.score_map, self.pixel_threshold, v.regions))
        meta = {
            "id": rid,
            **self._context,
            "seq": v.seq,
            "plc_seq": plc_seq(v.seq),
            "item_id": v.item_id,
            "score": round(float(v.score), 6),
            "defect_area": v.defect_area,
            "regions": [r.as_dict() for r in v.regions],
            "pixel_threshold": self.pixel_threshold,
            "time": iso_utc(v.wall_time),
            "wall_time": v.wall_time,
            "source": v.source,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "channels": 1 if image.ndim == 2 else int(image.shape[2]),
            **files,
            "mark": None,
        }
        blobs[f"{rid}.json"] = _json(meta)
        written: list[Path] = []
        try:
            for name, data in blobs.items():  # the JSON last: its presence means the reject is complete
                write_atomic(self.dir / name, data, fsync=False)
                written.append(self.dir / name)
        except BaseException:
            for p in written:
                _unlink(p)
            raise
        entry = StoredReject(rid, v.seq, plc_seq(v.seq), v.wall_time, sum(len(b) for b in blobs.values()), meta)
        with self._lock:
            self._index[rid] = entry
            self._bytes += entry.nbytes
            self._evict()

    def _evict(self) -> None:
        while self._index and (len(self._index) > self.cfg.max_count or self._bytes > self.max_bytes):
            _, old = self._index.popitem(last=False)
            self._bytes -= old.nbytes
            self.evicted += 1
            for name in (old.meta.get("image"), old.meta.get("overlay"), f"{old.id}.json"):
                if name:
                    _unlink(self.dir / name)

    # --- start-up -----------------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        removed = remove_temp_files(self.dir)
        entries = []
        referenced: set[str] = set()
        for path in self.dir.glob("*.json"):
            try:
                meta = untrusted.loads(path.read_bytes())
                image = self.dir / meta["image"]
                nbytes = path.stat().st_size + image.stat().st_size
                if image.stat().st_size == 0:
                    raise ValueError("empty image file")
                if meta.get("overlay"):
                    try:
                        nbytes += (self.dir / meta["overlay"]).stat().st_size
                    except OSError:
                        meta["overlay"] = None
                entry = StoredReject(
                    meta["id"], int(meta["seq"]), int(meta["plc_seq"]), float(meta["wall_time"]), nbytes, meta
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("reject_store_entry_dropped", file=path.name, error=str(exc))
                _unlink(path)
                removed += 1
                continue
            entries.append(entry)
            referenced.update(n for n in (meta["image"], meta.get("overlay"), path.name) if n)
        for path in self.dir.glob("*.png"):  # images whose JSON was never written (interrupted)
            if path.name not in referenced:
                _unlink(path)
                removed += 1
        entries.sort(key=lambda e: (e.wall_time, e.seq, e.id))
        for e in entries:
            self._index[e.id] = e
            self._bytes += e.nbytes
        self._evict()  # the bounds may have been lowered since
        log.info(
            "reject_store_opened",
            dir=str(self.dir),
            count=len(self._index),
            bytes=self._bytes,
            marked=sum(1 for e in entries if e.mark),
            removed_leftovers=removed,
        )


def _json(meta: dict) -> bytes:
    return json.dumps(meta, indent=1, sort_keys=False).encode()


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
