"""Model directories as content-addressed files: what `registry add` stores and `export` / `fetch` write back.

- A model directory's files: every regular file under it (members/ of an ensemble included), except names starting
  with '.' (temporary files of an interrupted write). A symlink or any other special file is refused: the registry
  stores what is in the directory, never what a link points to.
- Its **digest**: sha256 over the sorted lines "<relative path>\\0<file sha256>\\0<size>\\n". It names the directory
  in the registry: the same files give the same digest, any changed byte or name a different one. The manifest's
  `identity` (model.onnx's sha256, what the daemon logs) is kept beside it.
- Writing a directory back: into a temporary folder beside the target, every file checked against its sha256 and the
  whole against the digest, fsynced, then renamed into place: a reader sees the whole directory or none of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from inspectd.core.durable import fsync_dir
from inspectd.registry.errors import RegistryError

MAX_FILE = 1 << 30  # 1 GiB: PostgreSQL's bytea limit


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative, '/'-separated
    sha256: str
    size: int


def check_relpath(path: str) -> str:
    """A stored file's path must stay inside its directory: relative, no '..', no empty or hidden parts."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        msg = f"file path {path!r} is not a plain relative path inside a model directory"
        raise RegistryError(msg)
    return path


def directory_digest(files: Iterable[StoredFile]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\0{f.size}\n".encode())
    return h.hexdigest()


def read_files(model_dir: str | Path) -> list[tuple[StoredFile, bytes]]:
    """Every file of a model directory with its content (see the module docstring); RegistryError on a link or a
    special file, or a file over MAX_FILE."""
    root = Path(model_dir)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            if (here / d).is_symlink():
                msg = f"{here / d} is a symbolic link; a model directory to register must hold real files only"
                raise RegistryError(msg)
            if d.startswith("."):
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                msg = f"{path} is {kind}; a model directory to register must hold real files only"
                raise RegistryError(msg)
            if st.st_size > MAX_FILE:
                msg = f"{path} is {st.st_size} bytes; the registry stores files up to {MAX_FILE} bytes"
                raise RegistryError(msg)
            data = path.read_bytes()
            rel = path.relative_to(root).as_posix()
            out.append((StoredFile(check_relpath(rel), hashlib.sha256(data).hexdigest(), len(data)), data))
    return out


def verified(f: StoredFile, data: bytes, model: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != f.sha256 or len(data) != f.size:
        msg = (
            f"the registry's copy of {model}/{f.path} has sha256 {actual[:16]}… ({len(data)} bytes) but was stored as "
            f"{f.sha256[:16]}… ({f.size} bytes): the registry database is damaged; nothing was written"
        )
        raise RegistryError(msg)
    return data


def write_tree(dest: str | Path, files: Iterable[tuple[StoredFile, bytes]], digest: str, model: str) -> Path:
    """Write a model directory to `dest` (which must not exist, or be an empty directory), all or nothing."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        msg = f"{dest} already exists and is not an empty directory; name a new directory"
        raise RegistryError(msg)
    if not dest.parent.is_dir():
        msg = f"the parent directory {dest.parent} does not exist"
        raise RegistryError(msg)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        entries = []
        for f, data in files:
            path = tmp / check_relpath(f.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as out:
                out.write(verified(f, data, model))
                out.flush()
                os.fsync(out.fileno())
            path.chmod(0o644)
            entries.append(f)
        if directory_digest(entries) != digest:
            msg = f"the registry's files of {model} do not add up to its digest {digest[:16]}…: the database is damaged"
            raise RegistryError(msg)
        for d in sorted({(tmp / e.path).parent for e in entries}, key=lambda p: -len(p.parts)):
            fsync_dir(d)
        tmp.chmod(0o755)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def point_link(link: Path, target_name: str) -> str | None:
    """Make the symlink `link` point to `target_name` (a sibling directory), atomically (a new link renamed over the
    old one); returns what it pointed to before (None: there was no link)."""
    previous = os.readlink(link) if link.is_symlink() else None
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)
    return previous
