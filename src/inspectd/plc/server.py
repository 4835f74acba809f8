"""Server mode: inspectd is a Modbus TCP server and the PLC polls it (docs/plc.md).

Threading: the pymodbus server runs on its own asyncio event loop in the thread `plc-server`. The pipeline's
threads call emit() / on_state() / heartbeat(), which only update the PlcDatastore's tables under its lock
(microseconds; never the network). PLC requests (a rising trigger, a false-reject seq) are served on the event loop
after the write has been answered; the false-reject hand-over, which may touch the disk, runs in its own thread.

Connections: at most `max_clients`. One more closes a stranger's connection (a peer outside `allow_writes_from`),
the one whose last valid request is oldest; an allow-listed newcomer (a rebooted PLC leaves a dead connection
behind) may take the slot of the allow-listed connection idle longest; a stranger never pushes out an allow-listed
peer and is turned away instead. Only a whole, decoded request counts as activity: a connection without one for
`idle_timeout_s` is closed, however many stray bytes it sends. A header that can never frame (protocol id not 0,
a length outside 2..254) closes that connection at once instead of wedging it. Writes (FC 5, 6, 15, 16, 22, 23)
from outside `allow_writes_from` get exception 01; FC 23 is all or nothing (its read range is checked before its
write is applied); unknown function codes get exception 01, illegal addresses exception 02; none of it stops the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import struct
import threading
import time

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from inspectd.core.errors import PlcError
from inspectd.core.netaddr import normalise_ip
from inspectd.core.types import Verdict
from inspectd.plc.book import STOPPING, ResultBook
from inspectd.plc.config import PlcConfig, ServerConfig
from inspectd.plc.datastore import PlcDatastore
from inspectd.plc.requests import RequestWorker

log = structlog.get_logger("inspectd.plc")


class _Connection(ServerRequestHandler):
    """pymodbus' per-connection handler, plus the peer, whether it is allow-listed, and its last valid request."""

    def __init__(self, owner: _Server) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)
        self.last_request = time.monotonic()  # a whole, decoded request; stray bytes do not count
        self.peer = "?"
        self.trusted = False  # in plc.server.allow_writes_from: may write, never evicted for a stranger
        self.dropped = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.trusted = isinstance(peer, tuple) and self.server.is_writer(peer[0])
        self.server.clients_changed(self, connected=True)
        self.server.admit(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # pymodbus takes the whole frames; what it cannot frame stays in recv_buffer
        why = _framing_garbage(self.recv_buffer)
        if why and not self.dropped:
            self.server.garbage_dropped += 1
            self.drop(f"framing garbage: {why}")

    async def handle_request(self):
        """Only a decoded request counts as activity. A write from a peer outside plc.server.allow_writes_from gets
        exception 01; FC 23 whose read part is out of range gets exception 02 before its write is applied."""
        pdu = self.last_pdu
        if pdu is None:
            return
        self.last_request = time.monotonic()
        fc = pdu.function_code
        if not self.trusted and fc in _WRITE_FCS:
            self.server.writes_refused += 1
            n = self.server.writes_refused
            if n <= 3 or n % 1000 == 0:
                log.warning(
                    "plc_write_refused",
                    peer=self.peer,
                    function=fc,
                    refused=n,
                    reason="peer not in plc.server.allow_writes_from",
                )
            self._answer(pdu, ExcCodes.ILLEGAL_FUNCTION)
            return
        if fc == 23:  # read/write multiple registers: all or nothing
            bad = self.server.context.check_read(3, getattr(pdu, "read_address", -1), getattr(pdu, "read_count", 0))
            if bad is not None:
                self._answer(pdu, bad)
                return
        await super().handle_request()

    def _answer(self, pdu, code: ExcCodes) -> None:
        response = ExceptionResponse(pdu.function_code, code)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, self.last_addr)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        self.server.clients_changed(self, connected=False)

    def drop(self, why: str) -> None:
        if self.dropped:
            return
        self.dropped = True
        log.warning("plc_connection_closed", peer=self.peer, reason=why, trusted=self.trusted)
        self.close()
        self.server.clients_changed(self, connected=False)


