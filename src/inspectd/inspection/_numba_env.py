"""Choose a writable Numba cache directory before Numba is imported.

Numba's ``cache=True`` writes compiled kernels beside the sources (``daemon/__pycache__``) and fails when no cache
directory is writable, e.g. a daemon installed read-only under /opt or /usr running as an unprivileged systemd user.
Every module in ``daemon/`` that imports numba calls :func:`ensure_numba_cache_dir` first.

Rules:

1. ``NUMBA_CACHE_DIR`` set: create it (``mkdir -p``) and check it is writable. If it cannot be, fall back as in 2
   and remember a warning (:data:`WARNING`) for the daemon to log.
2. Not set (or fallen back): if ``daemon/__pycache__`` is writable, leave Numba's default (return None); otherwise
   use ``$XDG_CACHE_HOME/inspectd/numba`` (default ``~/.cache/inspectd/numba``) and, if that is not writable either,
   a per-user directory under ``tempfile.gettempdir()``.

The choice is published in :data:`CACHE_DIR` (None = Numba's default beside the sources) and :data:`WARNING`. This
module never imports numba; if numba is already imported when the environment changes, its config is reloaded.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

__all__ = ["CACHE_DIR", "WARNING", "ensure_numba_cache_dir"]

ENV = "NUMBA_CACHE_DIR"

CACHE_DIR: str | None = None
"""The cache directory chosen by the last call (None = Numba's default beside the sources)."""

WARNING: str | None = None
"""Why the configured NUMBA_CACHE_DIR was not used, if it was not; None otherwise."""


def _writable_dir(path: Path) -> str | None:
    """Create `path` (mkdir -p) and prove it writable by creating a file in it. None if fine, else the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # os.access() lies for root and on read-only mounts in some setups; a real file tells the truth
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _in_tree_writable() -> bool:
    """Whether Numba's default cache location for daemon/ (its __pycache__) can be written."""
    return _writable_dir(Path(__file__).resolve().parent / "__pycache__") is None


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inspectd" / "numba"


def _temp_cache_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"inspectd-numba-{uid}"


def _fallback() -> str | None:
    """Rule 2: None when the in-tree __pycache__ works, else the first writable user or temp directory."""
    if _in_tree_writable():
        return None
    for candidate in (_user_cache_dir(), _temp_cache_dir()):
        if _writable_dir(candidate) is None:
            return str(candidate)
    # nothing writable at all: hand Numba the temp dir anyway, its own error will then name the path
    return str(_temp_cache_dir())


def ensure_numba_cache_dir() -> str | None:
    """Make sure Numba has a writable cache directory; call before ``import numba``.

    Returns the directory in use (None = Numba's default beside the sources) and stores it in :data:`CACHE_DIR`;
    a warning about an unusable NUMBA_CACHE_DIR is stored in :data:`WARNING`. Safe to call repeatedly.
    """
    global CACHE_DIR, WARNING
    before = os.environ.get(ENV)
    warning = None
    if before:
        problem = _writable_dir(Path(before))
        if problem is None:
            chosen: str | None = before
        else:
            chosen = _fallback()
            where = chosen if chosen is not None else "numba's default beside the sources"
            warning = f"NUMBA_CACHE_DIR={before!r} is not a writable directory ({problem}); using {where} instead"
    else:
        chosen = _fallback()

    if chosen is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = chosen
    if os.environ.get(ENV) != before and "numba" in sys.modules:
        from numba.core import config  # numba is already imported: this imports nothing new

        config.reload_config()

    CACHE_DIR, WARNING = chosen, warning
    return chosen
