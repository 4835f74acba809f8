"""Ensemble model directories (manifest `ensemble`, docs/model-directory.md): every model's map divided by its own
threshold, combined, one decision; the contract's checks; the daemon runs and reloads one. Real ONNX models (the
box-blur 'autoencoder' of tests/support/helpers.py), no torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.core.errors import ModelError
from inspectd.core.manifest import Manifest, load_manifest
from tests.support.helpers import daemon_config, make_blur_model, make_ensemble_dir, parse_json_lines, run_cli


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A native-resolution 64 px tile model and a half-scale 32 px tile model (different graphs, different maps)."""
    root = tmp_path_factory.mktemp("pair")
    fine = make_blur_model(root / "fine", size=(64, 64), mode="tile", tile_overlap=16, pixel_threshold=0.3)
    coarse = make_blur_model(
        root / "coarse", size=(32, 32), mode="tile", tile_overlap=8, scale=0.5, pixel_threshold=0.2
    )
    return fine, coarse


def _frame(seed: int = 0, defect: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (128 + rng.integers(0, 4, (150, 170))).astype(np.uint8)
    if defect:
        img[40:52, 60:72] = 20
        img[100:103, 20:120] = 220  # a thin scratch: the two models see it differently
    return img


@pytest.mark.parametrize("combine", ["max", "mean"])
def test_the_ensemble_map_combines_each_models_own_map_divided_by_its_divisor(tmp_path, pair, combine):
    from inspectd.inspection.inspector import Inspector

    fine, coarse = pair
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=0.3, combine=combine)
    img = _frame()
    a = Inspector.from_model_dir(fine, providers=("CPUExecutionProvider",)).score_map(img)
    b = Inspector.from_model_dir(coarse, providers=("CPUExecutionProvider",)).score_map(img)
    assert not np.allclose(a / 0.3, b / 0.2, atol=0.05), "the two models must disagree for this test to mean much"
    insp = Inspector.from_model_dir(ens, providers=("CPUExecutionProvider",))
    assert len(insp.members) == 1
    got = insp.score_map(img)
    want = np.maximum(a / 0.3, b / 0.2) if combine == "max" else (a / 0.3 + b / 0.2) / 2
    assert got.shape == img.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the three pipeline stages give the same map as one call, and the decision reads it at the ensemble's threshold
    result = insp.finish(insp.infer(insp.prepare(img)))
    np.testing.assert_allclose(result.score_map, want, rtol=1e-5, atol=1e-6)
    assert result.decision.score == pytest.approx(float(want.max()), rel=1e-5)


def test_a_defect_only_the_member_sees_is_rejected_by_the_ensemble(tmp_path, pair):
    from inspectd.core.types import Code
    from inspectd.inspection.inspector import Inspector

    fine, coarse = pair
    # the primary's map is divided by 100: on its own scale it can never reach the combined threshold of 1
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=100.0, pixel_threshold=1.0)
    insp = Inspector.from_model_dir(ens, providers=("CPUExecutionProvider",))
    coarse_alone = Inspector.from_model_dir(coarse, providers=("CPUExecutionProvider",))
    for defect in (True, False):
        img = _frame(1, defect)
        assert insp.inspect(img).decision.code == coarse_alone.inspect(img).decision.code
    assert insp.inspect(_frame(1, True)).decision.code == Code.REJECT
    assert insp.inspect(_frame(1, False)).decision.code == Code.PASS


def test_identity_is_the_onnx_hash_for_one_model_and_covers_every_member_of_an_ensemble(tmp_path, pair):
    fine, coarse = pair
    single = load_manifest(fine)
    assert single.identity == single.onnx.sha256
    e1 = load_manifest(make_ensemble_dir(tmp_path / "e1", fine, [(coarse, 0.2)], primary_divide_by=0.3))
    other = make_blur_model(tmp_path / "other", size=(48, 48), mode="tile", tile_overlap=8, scale=0.5)
    e2 = load_manifest(make_ensemble_dir(tmp_path / "e2", fine, [(other, 0.2)], primary_divide_by=0.3))
    e3 = load_manifest(make_ensemble_dir(tmp_path / "e3", fine, [(coarse, 0.25)], primary_divide_by=0.3))
    assert e1.onnx.sha256 == e2.onnx.sha256 == single.onnx.sha256  # same primary model.onnx ...
    assert len({single.identity, e1.identity, e2.identity, e3.identity}) == 4  # ... four different models
    assert len(e1.identity) == 64 and int(e1.identity, 16) >= 0


def _rewrite(ens: Path, **ensemble) -> None:
    raw = json.loads((ens / "manifest.json").read_text())
    raw["ensemble"] |= ensemble
    Manifest.model_validate(raw).write(ens)


def test_a_replaced_member_is_refused_with_the_reason(tmp_path, pair):
    fine, coarse = pair
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=0.3)
    other = make_blur_model(tmp_path / "other", size=(48, 48), mode="tile", tile_overlap=8, scale=0.5)
    shutil.rmtree(ens / "members" / "1")
    shutil.copytree(other, ens / "members" / "1")  # a valid model directory, but not the one calibrated with
    with pytest.raises(ModelError, match=r"ensemble.members\[0\].*replaced; rebuild the ensemble"):
        load_manifest(ens)


def test_a_member_file_corrupted_on_disk_is_refused(tmp_path, pair):
    fine, coarse = pair
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=0.3)
    with open(ens / "members" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match=r"members\[0\].*sha256.*changed or corrupted"):
        load_manifest(ens)