def _framing_garbage(buf: bytes) -> str | None:
    """Why the bytes pymodbus could not frame can never become a request (None while they still may): a Modbus TCP
    header has protocol id 0 and a length of 2..254 (unit id + a PDU of at most 253 bytes)."""
    if len(buf) < 6:
        return None
    pid, length = struct.unpack(">HH", buf[2:6])
    if pid != 0:
        return f"protocol id {pid} (expected 0)"
    if not 2 <= length <= 254:
        return f"length {length} (expected 2..254)"
    return None


class _Server(ModbusTcpServer):
    def __init__(self, store: PlcDatastore, address: tuple[str, int], cfg: ServerConfig) -> None:
        super().__init__(store, address=address)
        self.max_clients = cfg.max_clients
        self.idle_timeout_s = cfg.idle_timeout_s
        self.link_up = False
        self.writers = cfg.writers()
        self.writes_refused = 0
        self.garbage_dropped = 0
        self.strangers_refused = 0

    def is_writer(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(normalise_ip(host))
        except ValueError:
            return False
        return any(ip in net for net in self.writers if net.version == ip.version)

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)

    def admit(self, newcomer: _Connection) -> None:
        """At most max_clients connections. When one more arrives: close the stranger (a peer outside the allow-list)
        whose last request is oldest; with no stranger to close, an allow-listed newcomer (a rebooted PLC) takes
        the slot of the allow-listed connection idle longest, and a stranger is not let in. A stranger can never
        push the PLC out."""
        others = [c for c in self.active_connections.values() if c is not newcomer and not getattr(c, "dropped", 0)]
        if len(others) < self.max_clients:
            return
        strangers = [c for c in others if isinstance(c, _Connection) and not c.trusted]
        if strangers:
            victim = min(strangers, key=lambda c: c.last_request)
            victim.drop(f"max_clients ({self.max_clients}) reached; closing the stranger idle longest")
        elif newcomer.trusted:
            oldest = min(others, key=lambda c: getattr(c, "last_request", 0.0))
            if isinstance(oldest, _Connection):
                oldest.drop(f"max_clients ({self.max_clients}) reached; closing the allow-listed peer idle longest")
            else:
                oldest.close()
        else:
            self.strangers_refused += 1
            if self.strangers_refused <= 3 or self.strangers_refused % 1000 == 0:
                log.warning("plc_stranger_refused", peer=newcomer.peer, refused=self.strangers_refused)
            newcomer.dropped = True
            newcomer.close()

    def clients_changed(self, conn: _Connection, *, connected: bool) -> None:
        n = sum(1 for c in self.active_connections.values() if not getattr(c, "dropped", False))
        log.debug("plc_client", peer=conn.peer, connected=connected, clients=n)
        if (n > 0) != self.link_up:
            self.link_up = n > 0
            log.info("plc_link", state="up" if self.link_up else "down", mode="server", clients=n, peer=conn.peer)

    async def reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout_s / 4))
            now = time.monotonic()
            for conn in list(self.active_connections.values()):
                if isinstance(conn, _Connection) and now - conn.last_request > self.idle_timeout_s:
                    conn.drop(f"no valid request for {self.idle_timeout_s:g} s (idle_timeout_s)")


