"""The false-reject loop end to end with real processes and sockets: `inspectd run` (reject store, control socket,
spool, sender) -> `inspectd collect`, through collector outages, SIGKILLs and malformed traffic."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import zmq

from inspectd.feedback.protocol import ACK_TAG, NACK_TAG, RECORD_TAG, encode_record
from tests.support.collector import Daemon, collector, daemon_config, meta_lines, png, record
from tests.support.helpers import make_blur_model, run_cli, verify_systemd_unit
from tests.support.net import free_port, wait_until


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    # rejects nearly every synthetic fabric frame: plenty of rejects to mark
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _spooled(cfg: Path) -> list[Path]:
    return sorted((cfg.parent / "spool").glob("*.rec"))


def _take_rejects(d: Daemon, n: int, timeout: float = 60) -> list[int]:
    """Trigger frames until n rejects are stored (the blur model rejects nearly all); their seqs, oldest first.
    Frames go in batches smaller than the store's writer queue, so few rejects are dropped on this slow disk."""
    deadline = time.monotonic() + timeout
    asked = 0
    while (stored := d.status()["rejects"]["count"]) < n:
        assert time.monotonic() < deadline, f"only {stored} rejects stored"
        batch = min(48, n - stored + 2)
        d.frames(batch)
        asked += batch
        assert wait_until(lambda n=asked: len(d.events("verdict")) >= n, 30)
        assert wait_until(lambda: d.status()["rejects"]["queued"] == 0, 10)
    # the store's own files: a reject the writer had to drop (queue full, logged) is in the log but not stored
    metas = [json.loads(p.read_text()) for p in (d.socket.parent / "rejects").glob("*.json")]
    return sorted(m["seq"] for m in metas)[:n]


def _mark(d: Daemon, seqs, mark: str = "good") -> list[str]:
    ids = []
    for seq in seqs:
        answer = d.request({"op": "mark", "seq": seq, "mark": mark})
        assert answer["ok"], answer
        ids.append(answer["record_id"])
    return ids


def test_with_the_collector_down_for_the_whole_run_every_record_arrives_once_it_is_started(tmp_path, blur_model):
    port = free_port()
    cfg = daemon_config(tmp_path, blur_model, port)
    d = Daemon(cfg)
    try:
        seqs = _take_rejects(d, 24)
        # the real CLI: success, idempotent repeat, conflicting mark, unknown seq
        res = run_cli("mark", str(seqs[0]), "--good", "--config", str(cfg), timeout=60)
        assert res.returncode == 0 and "marked good" in res.stdout, res.stderr
        res = run_cli("mark", str(seqs[0]), "--good", "--config", str(cfg), timeout=60)
        assert res.returncode == 0 and "was already marked good" in res.stdout, res.stderr
        res = run_cli("mark", str(seqs[0]), "--bad", "--config", str(cfg), timeout=60)
        assert res.returncode == 2 and "already marked good" in res.stderr
        res = run_cli("mark", "99999", "--good", "--config", str(cfg), timeout=60)
        assert res.returncode == 2 and "unknown or expired seq 99999" in res.stderr
        good = _mark(d, seqs[1:16], "good")
        bad = _mark(d, seqs[16:20], "bad")
        assert len(_spooled(cfg)) == 20
        time.sleep(1.0)  # the sender is trying, the collector is not there
        assert len(_spooled(cfg)) == 20 and d.wait_event("collector_unreachable", 5)
        assert wait_until(lambda: any(e.get("depth") == 20 for e in d.events("spool")), 5), "spool depth is logged"

        out = tmp_path / "out"
        c = collector(f"tcp://127.0.0.1:{port}", out)
        try:
            assert wait_until(lambda: len(meta_lines(out)) >= 20 and not _spooled(cfg), 30), meta_lines(out)
        finally:
            assert c.stop() == 0
    finally:
        assert d.stop() == 0
    lines = meta_lines(out)
    assert len(lines) == 20 == len({m["id"] for m in lines})
    by_mark = {m["id"]: m["mark"] for m in lines}
    first = d.events("marked")[0]["id"]
    assert {k for k, v in by_mark.items() if v == "good"} == {first, *good}
    assert {k for k, v in by_mark.items() if v == "bad"} == set(bad)
    assert len(list((out / "train" / "good").glob("*.png"))) == 16
    assert len(list((out / "test" / "confirmed_defect").glob("*.png"))) == 4
    assert all(m["line"] == "line-7" and m["camera"] == "synthetic" and len(m["model_sha256"]) == 64 for m in lines)
    res = run_cli("mark", str(seqs[21]), "--good", "--config", str(cfg), timeout=60)
    assert res.returncode == 2 and "no daemon is listening" in res.stderr