def test_members_outside_the_directory_missing_or_nested_are_refused(tmp_path, pair):
    fine, coarse = pair
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=0.3)
    sha = load_manifest(coarse).onnx.sha256
    _rewrite(ens, members=[{"dir": "../outside", "sha256": sha, "divide_by": 0.2}])
    shutil.copytree(coarse, tmp_path / "outside")
    with pytest.raises(ModelError, match="leaves the model directory"):
        load_manifest(ens)
    _rewrite(ens, members=[{"dir": "members/9", "sha256": sha, "divide_by": 0.2}])
    with pytest.raises(ModelError, match=r"members\[0\].*does not exist"):
        load_manifest(ens)
    inner = make_ensemble_dir(tmp_path / "inner", fine, [(coarse, 0.2)], primary_divide_by=0.3)
    shutil.copytree(inner, ens / "members" / "nested")
    _rewrite(ens, members=[{"dir": "members/nested", "sha256": load_manifest(fine).onnx.sha256, "divide_by": 0.2}])
    with pytest.raises(ModelError, match="itself an ensemble"):
        load_manifest(ens)


def test_an_ensemble_spec_with_no_members_or_a_zero_divisor_is_not_a_valid_manifest(tmp_path, pair):
    fine, coarse = pair
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=0.3)
    raw = json.loads((ens / "manifest.json").read_text())
    for bad, words in (({"members": []}, "ensemble.members"), ({"divide_by": 0}, "ensemble.divide_by")):
        (ens / "manifest.json").write_text(json.dumps({**raw, "ensemble": raw["ensemble"] | bad}))
        with pytest.raises(ModelError, match=words):
            load_manifest(ens)


def _frames(folder: Path, n: int = 6) -> Path:
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:02d}.png"), _frame(i, defect=bool(i % 2)))
    return folder


def test_the_daemon_runs_an_ensemble_and_logs_each_model_it_loaded(tmp_path, pair):
    """The primary alone passes every frame (its map is divided by 100); the ensemble rejects exactly the frames
    with a defect, because its member sees them: the daemon really runs both models on every frame."""
    fine, coarse = pair
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=100.0, pixel_threshold=1.0)
    folder = _frames(tmp_path / "frames")
    camera = f"          type: folder\n          path: {folder}\n          rate_hz: 0"
    res = run_cli("run", "--config", str(daemon_config(tmp_path, ens, camera)), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    events = parse_json_lines(res.stdout)
    verdicts = [e for e in events if e.get("event") == "verdict"]
    assert [v["code"] for v in verdicts] == ["pass", "reject"] * 3
    loaded = next(e for e in events if e.get("event") == "model_loaded")
    assert loaded["sha256"] == load_manifest(ens).identity != load_manifest(fine).onnx.sha256
    members = [e for e in events if e.get("event") == "ensemble_member"]
    assert len(members) == 1 and members[0]["sha256"] == load_manifest(coarse).onnx.sha256
    assert members[0]["scale"] == 0.5 and members[0]["providers_obtained"] == ["CPUExecutionProvider"]
    # the same frames through the primary alone, at the same effective threshold (0.3 x 100): nothing rejected
    alone = make_blur_model(tmp_path / "alone", size=(64, 64), mode="tile", tile_overlap=16, pixel_threshold=2.0)
    res = run_cli("run", "--config", str(daemon_config(tmp_path, alone, camera, name="alone.yaml")), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {e["code"] for e in parse_json_lines(res.stdout) if e.get("event") == "verdict"} == {"pass"}


def test_a_reload_swaps_in_an_ensemble_whose_member_changed_although_its_primary_did_not(tmp_path, pair):
    from tests.support.collector import Daemon
    from tests.support.collector import daemon_config as feedback_config
    from tests.support.net import free_port

    fine, coarse = pair
    live = make_ensemble_dir(tmp_path / "live", fine, [(coarse, 0.2)], primary_divide_by=0.3)
    before = load_manifest(live).identity
    d = Daemon(feedback_config(tmp_path, live, free_port()))
    try:
        d.frames(5)
        assert d.wait_event("verdict", 120, count=5), d.lines[-20:]
        other = make_blur_model(tmp_path / "other", size=(48, 48), mode="tile", tile_overlap=8, scale=0.5)
        shutil.rmtree(live / "members" / "1")
        shutil.copytree(other, live / "members" / "1")  # swapped, manifest not yet rebuilt: refused
        answer = d.request({"op": "reload"})
        assert not answer["ok"] and "rebuild the ensemble" in answer["error"], answer
        _rewrite(live, members=[{"dir": "members/1", "sha256": load_manifest(other).onnx.sha256, "divide_by": 0.2}])
        answer = d.request({"op": "reload"})
        assert answer["ok"] and answer["changed"], answer
        assert answer["previous_sha256"] == before and answer["sha256"] == load_manifest(live).identity != before
        d.frames(5)
        assert d.wait_event("verdict", 120, count=10), d.lines[-20:]
    finally:
        code = d.stop()
    assert code == 0


def test_an_ensemble_threshold_may_exceed_the_ssim_range_but_a_single_models_may_not(tmp_path, pair):
    fine, coarse = pair
    ens = make_ensemble_dir(tmp_path / "ens", fine, [(coarse, 0.2)], primary_divide_by=0.3, pixel_threshold=2.5)
    assert load_manifest(ens).thresholds.pixel == 2.5  # 2.5 x a member's own threshold
    raw = json.loads((fine / "manifest.json").read_text())
    raw["thresholds"]["pixel"] = 2.5
    with pytest.raises(ValueError, match="above 2 \\(the difference map's range\\)"):
        Manifest.model_validate(raw)
