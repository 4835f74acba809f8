"""PLC-side fakes and helpers for the Modbus tests: free ports, fake Controls, a pymodbus server standing in for
the PLC (client mode), verdict builders. Every wait is bounded in count and time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from inspectd.core.types import Code, Verdict


def verdict(seq: int, code: Code = Code.PASS, *, item_id: int = 0, score: float = 0.0, area: int = 0) -> Verdict:
    return Verdict(seq=seq, item_id=item_id, wall_time=time.time(), code=code, score=score, defect_area=area)


def code_for(seq: int) -> Code:
    """A deterministic code per seq, so a reader can check that seq and code belong together."""
    return (Code.PASS, Code.REJECT, Code.ERROR)[seq % 3]


def plc_client(port: int, timeout: float = 2.0) -> ModbusTcpClient:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=timeout, retries=0)
    assert client.connect(), f"cannot connect to 127.0.0.1:{port}"
    return client


class FakeControls:
    """Records triggers and false-reject marks; acknowledges triggers at once unless told to hold them."""

    def __init__(self, *, hold: bool = False, fail_false_reject: bool = False) -> None:
        self.hold = hold
        self.fail_false_reject = fail_false_reject
        self.triggers: list[int] = []
        self.pending_acks: list[Callable[[], None]] = []
        self.false_rejects: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def trigger(self, item_id: int, on_taken=None) -> None:
        with self._lock:
            self.triggers.append(item_id)
            if on_taken is not None:
                if self.hold:
                    self.pending_acks.append(on_taken)
                else:
                    on_taken()

    def release(self) -> None:
        with self._lock:
            acks, self.pending_acks = self.pending_acks, []
        for ack in acks:
            ack()

    def false_reject(self, seq: int, *, source: str, on_done=None) -> None:
        with self._lock:
            self.false_rejects.append((seq, source))
        if self.fail_false_reject:
            raise KeyError(f"seq {seq} is not in the reject store (expired)")
        if on_done is not None:
            on_done("marked")


class StandInPlc:
    """A pymodbus TCP server with 200 holding registers, standing in for the PLC in client-mode tests.

    Runs its own event loop in a thread; stop() takes the port away (the PLC 'goes away'), start() brings it back.
    Counts the write-multiple-registers requests it receives (`fc16_writes`).
    """

    def __init__(self, port: int, size: int = 200) -> None:
        self.port = port
        self.size = size
        self.fc16_writes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | None = None
        self._stop: asyncio.Event | None = None

    def _trace_pdu(self, sending: bool, pdu):
        if not sending and pdu.function_code == 16:
            self.fc16_writes += 1
        return pdu

    def start(self) -> StandInPlc:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            device = SimDevice(0, simdata=SimData(0, count=self.size, values=0, datatype=DataType.REGISTERS))
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port), trace_pdu=self._trace_pdu)
            self._stop = asyncio.Event()
            await self._server.serve_forever(background=True)
            ready.set()
            await self._stop.wait()
            await self._server.shutdown()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:
                failure.append(exc)
            finally:
                ready.set()
                loop.close()

        self._thread = threading.Thread(target=run, name="stand-in-plc", daemon=True)
        self._thread.start()
        assert ready.wait(10), "stand-in PLC did not start"
        assert not failure, f"stand-in PLC failed: {failure}"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5)
        self._thread = None

    def read(self, address: int, count: int) -> list[int]:
        client = plc_client(self.port)
        try:
            resp = client.read_holding_registers(address, count=count, device_id=1)
            assert not resp.isError(), resp
            return list(resp.registers)
        finally:
            client.close()

    def write(self, address: int, values: list[int]) -> None:
        client = plc_client(self.port)
        try:
            assert not client.write_registers(address, values, device_id=1).isError()
        finally:
            client.close()
