"""The local spool: marked records waiting for the collector's acknowledgement, one file each, written atomically.

`put()` writes `<id>.rec` as temp file -> fsync -> rename -> fsync of the directory, so when it returns the record
survives a crash or power cut. A record file is

    b"ISPOOL1\\n" | uint32 meta length | uint32 image length | uint32 crc32(meta + image) | meta_json | image_png

(big-endian), so a damaged file is recognised (moved to `refused/` at start, never sent). The sender removes a
record only when the collector has acknowledged its id (`remove()`: no directory fsync there: a removal lost to a
power cut only means one resend, which the collector de-duplicates).

Bounded by `max_records` and `max_bytes`. When a new record does not fit, the OLDEST records are deleted to make
room, each logged as an error (`spool_evicted`): the spool fills only when the collector has been unreachable for
a long time, and then the newest false rejects are the ones that still describe the current product and model.
Records the collector refuses (malformed: resending cannot help) are moved to `refused/` for a person to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path

import structlog

from inspectd.core.durable import fsync_dir, remove_temp_files, write_atomic

log = structlog.get_logger("inspectd.spool")

MAGIC = b"ISPOOL1\n"
_HEADER = struct.Struct(">III")
SUFFIX = ".rec"
REFUSED_DIR = "refused"


class SpoolError(Exception):
    """A spool file is damaged or missing."""


def encode(meta: dict, image: bytes) -> bytes:
    raw_meta = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    crc = zlib.crc32(raw_meta + image) & 0xFFFFFFFF
    return MAGIC + _HEADER.pack(len(raw_meta), len(image), crc) + raw_meta + image


def decode(data: bytes) -> tuple[bytes, bytes]:
    """(meta_json bytes, image bytes); SpoolError when the file is damaged."""
    n = len(MAGIC) + _HEADER.size
    if len(data) < n or not data.startswith(MAGIC):
        raise SpoolError("not a spool record (bad magic)")
    meta_len, image_len, crc = _HEADER.unpack(data[len(MAGIC) : n])
    if len(data) != n + meta_len + image_len:
        raise SpoolError(f"truncated or padded record ({len(data)} bytes, header says {n + meta_len + image_len})")
    body = data[n:]
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise SpoolError("checksum mismatch")
    return body[:meta_len], body[meta_len:]


class Spool:
    def __init__(self, directory: str | Path, *, max_records: int = 10_000, max_bytes: int = 1 << 30) -> None:
        self.dir = Path(directory)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._index: OrderedDict[str, int] = OrderedDict()  # id -> file size, oldest first
        self._staged: dict[str, int] = {}  # written, not yet published to the sender (put(publish=False))
        self._bytes = 0
        self.evicted = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rebuild()

    def _path(self, rid: str) -> Path:
        return self.dir / f"{rid}{SUFFIX}"

    def _rebuild(self) -> None:
        removed = remove_temp_files(self.dir)
        found = []
        for p in self.dir.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
                decode(p.read_bytes())
            except (OSError, SpoolError) as exc:
                log.error("spool_record_damaged", file=p.name, error=str(exc), moved_to=REFUSED_DIR)
                self._move_aside(p, f"damaged: {exc}")
                continue
            found.append((st.st_mtime_ns, p.name, st.st_size))
        for _, name, size in sorted(found):
            self._index[name[: -len(SUFFIX)]] = size
            self._bytes += size
        log.info("spool_opened", dir=str(self.dir), depth=len(self._index), bytes=self._bytes, removed_temp=removed)

    # --- writing ------------------------------------------------------------------------------------------

    def put(self, rid: str, meta: dict, image: bytes, *, publish: bool = True) -> bool:
        """Store a record durably; False when a record with this id is already waiting (idempotent).

        publish=False writes it (durably) but keeps it from the sender until `publish(rid)`, so that a mark can be
        recorded in the mark journal first and the record withdrawn (`discard`) if that fails. After a crash in
        between, the record is found at the next start like any other (and the mark recovered from it)."""
        data = encode(meta, image)
        with self._lock:
            if rid in self._index or rid in self._staged:
                return False
            self._make_room(len(data))
            write_atomic(self._path(rid), data)  # temp, fsync, rename, fsync dir
            if publish:
                self._index[rid] = len(data)
                self._bytes += len(data)
                self._added.notify_all()
            else:
                self._staged[rid] = len(data)
        return True

    def publish(self, rid: str) -> None:
        """Hand a record written with publish=False to the sender."""
        with self._lock:
            size = self._staged.pop(rid, None)
            if size is None:
                return
            self._index[rid] = size
            self._bytes += size
            self._added.notify_all()

    def discard(self, rid: str) -> None:
        """Withdraw a record written with publish=False (it never reached the sender)."""
        with self._lock:
            if self._staged.pop(rid, None) is None:
                return
            _unlink(self._path(rid))
            fsync_dir(self.dir)

    def _make_room(self, size: int) -> None:
        while self._index and (len(self._index) + 1 > self.max_records or self._bytes + size > self.max_bytes):
            old, old_size = self._index.popitem(last=False)
            self._bytes -= old_size
            self.evicted += 1
            log.error(
                "spool_evicted",
                id=old,
                reason="spool full (collector unreachable for long?)",
                max_records=self.max_records,
                max_bytes=self.max_bytes,
                evicted=self.evicted,
            )
            _unlink(self._path(old))

    # --- reading and removing (the sender) ----------------------------------------------------------------

    def ids(self) -> list[str]:
        """Waiting record ids, oldest first."""
        with self._lock:
            return list(self._index)

    def __contains__(self, rid: str) -> bool:
        with self._lock:
            return rid in self._index

    def read(self, rid: str) -> tuple[bytes, bytes]:
        """(meta_json, image_png) of a waiting record; SpoolError when it is damaged or gone."""
        try:
            data = self._path(rid).read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read {rid}: {exc}") from exc
        return decode(data)

    def remove(self, rid: str) -> bool:
        """Delete an acknowledged record; False when it was not (or no longer) waiting."""
        with self._lock:
            size = self._index.pop(rid, None)
            if size is None:
                return False
            self._bytes -= size
            _unlink(self._path(rid))
            return True

    def refuse(self, rid: str, reason: str) -> None:
        """Move a record the collector will never accept to refused/ (with the reason beside it)."""
        with self._lock:
            size = self._index.pop(rid, None)
            if size is not None:
                self._bytes -= size
            self._move_aside(self._path(rid), reason)

    def _move_aside(self, path: Path, reason: str) -> None:
        dest = self.dir / REFUSED_DIR
        try:
            dest.mkdir(exist_ok=True)
            os.replace(path, dest / path.name)
            (dest / f"{path.name}.reason.txt").write_text(reason + "\n")
            fsync_dir(self.dir)
        except OSError as exc:
            log.error("spool_move_failed", file=path.name, error=str(exc))

    def wait_for_records(self, timeout: float) -> bool:
        """Block until at least one record waits (or timeout); True when one does."""
        with self._added:
            if not self._index:
                self._added.wait(timeout)
            return bool(self._index)

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest waiting record was written; None when the spool is empty."""
        with self._lock:
            oldest = next(iter(self._index), None)
        if oldest is None:
            return None
        try:
            return max(0.0, time.time() - self._path(oldest).stat().st_mtime)
        except OSError:  # acknowledged and removed meanwhile
            return None

    @property
    def depth(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return self._bytes


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
