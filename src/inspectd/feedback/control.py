"""The running daemon's local control socket (server) and `request()`, the one client call (`inspectd mark`,
`inspectd reload` in inspectd/daemon/cli.py use it).

A UNIX stream socket at `control.socket` (file permissions decide who may mark: 0660, the daemon's group). One
request per connection, one JSON object per line each way:

    -> {"op": "mark", "seq": 1234, "mark": "good"}        (or "reject_id": "<id>" instead of "seq")
    <- {"ok": true, "record_id": "...", "already": false, "seq": 1234, ...}
    <- {"ok": false, "error": "unknown or expired seq 1234: ...", "kind": "unknown"}
    -> {"op": "status"}
    <- {"ok": true, "rejects": {...}, "spool": {...}, "sender": {...}}

`inspectd mark SEQ --good|--bad --config FILE` exits 0 when the mark is made (or was already made), 2 with a
clear message for an unknown or expired seq, a conflicting earlier mark, or when no daemon is listening.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("inspectd.control")

MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """No daemon answered, or it answered something unreadable."""


class ControlServer:
    """Serves requests on a UNIX socket in its own thread; `handler(request) -> response` does the work."""

    def __init__(self, path: str | Path, handler: Callable[[dict], dict]) -> None:
        self.path = Path(path)
        self.handler = handler
        self._stop = threading.Event()
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except OSError:  # nobody listening: a leftover of a killed daemon
                self.path.unlink()
            else:
                msg = f"control socket {self.path} is in use by another running daemon"
                raise OSError(msg)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o660)  # the service user and its group may mark
        sock.listen(16)
        sock.settimeout(0.25)
        return sock

    def start(self) -> None:
        self._thread.start()
        log.info("control_listening", socket=str(self.path))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, BlockingIOError):
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.error("control_accept_failed", error=str(exc))
                    self._stop.wait(0.5)
                continue
            with conn:
                conn.settimeout(5.0)
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        try:
            raw = _read_line(conn)
        except (OSError, ValueError) as exc:
            log.warning("control_bad_request", error=str(exc))
            _send(conn, {"ok": False, "error": f"bad request: {exc}", "kind": "invalid"})
            return
        if not raw.strip():  # a probe (another daemon checking whether this socket is alive): nothing to answer
            return
        try:
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            _send(conn, {"ok": False, "error": f"bad request: {exc}", "kind": "invalid"})
            return
        try:
            response = self.handler(request)
        except Exception as exc:  # a handler bug must not kill the control thread
            log.exception("control_handler_failed", op=request.get("op"))
            response = {"ok": False, "error": f"internal error: {exc!r}", "kind": "failed"}
        _send(conn, response)


def _read_line(conn: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            msg = f"request longer than {MAX_REQUEST} bytes"
            raise ValueError(msg)
    return bytes(buf).split(b"\n", 1)[0]


def _send(conn: socket.socket, response: dict) -> None:
    try:
        conn.sendall(json.dumps(response).encode() + b"\n")
    except OSError as exc:
        log.warning("control_reply_failed", error=str(exc))


def request(path: str | Path, payload: dict, *, timeout: float = 15.0) -> dict:
    """Send one request to the daemon's control socket and return its answer; ControlError when none answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            msg = f"no daemon is listening on the control socket {path} (is `inspectd run` running with this config?)"
            raise ControlError(msg) from exc
        except OSError as exc:
            msg = f"cannot connect to the control socket {path}: {exc}"
            raise ControlError(msg) from exc
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            raw = _read_line(sock)
        except (OSError, ValueError) as exc:
            msg = f"the daemon on {path} did not answer: {exc}"
            raise ControlError(msg) from exc
    finally:
        sock.close()
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        msg = f"the daemon on {path} answered something that is not JSON: {raw[:200]!r}"
        raise ControlError(msg) from exc
    if not isinstance(answer, dict):
        msg = f"the daemon on {path} answered {answer!r}, expected a JSON object"
        raise ControlError(msg)
    return answer
