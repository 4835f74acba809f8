"""The mark journal: the one durable record of what the operators of this line PC marked, and the truth for it.

`<feedback.spool_dir>/marks.jsonl`, one JSON line per mark, appended and fsynced before the mark is answered:

    {"id": "<reject id>", "mark": "good", "at": "2026-...Z", "by": "plc", "record_id": "<reject id>"}

Why a journal and not the reject store's JSON or the spool: the store is not fsynced (it holds hundreds of MB of
images, and its disk may be full), and a spool record is deleted once the collector has acknowledged it. Neither can
say, after a power cut or a full disk, that a reject was already marked good, so a later `--bad` would be accepted
on the line while the collector keeps the first mark. The journal is tiny (a hundred bytes a mark), lives beside
the spool (the directory that must be durable anyway), and is the one thing marking consults: the store's copy of
the mark is a cache for people and pages browsing the store.

A torn last line (a crash in the middle of an append) is cut off when the journal is opened; that mark was never
answered. Entries of rejects that are gone from both the store and the spool are dropped when it is opened
(`compact`), so the journal stays as small as the store.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import structlog

from inspectd.core import untrusted
from inspectd.core.durable import fsync_dir, write_atomic

log = structlog.get_logger("inspectd.marking")

FILE = "marks.jsonl"


class MarkJournal:
    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / FILE
        self._lock = threading.Lock()
        self._marks: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1
        if cut != len(data):  # torn by a crash mid-append: that mark was never answered
            log.warning("mark_journal_torn_line_removed", file=str(self.path), bytes=len(data) - cut)
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
        bad = 0
        for line in data[:cut].splitlines():
            try:
                entry = untrusted.loads(line, max_bytes=4096)
                if not isinstance(entry, dict) or entry.get("mark") not in ("good", "bad"):
                    raise ValueError("not a mark")
                self._marks[str(entry["id"])] = entry
            except (ValueError, KeyError):
                bad += 1
        if bad:
            log.error("mark_journal_lines_unreadable", file=str(self.path), lines=bad)

    def get(self, reject_id: str) -> dict | None:
        with self._lock:
            return self._marks.get(reject_id)

    def __len__(self) -> int:
        return len(self._marks)

    def ids(self) -> set[str]:
        with self._lock:
            return set(self._marks)

    def append(self, entry: dict) -> None:
        """Record a mark durably (written and fsynced when this returns). OSError (disk full ...): nothing recorded,
        the file is as it was."""
        line = (json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            new_file = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, start)  # never leave half a line; truncating needs no free space
                    raise
            finally:
                os.close(fd)
            if new_file:
                fsync_dir(self.path.parent)
            self._marks[str(entry["id"])] = entry

    def compact(self, keep: set[str]) -> int:
        """Drop the marks of rejects not in `keep` (evicted from the store and delivered); returns how many."""
        with self._lock:
            gone = [rid for rid in self._marks if rid not in keep]
            if not gone:
                return 0
            kept = {rid: e for rid, e in self._marks.items() if rid in keep}
            text = "".join(json.dumps(e, separators=(",", ":"), sort_keys=True) + "\n" for e in kept.values())
            write_atomic(self.path, text.encode())
            self._marks = kept
            return len(gone)
