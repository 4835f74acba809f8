"""systemd integration: sd_notify over the NOTIFY_SOCKET datagram socket, and signal handling.

sd_notify is a dozen lines; no dependency needed. WATCHDOG=1 is sent from the frame loop (not from a timer),
so a stuck pipeline trips systemd's watchdog and gets restarted.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable


class Notifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 1e6 if enabled else None
        self._last_ping = 0.0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        if self._sock is None:
            return False
        try:
            with self._lock:
                self._sock.sendto("\n".join(fields).encode(), self._addr)
            return True
        except OSError:
            return False  # systemd gone or socket full: never let service plumbing stop inspection

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Ping the watchdog, at most every quarter interval (call it as often as you like)."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s / 4:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def install_signal_handlers(on_stop: Callable[[str], None], on_reload: Callable[[str], None] | None = None) -> None:
    """SIGTERM/SIGINT ask for a graceful stop; a second SIGINT is not special (the stop is bounded anyway).
    SIGHUP: on_reload (the daemon reloads its model) where given, else a stop as well."""

    def handler(signum, _frame) -> None:
        on_stop(signal.Signals(signum).name)

    def reload_handler(signum, _frame) -> None:
        if on_reload is not None:
            on_reload(signal.Signals(signum).name)  # must return at once: it only starts a thread

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reload_handler if on_reload is not None else handler)
