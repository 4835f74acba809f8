"""Attacks on the Modbus port of the real daemon from a plant-network stranger (issue 24, items 5, 6 and 7), with a
real Modbus master (pymodbus) bound to another loopback address (127.0.0.2.., not in the default allow-list) and
raw sockets: with the shipped defaults a stranger can neither mark, trigger nor set item ids; FC 23 is all or
nothing; stray bytes do not keep a connection alive, strangers cannot push the PLC's own connection out, and a
header that can never frame closes its connection instead of wedging it."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from tests.support.collector import Daemon, collector, daemon_config, meta_lines
from tests.support.helpers import make_blur_model, run_cli
from tests.support.net import free_port, wait_until
from tests.support.reliability import config, plc_section, run_daemon


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _master(port: int, source: str = "127.0.0.1") -> ModbusTcpClient:
    """A Modbus master connecting from `source` (any 127.x address reaches 127.0.0.1 on Linux)."""
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, source_address=(source, 0))
    assert client.connect(), f"cannot connect from {source}"
    return client


def _mbap(tid: int, pdu: bytes, *, pid: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1 if length is None else length, 1) + pdu


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection within `seconds` (reading whatever it sends before)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(4096):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset
            return True
    return False


def test_with_the_default_allow_list_a_stranger_can_neither_mark_nor_trigger_nor_set_the_item_id(tmp_path, blur_model):
    port, modbus = free_port(), free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    plc = (
        plc_section(modbus).replace("\n        ", "\n").replace("        ", "", 1)
    )  # no allow_writes_from: the default
    cfg = daemon_config(tmp_path, blur_model, port, extra=plc)
    d = Daemon(cfg)
    stranger, own = _master(modbus, "127.0.0.2"), _master(modbus)
    try:
        d.frames(6)
        assert wait_until(lambda: d.status()["rejects"]["count"] >= 4, 30)
        seqs = d.reject_seqs()[:4]
        # the attack: mark four real defects good over register 21, trigger, set the item id
        for seq in seqs:
            assert stranger.write_register(21, seq, device_id=1).isError(), "a stranger marked a reject good"
        assert stranger.write_coil(8, True, device_id=1).isError(), "a stranger triggered"
        assert stranger.write_register(20, 4242, device_id=1).isError(), "a stranger set the item id"
        time.sleep(0.5)
        assert own.read_holding_registers(20, count=2, device_id=1).registers == [0, 0], "a refused write changed"
        assert d.status()["spool"]["depth"] == 0 and not meta_lines(out), "nothing was marked"
        assert len(d.events("verdict")) == 6, "the stranger's trigger took no frame"
        # the operator is not locked out: the confirmed defect is marked bad and filed as one
        res = run_cli("mark", str(seqs[0]), "--bad", "--config", str(cfg), timeout=60)
        assert res.returncode == 0, res.stderr
        assert wait_until(lambda: len(meta_lines(out)) == 1, 20)
        # the PLC on this PC (the default allow-list) still writes
        assert not own.write_register(21, seqs[1], device_id=1).isError()
        assert wait_until(lambda: len(meta_lines(out)) == 2, 20)
        assert d.events("plc_write_refused")
    finally:
        stranger.close()
        own.close()
        assert d.stop() == 0
        c.stop()
    marks = {m["seq"]: m["mark"] for m in meta_lines(out)}
    assert marks == {seqs[0]: "bad", seqs[1]: "good"}, marks
    assert (out / "test" / "confirmed_defect").glob("*.png") and len(list((out / "train" / "good").glob("*"))) == 1


def test_a_network_facing_plc_server_without_an_allow_list_is_refused_at_check_config(tmp_path, blur_model):
    plc = plc_section(free_port()).replace("host: 127.0.0.1", "host: 10.1.2.3")  # a plant-network address
    cfg = config(tmp_path, blur_model, "          type: synthetic", extra=plc)
    res = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert res.returncode == 2 and "allow_writes_from is not set" in res.stderr, res.stderr


def test_fc23_with_a_valid_write_and_an_illegal_read_address_changes_nothing(tmp_path, blur_model):
    port = free_port()
    d = run_daemon(
        config(tmp_path, blur_model, "          type: synthetic\n          rate_hz: 5", extra=plc_section(port))
    )
    plc = _master(port)
    try:
        answer = plc.readwrite_registers(read_address=60000, read_count=2, write_address=20, values=[777], device_id=1)
        assert answer.isError() and answer.exception_code == 2, answer
        assert plc.read_holding_registers(20, count=1, device_id=1).registers == [0], "the write was applied"
        ok = plc.readwrite_registers(read_address=20, read_count=1, write_address=20, values=[778], device_id=1)
        assert not ok.isError() and ok.registers == [778], "a valid FC 23 still works"
    finally:
        plc.close()
        assert d.stop() == 0


def test_stray_bytes_do_not_keep_a_connection_past_the_idle_timeout(tmp_path, blur_model):
    port = free_port()
    plc = plc_section(port, idle_timeout_s=1.5)
    d = run_daemon(config(tmp_path, blur_model, "          type: synthetic\n          rate_hz: 5", extra=plc))
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        s.sendall(struct.pack(">HHHB", 1, 0, 254, 1))  # a header announcing 253 more bytes, then a drip
        t0 = time.monotonic()
        closed = False
        for _ in range(20):  # 4 s of a byte every 0.2 s; the idle timeout is 1.5 s
            try:
                s.sendall(b"\x03")
            except OSError:
                closed = True
                break
            if _closed_within(s, 0.2):
                closed = True
                break
        assert closed, "a byte now and then kept the connection open past idle_timeout_s"
        assert time.monotonic() - t0 < 3.0
    finally:
        s.close()
        assert d.stop() == 0


def test_a_header_that_can_never_frame_closes_its_connection_instead_of_wedging_it(tmp_path, blur_model):
    port = free_port()
    d = run_daemon(
        config(tmp_path, blur_model, "          type: synthetic\n          rate_hz: 5", extra=plc_section(port))
    )
    try:
        read = struct.pack(">BHH", 3, 0, 2)
        for garbage in (_mbap(1, read, pid=7), _mbap(2, read, length=65535)):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(garbage + _mbap(3, read))  # a valid request right behind it
                assert _closed_within(s, 1.5), f"{garbage[:7].hex()}: the connection was left wedged"
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:  # and the next connection is served
            s.sendall(_mbap(4, read))
            assert s.recv(64)[7] == 3
        assert len(d.events("plc_connection_closed")) >= 2
    finally:
        assert d.stop() == 0


def test_strangers_cannot_push_the_plcs_own_connection_out(tmp_path, blur_model):
    port = free_port()
    plc = plc_section(port, max_clients=2)
    d = run_daemon(config(tmp_path, blur_model, "          type: synthetic\n          rate_hz: 20", extra=plc))
    stop = threading.Event()

    def stranger(source: str) -> None:
        """Holds a connection, looking busier than any PLC (a byte every 10 ms), and reconnects when dropped."""
        while not stop.is_set():
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(1)
                s.bind((source, 0))
                s.connect(("127.0.0.1", port))
                with s:
                    while not stop.is_set():
                        s.sendall(b"\x00")
                        time.sleep(0.01)
            except OSError:
                time.sleep(0.01)

    own = _master(port)
    strangers = [threading.Thread(target=stranger, args=(f"127.0.0.{k}",), daemon=True) for k in range(2, 6)]
    failures = polls = 0
    try:
        assert not own.read_holding_registers(0, count=4, device_id=1).isError()
        for t in strangers:
            t.start()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # the PLC polls at 10 Hz
            polls += 1
            try:
                if own.read_holding_registers(0, count=4, device_id=1).isError():
                    failures += 1
            except Exception:  # pymodbus raises when the connection was closed under it
                failures += 1
                own.close()
                own.connect()
            time.sleep(0.1)
    finally:
        stop.set()
        for t in strangers:
            t.join(5)
        own.close()
        code = d.stop()
    assert failures == 0, f"the PLC's connection failed {failures} of {polls} polls while strangers connected"
    assert code == 0
