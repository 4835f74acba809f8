"""The collector in-process over real ZeroMQ sockets: store-then-ack, de-duplication, restarts, disk failures."""

from __future__ import annotations

import threading

import pytest
import zmq

from inspectd.collector.dataset import Dataset
from inspectd.collector.server import Collector
from inspectd.feedback.protocol import ACK_TAG, NACK_TAG, encode_record
from tests.support.collector import meta_lines, record


class Running:
    def __init__(self, out, **kw) -> None:
        self.ctx = zmq.Context()
        self.collector = Collector("tcp://127.0.0.1:*", Dataset(out), context=self.ctx, **kw)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.collector.serve, args=(self.stop,), daemon=True)
        self.thread.start()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.RCVTIMEO, 5000)
        self.dealer.connect(self.collector.endpoint)

    def send(self, meta, png) -> list[bytes]:
        self.dealer.send_multipart(encode_record(meta, png))
        return self.dealer.recv_multipart()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.dealer.close()
        self.collector.close()
        self.ctx.term()


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path / "out")
    yield r
    r.close()


def test_a_record_is_stored_in_the_mvtec_layout_before_its_ack(running, tmp_path):
    assert running.send(*record("a-1", "good")) == [ACK_TAG, b"a-1"]
    assert running.send(*record("a-2", "bad", seed=2)) == [ACK_TAG, b"a-2"]
    out = tmp_path / "out"
    assert (out / "train" / "good" / "a-1.png").read_bytes() == record("a-1")[1]
    assert (out / "test" / "confirmed_defect" / "a-2.png").exists()
    lines = meta_lines(out)
    assert [m["id"] for m in lines] == ["a-1", "a-2"]
    first = lines[0]
    for key in ("line", "camera", "model_sha256", "seq", "item_id", "score", "time", "mark"):
        assert key in first
    assert first["file"] == "train/good/a-1.png" and first["defect_area"] == 12  # extra fields are kept


def test_a_resent_record_is_acknowledged_again_and_stored_once_even_across_a_restart(tmp_path):
    r = Running(tmp_path / "out")
    try:
        assert r.send(*record("dup")) == [ACK_TAG, b"dup"]
        assert r.send(*record("dup")) == [ACK_TAG, b"dup"]
    finally:
        r.close()
    r = Running(tmp_path / "out")
    try:
        assert r.send(*record("dup")) == [ACK_TAG, b"dup"]
        assert r.collector.duplicates == 1 and r.collector.stored == 0
    finally:
        r.close()
    assert [m["id"] for m in meta_lines(tmp_path / "out")] == ["dup"]


def test_a_meta_line_torn_by_a_crash_is_cut_off_and_that_record_taken_again(tmp_path):
    out = tmp_path / "out"
    r = Running(out)
    r.send(*record("kept"))
    r.close()
    with open(out / "meta.jsonl", "ab") as f:
        f.write(b'{"id": "torn", "mark": "go')  # the crash came mid-append: never acknowledged
    r = Running(out)
    try:
        assert r.send(*record("torn")) == [ACK_TAG, b"torn"]
    finally:
        r.close()
    assert [m["id"] for m in meta_lines(out)] == ["kept", "torn"]


def test_when_storing_fails_no_ack_is_sent_and_the_collector_keeps_serving(running, tmp_path, monkeypatch):
    real = running.collector.dataset.store
    calls = []

    def once_full(records):
        calls.append(len(records))
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(records)

    monkeypatch.setattr(running.collector.dataset, "store", once_full)
    running.dealer.send_multipart(encode_record(*record("x")))
    assert running.dealer.poll(1000) == 0, "no ack: the sender will resend"
    assert running.send(*record("x")) == [ACK_TAG, b"x"]
    assert [m["id"] for m in meta_lines(tmp_path / "out")] == ["x"]


def test_a_refusal_names_the_record_and_the_reason(running):
    meta, _ = record("r")
    meta["width"] = 40  # the PNG is 32 wide
    reply = running.send(meta, record("r")[1])
    assert reply[:2] == [NACK_TAG, b"r"] and b"32x24" in reply[2]


def test_readers_beside_a_running_collector_count_only_complete_lines(tmp_path):
    """A reader (`inspectd train --data` on the collector's directory, the tests) may read meta.jsonl while the
    collector appends to it: a last line without its newline is not a stored record yet, and must not crash it."""
    from inspectd.collector.dataset import read_records
    from inspectd.training.data import data_facts

    (tmp_path / "meta.jsonl").write_text(
        '{"id": "a", "mark": "good"}\n{"id": "b", "mark": "bad"}\n{"id": "c", "mark": "go'
    )
    assert [r["id"] for r in read_records(tmp_path)] == ["a", "b"]
    assert [r["id"] for r in meta_lines(tmp_path)] == ["a", "b"]
    collected = data_facts([], tmp_path)["collected"]
    assert collected["records"] == 2 and collected["good"] == 1 and collected["bad"] == 1
