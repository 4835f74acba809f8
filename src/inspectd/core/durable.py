"""Files that are either wholly there or not at all: write a temp file, fsync it, rename it into place, fsync the
directory. Used by the reject store, the spool and the collector.

A reader never sees a half-written file under its final name; after a crash or power cut, what remains is the old
state or the new one, plus at worst a stray temp file (name starting with '.', ending in '.tmp') that the owner
removes at start (`remove_temp_files`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_dir(path: str | Path) -> None:
    """Make a rename or create in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def write_atomic(path: str | Path, data: bytes, *, fsync: bool = True, sync_dir: bool = True) -> None:
    """Write `data` to `path` atomically. With fsync, it is on disk when this returns. Raises OSError (disk full,
    permissions); the temp file is removed then."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync and sync_dir:
        fsync_dir(path.parent)


def remove_temp_files(directory: str | Path) -> int:
    """Delete temp files that a crash left behind in `directory`; returns how many."""
    n = 0
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return 0
    for p in entries:
        if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file():
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n
