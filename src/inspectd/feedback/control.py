"""The running daemon's local control socket (server) and `request()`, the one client call (`inspectd mark`,
`inspectd reload` in inspectd/daemon/cli.py use it).

A UNIX stream socket at `control.socket` (file permissions decide who may mark: 0660, the daemon's group). One
request per connection, one JSON object per line each way:

    -> {"op": "mark", "seq": 1234, "mark": "good"}        (or "reject_id": "<id>" instead of "seq")
    <- {"ok": true, "record_id": "...", "already": false, "seq": 1234, ...}
    <- {"ok": false, "error": "unknown or expired seq 1234: ...", "kind": "unknown"}
    -> {"op": "status"}
    <- {"ok": true, "state": "running", "fps": 19.8, "frames": 1234, "queue": 0, "plc_link": "up",
        "rejects": {...}, "spool": {...}, "sender": {...}}

`inspectd mark SEQ --good|--bad --config FILE` exits 0 when the mark is made (or was already made), 2 with a
clear message for an unknown or expired seq, a conflicting earlier mark, or when no daemon is listening.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from inspectd.core import untrusted

log = structlog.get_logger("inspectd.control")

MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 16  # requests served at once
READ_DEADLINE_S = 5.0  # a request must arrive whole within this


class ControlError(Exception):
    """No daemon answered, or it answered something unreadable."""


class ControlServer:
    """Serves requests on a UNIX socket; `handler(request) -> response` does the work.

    Each connection is served in a thread of its own (at most MAX_CLIENTS at once; one more is answered "busy"),
    and a request must arrive whole within READ_DEADLINE_S: a client that sends a byte now and then, or nothing,
    holds up only itself. Whatever arrives (any bytes, JSON nested 5000 deep) gets an answer or a closed
    connection, never an exception in the accepting thread; and the accepting loop itself is restarted if it dies.
    """

    def __init__(self, path: str | Path, handler: Callable[[dict], dict]) -> None:
        self.path = Path(path)
        self.handler = handler
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self.served = self.refused = 0

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            st = self.path.lstat()
            if not stat.S_ISSOCK(st.st_mode):
                msg = (
                    f"control socket path {self.path} exists and is not a socket (a regular file, directory or link); "
                    "refusing to delete it: choose another control.socket or remove it"
                )
                raise OSError(msg)
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
        sock.listen(64)
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

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._accept_one()
            except Exception:  # never let the control socket die: log, breathe, go on accepting
                log.exception("control_loop_failed")
                self._stop.wait(0.1)

    def _accept_one(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (TimeoutError, BlockingIOError):
            return
        except OSError as exc:
            if not self._stop.is_set():
                log.error("control_accept_failed", error=str(exc))
                self._stop.wait(0.5)
            return
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            with conn:
                conn.settimeout(1.0)
                _send(conn, {"ok": False, "error": f"{MAX_CLIENTS} requests in progress; try again", "kind": "busy"})
            return
        threading.Thread(target=self._client, args=(conn,), name="control-client", daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._one(conn)
                self.served += 1
        except Exception:  # a bug in one request must not take anything else with it
            log.exception("control_request_failed")
        finally:
            self._slots.release()

    def _one(self, conn: socket.socket) -> None:
        try:
            raw = _read_line(conn, deadline=time.monotonic() + READ_DEADLINE_S)
        except (OSError, ValueError) as exc:
            log.warning("control_bad_request", error=str(exc))
            _send(conn, {"ok": False, "error": f"bad request: {exc}", "kind": "invalid"})
            return
        if not raw.strip():  # a probe (another daemon checking whether this socket is alive): nothing to answer
            return
        try:
            request = untrusted.loads(raw, max_bytes=MAX_REQUEST)
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            _send(conn, {"ok": False, "error": f"bad request: {exc}", "kind": "invalid"})
            return
        conn.settimeout(None)  # a reload takes as long as it takes; the reply below is bounded by the client
        try:
            response = self.handler(request)
        except Exception as exc:  # a handler bug must not kill the control thread
            log.exception("control_handler_failed", op=str(request.get("op"))[:40])
            response = {"ok": False, "error": f"internal error: {exc!r}", "kind": "failed"}
        conn.settimeout(5.0)
        _send(conn, response)


def _read_line(conn: socket.socket, *, deadline: float | None = None) -> bytes:
    """One line (without the newline); the whole of it must arrive before `deadline` (time.monotonic())."""
    buf = bytearray()
    while b"\n" not in buf:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                msg = f"the request did not arrive whole within {READ_DEADLINE_S:g} s"
                raise ValueError(msg)
            conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            if deadline is not None:
                continue
            raise
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
    except (OSError, ValueError) as exc:
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
        answer = untrusted.loads(raw, max_bytes=MAX_REQUEST)
    except ValueError as exc:
        msg = f"the daemon on {path} answered something that is not JSON: {raw[:200]!r}"
        raise ControlError(msg) from exc
    if not isinstance(answer, dict):
        msg = f"the daemon on {path} answered {answer!r}, expected a JSON object"
        raise ControlError(msg)
    return answer
