"""`inspectd check-config`'s checks that need the filesystem: what `run` would otherwise find out only at start, or
never say at all.

- the model directory and its manifest (hash included);
- the camera's source where it is a path: a folder camera's folder exists and is a directory, a video is a file;
- every path the daemon writes: `rejects.dir`, `feedback.spool_dir`, the directory of `control.socket`. Each must
  be a writable directory, or creatable in a writable one. An existing directory is tested by creating and
  removing a file in it, so a read-only mount (systemd's `ProtectSystem=strict` makes everything but the unit's
  `StateDirectory=`/`RuntimeDirectory=` read-only; `ExecStartPre=` runs this check inside the same sandbox) is
  found too;
- `control.socket` must not name an existing file that is not a socket (the daemon would refuse to replace it);
- `feedback.curve`'s key files can be read.

Every problem is reported, not only the first: one ConfigError listing them all.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from inspectd.core.errors import ConfigError, ModelError
from inspectd.core.manifest import load_manifest


def check_paths(cfg) -> None:
    problems: list[str] = []
    try:
        load_manifest(cfg.model.path)
    except ModelError as exc:
        problems.append(f"model.path: {exc}")
    problems += _camera(cfg.camera)
    for what, path in written_dirs(cfg):
        why = writable_dir(path)
        if why is not None:
            problems.append(f"{what}: {path} {why}")
    if getattr(cfg, "control", None) is not None:
        why = _socket_path(Path(cfg.control.socket))
        if why is not None:
            problems.append(f"control.socket: {cfg.control.socket} {why}")
    problems += _curve(getattr(cfg, "feedback", None))
    if problems:
        msg = "the configuration cannot run on this machine:\n  " + "\n  ".join(problems)
        raise ConfigError(msg)


def written_dirs(cfg) -> list[tuple[str, Path]]:
    """(config key, directory) of everything the daemon writes."""
    out: list[tuple[str, Path]] = []
    if getattr(cfg, "rejects", None) is not None:
        out.append(("rejects.dir", Path(cfg.rejects.dir)))
    if getattr(cfg, "feedback", None) is not None:
        out.append(("feedback.spool_dir", Path(cfg.feedback.spool_dir)))
    if getattr(cfg, "control", None) is not None:
        out.append(("control.socket (its directory)", Path(cfg.control.socket).parent))
    return out


def writable_dir(path: Path) -> str | None:
    """None when `path` is a directory the daemon can write (or can create); else why not."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            return "exists and is not a directory"
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".inspectd-check-"):
                pass
        except OSError as exc:
            return f"is not writable ({exc.strerror or exc})"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable (read-only file system or permissions)"
    return None


def _socket_path(path: Path) -> str | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be checked ({exc.strerror or exc})"
    if stat.S_ISSOCK(st.st_mode):
        return None  # a stale socket is replaced, a live one refused at start
    return "exists and is not a socket (the daemon never deletes such a file: choose another path)"


def _camera(camera) -> list[str]:
    kind, path = getattr(camera, "type", ""), getattr(camera, "path", None)
    if path is None:
        return []
    path = Path(path)
    if kind == "folder" and not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        return [f"camera.path: folder {path} {what} (expected a directory of images)"]
    if kind == "video" and not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        return [f"camera.path: video {path} {what}"]
    return []


def _curve(feedback) -> list[str]:
    curve = getattr(feedback, "curve", None)
    if curve is None:
        return []
    problems = []
    for key, path in (("server_public_key", curve.server_public_key), ("client_secret_key", curve.client_secret_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(f"feedback.curve.{key}: {path} cannot be read ({exc.strerror or exc})")
    return problems