def test_the_plcs_false_reject_register_marks_the_item_good_and_it_reaches_the_collector(tmp_path, blur_model):
    from tests.support.plc import plc_client

    port, modbus = free_port(), free_port()
    out = tmp_path / "out"
    plc = f"plc:\n  heartbeat_interval_s: 0.1\n  server:\n    host: 127.0.0.1\n    port: {modbus}\n"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    d = Daemon(daemon_config(tmp_path, blur_model, port, extra=plc))
    client = plc_client(modbus)
    try:
        seq = _take_rejects(d, 5)[2]
        assert not client.write_register(21, seq).isError()  # the operator found item `seq` good
        assert wait_until(lambda: len(meta_lines(out)) == 1, 20), d.events("false_reject_failed")
        assert wait_until(lambda: client.read_holding_registers(21, count=1).registers == [0], 5)
    finally:
        client.close()
        c.stop()
        d.stop()
    (line,) = meta_lines(out)
    assert line["seq"] == seq and line["plc_seq"] == seq and line["mark"] == "good" and line["marked_by"] == "plc"


def test_a_collector_killed_mid_stream_and_restarted_loses_nothing_and_stores_nothing_twice(tmp_path, blur_model):
    port = free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    d = Daemon(daemon_config(tmp_path, blur_model, port))
    try:
        seqs = _take_rejects(d, 300)
        ids: list[str] = []
        marking = threading.Thread(target=lambda: ids.extend(_mark(d, seqs)), daemon=True)
        marking.start()
        assert wait_until(lambda: len(meta_lines(out)) >= 40, 30)
        c.kill()  # SIGKILL: no goodbye, acks in flight are lost
        at_kill = len(meta_lines(out))
        assert at_kill < 300, "the kill came after the stream had ended"
        time.sleep(0.5)
        c = collector(f"tcp://127.0.0.1:{port}", out)
        marking.join(60)
        assert not marking.is_alive() and len(ids) == 300
        assert wait_until(lambda: d.status()["spool"]["depth"] == 0, 40), d.status()
    finally:
        c.stop()
        d.stop()
    lines = meta_lines(out)
    assert len(lines) == 300, f"{len(lines)} lines"
    assert sorted(m["id"] for m in lines) == sorted(ids), "every record exactly once"
    assert len(list((out / "train" / "good").glob("*.png"))) == 300
    assert not list((out / "train" / "good").glob(".*")), "no temp files left"


def test_records_spooled_by_a_daemon_killed_with_sigkill_are_sent_after_its_restart(tmp_path, blur_model):
    port = free_port()
    cfg = daemon_config(tmp_path, blur_model, port)
    d = Daemon(cfg)
    seqs = _take_rejects(d, 15)
    ids = _mark(d, seqs[:10])
    d.kill()  # SIGKILL with everything still spooled (no collector)
    assert sorted(p.stem for p in _spooled(cfg)) == sorted(ids)
    assert (tmp_path / "ctl.sock").exists(), "a killed daemon leaves its socket behind"

    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    d = Daemon(cfg)  # same config: same store, spool and (stale) socket
    try:
        assert wait_until(lambda: len(meta_lines(out)) >= 10 and not _spooled(cfg), 30)
        status = d.status()
        assert status["rejects"]["count"] >= 15, "the reject store survived the kill"
        again = d.request({"op": "mark", "reject_id": ids[0], "mark": "good"})
        assert again["ok"] and again["already"], again
    finally:
        c.stop()
        d.stop()
    assert sorted(m["id"] for m in meta_lines(out)) == sorted(ids)


