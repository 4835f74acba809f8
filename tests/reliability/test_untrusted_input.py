"""Hostile bytes at the real processes (issue 24, items 1, 9 and 10): JSON nested 5000 deep at the collector and at
the daemon's control socket, non-finite scores and a decompression bomb at the collector, and config paths that
are not config files (a device, a FIFO), a control socket path naming someone's file, and paths check-config must
refuse. Each is answered with a clear refusal; nothing dies, hangs, or writes invalid JSON."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import zmq

from inspectd.feedback.protocol import ACK_TAG, NACK_TAG, RECORD_TAG, encode_record
from tests.support.collector import Daemon, collector, daemon_config, meta_lines, record
from tests.support.helpers import cli_env, make_blur_model, run_cli
from tests.support.net import free_port
from tests.support.reliability import config

DEEP = b"[" * 5000


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


@pytest.fixture
def running_collector(tmp_path):
    port = free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield c, dealer, out
    finally:
        dealer.close()
        ctx.term()
        c.stop()


def _reply(dealer, frames: list[bytes], timeout_ms: int = 5000) -> list[bytes]:
    dealer.send_multipart(frames)
    assert dealer.poll(timeout_ms), "the collector did not answer"
    return dealer.recv_multipart()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _png_bomb(width: int, height: int) -> bytes:
    """A valid, tiny PNG of width x height RGBA at 16 bits per sample, all zero (it compresses 400:1)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(1)
    row = bytes(1 + width * 8)
    idat = b"".join([z.compress(row) for _ in range(height)] + [z.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_record_whose_meta_nests_5000_deep_is_refused_and_the_collector_keeps_serving(running_collector):
    c, dealer, out = running_collector
    _, image = record("deep-1")
    reply = _reply(dealer, [RECORD_TAG, DEEP, image])
    assert reply[0] == NACK_TAG and b"nested deeper" in reply[2], reply
    assert c.proc.poll() is None, f"the collector died: {c.stderr()[-2000:]}"
    assert _reply(dealer, encode_record(*record("after-deep"))) == [ACK_TAG, b"after-deep"]
    assert [m["id"] for m in meta_lines(out)] == ["after-deep"]


def test_non_finite_scores_are_refused_so_meta_jsonl_stays_strict_json(running_collector):
    _, dealer, out = running_collector
    for rid, literal in (("nan-1", "NaN"), ("inf-1", "1e999"), ("neg-inf-1", "-Infinity")):
        meta, image = record(rid)
        raw = json.dumps(meta).replace('"score": 0.9', f'"score": {literal}').encode()
        assert literal.encode() in raw
        reply = _reply(dealer, [RECORD_TAG, raw, image])
        assert reply[0] == NACK_TAG and reply[1] == rid.encode(), (literal, reply)
    assert _reply(dealer, encode_record(*record("finite-1"))) == [ACK_TAG, b"finite-1"]

    def strict(name):
        raise ValueError(f"{name} in meta.jsonl")

    text = (out / "meta.jsonl").read_text()
    assert [json.loads(line, parse_constant=strict)["id"] for line in text.splitlines()] == ["finite-1"]


def test_a_png_bomb_is_refused_on_its_header_before_a_pixel_is_decoded(running_collector):
    c, dealer, out = running_collector
    bomb = _png_bomb(6000, 6000)  # about 1 MB; 288 MB of RGBA16 once decoded
    meta, _ = record("bomb-1", channels=3)
    meta.update(width=6000, height=6000)
    before = _peak_rss_mb(c.proc.pid)
    t0 = time.monotonic()
    reply = _reply(dealer, encode_record(meta, bomb))
    seconds = time.monotonic() - t0
    assert reply[0] == NACK_TAG and b"16-bit" in reply[2], reply
    grew = _peak_rss_mb(c.proc.pid) - before
    assert grew < 100 and seconds < 1.0, f"refusing it cost {grew:.0f} MB and {seconds:.2f} s"
    assert not meta_lines(out)


def test_json_nested_5000_deep_on_the_control_socket_leaves_marking_and_status_working(tmp_path, blur_model):
    import socket

    from inspectd.feedback.control import request

    d = Daemon(daemon_config(tmp_path, blur_model, free_port()))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(d.socket))
            s.sendall(DEEP + b"\n")
            answer = json.loads(s.recv(65536))
        assert answer["ok"] is False and answer["kind"] == "invalid", answer
        status = request(d.socket, {"op": "status"}, timeout=5)  # the control thread is alive
        assert status["ok"], status
        d.frames(3)
        assert d.wait_stored(1, 30)
        res = run_cli("mark", str(d.reject_seqs()[0]), "--good", "--config", str(d.socket.parent / "daemon.yaml"))
        assert res.returncode == 0, res.stderr
    finally:
        assert d.stop() == 0


def _limited(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The CLI with 2 GiB of address space, as on a small line PC (and so that a runaway read cannot hurt)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run(
        [sys.executable, "-m", "inspectd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        preexec_fn=limit,
    )


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_config_path_that_is_a_device_or_a_fifo_is_a_clear_error(tmp_path, command):
    res = _limited(command, "--config", "/dev/zero")
    assert res.returncode == 2 and "is a device" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    res = _limited(command, "--config", str(fifo), timeout=20)  # no writer ever opens it: a plain read blocks forever
    assert res.returncode == 2 and "is a FIFO" in res.stderr, res.stderr[-2000:]


def test_a_control_socket_path_naming_an_existing_file_is_refused_and_the_file_kept(tmp_path, blur_model):
    precious = tmp_path / "notes.txt"
    precious.write_text("the shift log\n")
    cfg = config(
        tmp_path, blur_model, "          type: synthetic", extra=f"        control:\n          socket: {precious}"
    )
    res = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert res.returncode == 2 and "is not a socket" in res.stderr, res.stderr
    res = run_cli("run", "--config", str(cfg), "--max-frames", "3", timeout=120)
    assert res.returncode == 2 and "is not a socket" in res.stderr, res.stderr[-2000:]
    assert precious.read_text() == "the shift log\n"


def test_check_config_refuses_a_missing_camera_folder_and_an_unwritable_reject_store(tmp_path, blur_model):
    (tmp_path / "rejects").write_text("a file where the reject store's directory should be\n")
    cam = f"          type: folder\n          path: {tmp_path / 'no-such-folder'}"
    extra = "        rejects:\n          dir: rejects"
    cfg = config(tmp_path, blur_model, cam, extra=extra)
    res = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "camera.path: folder" in res.stderr and "does not exist" in res.stderr, res.stderr
    assert "rejects.dir" in res.stderr and "not a directory" in res.stderr, res.stderr
    # and `run` refuses it as check-config said (the reject store cannot be opened)
    (tmp_path / "no-such-folder").mkdir()
    res = run_cli("run", "--config", str(cfg), "--max-frames", "1", timeout=120)
    assert res.returncode == 2 and "rejects" in res.stderr, res.stderr[-2000:]
