"""ZeroMQ CURVE on the false-reject channel: `inspectd keygen` makes key pairs; a collector started with
--curve-secret-key / --curve-allowed-clients stores nothing from a plain client or from a client whose key is not
allowed, and the daemon with `feedback.curve` keys delivers its marks as before."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from inspectd.feedback.protocol import encode_record
from tests.support.collector import Daemon, collector, daemon_config, meta_lines, record
from tests.support.helpers import make_blur_model, run_cli
from tests.support.net import free_port, wait_until


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _dealer(ctx, endpoint: str, keys: tuple[bytes, bytes, bytes] | None):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = keys
    s.connect(endpoint)
    return s


def test_curve_collector_refuses_unauthenticated_clients_and_serves_the_allowed_line_pc(tmp_path, blur_model):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("collector", "line-7", "intruder"):
        res = run_cli("keygen", "--out", str(keys), "--name", name, timeout=60)
        assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((keys / "line-7.key_secret").stat().st_mode) == 0o600
    assert run_cli("keygen", "--out", str(keys), "--name", "line-7", timeout=60).returncode == 2, "never overwritten"
    allowed.mkdir()
    (allowed / "line-7.key").write_bytes((keys / "line-7.key").read_bytes())
    res = run_cli(
        "collect",
        "--bind",
        "tcp://127.0.0.1:1",
        "--out",
        str(tmp_path / "x"),
        "--curve-secret-key",
        str(keys / "collector.key"),
        "--curve-allowed-clients",
        str(allowed),
        timeout=60,
    )
    assert res.returncode == 2 and "no secret key" in res.stderr, "a public key file is not a secret key"

    port = free_port()
    out = tmp_path / "out"
    c = collector(
        f"tcp://127.0.0.1:{port}",
        out,
        "--curve-secret-key",
        str(keys / "collector.key_secret"),
        "--curve-allowed-clients",
        str(allowed),
    )
    server_public, _ = zmq.auth.load_certificate(keys / "collector.key")
    ctx = zmq.Context()
    try:
        plain = _dealer(ctx, f"tcp://127.0.0.1:{port}", None)
        plain.send_multipart(encode_record(*record("plain-1")))  # queued; the CURVE handshake never completes
        assert plain.poll(1500) == 0, "a plain client gets no answer"
        intruder = _dealer(
            ctx, f"tcp://127.0.0.1:{port}", (server_public, *zmq.auth.load_certificate(keys / "intruder.key_secret"))
        )
        intruder.send_multipart(encode_record(*record("intruder-1")))
        assert intruder.poll(1500) == 0, "a client whose key is not allowed gets no answer"
        line = _dealer(
            ctx, f"tcp://127.0.0.1:{port}", (server_public, *zmq.auth.load_certificate(keys / "line-7.key_secret"))
        )
        line.send_multipart(encode_record(*record("line-7-direct")))
        assert line.poll(5000) and line.recv_multipart()[1] == b"line-7-direct"
        for s in (plain, intruder, line):
            s.close()
        # the daemon with feedback.curve: its marks arrive
        cfg = daemon_config(tmp_path, blur_model, port)
        cfg.write_text(
            cfg.read_text().replace(
                "  log_interval_s: 1\n",
                (
                    "  log_interval_s: 1\n  curve:\n"
                    f"    server_public_key: {keys / 'collector.key'}\n"
                    f"    client_secret_key: {keys / 'line-7.key_secret'}\n"
                ),
            )
        )
        d = Daemon(cfg)
        try:
            d.frames(10)
            assert wait_until(lambda: d.status()["rejects"]["count"] >= 3, 30)
            seqs = d.reject_seqs()[:3]
            ids = [d.request({"op": "mark", "seq": s, "mark": "good"})["record_id"] for s in seqs]
            assert wait_until(lambda: len(meta_lines(out)) == 4, 20), meta_lines(out)
        finally:
            assert d.stop() == 0
    finally:
        ctx.destroy(linger=0)  # closes the sockets a failed assertion left open; term() would wait for them forever
        assert c.stop() == 0
    assert sorted(m["id"] for m in meta_lines(out)) == sorted(["line-7-direct", *ids])
    assert c.events("curve_enabled")