def test_a_thousand_records_go_end_to_end(tmp_path, blur_model):
    port = free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    d = Daemon(daemon_config(tmp_path, blur_model, port, max_count=1200))
    try:
        seqs = _take_rejects(d, 1000, timeout=90)
        t0 = time.monotonic()
        ids = _mark(d, seqs)
        t_marked = time.monotonic() - t0
        assert wait_until(lambda: len(meta_lines(out)) >= 1000, 60)
        t_all = time.monotonic() - t0
        assert wait_until(lambda: d.status()["spool"]["depth"] == 0, 20)
    finally:
        c.stop()
        d.stop()
    lines = meta_lines(out)
    assert len(lines) == 1000 and sorted(m["id"] for m in lines) == sorted(ids)
    assert len(list((out / "train" / "good").glob("*.png"))) == 1000
    report = {
        "records": 1000,
        "marking_s": round(t_marked, 2),
        "end_to_end_s": round(t_all, 2),
        "records_per_s": round(1000 / t_all, 1),
    }
    print(json.dumps(report))
    (Path(os.environ.get("INSPECTD_BENCH_OUT", tmp_path)) / "feedback_1000.json").write_text(json.dumps(report))


def test_every_kind_of_malformed_message_is_refused_while_good_ones_keep_flowing(tmp_path):
    port = free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out, "--max-image-mb", "0.1")
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")

    def reply(frames: list[bytes]) -> list[bytes] | None:
        dealer.send_multipart(frames)
        return dealer.recv_multipart() if dealer.poll(5000) else None

    meta, image = record("m-1")
    raw = json.dumps(meta).encode()
    big = png(400, 400, seed=3)  # noise compresses badly: > 100 KiB
    assert len(big) > 100 * 1024
    malformed = {
        "one frame": ([b"hello"], "expected 3 frames"),
        "two frames": ([RECORD_TAG, raw], "expected 3 frames"),
        "four frames": ([RECORD_TAG, raw, image, b"extra"], "expected 3 frames"),
        "wrong tag": ([b"inspectd.other.v9", raw, image], "unknown protocol tag"),
        "bad json": ([RECORD_TAG, b"{not json", image], "not valid UTF-8 JSON"),
        "json not an object": ([RECORD_TAG, b"[1, 2]", image], "must be a JSON object"),
        "schema": ([RECORD_TAG, json.dumps({**meta, "seq": "five"}).encode(), image], "record schema"),
        "path in id": ([RECORD_TAG, json.dumps({**meta, "id": "../../etc/x"}).encode(), image], "record schema"),
        "huge meta": ([RECORD_TAG, json.dumps({**meta, "pad": "x" * 70_000}).encode(), image], "meta_json is"),
        "not an image": ([RECORD_TAG, raw, b"GIF89a" + b"\0" * 100], "not a PNG"),
        "corrupt png": ([RECORD_TAG, raw, image[:40] + b"\0" * 200], "does not decode"),
        "oversized": ([RECORD_TAG, json.dumps({**meta, "width": 400, "height": 400}).encode(), big], "limit"),
        "size mismatch": ([RECORD_TAG, json.dumps({**meta, "width": 33}).encode(), image], "33x24"),
    }
    good_ids = []
    try:
        for i, (name, (frames, reason)) in enumerate(malformed.items()):
            answer = reply(frames)
            assert answer is not None and answer[0] == NACK_TAG, f"{name}: {answer}"
            assert reason in answer[2].decode(), f"{name}: {answer[2]!r}"
            rid = f"good-{i}"
            assert reply(encode_record(*record(rid, seed=i))) == [ACK_TAG, rid.encode()], name
            good_ids.append(rid)
        # a frame far beyond the limit: ZeroMQ drops that connection before it is read into memory
        rogue = ctx.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(f"tcp://127.0.0.1:{port}")
        rogue.send_multipart([RECORD_TAG, raw, b"\0" * (3 * 1024 * 1024)])
        assert rogue.poll(1000) == 0
        rogue.close()
        assert reply(encode_record(*record("after-rogue"))) == [ACK_TAG, b"after-rogue"]
        good_ids.append("after-rogue")
        assert c.proc.poll() is None, "the collector keeps serving"
    finally:
        ctx.destroy(linger=0)  # closes the sockets a failed assertion left open; term() would wait for them forever
        assert c.stop() == 0
    assert [m["id"] for m in meta_lines(out)] == good_ids
    refused = c.events("refused")
    assert len(refused) == len(malformed) and all(e["level"] == "warning" for e in refused)
    assert c.events("collector_summary")[-1]["refused"] == len(malformed)


def test_the_collector_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    unit = verify_systemd_unit(tmp_path, "inspectd-collect.service")
    for needed in (
        "Type=notify",
        "StateDirectory=inspectd-collect",
        "collect --bind",
        "--out /var/lib/inspectd-collect",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ):
        assert needed in unit
