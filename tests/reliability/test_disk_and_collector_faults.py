"""Storage faults: the reject store's disk fills up (inspection and the PLC are unaffected, the failure is logged,
what was stored can still be marked and reaches the collector, storing resumes when space is freed); the collector
is unreachable for long (the spool stays within its bounds, the oldest records are evicted first and logged, the
rest arrive once it is back)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.collector import Daemon, collector, daemon_config, meta_lines
from tests.support.helpers import make_blur_model
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client
from tests.support.reliability import assert_accounted, plc_section, plc_view, small_tmpfs


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


@pytest.fixture
def small_disk(tmp_path):
    """A 384 KiB tmpfs at tmp_path/rejects: a disk that really fills (ENOSPC). Needs mount rights (root)."""
    with small_tmpfs(tmp_path / "rejects") as where:
        yield where


def _stored(d: Daemon) -> list[dict]:
    return [json.loads(p.read_text()) for p in (d.socket.parent / "rejects").glob("*.json")]


def test_a_full_reject_store_disk_never_stops_inspection_and_loses_no_marked_record(tmp_path, blur_model, small_disk):
    port, modbus = free_port(), free_port()
    filler = small_disk / "filler.bin"
    filler.write_bytes(os.urandom(160 * 1024))  # someone else's file on the same disk
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    d = Daemon(
        daemon_config(
            tmp_path, blur_model, port, extra=plc_section(modbus).replace("        ", "", 1).replace("\n        ", "\n")
        )
    )
    plc = plc_client(modbus)
    try:
        for _ in range(6):  # 120 frames, nearly all rejects: the disk fills after a few
            d.frames(20)
            assert wait_until(lambda: d.status()["rejects"]["queued"] == 0, 20)
        assert wait_until(lambda: len(d.events("verdict")) >= 120, 30)
        st = d.status()["rejects"]
        assert st["write_failures"] > 0 and d.events("reject_store_write_failed"), st
        assert "No space left" in d.events("reject_store_write_failed")[0]["error"]
        v = plc_view(plc)
        assert v["state"] == 1 and v["ready"] and v["last_seq"] == 120 and v["frames"] == 120, v
        stored = _stored(d)
        assert stored, "some rejects were stored before the disk filled"
        assert not [p for p in small_disk.iterdir() if p.name.startswith(".")], "no temp files left behind"
        # the stored ones can be marked and reach the collector; one that was not stored is refused clearly
        ids = [d.request({"op": "mark", "seq": m["seq"], "mark": "good"})["record_id"] for m in stored]
        stored_seqs = {m["seq"] for m in stored}
        missing = next(v["seq"] for v in d.events("verdict") if v["code"] == "reject" and v["seq"] not in stored_seqs)
        answer = d.request({"op": "mark", "seq": missing, "mark": "good"})
        assert not answer["ok"] and "unknown or expired" in answer["error"]
        assert wait_until(lambda: len(meta_lines(out)) == len(ids), 20)
        # space is freed: storing resumes
        filler.unlink()
        before = st["count"]
        d.frames(5)
        assert wait_until(lambda: d.status()["rejects"]["count"] > before, 20), d.status()
    finally:
        plc.close()
        code = d.stop()
        c.stop()
    assert code == 0
    assert_accounted(d, expect_frames=125)
    assert sorted(m["id"] for m in meta_lines(out)) == sorted(ids), "every marked record arrived, once"


def test_a_long_collector_outage_keeps_the_spool_bounded_evicting_the_oldest_first(tmp_path, blur_model):
    port = free_port()
    cfg = daemon_config(tmp_path, blur_model, port)
    text = cfg.read_text().replace("  spool_dir: spool\n", "  spool_dir: spool\n  spool_max_records: 6\n")
    cfg.write_text(text)
    d = Daemon(cfg)
    try:
        d.frames(30)
        assert wait_until(lambda: d.status()["rejects"]["count"] >= 12, 30)
        seqs = sorted(m["seq"] for m in _stored(d))[:10]
        ids = [d.request({"op": "mark", "seq": s, "mark": "good"})["record_id"] for s in seqs]
        assert d.status()["spool"]["depth"] == 6
        evicted = d.events("spool_evicted")
        assert [e["id"] for e in evicted] == ids[:4], "the oldest are evicted first"
        assert all(e["level"] == "error" for e in evicted)
        out = tmp_path / "out"
        c = collector(f"tcp://127.0.0.1:{port}", out)
        try:
            assert wait_until(lambda: len(meta_lines(out)) == 6 and d.status()["spool"]["depth"] == 0, 30)
        finally:
            c.stop()
    finally:
        code = d.stop()
    assert code == 0
    assert sorted(m["id"] for m in meta_lines(out)) == sorted(ids[4:]), "the newest 6 arrive, each once"
    assert_accounted(d, expect_frames=30)
