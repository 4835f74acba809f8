"""Server mode under abuse (raw sockets on 127.0.0.1): garbage, oversized frames, half-open connections, connection
storms. Afterwards a normal PLC must still read correct values, and results must still be applied."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from inspectd.core.types import Code
from inspectd.plc import PlcConfig, build_plc_sink
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client, verdict


@pytest.fixture
def sink():
    s = build_plc_sink(PlcConfig(server={"port": free_port(), "linger_s": 0, "max_clients": 8, "idle_timeout_s": 0.6}))
    s.start()
    yield s
    s.close()


def _raw(sink, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(sink.address, timeout=timeout)


def _mbap(tid: int, length: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, length, unit) + pdu


def _read_holding_frame(tid: int, address: int, count: int) -> bytes:
    pdu = struct.pack(">BHH", 3, address, count)
    return _mbap(tid, len(pdu) + 1, 1, pdu)


def _recv_frame(s: socket.socket) -> bytes:
    head = b""
    while len(head) < 7:
        chunk = s.recv(7 - len(head))
        assert chunk, "connection closed before an answer"
        head += chunk
    (length,) = struct.unpack(">H", head[4:6])
    body = b""
    while len(body) < length - 1:
        chunk = s.recv(length - 1 - len(body))
        assert chunk, "connection closed mid-answer"
        body += chunk
    return head + body


def _assert_serving(sink, seq: int) -> None:
    sink.emit(verdict(seq, Code.REJECT, item_id=seq))
    c = plc_client(sink.address[1])
    try:
        assert c.read_holding_registers(2, count=5, device_id=1).registers == [seq, 2, 0, 0, seq]
    finally:
        c.close()


def test_garbage_bytes_oversized_frames_and_unknown_functions_leave_the_server_serving(sink):
    garbage = bytes(range(256)) * 8  # protocol id != 0, nonsense lengths: 2 KiB of it
    s = _raw(sink)
    s.sendall(garbage)
    s.sendall(_mbap(1, 0xFFFF, 1, b"\x03\x00\x00\x00\x01"))  # MBAP claims 65535 bytes: never comes
    s.sendall(b"\x00" * 600)  # more than pymodbus' receive buffer: it is dropped, not grown
    s.close()
    s = _raw(sink)
    s.sendall(_mbap(7, 2, 1, b"\x41"))  # function 0x41 does not exist: exception 01
    answer = _recv_frame(s)
    assert answer[7] & 0x80 and answer[8] == 1  # (pymodbus 3.16 puts function 0x80, not 0xC1, in this answer)
    s.sendall(_read_holding_frame(8, 60, 4))  # past the map: exception 02
    answer = _recv_frame(s)
    assert answer[7] == 0x83 and answer[8] == 2
    s.sendall(_read_holding_frame(9, 2, 1))  # the same connection still gets real answers
    answer = _recv_frame(s)
    assert answer[7] == 3 and answer[:2] == b"\x00\x09"
    s.close()
    _assert_serving(sink, 5)


def test_half_open_connections_and_a_storm_of_clients_do_not_stop_the_server(sink):
    silent = [_raw(sink) for _ in range(3)]  # connect and never send
    for i in range(120):  # connect, maybe ask, leave (some abruptly with RST)
        s = _raw(sink)
        if i % 3 == 0:
            s.sendall(_read_holding_frame(i, 0, 3))
            _recv_frame(s)
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    _assert_serving(sink, 11)
    for s in silent:
        s.close()


def test_idle_half_open_connections_are_closed_after_the_idle_timeout(sink):
    s = _raw(sink, timeout=3)
    t0 = time.monotonic()
    assert s.recv(1) == b""  # the server closed it (half-open: the client never sent a request)
    assert 0.5 <= time.monotonic() - t0 < 3
    s.close()
    _assert_serving(sink, 3)


def test_one_connection_too_many_closes_the_one_idle_longest(sink):
    conns = [_raw(sink, timeout=3) for _ in range(8)]
    for s in conns[1:]:
        time.sleep(0.01)
        s.sendall(_read_holding_frame(1, 0, 1))
        _recv_frame(s)
    newcomer = _raw(sink, timeout=3)
    newcomer.sendall(_read_holding_frame(2, 0, 1))
    assert _recv_frame(newcomer)[7] == 3
    assert conns[0].recv(1) == b""  # the oldest silent one made room
    for s in conns[1:]:  # the active ones were kept
        s.sendall(_read_holding_frame(3, 0, 1))
        assert _recv_frame(s)[7] == 3
    for s in [*conns, newcomer]:
        s.close()
    assert wait_until(lambda: sink.link_state == "down", 3)
