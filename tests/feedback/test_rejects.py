"""The reject store: what it keeps, its bounds, restarts, and that it never holds inspection up."""

from __future__ import annotations

import errno
import json
import threading
import time

import cv2

from inspectd.core.types import Code, plc_seq
from inspectd.feedback import rejects as R
from inspectd.feedback.config import RejectsConfig
from inspectd.feedback.rejects import RejectStore
from tests.support.collector import SHA, reject


def _store(tmp_path, **cfg) -> RejectStore:
    return RejectStore(
        RejectsConfig(dir=tmp_path / "rejects", **cfg),
        line="line 7/a",
        camera="synthetic",
        model_sha256=SHA,
        model_name="m",
        pixel_threshold=0.3,
    )


def test_a_reject_is_kept_as_image_overlay_and_metadata_and_other_verdicts_are_not(tmp_path):
    store = _store(tmp_path)
    store.emit(reject(1, code=Code.PASS))
    store.emit(reject(2, code=Code.ERROR))
    v = reject(3, item_id=77, score=0.91)
    store.emit(v)
    assert store.wait_idle(10)
    store.close()
    files = sorted(p.name for p in (tmp_path / "rejects").iterdir())
    assert len(files) == 3, files
    meta = json.loads(next((tmp_path / "rejects").glob("*.json")).read_text())
    assert meta["seq"] == 3 and meta["plc_seq"] == 3 and meta["item_id"] == 77 and meta["score"] == 0.91
    assert meta["line"] == "line 7/a" and meta["model_sha256"] == SHA and meta["camera"] == "synthetic"
    assert meta["id"].startswith("line_7_a-") and "/" not in meta["id"] and meta["mark"] is None
    assert meta["time"].endswith("Z") and meta["regions"][0]["area"] == 60
    image = cv2.imread(str(tmp_path / "rejects" / meta["image"]), cv2.IMREAD_UNCHANGED)
    assert (image == v.image).all(), "the stored image is the frame, lossless"
    overlay = cv2.imread(str(tmp_path / "rejects" / meta["overlay"]), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (*v.image.shape, 3)


def test_the_store_is_bounded_by_count_and_by_bytes_and_the_oldest_go_first(tmp_path):
    store = _store(tmp_path / "a", max_count=5, queue_size=64)
    for seq in range(1, 13):
        store.emit(reject(seq))
    assert store.wait_idle(10)
    assert [store.find(seq=s) is not None for s in range(1, 13)] == [False] * 7 + [True] * 5
    assert len(list((tmp_path / "a" / "rejects").iterdir())) == 15
    store.close()

    one = _store(tmp_path / "b", queue_size=64)
    one.emit(reject(1))
    one.wait_idle(10)
    size = one.stats()["bytes"]
    one.close()
    store = _store(tmp_path / "c", max_mb=3.5 * size / R.MIB, queue_size=64)
    for seq in range(1, 10):
        store.emit(reject(seq))
    assert store.wait_idle(10)
    assert 2 <= len(store) <= 3 and store.stats()["bytes"] <= 3.5 * size
    assert store.find(seq=9) is not None and store.find(seq=1) is None
    store.close()


def test_the_index_is_rebuilt_at_start_and_leftovers_of_interrupted_writes_are_removed(tmp_path):
    store = _store(tmp_path, queue_size=64)
    for seq in (1, 2, 3):
        store.emit(reject(seq))
    store.wait_idle(10)
    entry = store.find(seq=2)
    store.record_mark(entry, {"mark": "good", "at": "t", "by": "cli", "record_id": entry.id})
    store.close()
    d = tmp_path / "rejects"
    (d / ".half.png.123.tmp").write_bytes(b"x")  # a crash mid-write
    (d / "orphan.png").write_bytes(b"x")  # an image whose JSON was never written
    (d / "broken.json").write_text("{not json")

    again = _store(tmp_path)
    assert len(again) == 3 and again.find(seq=2).mark["mark"] == "good" and again.find(seq=3).mark is None
    names = {p.name for p in d.iterdir()}
    assert not {".half.png.123.tmp", "orphan.png", "broken.json"} & names
    again.close()


def test_a_full_disk_is_logged_and_counted_and_inspection_never_sees_it(tmp_path, monkeypatch):
    store = _store(tmp_path, queue_size=64)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R, "write_atomic", full)
    for seq in range(1, 6):
        store.emit(reject(seq))  # never raises
    assert store.wait_idle(10)
    assert store.stats()["write_failures"] == 5 and len(store) == 0
    assert not list((tmp_path / "rejects").iterdir()), "no partial files left behind"
    monkeypatch.undo()
    store.emit(reject(6))  # the disk has room again: storing resumes
    assert store.wait_idle(10) and store.find(seq=6) is not None
    store.close()


def test_emit_returns_at_once_when_the_disk_is_slow_and_an_overflow_is_counted(tmp_path, monkeypatch):
    store = _store(tmp_path, queue_size=2)
    gate = threading.Event()
    real = R.write_atomic
    monkeypatch.setattr(R, "write_atomic", lambda *a, **k: (gate.wait(10), real(*a, **k)))
    t0 = time.perf_counter()
    for seq in range(1, 51):
        store.emit(reject(seq))
    elapsed = time.perf_counter() - t0
    gate.set()
    assert elapsed < 0.5, f"emit blocked: {elapsed:.3f} s for 50 rejects"
    assert store.wait_idle(10)
    assert store.dropped >= 45 and len(store) + store.dropped == 50
    store.close()


def test_plc_seqs_wrap_and_resolve_to_the_newest_reject_with_that_seq(tmp_path):
    assert [plc_seq(s) for s in (1, 65535, 65536, 65537, 131070, 131071)] == [1, 65535, 1, 2, 65535, 1]
    store = _store(tmp_path, queue_size=64)
    t = time.time()
    store.emit(reject(3, wall_time=t))
    store.emit(reject(65538, wall_time=t + 1))  # the PLC sees 3 again
    assert store.wait_idle(10)
    assert store.find(plc=3).seq == 65538
    assert store.find(seq=3).seq == 3
    assert store.find(seq=4) is None and store.find(plc=4) is None
    assert store.find(reject_id=store.find(seq=3).id).seq == 3
    store.close()
