"""Secure defaults of the false-reject channel (issue 24, item 5) on the real `inspectd collect`, real ZeroMQ CURVE
clients and the real CLI: a collector refuses to bind beyond loopback without CURVE keys unless told `--insecure`
(and then says so loudly); a line PC refuses a collector on another machine without keys unless `insecure: true`;
with CURVE, a line PC's key speaks for its own line only, so one line cannot forge another's training data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import zmq
import zmq.auth

from inspectd.feedback.protocol import ACK_TAG, NACK_TAG, encode_record
from tests.support.collector import collector, meta_lines, record
from tests.support.helpers import make_blur_model, popen_cli, run_cli
from tests.support.net import free_port
from tests.support.reliability import config


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _collect_exit(*args: str, wait_s: float = 10) -> tuple[int | None, str]:
    """Start `inspectd collect`; its exit code within wait_s (None: it was still running, and was stopped)."""
    p = popen_cli("collect", *args)
    try:
        code = p.wait(wait_s)
    except subprocess.TimeoutExpired:
        p.terminate()
        p.wait(10)
        return None, ""
    return code, p.stderr.read()


def test_the_collector_refuses_to_bind_beyond_loopback_without_curve_keys_unless_told_insecure(tmp_path):
    port = free_port()
    code, err = _collect_exit("--bind", f"tcp://0.0.0.0:{port}", "--out", str(tmp_path / "a"))
    assert code == 2, "a collector on every interface without CURVE must not start"
    assert "CURVE" in err and "--insecure" in err, err
    code, err = _collect_exit("--bind", f"tcp://*:{port}", "--out", str(tmp_path / "a"))
    assert code == 2, err
    # --insecure: it starts, and its log says at error level what that means
    c = collector(f"tcp://0.0.0.0:{port}", tmp_path / "b", "--insecure")
    try:
        (warning,) = c.events("collector_insecure")
        assert warning["level"] == "error" and "anyone" in warning["detail"]
    finally:
        assert c.stop() == 0
    # loopback needs nothing: this machine only
    c = collector(f"tcp://127.0.0.1:{port}", tmp_path / "c")
    assert not c.events("collector_insecure")
    assert c.stop() == 0


def test_a_line_pc_refuses_a_collector_on_another_machine_without_curve_unless_insecure(tmp_path, blur_model):
    extra = (
        "        rejects:\n          dir: rejects\n        feedback:\n          collector: tcp://10.20.30.40:5561\n"
        "          spool_dir: spool"
    )
    cfg = config(tmp_path, blur_model, "          type: synthetic", extra=extra)
    res = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert res.returncode == 2 and "no `curve:` section" in res.stderr and "insecure" in res.stderr, res.stderr
    cfg.write_text(cfg.read_text().replace("spool_dir: spool", "spool_dir: spool\n  insecure: true"))
    res = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert res.returncode == 0, res.stderr


def test_with_curve_a_line_pcs_key_speaks_for_its_own_line_only(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("collector", "line-1", "line-2"):
        assert run_cli("keygen", "--out", str(keys), "--name", name, timeout=60).returncode == 0
    allowed.mkdir()
    for name in ("line-1", "line-2"):
        (allowed / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    port = free_port()
    out = tmp_path / "out"
    c = collector(
        f"tcp://0.0.0.0:{port}",  # a plant-network bind: allowed, because CURVE is on
        out,
        "--curve-secret-key",
        str(keys / "collector.key_secret"),
        "--curve-allowed-clients",
        str(allowed),
    )
    server_public, _ = zmq.auth.load_certificate(keys / "collector.key")
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_serverkey = server_public
        s.curve_publickey, s.curve_secretkey = zmq.auth.load_certificate(keys / "line-2.key_secret")
        s.connect(f"tcp://127.0.0.1:{port}")
        # line-2 forges a record of line-1 (and would file it as a false reject in line-1's training data)
        s.send_multipart(encode_record(*record("forged-1", line="line-1")))
        assert s.poll(5000)
        reply = s.recv_multipart()
        assert reply[0] == NACK_TAG and b"key of line 'line-2'" in reply[2], reply
        s.send_multipart(encode_record(*record("own-1", line="line-2")))
        assert s.poll(5000) and s.recv_multipart() == [ACK_TAG, b"own-1"]
        s.close()
    finally:
        ctx.destroy(linger=0)
        assert c.stop() == 0
    assert [(m["id"], m["line"]) for m in meta_lines(out)] == [("own-1", "line-2")]
    assert c.events("curve_enabled")[0]["lines"] == ["line-1", "line-2"]
