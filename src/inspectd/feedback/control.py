"""The running daemon's local control socket, and `inspectd mark`, its client.

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

import argparse
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from pydantic import Field, field_validator

from inspectd.core.schema import ConfigPath, StrictModel

log = structlog.get_logger("inspectd.control")

MAX_REQUEST = 64 * 1024
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class ControlConfig(StrictModel):
    """The local control socket that `inspectd mark` talks to."""

    socket: ConfigPath = Field(description="UNIX socket path of the running daemon (e.g. /run/inspectd/control.sock)")

    @field_validator("socket")
    @classmethod
    def _short(cls, value):
        if len(os.fsencode(str(value))) > 100:
            msg = "a UNIX socket path must be at most 100 bytes long; choose a shorter path"
            raise ValueError(msg)
        return value


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
        try:
            self.path.unlink()
        except OSError:
            pass

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


# --- `inspectd mark` ------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mark",
        help="mark a rejected item good (a false reject, sent for training) or bad (a confirmed defect)",
        description="Talks to the running daemon's control socket (control.socket in the config). SEQ is the "
        "verdict's seq from the daemon's log (or a reject id). The newest stored reject with that seq is marked; "
        "marking it again the same way changes nothing.",
    )
    p.add_argument("seq", metavar="SEQ", help="the reject's seq (as in the verdict log), or its reject id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--good", dest="mark", action="store_const", const="good", help="a false reject: it was good")
    which.add_argument("--bad", dest="mark", action="store_const", const="bad", help="a confirmed defect")
    p.add_argument("--config", default="config.yaml", help="the daemon's YAML config (default: ./config.yaml)")
    p.set_defaults(func=cmd_mark)

    r = sub.add_parser(
        "reload",
        help="reload the running daemon's model from model.path (validated first; the old one stays on failure)",
        description="Asks the running daemon, over its control socket, to load the model directory at model.path, "
        "check it (manifest, sha256, shapes, warm-up) and swap it in between frames. Same as `systemctl reload "
        "inspectd` / SIGHUP, but waits for the answer. Exit 0 reloaded (or unchanged), 2 refused or no daemon.",
    )
    r.add_argument("--config", default="config.yaml", help="the daemon's YAML config (default: ./config.yaml)")
    r.set_defaults(func=cmd_reload)


def _ask_daemon(args: argparse.Namespace, command: str, payload: dict, no_control: str, timeout: float) -> dict | None:
    """Load the config, send one request to the daemon's control socket; the answer, or None after printing why."""
    from inspectd.core.errors import ConfigError
    from inspectd.daemon.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        return None
    control = getattr(cfg, "control", None)
    if control is None:
        print(f"inspectd {command}: {args.config} has no `control:` section{no_control}", file=sys.stderr)
        return None
    try:
        answer = request(control.socket, payload, timeout=timeout)
    except ControlError as exc:
        print(f"inspectd {command}: {exc}", file=sys.stderr)
        return None
    if not answer.get("ok"):
        print(f"inspectd {command}: {answer.get('error', answer)}", file=sys.stderr)
        return None
    return answer


def cmd_mark(args: argparse.Namespace) -> int:
    payload: dict = {"op": "mark", "mark": args.mark}
    if args.seq.isdigit():
        payload["seq"] = int(args.seq)
    else:
        payload["reject_id"] = args.seq
    no_control = ", so the daemon has no control socket (add control.socket, restart the daemon)"
    answer = _ask_daemon(args, "mark", payload, no_control, timeout=15.0)
    if answer is None:
        return EXIT_USAGE
    state = "was already marked" if answer.get("already") else "marked"
    print(
        f"seq {answer['seq']} (PLC seq {answer['plc_seq']}, item {answer['item_id']}) {state} {answer['mark']}: "
        f"record {answer['record_id']}; {answer['spool_depth']} record(s) waiting for the collector"
    )
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    no_control = (
        "; send SIGHUP instead (`systemctl reload inspectd`) and read the `model_reloaded` / "
        "`model_reload_failed` log event"
    )
    answer = _ask_daemon(args, "reload", {"op": "reload"}, no_control, timeout=300.0)
    if answer is None:
        return EXIT_USAGE
    if answer.get("changed"):
        print(
            f"model reloaded: {answer.get('name')} sha256 {answer.get('sha256')} (was {answer.get('previous_sha256')})"
        )
    else:
        print(f"model unchanged: sha256 {answer.get('sha256')}")
    return EXIT_OK