class ModbusServerSink:
    """The Sink for `plc.mode: server`. start() binds the port (raises PlcError); close() is idempotent."""

    name = "plc"

    def __init__(self, cfg: PlcConfig) -> None:
        self.cfg = cfg.server
        self.book = ResultBook(cfg.heartbeat_interval_s)
        self.store = PlcDatastore(cfg.server, self.book, self._on_request)
        self.requests = RequestWorker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._start_error: BaseException | None = None
        self._closed = False
        self._close_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.cfg.host, self.cfg.port

    @property
    def link_state(self) -> str:
        return "up" if self._server is not None and self._server.link_up else "down"

    @property
    def clients(self) -> int:
        """PLC connections open now."""
        server = self._server
        return len(server.active_connections) if server is not None else 0

    def start(self, timeout_s: float = 10.0) -> None:
        _check_bind(self.cfg.host, self.cfg.port)
        self.requests.start()
        self._thread = threading.Thread(target=self._run, name="plc-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            msg = f"Modbus server on {self.cfg.host}:{self.cfg.port} did not start within {timeout_s:g} s"
            raise PlcError(msg)
        if self._start_error is not None:
            msg = f"cannot serve Modbus TCP on {self.cfg.host}:{self.cfg.port}: {self._start_error}"
            raise PlcError(msg) from self._start_error
        log.info(
            "plc_server_listening",
            host=self.cfg.host,
            port=self.cfg.port,
            max_clients=self.cfg.max_clients,
            allow_writes_from=list(self.cfg.allow_writes_from),
        )
        if any(net.prefixlen == 0 for net in self.cfg.writers()):
            log.error("plc_writes_open_to_all", detail="plc.server.allow_writes_from admits every address")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception as exc:  # a crash of the server thread: the PLC sees the port close and fails safe
            if not self._started.is_set():
                self._start_error = exc
            else:
                log.exception("plc_server_crashed")
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = _Server(self.store, self.address, self.cfg)
        await server.serve_forever(background=True)
        self._server = server
        reaper = asyncio.create_task(server.reap_idle())
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            reaper.cancel()
            await server.shutdown()

    def close(self) -> None:
        """ready = 0 and state = 4, answer polls for linger_s more, then stop the server and its threads."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.store.update(lambda b: b.set_state(STOPPING))
        if self._loop is not None and self._thread is not None and self._thread.is_alive() and self._stop is not None:
            time.sleep(self.cfg.linger_s)
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5.0)
            if self._thread.is_alive():
                log.error("plc_server_stop_timeout", detail="the Modbus server thread did not stop within 5 s")
        self.requests.close()
        log.info("plc_server_stopped", host=self.cfg.host, port=self.cfg.port)

    # --- the Sink protocol and its hooks (pipeline threads) -----------------------------------------------

    def emit(self, verdict: Verdict) -> None:
        self.store.update(lambda b: b.add(verdict))

    def on_state(self, state: int) -> None:
        self.store.update(lambda b: b.set_state(state))

    def heartbeat(self) -> None:
        self.store.beat(time.monotonic())

    def attach(self, controls) -> None:
        self.requests.controls = controls

    # --- PLC requests (event loop thread) -----------------------------------------------------------------

    def _on_request(self, kind: str, value: int) -> None:
        """Called by the datastore inside a write; served once the write has been answered."""
        loop = self._loop
        if loop is None:
            return
        if kind == "trigger":
            loop.call_soon(self.requests.trigger, value, self.store.acknowledge_trigger)
        elif kind == "false_reject":
            loop.call_soon(self._false_reject, value)

    def _false_reject(self, seq: int) -> None:
        """Queued: the mark is made in another thread; the register is cleared with the answer, once it is durable."""
        self.requests.false_reject(seq, lambda outcome: self.store.answer_false_reject(seq, outcome))


_WRITE_FCS = frozenset({5, 6, 15, 16, 22, 23})  # write coil(s), write register(s), mask write, read/write


def _check_bind(host: str, port: int) -> None:
    """Fail early with the operating system's own reason (pymodbus only says 'could not start listen')."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        msg = f"plc.server.host {host!r} does not resolve: {exc}"
        raise PlcError(msg) from exc
    family, stype, proto, _, sockaddr = infos[0]
    with socket.socket(family, stype, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as exc:
            hint = {
                errno.EADDRINUSE: "another process listens on this port",
                errno.EACCES: "ports below 1024 need CAP_NET_BIND_SERVICE (use e.g. 5020, or grant the capability)",
                errno.EADDRNOTAVAIL: "this machine has no such address; use the address of the PLC-facing network card",
            }.get(exc.errno or 0, "")
            msg = f"cannot listen on {host}:{port}: {exc.strerror}" + (f" ({hint})" if hint else "")
            raise PlcError(msg) from exc
