"""Model faults: a broken model at start is refused (exit 2, not restarted); a model corrupted or swapped under a
running daemon changes nothing until a reload (SIGHUP or the control socket) validates it; a bad one is refused
and the running model stays, a good one is swapped in between frames with no frame lost."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from tests.support.collector import Daemon, daemon_config
from tests.support.helpers import make_blur_model, run_cli
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client
from tests.support.reliability import assert_accounted, config, plc_section, plc_view, wait_verdicts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    a = make_blur_model(root / "a", size=(64, 64), pixel_threshold=0.35)
    b = make_blur_model(root / "b", size=(48, 48), pixel_threshold=0.4)
    return a, b


def _sha(model: Path) -> str:
    return json.loads((model / "manifest.json").read_text())["onnx"]["sha256"]


def _replace_model(live: Path, new: Path) -> None:
    """What a person does by hand: copy the new files over the old ones (model.onnx first, then the manifest)."""
    shutil.copyfile(new / "model.onnx", live / "model.onnx")
    shutil.copyfile(new / "manifest.json", live / "manifest.json")


def test_a_model_whose_onnx_is_garbage_but_whose_hash_matches_is_refused_at_start_with_exit_2(tmp_path, models):
    from inspectd.core.manifest import Manifest, sha256_file

    broken = tmp_path / "broken"
    shutil.copytree(models[0], broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])  # truncated copy ...
    sha = sha256_file(broken / "model.onnx")  # ... with a manifest re-hashed to match (a careless re-export)
    m = json.loads((broken / "manifest.json").read_text())
    m["onnx"]["sha256"] = m["thresholds"]["model_sha256"] = sha
    Manifest.model_validate(m).write(broken)
    cfg = config(
        tmp_path, broken, "          type: synthetic\n          width: 64\n          height: 64\n          rate_hz: 0"
    )
    res = run_cli("run", "--config", str(cfg), "--max-frames", "3", timeout=120)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "cannot load" in res.stderr and "model.path" in res.stderr
    assert not any(e.get("event") == "verdict" for e in map(json.loads, filter(None, res.stdout.splitlines())))


def test_model_corrupted_under_a_running_daemon_is_refused_on_reload_and_a_good_one_is_swapped_in(tmp_path, models):
    a, b = models
    live = tmp_path / "model"
    shutil.copytree(a, live)
    modbus = free_port()
    cfg = daemon_config(tmp_path, live, free_port(), extra=plc_section(modbus).replace("\n        ", "\n")[8:])
    d = Daemon(cfg)
    plc = plc_client(modbus)
    try:
        d.frames(20)
        assert wait_verdicts(d, 20)
        # 1. the file is damaged on disk: the loaded session is unaffected, a reload refuses it
        with open(live / "model.onnx", "ab") as f:
            f.write(b"\0garbage")
        d.frames(30)  # frames in flight while the reload runs
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_event("model_reload_failed", 60), d.lines[-20:]
        failed = d.events("model_reload_failed")[-1]
        assert "sha256" in failed["error"] and failed["kept_sha256"] == _sha(a)
        answer = d.request({"op": "reload"})
        assert not answer["ok"] and "stays" in answer["error"], answer
        res = run_cli("reload", "--config", str(cfg), timeout=120)
        assert res.returncode == 2 and "not reloaded" in res.stderr, (res.stdout, res.stderr)
        d.frames(10)
        assert wait_verdicts(d, 60)
        assert d.proc.poll() is None, "the daemon keeps running"
        v = plc_view(plc)
        assert v["state"] == 1 and v["ready"] and v["last_seq"] == 60 and v["errors"] == 0, v
        assert wait_until(lambda: plc_view(plc)["heartbeat"] != v["heartbeat"], 3)
        # 2. a good new model is copied over it: the reload validates it and swaps it in between frames
        _replace_model(live, b)
        d.frames(40)
        res = run_cli("reload", "--config", str(cfg), timeout=120)
        assert res.returncode == 0 and "model reloaded" in res.stdout, res.stderr
        reloaded = d.events("model_reloaded")[-1]
        assert reloaded["sha256"] == _sha(b) and reloaded["previous_sha256"] == _sha(a)
        d.frames(20)
        assert wait_verdicts(d, 120)
        assert wait_until(lambda: plc_view(plc)["last_seq"] == 120, 5) and plc_view(plc)["state"] == 1
        # 3. the same model again: nothing to swap
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_event("model_reload_unchanged", 60)
        rejects = [json.loads(p.read_text()) for p in (tmp_path / "rejects").glob("*.json")]
        assert wait_until(lambda: d.status()["rejects"]["queued"] == 0, 10)
    finally:
        plc.close()
        code = d.stop()
    assert code == 0, "a refused reload never stops the daemon"
    s = assert_accounted(d, expect_frames=120)
    assert s["error"] == 0, "no frame failed across the swap"
    assert any(r["model_sha256"] == _sha(b) for r in rejects) or not rejects
    # 4. a restart with a damaged model is refused: exit 2, which systemd does not restart
    (live / "model.onnx").write_bytes(b"\0" * 100)
    res = run_cli("run", "--config", str(cfg), "--max-frames", "1", timeout=120)
    assert res.returncode == 2 and "sha256" in res.stderr


def test_a_reload_follows_model_path_to_a_new_directory_and_thresholds_recalibrated_in_place(tmp_path, models):
    """Issue 24, item 4: both answered "model unchanged" and kept the old thresholds. The README's upgrade procedure
    (copy a new directory, point model.path at it, reload; recalibrate the manifest's thresholds, reload) relies on
    both."""
    a, b = models
    first, second = tmp_path / "models" / "v1", tmp_path / "models" / "v2"
    shutil.copytree(a, first)
    shutil.copytree(b, second)
    cfg = daemon_config(tmp_path, first, free_port())
    d = Daemon(cfg)
    try:
        d.frames(10)
        assert wait_verdicts(d, 10) and all(v["code"] == "reject" for v in d.events("verdict"))
        # 1. the upgrade: model.path points at a new directory
        cfg.write_text(cfg.read_text().replace(str(first), str(second)))
        res = run_cli("reload", "--config", str(cfg), timeout=120)
        assert res.returncode == 0 and "model reloaded" in res.stdout, (res.stdout, res.stderr)
        assert d.events("model_reloaded")[-1]["sha256"] == _sha(b)
        # 2. recalibration in place: the same model.onnx, a new pixel threshold in its manifest (SIGHUP this time)
        m = json.loads((second / "manifest.json").read_text())
        m["thresholds"]["pixel"] = 1.9  # nothing in a synthetic fabric frame differs that much: every item passes
        (second / "manifest.json").write_text(json.dumps(m))
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_event("model_reloaded", 60, count=2), d.lines[-10:]
        reloaded = d.events("model_reloaded")[-1]
        assert reloaded["pixel_threshold"] == 1.9 and "pixel_threshold" in reloaded["changed"], reloaded
        d.frames(10)
        assert wait_verdicts(d, 20)
        assert [v["code"] for v in d.events("verdict")[10:]] == ["pass"] * 10, "the new threshold is in use"
        # 3. nothing changed since: unchanged
        res = run_cli("reload", "--config", str(cfg), timeout=120)
        assert res.returncode == 0 and "model unchanged" in res.stdout, res.stdout
    finally:
        code = d.stop()
    assert code == 0
    assert_accounted(d, expect_frames=20)
