"""`inspectd run` with a PLC link, end to end: the real daemon as a subprocess, a real pymodbus client (or server)
as the PLC, real sockets on 127.0.0.1. Every loop is bounded in count and time."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from tests.support.helpers import daemon_config, make_blur_model, parse_json_lines, popen_cli, synthetic_camera
from tests.support.net import free_port, wait_until
from tests.support.plc import StandInPlc, plc_client

CODES = {"pass": 1, "reject": 2, "error": 3}


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _config(tmp_path: Path, model: Path, plc: str, *, rate_hz: float = 20, trigger: str = "free_run") -> Path:
    extra = f"        plc:\n          heartbeat_interval_s: 0.1\n{plc}"
    camera = synthetic_camera(rate_hz=rate_hz, trigger=trigger)
    return daemon_config(tmp_path, model, camera, extra=extra, status_interval_s=0.5)


def _server(port: int) -> str:
    return f"          server:\n            port: {port}\n            linger_s: 0.5"


class _Daemon:
    """The daemon subprocess with its stdout collected in a thread."""

    def __init__(self, config: Path) -> None:
        self.proc = popen_cli("run", "--config", str(config))
        self.lines: list[str] = []
        self.signalled = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def events(self) -> list[dict]:
        return parse_json_lines("".join(self.lines))

    def wait_for(self, event: str, timeout: float = 60) -> bool:
        return bool(wait_until(lambda: any(e.get("event") == event for e in self.events()), timeout, 0.05))

    def verdicts(self) -> list[dict]:
        return [e for e in self.events() if e.get("event") == "verdict"]

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None and not self.signalled:
            self.signalled = True  # once: a second SIGTERM during interpreter shutdown would kill it outright
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        self.signal()
        try:
            return self.proc.wait(timeout)
        finally:
            self._t.join(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def daemons():
    started: list[_Daemon] = []

    def start(config: Path) -> _Daemon:
        d = _Daemon(config)
        started.append(d)
        assert d.wait_for("ready"), (
            "daemon did not get ready:\n" + d.proc.stderr.read()[-2000:] if d.proc.poll() else ""
        )
        return d

    yield start
    for d in started:
        d.kill()


def test_200_plc_triggered_items_are_each_answered_with_their_item_id(tmp_path, blur_model, daemons):
    port = free_port()
    d = daemons(_config(tmp_path, blur_model, _server(port), trigger="plc"))
    c = plc_client(port)
    try:
        assert wait_until(lambda: c.read_coils(0, count=1, device_id=1).bits[0], 10), "ready never became 1"
        for i in range(200):
            item = 1000 + i
            assert not c.write_register(20, item, device_id=1).isError()
            assert not c.write_coil(8, True, device_id=1).isError()
            assert wait_until(lambda: not c.read_coils(8, count=1, device_id=1).bits[0], 5, 0.001), (
                f"item {item} not taken"
            )
            got = wait_until(
                lambda seq=i + 1: (r := c.read_holding_registers(2, count=5, device_id=1).registers)[0] == seq and r,
                5,
                0.001,
            )
            assert got, f"no result for item {item}"
            assert got[4] == item, f"result {i + 1} echoes item {got[4]}, expected {item}"
            assert got[1] in (1, 2, 3)
    finally:
        c.close()
    assert d.stop() == 0
    verdicts = d.verdicts()
    assert [v["item_id"] for v in verdicts] == list(range(1000, 1200))
    assert [v["seq"] for v in verdicts] == list(range(1, 201))


def test_a_plc_polling_slower_than_the_line_recovers_every_result_from_the_ring(tmp_path, blur_model, daemons):
    port = free_port()
    # 20 items/s, one poll per 120 ms: about 2.4 new items per poll, so the PLC polls 2.4x slower than the line;
    # the 8-deep ring covers a gap of 400 ms between polls (margin for a loaded CI machine)
    d = daemons(_config(tmp_path, blur_model, _server(port), rate_hz=20))
    seen: dict[int, int] = {}
    polls = 0
    gaps: list[float] = []
    c = plc_client(port)
    try:
        deadline = time.monotonic() + 3.0
        last = None
        while time.monotonic() < deadline:
            regs = c.read_holding_registers(0, count=48, device_id=1).registers
            now = time.monotonic()
            if last is not None:
                gaps.append(now - last)
            last = now
            polls += 1
            for i in range(8):
                seq, code = regs[32 + 2 * i], regs[33 + 2 * i]
                if seq:
                    assert seen.setdefault(seq, code) == code
            time.sleep(0.12)
    finally:
        c.close()
    assert d.stop() == 0
    by_seq = {v["seq"]: CODES[v["code"]] for v in d.verdicts()}
    newest = max(seen)
    assert newest > 8 * 3 and polls >= 10, (newest, polls)  # the line ran well ahead of the ring between polls
    missing = [s for s in range(1, newest + 1) if s not in seen]
    assert not missing, f"results missed by the polling PLC: {missing} (longest gap between polls {max(gaps):.3f} s)"
    assert all(seen[s] == by_seq[s] for s in seen), "ring codes disagree with the verdicts"


def test_stopping_the_daemon_sets_ready_0_and_state_4(tmp_path, blur_model, daemons):
    port = free_port()
    d = daemons(_config(tmp_path, blur_model, _server(port)))
    c = plc_client(port)
    try:
        assert wait_until(lambda: c.read_coils(0, count=1, device_id=1).bits[0], 10)
        assert c.read_holding_registers(1, count=1, device_id=1).registers == [1]
        d.signal()
        last = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = c.read_holding_registers(1, count=1, device_id=1).registers[0]
                ready = c.read_coils(0, count=1, device_id=1).bits[0]
            except Exception:  # the server has gone after its linger: the last answer counts
                break
            last = (ready, state)
            time.sleep(0.02)
        assert last == (False, 4), f"last answer before the port closed: {last}"
    finally:
        c.close()
    assert d.stop() == 0
    assert not ModbusTcpClient("127.0.0.1", port=port, timeout=1).connect()


def test_killing_the_daemon_stops_the_heartbeat(tmp_path, blur_model, daemons):
    port = free_port()
    d = daemons(_config(tmp_path, blur_model, _server(port)))
    c = plc_client(port, timeout=1)
    try:
        first = c.read_holding_registers(0, count=1, device_id=1).registers[0]
        assert wait_until(lambda: c.read_holding_registers(0, count=1, device_id=1).registers[0] >= first + 3, 5)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        try:  # the PLC's next read fails: no heartbeat reaches it any more
            answered = not c.read_holding_registers(0, count=1, device_id=1).isError()
        except Exception:  # ConnectionException / ModbusIOException: exactly what a PLC sees
            answered = False
        assert not answered, "the heartbeat register still answers after SIGKILL"
        fresh = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        assert not fresh.connect(), "something still answers on the dead daemon's port"
    finally:
        c.close()


def test_garbage_and_illegal_addresses_leave_the_daemon_serving_and_inspecting(tmp_path, blur_model, daemons):
    port = free_port()
    d = daemons(_config(tmp_path, blur_model, _server(port), rate_hz=30))
    for payload in (bytes(range(256)) * 4, struct.pack(">HHHB", 1, 0, 0xFFFF, 1) + b"\x03\x00", b"\xff" * 700):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
    half_open = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(3)]
    for _ in range(100):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    c = plc_client(port)
    try:
        assert c.read_holding_registers(100, count=2, device_id=1).exception_code == 2
        assert c.write_register(3, 1, device_id=1).exception_code == 2
        before = c.read_holding_registers(2, count=1, device_id=1).registers[0]
        assert wait_until(lambda: c.read_holding_registers(2, count=1, device_id=1).registers[0] >= before + 10, 10)
        regs = c.read_holding_registers(0, count=14, device_id=1).registers
        assert regs[1] == 1 and (regs[8] << 16 | regs[9]) >= regs[2]
    finally:
        c.close()
        for s in half_open:
            s.close()
    assert d.stop() == 0
    assert d.events()[-1]["event"] == "summary" and d.events()[-1]["frames"] >= 10


def _links(d: _Daemon, state: str) -> int:
    return sum(1 for e in d.events() if e.get("event") == "plc_link" and e.get("state") == state)


def test_client_mode_writes_into_a_plc_that_goes_away_and_comes_back(tmp_path, blur_model, daemons):
    port = free_port()
    plc = StandInPlc(port).start()
    client = (
        f"          mode: client\n          client:\n            host: 127.0.0.1\n            port: {port}\n"
        "            write_address: 100\n            read_address: 150\n            timeout_s: 0.3\n"
        "            reconnect:\n              initial_s: 0.1\n              max_s: 0.4"
    )
    d = daemons(_config(tmp_path, blur_model, client, rate_hz=30))
    try:
        assert wait_until(lambda: plc.read(102, 1)[0] >= 5, 10), "no results written into the PLC"
        assert plc.read(101, 1) == [1]  # state running
        plc.stop()  # the PLC goes away: inspection goes on
        assert wait_until(lambda: _links(d, "down") >= 1, 5), "no plc_link down event"
        n = len(d.verdicts())
        assert wait_until(lambda: len(d.verdicts()) >= n + 15, 10), "inspection stalled while the PLC was away"
        plc = StandInPlc(port).start()  # and comes back
        assert wait_until(lambda: plc.read(102, 1)[0] > n, 10), "results not written after the PLC came back"
        assert wait_until(lambda: _links(d, "up") >= 2, 5), "no plc_link up event after the PLC came back"
    finally:
        assert d.stop() == 0
        final = plc.read(100, 8)
        plc.stop()
    assert final[1] == 4 and final[7] & 1 == 0  # state stopping, ready bit 0
