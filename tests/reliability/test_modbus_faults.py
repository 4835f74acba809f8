"""The Modbus port under abuse, on the real daemon: a flood of hundreds of connections and garbage frames while it
inspects (the heartbeat keeps moving, every item keeps its verdict, a normal PLC is still served), and the write
allow-list (plc.server.allow_writes_from): writes from other peers get exception 01, reads stay open."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from inspectd.plc import PlcConfig, build_plc_sink
from tests.support.helpers import make_blur_model
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client
from tests.support.reliability import assert_accounted, config, plc_section, plc_view, run_daemon


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def _answer(s: socket.socket) -> bytes:
    data = b""
    while len(data) < 9:
        chunk = s.recv(260)
        if not chunk:
            break
        data += chunk
    return data


def _from(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.bind((host, 0))
    s.connect(("127.0.0.1", port))
    return s


def test_writes_from_peers_outside_the_allow_list_get_exception_01_and_change_nothing():
    port = free_port()
    sink = build_plc_sink(PlcConfig(server={"port": port, "linger_s": 0, "allow_writes_from": ["127.0.0.2"]}))
    sink.start()
    try:
        stranger, plc = _from("127.0.0.1", port), _from("127.0.0.2", port)
        for fc, pdu in (
            (6, struct.pack(">BHH", 6, 20, 777)),
            (5, struct.pack(">BHH", 5, 8, 0xFF00)),
            (16, struct.pack(">BHHBHH", 16, 20, 2, 4, 1, 2)),
        ):
            stranger.sendall(_mbap(1, 1, pdu))
            answer = _answer(stranger)
            assert answer[7] == 0x80 | fc and answer[8] == 1, (fc, answer)  # exception 01
        stranger.sendall(_mbap(2, 1, struct.pack(">BHH", 3, 20, 1)))  # reads stay open
        assert _answer(stranger)[7:11] == b"\x03\x02\x00\x00", "the refused write changed register 20"
        plc.sendall(_mbap(3, 1, struct.pack(">BHH", 6, 20, 777)))
        assert _answer(plc)[7] == 6, "the allowed PLC may write"
        stranger.sendall(_mbap(4, 1, struct.pack(">BHH", 3, 20, 1)))
        assert _answer(stranger)[7:11] == b"\x03\x02\x03\x09"  # 777
        stranger.close()
        plc.close()
    finally:
        sink.close()


def test_the_allow_list_rejects_values_that_are_not_ip_addresses():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not an IP address"):
        PlcConfig(server={"allow_writes_from": ["plc.local"]})
    assert PlcConfig(server={"allow_writes_from": [" 10.0.0.1"]}).server.allow_writes_from == ("10.0.0.1",)


def _flood(port: int, n: int, seed: int, errors: list) -> None:
    rng = random.Random(seed)
    for i in range(n):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                kind = i % 4
                if kind == 0:
                    s.sendall(rng.randbytes(rng.randint(1, 600)))  # garbage
                elif kind == 1:
                    s.sendall(
                        _mbap(i, rng.randint(0, 255), bytes([rng.randint(0, 255)]) + rng.randbytes(rng.randint(0, 250)))
                    )
                elif kind == 2:
                    s.sendall(struct.pack(">HHHB", i, 0, 0xFFFF, 1) + b"\x03")  # a length that never comes
                if rng.random() < 0.5:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        except OSError as exc:  # refused under load is fine; a hang is not (timeouts bound it)
            errors.append(repr(exc))


def test_a_flood_of_connections_and_garbage_frames_does_not_stop_inspection_or_the_plc(tmp_path, blur_model):
    port = free_port()
    cam = "          type: synthetic\n          width: 96\n          height: 96\n          rate_hz: 40"
    d = run_daemon(config(tmp_path, blur_model, cam, extra=plc_section(port, max_clients=4, idle_timeout_s=1.0)))
    c = plc_client(port)
    try:
        assert wait_until(lambda: plc_view(c)["ready"], 20)
        c.close()
        errors: list[str] = []
        floods = [threading.Thread(target=_flood, args=(port, 150, k, errors), daemon=True) for k in range(4)]
        t0 = time.monotonic()
        for t in floods:
            t.start()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(10)]  # half-open ones
        for t in floods:
            t.join(60)
        assert not any(t.is_alive() for t in floods), "a flood connection hung"
        flood_s = time.monotonic() - t0
        c = plc_client(port)  # a normal PLC, after 600 connections
        v1 = plc_view(c)
        assert wait_until(lambda: plc_view(c)["heartbeat"] != v1["heartbeat"], 10), "heartbeat stopped"
        assert wait_until(lambda: plc_view(c)["last_seq"] > v1["last_seq"] + 5, 15), "results stopped"
        v2 = plc_view(c)
        assert v2["state"] == 1 and v2["ready"] and v2["last_code"] in (1, 2, 3)
        for s in idle:
            s.close()
    finally:
        c.close()
        code = d.stop()
    assert code == 0 and d.proc.poll() == 0
    s = assert_accounted(d)
    assert s["frames"] >= 10, s
    errors = [v for v in d.events("verdict") if v["code"] == "error"]
    assert all("queue overrun" in v["error"] for v in errors), "only a loaded machine's overruns may be errors"
    print(
        {"flood_connections": 600, "flood_s": round(flood_s, 2), "refused_or_reset": len(errors), "frames": s["frames"]}
    )
