"""The `classifier` model kind (a supervised segmentation model): the daemon reads its
defect-probability map directly, alone or beside an autoencoder in one ensemble decision, and each region says
which map found it. Real ONNX models (tests/support/helpers.py), no torch."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from inspectd.core.errors import ModelError
from inspectd.core.manifest import load_manifest
from inspectd.core.types import Code
from tests.support.helpers import (
    daemon_config,
    make_blur_model,
    make_dark_classifier,
    make_ensemble_dir,
    parse_json_lines,
    run_cli,
)

CPU = ("CPUExecutionProvider",)


def _frame(*, dark_blob: bool = False, bright_spot: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (128 + rng.integers(0, 3, (96, 96))).astype(np.float32)
    if dark_blob:  # smooth: the blur autoencoder reconstructs it, the classifier calls it defect
        yy, xx = np.mgrid[:96, :96]
        img -= 110 * np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / (2 * 7.0**2))
    if bright_spot:  # sharp and bright: the autoencoder finds it, the classifier does not
        img[66:74, 66:74] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_classifier_alone_rejects_on_its_defect_probability_map(tmp_path):
    from inspectd.inspection.inspector import Inspector

    cls = make_dark_classifier(tmp_path / "cls", size=(48, 48))
    insp = Inspector.from_model_dir(cls, providers=CPU)
    insp.warmup()
    result = insp.inspect(_frame(dark_blob=True))
    assert result.score_map.shape == (96, 96) and 0.0 <= result.score_map.min() <= result.score_map.max() <= 1.0
    assert result.reconstruction is None and result.decision.code is Code.REJECT
    r = result.decision.regions[0]
    assert r.x <= 30 <= r.x + r.w and r.y <= 30 <= r.y + r.h and r.found_by == ()
    assert insp.inspect(_frame(bright_spot=True)).decision.code is Code.PASS


def test_classifier_manifest_needs_one_probability_map_of_its_input_size(tmp_path):
    cls = make_dark_classifier(tmp_path / "cls", size=(48, 48))
    raw = json.loads((cls / "manifest.json").read_text())
    (cls / "manifest.json").write_text(json.dumps({**raw, "output": {**raw["output"], "shape": [None, 1, 24, 24]}}))
    with pytest.raises(ModelError, match="one defect-probability map"):
        load_manifest(cls)
    (cls / "manifest.json").write_text(json.dumps({**raw, "thresholds": {**raw["thresholds"], "pixel": 1.5}}))
    with pytest.raises(ModelError, match="above 1"):
        load_manifest(cls)


@pytest.fixture
def anomaly_and_classifier(tmp_path):
    ae = make_blur_model(tmp_path / "ae", size=(96, 96), pixel_threshold=0.3, min_region_area=4)
    cls = make_dark_classifier(tmp_path / "cls", size=(48, 48), name="dark-spots")
    return make_ensemble_dir(tmp_path / "ens", ae, [(cls, 0.5)], primary_divide_by=0.3, pixel_threshold=1.0)


def test_anomaly_map_and_classifier_decide_together_and_each_region_names_its_map(anomaly_and_classifier):
    from inspectd.inspection.inspector import Inspector

    insp = Inspector.from_model_dir(anomaly_and_classifier, providers=CPU)
    insp.warmup()
    got = insp.inspect(_frame(dark_blob=True, bright_spot=True)).decision
    assert got.code is Code.REJECT and len(got.regions) == 2
    by_place = {(r.x + r.w // 2) // 48: r.found_by for r in got.regions}  # 0: the blob at 30, 1: the spot at 70
    assert by_place == {0: ("dark-spots",), 1: ("test-blur",)}
    assert insp.inspect(_frame()).decision.code is Code.PASS


def test_the_daemon_logs_which_map_found_each_region(tmp_path, anomaly_and_classifier):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, kw in enumerate([{}, {"dark_blob": True}, {"bright_spot": True}]):
        cv2.imwrite(str(folder / f"{i}.png"), _frame(**kw, seed=i))
    camera = f"          type: folder\n          path: {folder}\n          rate_hz: 0"
    res = run_cli("run", "--config", str(daemon_config(tmp_path, anomaly_and_classifier, camera)), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    verdicts = [e for e in parse_json_lines(res.stdout) if e.get("event") == "verdict"]
    assert [v["code"] for v in verdicts] == ["pass", "reject", "reject"]
    assert [r["found_by"] for r in verdicts[1]["regions"]] == [["dark-spots"]]
    assert [r["found_by"] for r in verdicts[2]["regions"]] == [["test-blur"]]
