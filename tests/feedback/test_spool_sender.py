"""The sender over real ZeroMQ sockets: acks delete, silence resends with backoff, nacks set aside, a down collector
costs nothing but time."""

from __future__ import annotations

import time

import zmq

from inspectd.feedback.config import FeedbackConfig
from inspectd.feedback.protocol import ACK_TAG, RECORD_TAG
from inspectd.feedback.sender import Sender
from inspectd.feedback.spool import Spool
from tests.collector.test_collector import Running
from tests.support.collector import meta_lines, record
from tests.support.net import free_port, wait_until


def _cfg(endpoint: str, tmp_path, **kw) -> FeedbackConfig:
    base = {
        "collector": endpoint,
        "spool_dir": tmp_path / "spool",
        "ack_timeout_s": 0.5,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.4,
        "flush_timeout_s": 1.0,
        "log_interval_s": 0.2,
    }
    base.update(kw)
    return FeedbackConfig(**base)


def test_every_record_reaches_the_collector_and_leaves_the_spool_only_on_its_ack(tmp_path):
    spool = Spool(tmp_path / "spool")
    for i in range(60):
        spool.put(f"r{i:03d}", *record(f"r{i:03d}", seed=i))
    coll = Running(tmp_path / "out")
    sender = Sender(spool, _cfg(coll.collector.endpoint, tmp_path, in_flight=8))
    try:
        sender.start()
        assert wait_until(lambda: spool.depth == 0, 20)
    finally:
        sender.close()
        coll.close()
    ids = [m["id"] for m in meta_lines(tmp_path / "out")]
    assert sorted(ids) == [f"r{i:03d}" for i in range(60)]
    assert sender.stats.acked == 60 and not list((tmp_path / "spool").glob("*.rec"))


def test_a_record_without_an_ack_is_resent_after_the_timeout_with_the_same_id(tmp_path):
    port = free_port()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    spool = Spool(tmp_path / "spool")
    spool.put("once", *record("once"))
    sender = Sender(spool, _cfg(f"tcp://127.0.0.1:{port}", tmp_path), context=ctx)
    t_start = time.monotonic()  # the first send comes after this, the resend >= ack_timeout_s (0.5 s) after that
    sender.start()
    try:
        assert router.poll(5000)
        first = router.recv_multipart()
        assert first[1] == RECORD_TAG  # ... and the "collector" loses it: no ack
        assert router.poll(10000)
        second = router.recv_multipart()
        waited = time.monotonic() - t_start
        assert second[1:] == first[1:], "a resend carries the same id and bytes"
        assert waited >= 0.5, f"resent after {waited:.2f} s, before the 0.5 s ack timeout"
        assert spool.depth == 1, "still spooled until acknowledged"
        router.send_multipart([second[0], ACK_TAG, b"once"])
        # the spool entry goes first, then the counter: wait for both
        assert wait_until(lambda: spool.depth == 0 and sender.stats.acked == 1, 10)
        assert sender.stats.resent >= 1
    finally:
        sender.close()
        router.close()
        ctx.term()


def test_a_record_the_collector_refuses_is_moved_aside_instead_of_resent_forever(tmp_path):
    spool = Spool(tmp_path / "spool")
    meta, png = record("odd", model_sha256="not-a-hash")
    spool.put("odd", meta, png)
    spool.put("fine", *record("fine"))
    coll = Running(tmp_path / "out")
    sender = Sender(spool, _cfg(coll.collector.endpoint, tmp_path))
    try:
        sender.start()
        assert wait_until(lambda: spool.depth == 0, 10)
    finally:
        sender.close()
        coll.close()
    assert sender.stats.refused == 1 and sender.stats.acked == 1
    assert (tmp_path / "spool" / "refused" / "odd.rec").exists()
    assert "model_sha256" in (tmp_path / "spool" / "refused" / "odd.rec.reason.txt").read_text()


def test_with_the_collector_down_records_stay_spooled_and_closing_is_bounded(tmp_path):
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.put(f"r{i}", *record(f"r{i}"))
    sender = Sender(spool, _cfg(f"tcp://127.0.0.1:{free_port()}", tmp_path, flush_timeout_s=0.5))
    sender.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    sender.close()
    assert time.monotonic() - t0 < 2.0
    assert spool.depth == 3 and sender.stats.sent == 0
