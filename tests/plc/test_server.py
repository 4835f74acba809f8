"""Server mode in-process: a real pymodbus client as the PLC against the Modbus sink on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from inspectd.core.types import Code
from inspectd.daemon.pipeline import State
from inspectd.plc import PlcConfig, PlcError, build_plc_sink
from tests.support.net import free_port, wait_until
from tests.support.plc import FakeControls, code_for, plc_client, verdict


@pytest.fixture
def sink():
    s = build_plc_sink(PlcConfig(heartbeat_interval_s=0.05, server={"port": free_port(), "linger_s": 0.3}))
    s.start()
    yield s
    s.close()


def test_result_fields_counters_and_ring_read_by_a_plc(sink):
    sink.on_state(int(State.RUNNING))
    for seq in range(1, 11):
        sink.emit(verdict(seq, code_for(seq), item_id=100 + seq, score=0.01 * seq, area=7 * seq))
    c = plc_client(sink.address[1])
    try:
        regs = c.read_holding_registers(0, count=48, device_id=1).registers
        coils = c.read_coils(0, count=4, device_id=1).bits[:4]
    finally:
        c.close()
    assert regs[1] == State.RUNNING
    assert regs[2:7] == [10, int(code_for(10)), 100, 70, 110]  # seq, code, score*1000, area, item id
    frames, rejects, errors = (regs[8] << 16 | regs[9]), (regs[10] << 16 | regs[11]), (regs[12] << 16 | regs[13])
    assert (frames, rejects, errors) == (10, sum(code_for(s) == Code.REJECT for s in range(1, 11)), 3)
    ring = regs[32:48]
    assert [(ring[2 * i], ring[2 * i + 1]) for i in range(8)] == [(s, int(code_for(s))) for s in range(10, 2, -1)]
    # ready, toggle (10 results: flipped back to 0), last_pass, last_reject (code_for(10) is REJECT)
    assert coils == [True, False, False, True]


def test_any_unit_id_is_answered(sink):
    sink.emit(verdict(1, Code.REJECT))
    c = plc_client(sink.address[1])
    try:
        for unit in (0, 1, 17, 255):
            resp = c.read_holding_registers(2, count=2, device_id=unit)
            assert not resp.isError() and resp.registers == [1, 2], unit
    finally:
        c.close()


def test_a_poll_never_sees_one_items_seq_with_another_items_fields(sink):
    """Results are applied while a PLC reads the whole map as fast as it can: every read must be coherent."""
    n = 3000
    done = threading.Event()

    def produce() -> None:
        for seq in range(1, n + 1):
            sink.emit(verdict(seq, code_for(seq), item_id=seq, score=seq / 1000, area=seq))
        done.set()

    c = plc_client(sink.address[1])
    reads = 0
    t = threading.Thread(target=produce)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not done.is_set() or reads < 50):
            regs = c.read_holding_registers(0, count=48, device_id=1).registers
            reads += 1
            seq = regs[2]
            if seq == 0:
                continue
            assert regs[3:7] == [int(code_for(seq)), seq, seq, seq], regs
            assert (regs[8] << 16 | regs[9]) == seq  # frames counter moved with the result
            assert regs[32:34] == [seq, int(code_for(seq))]  # the ring's newest slot is the same item
    finally:
        t.join(30)
        c.close()
    assert reads >= 50


def test_seq_wraps_from_65535_to_1_and_values_saturate(sink):
    c = plc_client(sink.address[1])
    try:
        sink.emit(verdict(65535, Code.PASS, score=70.0, area=10**6))
        assert c.read_holding_registers(2, count=4, device_id=1).registers == [65535, 1, 65535, 65535]
        sink.emit(verdict(65536, Code.REJECT, score=float("nan")))
        assert c.read_holding_registers(2, count=3, device_id=1).registers == [1, 2, 65535]
    finally:
        c.close()


def test_illegal_addresses_and_read_only_writes_get_exception_responses(sink):
    sink.emit(verdict(1, Code.PASS))
    c = plc_client(sink.address[1])
    try:
        for resp in (
            c.read_holding_registers(40, count=10, device_id=1),  # past the end of the map (0..47)
            c.read_coils(15, count=2, device_id=1),  # coils 0..15
            c.write_register(2, 9, device_id=1),  # last_seq is inspectd's, not the PLC's
            c.write_coil(0, True, device_id=1),  # ready likewise
            c.write_registers(19, [1, 2, 3], device_id=1),  # 19 is not writable: nothing is written
        ):
            assert resp.isError() and resp.exception_code == 2, resp
        regs = c.read_holding_registers(0, count=48, device_id=1).registers
        assert regs[2] == 1 and regs[20] == 0 and regs[21] == 0
        assert c.read_input_registers(2, count=1, device_id=1).registers == [1]  # read-only mirror
        assert c.write_registers(20, [5, 0], device_id=1).isError() is False  # item id + false reject: writable
    finally:
        c.close()


def test_trigger_rising_edge_reaches_controls_once_and_acknowledgement_clears_the_coil(sink):
    controls = FakeControls(hold=True)
    sink.attach(controls)
    c = plc_client(sink.address[1])
    try:
        assert not c.write_register(20, 4242, device_id=1).isError()
        assert not c.write_coil(8, True, device_id=1).isError()
        assert wait_until(lambda: controls.triggers == [4242], 2)
        c.write_coil(8, True, device_id=1)  # held high, not yet acknowledged: no second trigger
        time.sleep(0.05)
        assert controls.triggers == [4242]
        assert c.read_coils(8, count=1, device_id=1).bits[0] is True
        controls.release()  # the frame was taken
        assert c.read_coils(8, count=1, device_id=1).bits[0] is False
        c.write_register(20, 7, device_id=1)
        c.write_coil(8, True, device_id=1)
        assert wait_until(lambda: controls.triggers == [4242, 7], 2)
    finally:
        c.close()


def test_trigger_before_the_daemon_attached_controls_is_acknowledged(sink):
    c = plc_client(sink.address[1])
    try:
        c.write_coil(8, True, device_id=1)
        assert wait_until(lambda: c.read_coils(8, count=1, device_id=1).bits[0] is False, 2)
    finally:
        c.close()


def test_false_reject_register_hands_the_seq_over_and_is_cleared(sink):
    controls = FakeControls(fail_false_reject=True)  # an unknown/expired seq: logged, not fatal
    sink.attach(controls)
    c = plc_client(sink.address[1])
    try:
        resp = c.write_register(21, 1234, device_id=1)
        assert resp.registers == [1234]  # the write is echoed as written; the clearing comes after
        assert wait_until(lambda: controls.false_rejects == [(1234, "plc")], 2)
        assert wait_until(lambda: c.read_holding_registers(21, count=1, device_id=1).registers == [0], 2)
        # cleared together with the answer: 22 = the seq, 23 = 6 (failed: the controls raised)
        assert c.read_holding_registers(22, count=2, device_id=1).registers == [1234, 6]
        c.write_register(21, 99, device_id=1)
        assert wait_until(lambda: controls.false_rejects == [(1234, "plc"), (99, "plc")], 2)
    finally:
        c.close()


def test_heartbeat_counts_only_while_the_pipeline_loop_calls_it(sink):
    c = plc_client(sink.address[1])
    try:
        for _ in range(30):  # 0.3 s of 'loop alive' at a 0.05 s interval
            sink.heartbeat()
            time.sleep(0.01)
        first = c.read_holding_registers(0, count=1, device_id=1).registers[0]
        assert first >= 3
        time.sleep(0.2)  # the loop stops calling: the heartbeat freezes
        assert c.read_holding_registers(0, count=1, device_id=1).registers[0] == first
    finally:
        c.close()


def test_ready_is_1_only_while_running_and_close_sets_ready_0_state_4(sink):
    c = plc_client(sink.address[1])
    try:
        assert c.read_coils(0, count=1, device_id=1).bits[0] is False  # starting
        sink.on_state(int(State.RUNNING))
        assert c.read_coils(0, count=1, device_id=1).bits[0] is True
        sink.on_state(int(State.CAMERA_FAULT))
        assert c.read_coils(0, count=1, device_id=1).bits[0] is False
        assert c.read_holding_registers(1, count=1, device_id=1).registers == [2]
        sink.on_state(int(State.RUNNING))
        closer = threading.Thread(target=sink.close)
        closer.start()
        seen = wait_until(lambda: c.read_holding_registers(1, count=1, device_id=1).registers == [4], 2)
        assert seen and c.read_coils(0, count=1, device_id=1).bits[0] is False
        closer.join(10)
    finally:
        c.close()
    with pytest.raises(OSError):
        socket.create_connection(sink.address, timeout=1).close()


def test_a_port_in_use_is_a_clear_plc_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        s = build_plc_sink(PlcConfig(server={"port": taken.getsockname()[1]}))
        with pytest.raises(PlcError, match="another process listens"):
            s.start()
        s.close()


def test_book_state_values_are_the_pipeline_states():
    from inspectd.plc import book

    assert (book.RUNNING, book.STOPPING) == (State.RUNNING, State.STOPPING)
