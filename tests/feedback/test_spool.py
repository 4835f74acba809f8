"""The spool: durable atomic records, idempotent by id, bounded oldest-first, damaged files set aside."""

from __future__ import annotations

import os

import pytest
import structlog.testing

from inspectd.core import durable
from inspectd.feedback.spool import Spool, SpoolError, decode, encode
from tests.support.collector import record


def test_a_record_is_written_atomically_and_fsynced_before_put_returns(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(durable.os, "replace", lambda a, b: (renames.append((str(a), str(b))), real_replace(a, b)))
    spool = Spool(tmp_path)
    meta, png = record("r1")
    assert spool.put("r1", meta, png) is True
    assert len(calls) == 2, "the file and then its directory are fsynced"
    assert renames and renames[0][0].endswith(".tmp") and renames[0][1].endswith("r1.rec")
    assert [p.name for p in tmp_path.iterdir()] == ["r1.rec"], "no temp file left behind"
    raw_meta, image = spool.read("r1")
    assert image == png and b'"id":"r1"' in raw_meta


def test_put_is_idempotent_by_id_and_records_survive_a_restart_in_order(tmp_path):
    spool = Spool(tmp_path)
    for i in range(5):
        assert spool.put(f"r{i}", *record(f"r{i}"))
    assert spool.put("r2", *record("r2")) is False
    assert spool.depth == 5
    again = Spool(tmp_path)
    assert again.ids() == [f"r{i}" for i in range(5)] and again.nbytes == spool.nbytes
    assert again.remove("r0") and not again.remove("r0")
    assert Spool(tmp_path).ids() == [f"r{i}" for i in range(1, 5)]


def test_when_full_the_oldest_records_make_room_and_each_eviction_is_logged(tmp_path):
    spool = Spool(tmp_path, max_records=3)
    with structlog.testing.capture_logs() as logged:
        for i in range(5):
            spool.put(f"r{i}", *record(f"r{i}"))
    assert spool.ids() == ["r2", "r3", "r4"] and spool.evicted == 2
    evictions = [e for e in logged if e["event"] == "spool_evicted"]
    assert [e["id"] for e in evictions] == ["r0", "r1"] and all(e["log_level"] == "error" for e in evictions)
    size = os.path.getsize(tmp_path / "r4.rec")
    by_bytes = Spool(tmp_path / "b", max_bytes=int(2.5 * size))
    for i in range(4):
        by_bytes.put(f"r{i}", *record(f"r{i}"))
    assert by_bytes.ids() == ["r2", "r3"]


def test_damaged_records_and_temp_leftovers_are_set_aside_at_start(tmp_path):
    spool = Spool(tmp_path)
    spool.put("good", *record("good"))
    spool.put("bad", *record("bad"))
    data = (tmp_path / "bad.rec").read_bytes()
    (tmp_path / "bad.rec").write_bytes(data[:-7])  # truncated
    (tmp_path / ".x.rec.1.tmp").write_bytes(b"half")
    again = Spool(tmp_path)
    assert again.ids() == ["good"]
    assert (tmp_path / "refused" / "bad.rec").exists()
    assert "truncated" in (tmp_path / "refused" / "bad.rec.reason.txt").read_text()
    assert not (tmp_path / ".x.rec.1.tmp").exists()


def test_the_record_format_detects_damage():
    meta, png = record("x")
    blob = encode(meta, png)
    assert decode(blob)[1] == png
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(SpoolError, match="checksum"):
        decode(bytes(flipped))
    with pytest.raises(SpoolError, match="magic"):
        decode(b"garbage")
