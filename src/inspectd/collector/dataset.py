"""The collector's output directory: an MVTec-style data set plus one metadata line per record.

    DIR/train/good/<id>.png              false rejects (marked good): training data for `inspectd train --data DIR`
    DIR/test/confirmed_defect/<id>.png   confirmed defects (marked bad): labelled defect candidates; pixel masks
                                         (DIR/ground_truth/confirmed_defect/<id>_mask.png) are drawn later
    DIR/meta.jsonl                       one JSON object per record: id, mark, line, camera, model_sha256, seq,
                                         plc_seq, item_id, score, time, marked_at, marked_by, ..., file, received_at

meta.jsonl is also the de-duplication index: the ids in it are the records already stored; it is read back at
start. A record counts as stored when its line is in meta.jsonl, and its image is written and fsynced before the
line is, so a line never names a missing image. A line torn by a crash (no trailing newline) is cut off at start:
that record was never acknowledged, so its sender sends it again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from inspectd.core import untrusted
from inspectd.core.clock import iso_utc
from inspectd.core.durable import fsync_dir, remove_temp_files, write_atomic
from inspectd.feedback.protocol import RecordMeta

log = structlog.get_logger("inspectd.collect")

META_FILE = "meta.jsonl"
FOLDERS = {"good": Path("train") / "good", "bad": Path("test") / "confirmed_defect"}


def read_records(out: Path) -> list[dict]:
    """The records stored in a collector directory, for readers beside a running collector: the complete lines of
    its meta.jsonl (a last line without its newline is still being appended, or was torn by a crash: not stored).
    Unreadable lines are left out, as the collector itself leaves them out at start."""
    path = Path(out) / META_FILE
    if not path.is_file():
        return []
    data = path.read_bytes()
    return _parse(data[: data.rfind(b"\n") + 1])[0]


def _parse(data: bytes) -> tuple[list[dict], int]:
    """meta.jsonl's lines -> (the records, how many lines could not be read as one)."""
    rows, bad = [], 0
    for line in data.splitlines():
        try:
            row = untrusted.loads(line)
            str(row["id"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        rows.append(row)
    return rows, bad


class Dataset:
    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        for sub in FOLDERS.values():
            (self.out / sub).mkdir(parents=True, exist_ok=True)
            remove_temp_files(self.out / sub)
        self.meta_path = self.out / META_FILE
        self._marks: dict[str, str] = {}  # id -> mark
        self._load()

    def _load(self) -> None:
        if not self.meta_path.exists():
            return
        data = self.meta_path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):  # a torn last line: that record was never acknowledged
            log.warning("meta_torn_line_removed", file=str(self.meta_path), bytes=len(data) - cut)
            with open(self.meta_path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            data = data[:cut]
        rows, bad = _parse(data)
        for row in rows:
            self._marks[str(row["id"])] = str(row.get("mark"))
        log.info("dataset_opened", out=str(self.out), records=len(self._marks), unreadable_lines=bad)

    def __contains__(self, rid: str) -> bool:
        return rid in self._marks

    def mark_of(self, rid: str) -> str | None:
        """The mark a stored record has (good/bad), None when it is not stored."""
        return self._marks.get(rid)

    def __len__(self) -> int:
        return len(self._marks)

    @staticmethod
    def relpath(meta: RecordMeta) -> Path:
        return FOLDERS[meta.mark] / f"{meta.id}.png"

    def store(self, records: list[tuple[RecordMeta, bytes]]) -> None:
        """Store new records durably: images (fsynced) first, then their meta lines (one append, fsynced).
        Raises OSError (disk full ...); then none of them counts as stored."""
        if not records:
            return
        dirs = set()
        for meta, image in records:
            path = self.out / self.relpath(meta)
            write_atomic(path, image, sync_dir=False)
            dirs.add(path.parent)
        for d in dirs:
            fsync_dir(d)
        now = iso_utc(time.time())
        lines = []
        for meta, _ in records:
            row = meta.model_dump(mode="json")
            head = {
                k: row.pop(k)
                for k in (
                    "id",
                    "mark",
                    "line",
                    "camera",
                    "model_sha256",
                    "seq",
                    "plc_seq",
                    "item_id",
                    "score",
                    "time",
                    "marked_at",
                    "marked_by",
                )
            }
            lines.append(untrusted.dumps({**head, **row, "file": str(self.relpath(meta)), "received_at": now}))
        new_file = not self.meta_path.exists()
        data = ("\n".join(lines) + "\n").encode()
        fd = os.open(self.meta_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)  # never leave half a line for the next append to glue onto
                raise
        finally:
            os.close(fd)
        if new_file:
            fsync_dir(self.out)
        self._marks.update((meta.id, meta.mark) for meta, _ in records)
