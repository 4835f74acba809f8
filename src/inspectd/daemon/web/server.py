"""uvicorn serving the daemon's HTTP application in one thread of the daemon process (docs/station.md says why
in-process). The socket is bound here, in the caller's thread, so a port in use fails the start with the
operating system's reason instead of a log line in a thread."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable

import structlog
import uvicorn

from inspectd.core.errors import InspectdError

log = structlog.get_logger("inspectd.http")


class HttpError(InspectdError):
    """The HTTP endpoint could not be set up (port in use, no such address)."""


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        msg = f"http.host {host!r} does not resolve: {exc}"
        raise HttpError(msg) from exc
    family, stype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, stype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        hint = {
            errno.EADDRINUSE: "another process listens on this port",
            errno.EACCES: "ports below 1024 need CAP_NET_BIND_SERVICE",
            errno.EADDRNOTAVAIL: "this machine has no such address",
        }.get(exc.errno or 0, "")
        msg = f"cannot listen on {host}:{port}: {exc.strerror}" + (f" ({hint})" if hint else "")
        raise HttpError(msg) from exc
    sock.set_inheritable(True)
    return sock


class HttpServer:
    def __init__(self, app, host: str, port: int, *, before_close: Callable[[], None] | None = None) -> None:
        self.host, self.port = host, port
        self._before_close = before_close
        self.sock = bind(host, port)
        logging.getLogger("uvicorn").setLevel(logging.WARNING)  # inspectd logs its own events; no access log
        config = uvicorn.Config(
            app,
            loop="asyncio",
            http="h11",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            msg = f"the HTTP endpoint on {self.host}:{self.port} did not start within {timeout_s:g} s"
            raise HttpError(msg)
        log.info("http_listening", url=f"http://{self.host}:{self.port}/")

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception:  # the endpoint must never take the daemon down
            log.exception("http_server_crashed")

    def close(self) -> None:
        if self._before_close is not None:
            self._before_close()
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.sock.close()
