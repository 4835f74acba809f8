"""A line PC fetching the model its line is assigned (`inspectd registry fetch --config CONFIG`).

The daemon's config names the line (`line:`), where the model lives (`model.path`) and the control socket. The
registry keeps `model.path` as a symbolic link into its own folder, one directory per model digest:

    /var/lib/inspectd/models/current -> 3f9a...e1/      (model.path: /var/lib/inspectd/models/current)
    /var/lib/inspectd/models/3f9a...e1/                 (model.onnx, manifest.json, as registered)

1. The assigned model's files are written to models/<digest>/ (every file checked against its sha256, the whole
   against the digest; all or nothing), unless that directory is already there and verifies.
2. The link is switched to it atomically (a new link renamed over the old one).
3. The daemon is asked to reload over its control socket; its reload path verifies the directory again (manifest,
   model.onnx sha256, graph shapes, a warm-up inference). If it refuses, the link is switched back, so a restart
   keeps running the model that works, and the command exits 2. With no daemon listening the model is loaded at
   the next start.
4. After a switch, model directories other than the current and the previous one are removed (the previous one
   stays for a quick way back: `registry assign` it again and fetch).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inspectd.core.errors import ConfigError
from inspectd.daemon.config import load_config
from inspectd.feedback.control import ControlError, request
from inspectd.registry import modeldir
from inspectd.registry.errors import RegistryError
from inspectd.registry.store import ModelRow

DIGEST_DIR = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FetchResult:
    ok: bool
    line: str
    model: str
    digest: str
    changed: bool
    reloaded: bool


def _load_config(path: Path):
    try:
        return load_config(path)
    except ConfigError as exc:
        raise RegistryError(str(exc)) from exc


def _intact(path: Path, digest: str) -> bool:
    try:
        return modeldir.directory_digest(f for f, _ in modeldir.read_files(path)) == digest
    except (OSError, RegistryError):
        return False


def install(reg, line: str, link: Path, log: Callable[[str], None]) -> tuple[ModelRow, str | None, bool]:
    """Steps 1-2: (the model row, the link's previous target, whether the link changed)."""
    if link.exists() and not link.is_symlink():
        msg = (
            f"model.path {link} is a directory, not a link: `registry fetch` keeps model.path as a link to "
            f"{link.parent}/<digest>/; move it away once (e.g. mv {link} {link}.old) and fetch again"
        )
        raise RegistryError(msg)
    row, files = reg.files(reg.assigned(line).name)
    store = link.parent
    store.mkdir(parents=True, exist_ok=True)
    target = store / row.digest
    if link.is_symlink() and Path(link.readlink()).name == row.digest and _intact(target, row.digest):
        log(f"line {line}: {row.name} (digest {row.digest[:12]}…) is already installed at {link}")
        return row, None, False
    if target.exists() and not _intact(target, row.digest):
        aside = store / f".{row.digest}.damaged"
        shutil.rmtree(aside, ignore_errors=True)
        target.rename(aside)
        log(f"  {target} did not match its digest: moved to {aside.name} and written again")
    if not target.exists():
        modeldir.write_tree(target, files, row.digest, row.name)
    previous = modeldir.point_link(link, row.digest)
    log(f"line {line}: installed {row.name} (digest {row.digest[:12]}…) at {target}; {link} -> {row.digest[:12]}…")
    return row, previous, True


def _prune(store: Path, keep: set[str]) -> None:
    for p in store.iterdir():
        if DIGEST_DIR.match(p.name) and p.is_dir() and not p.is_symlink() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def fetch(reg, config: Path, *, reload: bool = True, log: Callable[[str], None] = print) -> FetchResult:
    cfg = _load_config(config)
    link = Path(cfg.model.path)
    row, previous, changed = install(reg, cfg.line, link, log)
    reloaded = False
    if changed and reload:
        if cfg.control is None:
            log("  the config has no control socket: reload the daemon (`systemctl reload inspectd`) to use it")
        else:
            try:
                answer = request(cfg.control.socket, {"op": "reload"}, timeout=300.0)
            except ControlError as exc:
                log(f"  {exc}: the daemon loads it at its next start")
            else:
                if not answer.get("ok"):
                    if previous is not None:
                        modeldir.point_link(link, previous)
                    back = f"{link} points back to {Path(previous).name[:12]}…" if previous else "no previous model"
                    msg = f"the daemon refused {row.name}: {answer.get('error', answer)}; {back}"
                    raise RegistryError(msg)
                reloaded = True
                log(
                    f"  daemon reloaded: now running {answer.get('name')} "
                    f"(model.onnx {str(answer.get('sha256'))[:12]}…)"
                )
    if changed:
        _prune(link.parent, {row.digest} | ({Path(previous).name} if previous else set()))
    return FetchResult(True, cfg.line, row.name, row.digest, changed, reloaded)
