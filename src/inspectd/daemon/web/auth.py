"""The operator's secret for marking on the recheck station: a PIN (or token) from a file, sessions, lockout.

- The secret lives in `http.station.secret_file` (not in the config, which is world-readable on many PCs). A
  missing file is created with a random PIN (6 digits) or token (32 characters), mode 0600, and its path logged.
- Unlocking (`login`) compares in constant time and answers a random session id, kept in memory only (a restart
  locks every station), valid until `session_idle_s` passes without use. Scripts may send the secret itself as
  `Authorization: Bearer <secret>` instead.
- An address that gives `max_failures` wrong secrets within `lockout_s` is refused (even the right secret) until
  `lockout_s` after its first failure in that window: a 6-digit PIN then takes months to guess.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

import structlog

from inspectd.core.errors import ConfigError
from inspectd.daemon.web.config import StationConfig

log = structlog.get_logger("inspectd.station")

_MAX_SESSIONS = 64
_MAX_TRACKED = 1024  # addresses with recent failures


class LockedOutError(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong PINs from this address: try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


def load_secret(cfg: StationConfig) -> str:
    """The secret from secret_file, created when missing; ConfigError (exit 2) when unusable."""
    path = Path(cfg.secret_file)
    if not path.exists():
        secret = f"{secrets.randbelow(10**6):06d}" if cfg.secret_kind == "pin" else secrets.token_urlsafe(24)[:32]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
        except OSError as exc:
            msg = f"http.station.secret_file: cannot create {path}: {exc.strerror or exc}"
            raise ConfigError(msg) from exc
        log.warning("station_secret_created", path=str(path), kind=cfg.secret_kind, detail="give it to the operators")
        return secret
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"http.station.secret_file: cannot read {path}: {exc}"
        raise ConfigError(msg) from exc
    if len(secret) < 4 or len(secret) > 256 or any(ch.isspace() for ch in secret):
        msg = f"http.station.secret_file {path}: expected one PIN or token of 4..256 characters without spaces"
        raise ConfigError(msg)
    if path.stat().st_mode & 0o077:
        log.warning("station_secret_readable", path=str(path), detail="other users can read it: chmod 600")
    return secret


class OperatorAuth:
    def __init__(self, cfg: StationConfig, secret: str) -> None:
        self.cfg = cfg
        self._secret = secret.encode()
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, float] = OrderedDict()  # session id -> last use (monotonic)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # address -> failure times

    def _matches(self, given: str) -> bool:
        return hmac.compare_digest(self._secret, given.encode("utf-8", "replace"))

    def check(self, address: str, given: str) -> bool:
        """Whether `given` is the secret; LockedOutError while this address is locked out (even for the right one)."""
        now = time.monotonic()
        with self._lock:
            fails = self._failures.get(address)
            if fails is not None:
                while fails and now - fails[0] > self.cfg.lockout_s:
                    fails.popleft()
                if len(fails) >= self.cfg.max_failures:
                    raise LockedOutError(self.cfg.lockout_s - (now - fails[0]))
            if self._matches(given):
                self._failures.pop(address, None)
                return True
            fails = self._failures.setdefault(address, deque())
            fails.append(now)
            self._failures.move_to_end(address)
            while len(self._failures) > _MAX_TRACKED:
                self._failures.popitem(last=False)
        log.warning("station_wrong_secret", client=address, failures=len(fails))
        return False

    def login(self, address: str, given: str) -> str | None:
        """A new session id for the right secret, None for a wrong one; LockedOutError while the address is locked."""
        if not self.check(address, given):
            return None
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = time.monotonic()
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
        log.info("station_unlocked", client=address)
        return session

    def logout(self, session: str | None) -> None:
        with self._lock:
            self._sessions.pop(session or "", None)

    def valid(self, session: str | None, *, touch: bool = False) -> bool:
        """Whether this session id is unlocked; `touch` restarts its idle time (a mark)."""
        if not session:
            return False
        now = time.monotonic()
        with self._lock:
            last = self._sessions.get(session)
            if last is None:
                return False
            if now - last > self.cfg.session_idle_s:
                del self._sessions[session]
                return False
            if touch:
                self._sessions[session] = now
                self._sessions.move_to_end(session)
            return True
