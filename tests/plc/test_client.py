"""Client mode: inspectd writes into a PLC, here a real pymodbus server standing in for it on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import pytest

from inspectd.core.types import Code
from inspectd.daemon.pipeline import State
from inspectd.plc import PlcConfig, build_plc_sink
from inspectd.plc.book import FLAG_READY, FLAG_REJECT, FLAG_TOGGLE
from tests.support.net import free_port, wait_until
from tests.support.plc import FakeControls, StandInPlc, code_for, verdict

WRITE, READ = 100, 150  # where the stand-in PLC keeps inspectd's status block and its own request registers


def _client_cfg(port: int, **client) -> PlcConfig:
    return PlcConfig(
        mode="client",
        heartbeat_interval_s=0.05,
        client={
            "host": "127.0.0.1",
            "port": port,
            "timeout_s": 0.3,
            "poll_interval_s": 0.01,
            "write_address": WRITE,
            "read_address": READ,
            "reconnect": {"initial_s": 0.05, "max_s": 0.2},
            **client,
        },
    )


@pytest.fixture
def plc():
    p = StandInPlc(free_port()).start()
    yield p
    p.stop()


def test_each_result_is_one_block_write_with_seq_code_item_and_ring(plc):
    sink = build_plc_sink(_client_cfg(plc.port))
    sink.start()
    try:
        sink.on_state(int(State.RUNNING))
        assert wait_until(lambda: sink.link_state == "up", 5)
        writes_before = plc.fc16_writes
        for seq in range(1, 6):
            sink.emit(verdict(seq, code_for(seq), item_id=500 + seq, score=0.25, area=12))
        assert wait_until(lambda: plc.read(WRITE + 2, 1) == [5], 5)
        block = plc.read(WRITE, 32)
        assert block[1] == State.RUNNING
        assert block[2:7] == [5, int(code_for(5)), 250, 12, 505]
        assert block[7] == FLAG_READY | FLAG_TOGGLE | FLAG_REJECT  # 5 results: toggled odd; seq 5 is an error
        assert block[8:14] == [0, 5, 0, 2, 0, 2]  # frames 5, rejects 2 (seq 1, 4), errors 2 (seq 2, 5)
        assert [(block[16 + 2 * i], block[17 + 2 * i]) for i in range(5)] == [
            (s, int(code_for(s))) for s in range(5, 0, -1)
        ]
        assert plc.fc16_writes - writes_before >= 5  # one write per result (plus heartbeat rewrites)
    finally:
        sink.close()
    assert plc.read(WRITE + 1, 1) == [State.STOPPING]
    assert plc.read(WRITE + 7, 1)[0] & FLAG_READY == 0


def test_heartbeat_is_written_while_the_loop_calls_it(plc):
    sink = build_plc_sink(_client_cfg(plc.port))
    sink.start()
    try:
        for _ in range(40):
            sink.heartbeat()
            time.sleep(0.01)
        assert wait_until(lambda: plc.read(WRITE, 1)[0] >= 3, 3)
    finally:
        sink.close()


def test_a_dead_plc_never_stalls_emit_and_the_link_recovers_when_it_comes_back():
    port = free_port()
    sink = build_plc_sink(_client_cfg(port))
    sink.start()
    plc = None
    try:
        t0 = time.perf_counter()
        for seq in range(1, 201):  # the PLC is not there: results pile up (the newest 8 are kept)
            sink.emit(verdict(seq, code_for(seq), item_id=seq))
            sink.heartbeat()
        assert (time.perf_counter() - t0) / 200 < 0.005  # emit() is memory only
        assert wait_until(lambda: sink.link_state == "down", 2)
        plc = StandInPlc(port).start()  # the PLC comes (back)
        assert wait_until(lambda: plc.read(WRITE + 2, 1) == [200], 5), "newest result not written after reconnect"
        # the sink reports the link up after a whole pass (block write, then request poll): a moment after the write
        assert wait_until(lambda: sink.link_state == "up", 2)
        plc.stop()  # and goes away again, mid-run
        for seq in range(201, 211):
            sink.emit(verdict(seq, Code.PASS, item_id=seq))
        assert wait_until(lambda: sink.link_state == "down", 3)
        plc = StandInPlc(port).start()
        assert wait_until(lambda: plc.read(WRITE + 2, 5) == [210, 1, 0, 0, 210], 5)
        ring = plc.read(WRITE + 16, 16)
        assert ring[0::2] == list(range(210, 202, -1))  # the ring carries the 8 newest
    finally:
        sink.close()
        if plc is not None:
            plc.stop()


def test_a_plc_that_accepts_but_never_answers_does_not_stall_emit():
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        sink = build_plc_sink(_client_cfg(blackhole.getsockname()[1], timeout_s=0.2))
        sink.start()
        try:
            t0 = time.perf_counter()
            for seq in range(1, 101):
                sink.emit(verdict(seq, Code.PASS))
            assert time.perf_counter() - t0 < 0.5
            assert wait_until(lambda: sink.link_state == "down", 3)
        finally:
            t0 = time.perf_counter()
            sink.close()
            assert time.perf_counter() - t0 < 3


def test_triggers_and_false_rejects_are_polled_from_the_plc_and_cleared(plc):
    controls = FakeControls(hold=True)
    sink = build_plc_sink(_client_cfg(plc.port))
    sink.attach(controls)
    sink.start()
    try:
        plc.write(READ, [1, 321, 0])  # trigger request with item id 321
        assert wait_until(lambda: controls.triggers == [321], 3)
        time.sleep(0.05)  # still held (not acknowledged): polled again, but not triggered again
        assert controls.triggers == [321] and plc.read(READ, 1) == [1]
        controls.release()  # frame taken: inspectd clears the request
        assert wait_until(lambda: plc.read(READ, 1) == [0], 3)
        plc.write(READ, [1, 322, 0])
        assert wait_until(lambda: controls.triggers == [321, 322], 3)
        controls.release()
        plc.write(READ + 2, [777])
        assert wait_until(lambda: controls.false_rejects == [(777, "plc")], 3)
        assert wait_until(lambda: plc.read(READ + 2, 1) == [0], 3)
        assert wait_until(lambda: plc.read(WRITE + 14, 2) == [777, 1], 3), "the answer: marked (1)"
    finally:
        sink.close()


def test_a_plc_refusing_the_addresses_is_reported_as_link_down(plc):
    sink = build_plc_sink(_client_cfg(plc.port, write_address=190))  # 190..221 runs past the PLC's 200 registers
    sink.start()
    try:
        sink.emit(verdict(1, Code.PASS))
        assert wait_until(lambda: sink.link_state == "down", 3)
    finally:
        sink.close()
