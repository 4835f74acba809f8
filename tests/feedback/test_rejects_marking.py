"""Marking stored rejects good or bad: idempotent, conflicts refused, clear errors, the PLC and control-socket paths."""

from __future__ import annotations

import json
import socket

import pytest

from inspectd.daemon.controls import DaemonControls
from inspectd.feedback.channel import Feedback
from inspectd.feedback.config import RejectsConfig
from inspectd.feedback.control import ControlError, request
from inspectd.feedback.marking import Marker, MarkError
from inspectd.feedback.protocol import encode_record, parse_record
from inspectd.feedback.rejects import RejectStore
from inspectd.feedback.spool import Spool
from tests.support.collector import SHA, reject
from tests.support.net import wait_until


@pytest.fixture
def parts(tmp_path):
    store = RejectStore(
        RejectsConfig(dir=tmp_path / "rejects", queue_size=64),
        line="line-7",
        camera="synthetic",
        model_sha256=SHA,
        model_name="m",
        pixel_threshold=0.3,
    )
    spool = Spool(tmp_path / "spool")
    for seq in (1, 2, 3, 65537):
        store.emit(reject(seq, item_id=seq % 1000))
    assert store.wait_idle(10)
    yield store, spool
    store.close()


def test_marking_good_spools_one_record_and_marking_again_changes_nothing(parts):
    store, spool = parts
    marker = Marker(store, spool)
    first = marker.mark(mark="good", source="cli", seq=2)
    again = marker.mark(mark="good", source="cli", seq=2)
    assert first["already"] is False and again["already"] is True
    assert first["record_id"] == again["record_id"] == store.find(seq=2).id
    assert spool.ids() == [first["record_id"]]
    raw_meta, image = spool.read(first["record_id"])
    meta = json.loads(raw_meta)
    assert meta["mark"] == "good" and meta["seq"] == 2 and meta["item_id"] == 2 and meta["marked_by"] == "cli"
    assert image == store.read_image(store.find(seq=2))
    # what the collector will check
    parsed, _ = parse_record(encode_record(meta, image), max_image_bytes=1 << 20)
    assert parsed.id == first["record_id"]


def test_a_mark_cannot_be_changed_and_the_error_names_the_earlier_one(parts):
    store, spool = parts
    marker = Marker(store, spool)
    marker.mark(mark="good", source="plc", seq=1)
    with pytest.raises(MarkError, match=r"already marked good .* by plc") as exc:
        marker.mark(mark="bad", source="cli", seq=1)
    assert exc.value.kind == "conflict" and spool.depth == 1
    bad = marker.mark(mark="bad", source="cli", seq=3)
    assert json.loads(spool.read(bad["record_id"])[0])["mark"] == "bad"


def test_an_unknown_or_expired_seq_is_a_clear_error(parts):
    store, spool = parts
    marker = Marker(store, spool)
    with pytest.raises(MarkError, match="unknown or expired seq 99: no stored reject") as exc:
        marker.mark(mark="good", source="cli", seq=99)
    assert exc.value.kind == "unknown"
    with pytest.raises(MarkError, match="out of range"):
        marker.mark(mark="good", source="plc", plc=70000)
    with pytest.raises(MarkError, match="'good' or 'bad'"):
        marker.mark(mark="maybe", source="cli", seq=1)
    assert spool.depth == 0


def test_marks_survive_a_restart_so_a_repeated_mark_makes_no_second_record(parts, tmp_path):
    store, spool = parts
    rid = Marker(store, spool).mark(mark="good", source="cli", seq=3)["record_id"]
    spool.remove(rid)  # sent and acknowledged
    store.close()
    store2 = RejectStore(store.cfg, line="line-7", camera="synthetic", model_sha256=SHA, pixel_threshold=0.3)
    answer = Marker(store2, Spool(tmp_path / "spool")).mark(mark="good", source="cli", seq=3)
    assert answer["already"] is True and answer["record_id"] == rid
    store2.close()


def test_the_plc_register_marks_the_newest_reject_with_that_16_bit_seq_without_waiting(parts):
    store, spool = parts
    marker = Marker(store, spool)
    marker.start()
    controls = DaemonControls(pipeline=None, mark_good=marker.submit_plc_good)
    controls.false_reject(2, source="plc")  # daemon seq 65537 is PLC seq 2 and newer than seq 2
    controls.false_reject(500, source="plc")  # unknown: logged, never raised
    assert wait_until(lambda: spool.depth == 1, 10)
    marker.close()
    assert json.loads(spool.read(spool.ids()[0])[0])["seq"] == 65537


def test_the_control_socket_marks_reports_status_and_answers_bad_requests(parts, tmp_path):
    store, spool = parts
    fb = Feedback(store, spool, None, tmp_path / "ctl.sock")
    fb.start()
    try:
        path = tmp_path / "ctl.sock"
        ok = request(path, {"op": "mark", "seq": 1, "mark": "good"})
        assert ok["ok"] and ok["seq"] == 1 and ok["spool_depth"] == 1
        by_id = request(path, {"op": "mark", "reject_id": ok["record_id"], "mark": "good"})
        assert by_id["ok"] and by_id["already"]
        unknown = request(path, {"op": "mark", "seq": 1234, "mark": "good"})
        assert not unknown["ok"] and unknown["kind"] == "unknown" and "1234" in unknown["error"]
        status = request(path, {"op": "status"})
        assert status["rejects"]["count"] == 4 and status["spool"]["depth"] == 1
        assert request(path, {"op": "reboot"})["kind"] == "invalid"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # not JSON: an answer, and the server lives on
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(b"hello\n")
            assert json.loads(s.recv(4096))["kind"] == "invalid"
        assert request(path, {"op": "status"})["ok"]
    finally:
        fb.close()
    assert not (tmp_path / "ctl.sock").exists()
    with pytest.raises(ControlError, match="no daemon is listening"):
        request(tmp_path / "ctl.sock", {"op": "status"})


def test_a_stale_control_socket_of_a_killed_daemon_is_replaced_and_a_live_one_is_refused(tmp_path):
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what SIGKILL leaves behind
    fb = Feedback(control_path=path)
    fb.start()
    try:
        assert request(path, {"op": "status"})["ok"]
        with pytest.raises(OSError, match="in use by another running daemon"):
            Feedback(control_path=path)
        assert request(path, {"op": "mark", "seq": 1, "mark": "good"})["kind"] == "unavailable"
    finally:
        fb.close()


def test_a_mark_that_cannot_be_spooled_fails_clearly_and_can_be_made_again(parts, monkeypatch):
    import errno

    from inspectd.feedback import spool as spool_module

    store, spool = parts
    marker = Marker(store, spool)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_atomic", full)
    with pytest.raises(MarkError, match=r"could not be written .*No space left") as exc:
        marker.mark(mark="good", source="cli", seq=2)
    assert exc.value.kind == "failed" and store.find(seq=2).mark is None and spool.depth == 0
    monkeypatch.undo()
    assert marker.mark(mark="good", source="cli", seq=2)["already"] is False
