"""Client mode: inspectd writes into the PLC's holding registers (for PLCs that will not poll a server).

Threading: one thread, `plc-client`, owns a pymodbus ModbusTcpClient and does all network I/O. The pipeline's
threads only record into memory under a lock: emit() snapshots the status block of the new result into a queue of
at most 8 (the ring's depth; older unsent results are dropped and counted: the newest block's ring still holds the
last 8); heartbeat() and on_state() mark the live fields dirty. A slow or dead PLC therefore never stalls
inspection: verdicts are still produced, counted and logged, and `plc_link` events say the link is down.

The thread, per pass: writes each queued result as one 32-register write (FC16) at `write_address`; rewrites the
block when the heartbeat, state or false-reject answer changed; writes 0 into a served trigger request, and into
the false-reject register once that mark is durable or refused (its answer is in block words 14-15); polls
the 3 request registers at `read_address` every `poll_interval_s`. Any failure (refused, timeout, an exception
answer) closes the connection; it is reopened with doubling backoff (`reconnect`).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import structlog
from pymodbus.client import ModbusTcpClient

from inspectd.core.types import Verdict
from inspectd.plc.book import STOPPING, ResultBook
from inspectd.plc.config import CLIENT_REQUEST_WORDS, RING_SLOTS, PlcConfig
from inspectd.plc.requests import RequestWorker

log = structlog.get_logger("inspectd.plc")


class LinkError(Exception):
    """The PLC refused or did not answer a request."""


class ModbusClientSink:
    """The Sink for `plc.mode: client`. start() returns at once (the link comes up in the background)."""

    name = "plc"

    def __init__(self, cfg: PlcConfig) -> None:
        self.cfg = cfg.client
        self.book = ResultBook(cfg.heartbeat_interval_s)
        self.requests = RequestWorker()
        self._lock = threading.Lock()
        self._pending: deque[list[int]] = deque()
        self._last_block = self.book.block()
        self._live_dirty = True
        self._dropped = 0
        self._ack_trigger_due = False
        self._trigger_outstanding = False
        self._false_reject_clearing: int | None = None  # handed over, not yet answered
        self._false_reject_clear_due: int | None = None  # answered: clear the PLC's register
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._link_up: bool | None = None

    @property
    def link_state(self) -> str:
        return "up" if self._link_up else "down"

    @property
    def clients(self) -> int:
        """1 while inspectd's connection to the PLC is up, else 0 (the same field as server mode's)."""
        return 1 if self._link_up else 0

    def start(self) -> None:
        self.requests.start()
        self._thread = threading.Thread(target=self._run, name="plc-client", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write ready = 0 and state = 4 (if the link is up), then stop the thread. Idempotent."""
        with self._lock:
            if self.book.set_state(STOPPING):
                self._live_dirty = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(4 * self.cfg.timeout_s + 2.0)
            if self._thread.is_alive():
                log.error("plc_client_stop_timeout", detail="the PLC link thread did not stop in time")
            self._thread = None
        self.requests.close()

    # --- the Sink protocol and its hooks (pipeline threads): memory only, never the network ---------------

    def emit(self, verdict: Verdict) -> None:
        with self._lock:
            self.book.add(verdict)
            if len(self._pending) >= RING_SLOTS:
                self._pending.popleft()
                self._dropped += 1
                dropped = self._dropped
            else:
                dropped = 0
            self._pending.append(self.book.block())
        self._wake.set()
        if dropped and (dropped <= 3 or dropped % 1000 == 0):
            log.warning("plc_results_unsent", dropped_total=dropped, reason="PLC link down or slower than the line")

    def on_state(self, state: int) -> None:
        with self._lock:
            if self.book.set_state(state):
                self._live_dirty = True
        self._wake.set()

    def heartbeat(self) -> None:
        with self._lock:
            changed = self.book.beat(time.monotonic())
            self._live_dirty |= changed
        if changed:
            self._wake.set()

    def attach(self, controls) -> None:
        self.requests.controls = controls

    def _trigger_taken(self) -> None:
        with self._lock:
            self._ack_trigger_due = True
        self._wake.set()

    # --- the link thread ----------------------------------------------------------------------------------

    def _set_link(self, up: bool, **why) -> None:
        if up != self._link_up:
            self._link_up = up
            c = self.cfg
            log.info("plc_link", state="up" if up else "down", mode="client", peer=f"{c.host}:{c.port}", **why)

    def _connect(self) -> ModbusTcpClient | None:
        assert self.cfg.host is not None  # PlcConfig requires a host in client mode
        client = ModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s, retries=0)
        try:
            if client.connect():
                return client
            error = "connection failed"
        except Exception as exc:  # resolver or socket trouble: the same as a refused connection
            error = repr(exc)
        client.close()
        self._set_link(False, error=error)
        return None

    def _run(self) -> None:
        rc = self.cfg.reconnect
        backoff = rc.initial_s
        client: ModbusTcpClient | None = None
        next_poll = 0.0
        while True:
            stopping = self._stopping.is_set()
            if client is None:
                client = None if stopping else self._connect()
                if client is None:
                    if stopping or self._stopping.wait(backoff):
                        break
                    backoff = min(2 * backoff, rc.max_s)
                    continue
                backoff = rc.initial_s
                with self._lock:
                    self._live_dirty = True  # a fresh connection: the PLC gets the whole status again
            self._wake.clear()
            try:
                self._exchange(client, poll=not stopping and time.monotonic() >= next_poll)
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.cfg.poll_interval_s
                self._set_link(True)
            except Exception as exc:  # LinkError, pymodbus' ModbusException, OSError: reconnect with backoff
                client.close()
                client = None
                self._set_link(False, error=str(exc) or repr(exc), retry_in_s=round(backoff, 2))
                if stopping or self._stopping.wait(backoff):
                    break
                backoff = min(2 * backoff, rc.max_s)
                continue
            if stopping:
                break
            self._wake.wait(max(0.0, next_poll - time.monotonic()))
        if client is not None:
            client.close()

    def _exchange(self, client: ModbusTcpClient, *, poll: bool) -> None:
        c = self.cfg
        while True:  # queued results, oldest first, one write each (bounded: at most RING_SLOTS queued)
            with self._lock:
                if not self._pending:
                    break
                head = self._pending[0]
                block = self.book.with_live_fields(head)
            self._write_block(client, block)
            with self._lock:
                if self._pending and self._pending[0] is head:
                    self._pending.popleft()
                self._last_block = head
        with self._lock:
            dirty, self._live_dirty = self._live_dirty, False
            block = self.book.with_live_fields(self._last_block)
        if dirty:
            try:
                self._write_block(client, block)
            except Exception:
                with self._lock:
                    self._live_dirty = True
                raise
        if c.read_address is None:
            return
        with self._lock:
            ack_due = self._ack_trigger_due
            clear_due = self._false_reject_clear_due
        if clear_due is not None:
            self._check(
                client.write_register(c.read_address + 2, 0, device_id=c.device_id), "clear the false-reject register"
            )
            with self._lock:
                if self._false_reject_clear_due == clear_due:
                    self._false_reject_clear_due = None
        if ack_due:
            self._check(client.write_register(c.read_address, 0, device_id=c.device_id), "clear the trigger request")
            with self._lock:
                self._ack_trigger_due = False
                self._trigger_outstanding = False
        if poll:
            self._poll(client)

    def _poll(self, client: ModbusTcpClient) -> None:
        c = self.cfg
        if c.read_address is None:  # nothing to read: the PLC sends no requests in this setup
            return
        resp = client.read_holding_registers(c.read_address, count=CLIENT_REQUEST_WORDS, device_id=c.device_id)
        self._check(resp, "read the request registers")
        trigger, item_id, false_reject = resp.registers[:CLIENT_REQUEST_WORDS]
        with self._lock:
            fire = bool(trigger) and not self._trigger_outstanding  # a held request is not repeated
            if fire:
                self._trigger_outstanding = True
        if fire:
            self.requests.trigger(item_id, self._trigger_taken)
        if not false_reject:
            self._false_reject_clearing = None
            return
        if false_reject != self._false_reject_clearing:  # a new mark (a repeated read of one in progress is not)
            self._false_reject_clearing = false_reject
            self.requests.false_reject(false_reject, lambda outcome: self._false_reject_answered(false_reject, outcome))

    def _false_reject_answered(self, seq: int, outcome: str) -> None:
        """The mark is durable or refused: the answer goes into the status block, then the register is cleared."""
        with self._lock:
            self.book.answer_false_reject(seq, outcome)
            self._false_reject_clear_due = seq
            self._live_dirty = True
        self._wake.set()

    def _write_block(self, client: ModbusTcpClient, block: list[int]) -> None:
        self._check(
            client.write_registers(self.cfg.write_address, block, device_id=self.cfg.device_id),
            "write the status block",
        )

    @staticmethod
    def _check(resp, what: str) -> None:
        if resp.isError():
            code = getattr(resp, "exception_code", "?")
            msg = f"the PLC refused to {what}: Modbus exception {code} (check plc.client addresses and device_id)"
            raise LinkError(msg)
