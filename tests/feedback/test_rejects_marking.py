"""Marking stored rejects good or bad: idempotent, conflicts refused, clear errors, the PLC and control-socket paths."""

from __future__ import annotations

import json
import socket

import pytest

from inspectd.daemon.controls import DaemonControls
from inspectd.feedback.channel import Feedback
from inspectd.feedback.config import RejectsConfig
from inspectd.feedback.control import ControlError, request
from inspectd.feedback.journal import MarkJournal
from inspectd.feedback.marking import Marker
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


def _marker(store, spool) -> Marker:
    return Marker(store, spool, MarkJournal(spool.dir))


def test_marking_good_spools_one_record_and_marking_again_changes_nothing(parts):
    store, spool = parts
    marker = _marker(store, spool)
    first = marker.mark(mark="good", source="cli", seq=2)
    again = marker.mark(mark="good", source="cli", seq=2)
    assert first.outcome == "marked" and again.outcome == "already" and first.ok and again.ok
    assert first.record_id == again.record_id == store.find(seq=2).id
    assert spool.ids() == [first.record_id]
    raw_meta, image = spool.read(first.record_id)
    meta = json.loads(raw_meta)
    assert meta["mark"] == "good" and meta["seq"] == 2 and meta["item_id"] == 2 and meta["marked_by"] == "cli"
    assert image == store.read_image(store.find(seq=2))
    # what the collector will check
    parsed, _ = parse_record(encode_record(meta, image), max_image_bytes=1 << 20)
    assert parsed.id == first.record_id
    assert marker.journal.get(first.record_id)["mark"] == "good", "the journal holds the mark"


def test_a_mark_cannot_be_changed_and_the_error_names_the_earlier_one(parts):
    store, spool = parts
    marker = _marker(store, spool)
    marker.mark(mark="good", source="plc", seq=1)
    conflict = marker.mark(mark="bad", source="cli", seq=1)
    assert not conflict.ok and conflict.outcome == "conflict" and spool.depth == 1
    assert "already marked good" in conflict.reason and "by plc" in conflict.reason
    bad = marker.mark(mark="bad", source="cli", seq=3)
    assert json.loads(spool.read(bad.record_id)[0])["mark"] == "bad"


def test_an_unknown_or_expired_seq_is_a_clear_error(parts):
    store, spool = parts
    marker = _marker(store, spool)
    unknown = marker.mark(mark="good", source="cli", seq=99)
    assert unknown.outcome == "unknown" and "unknown or expired seq 99: no stored reject" in unknown.reason
    wrapped = marker.mark(mark="good", source="plc", plc=70000)
    assert wrapped.outcome == "invalid" and "out of range" in wrapped.reason
    maybe = marker.mark(mark="maybe", source="cli", seq=1)
    assert maybe.outcome == "invalid" and "'good' or 'bad'" in maybe.reason
    assert spool.depth == 0


def test_marks_survive_a_restart_so_a_repeated_mark_makes_no_second_record(parts, tmp_path):
    store, spool = parts
    rid = _marker(store, spool).mark(mark="good", source="cli", seq=3).record_id
    spool.remove(rid)  # sent and acknowledged
    store.close()
    store2 = RejectStore(store.cfg, line="line-7", camera="synthetic", model_sha256=SHA, pixel_threshold=0.3)
    answer = _marker(store2, Spool(tmp_path / "spool")).mark(mark="good", source="cli", seq=3)
    assert answer.outcome == "already" and answer.record_id == rid
    store2.close()


def test_the_journal_not_the_store_decides_so_a_lost_store_write_cannot_let_a_conflicting_mark_through(parts, tmp_path):
    store, spool = parts
    rid = _marker(store, spool).mark(mark="good", source="cli", seq=3).record_id
    spool.remove(rid)  # sent and acknowledged: only the journal remembers now
    store.close()
    meta = json.loads((tmp_path / "rejects" / f"{rid}.json").read_text())
    (tmp_path / "rejects" / f"{rid}.json").write_text(json.dumps(dict(meta, mark=None)))  # lost to a power cut
    store2 = RejectStore(store.cfg, line="line-7", camera="synthetic", model_sha256=SHA, pixel_threshold=0.3)
    marker = _marker(store2, Spool(tmp_path / "spool"))
    assert marker.recover()["marks"] == 1 and store2.find(seq=3).mark["mark"] == "good", "the store is corrected"
    answer = marker.mark(mark="bad", source="cli", seq=3)
    assert answer.outcome == "conflict" and "already marked good" in answer.reason
    store2.close()


def test_a_spool_record_written_just_before_a_crash_is_taken_as_the_mark_at_the_next_start(parts, tmp_path):
    store, spool = parts
    entry = store.find(seq=1)
    meta = {k: v for k, v in entry.meta.items() if k not in ("image", "overlay", "mark", "wall_time")}
    spool.put(entry.id, dict(meta, mark="bad", marked_at="t", marked_by="cli"), store.read_image(entry), publish=False)
    # the crash: no journal entry was written; the next start finds the record
    marker = _marker(store, Spool(tmp_path / "spool"))
    assert marker.recover()["recovered"] == 1
    assert marker.mark(mark="good", source="plc", plc=1).outcome == "conflict"
    assert marker.mark(mark="bad", source="cli", seq=1).outcome == "already"


def test_the_plc_register_marks_the_newest_reject_with_that_16_bit_seq_without_waiting(parts):
    store, spool = parts
    fb = Feedback(store, spool)
    fb.marker.start()
    answers: list[str] = []
    controls = DaemonControls(pipeline=None, mark_good=fb.mark_good)
    controls.false_reject(2, source="plc", on_done=answers.append)  # daemon seq 65537 is PLC seq 2, newer than 2
    controls.false_reject(500, source="plc", on_done=answers.append)  # unknown: answered, never raised
    assert wait_until(lambda: len(answers) == 2, 10)
    fb.marker.close()
    assert answers == ["marked", "unknown"] and spool.depth == 1
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
    marker = _marker(store, spool)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_atomic", full)
    failed = marker.mark(mark="good", source="cli", seq=2)
    assert failed.outcome == "failed" and "could not be written" in failed.reason and "No space left" in failed.reason
    assert store.find(seq=2).mark is None and spool.depth == 0 and marker.journal.get(store.find(seq=2).id) is None
    monkeypatch.undo()
    assert marker.mark(mark="good", source="cli", seq=2).outcome == "marked"


def test_a_mark_whose_journal_entry_cannot_be_written_withdraws_its_spool_record(parts, monkeypatch):
    import errno

    store, spool = parts
    marker = _marker(store, spool)

    def full(_entry):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(marker.journal, "append", full)
    failed = marker.mark(mark="good", source="cli", seq=2)
    assert failed.outcome == "failed" and "could not be recorded" in failed.reason
    assert spool.depth == 0 and list(spool.dir.glob("*.rec")) == [], "the record never reached the sender"
    monkeypatch.undo()
    assert marker.mark(mark="good", source="cli", seq=2).outcome == "marked" and spool.depth == 1
