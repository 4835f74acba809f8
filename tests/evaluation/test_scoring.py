"""Score-map options the daemon applies (map smoothing, exposure normalisation) and the evaluation's variants:
the same reconstruction scored by Gaussian SSIM, uniform SSIM and L2, through the daemon's Inspector."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np

from inspectd.core.manifest import PreprocessSpec, TensorSpec
from inspectd.evaluation.scoring import L2Difference, native_score, variant_inspector, variant_thresholds
from inspectd.evaluation.thresholds import open_inspector
from inspectd.inspection.decide import smooth_map
from inspectd.inspection.preprocess import Preprocessor, normalize_exposure
from tests.evaluation.conftest import flat, with_spot


def _with_manifest_change(model_dir, tmp_path, section: str, **changes):
    out = tmp_path / "model"
    shutil.copytree(model_dir, out)
    raw = json.loads((out / "manifest.json").read_text())
    raw[section].update(changes)
    (out / "manifest.json").write_text(json.dumps(raw))
    return out


def test_the_inspector_smooths_the_map_as_the_manifest_says(separable_model, tmp_path):
    rng = np.random.default_rng(5)
    image, _ = with_spot(flat(rng), rng)
    sharp_dir = _with_manifest_change(separable_model, tmp_path, "score", smooth_sigma=0.0)
    sharp = open_inspector(sharp_dir).score_map(image)
    smoothed = open_inspector(separable_model)
    assert smoothed.manifest.score.smooth_sigma == 1.0
    np.testing.assert_allclose(smoothed.score_map(image), smooth_map(sharp, 1.0), atol=1e-6)
    np.testing.assert_array_equal(smooth_map(sharp, 0.0), sharp)
    assert smoothed.inspect(image).decision.score == smoothed.score_map(image).max()


def test_exposure_normalisation_makes_frames_that_differ_by_a_gain_look_alike():
    rng = np.random.default_rng(2)
    base = np.clip(rng.normal(90, 20, (40, 64)), 0, 255)
    dark, bright = base.astype(np.uint8), np.clip(base * 1.8, 0, 255).astype(np.uint8)
    spec = PreprocessSpec(color="gray", normalize="median", normalize_to=100)
    nd, nb = normalize_exposure(dark, spec), normalize_exposure(bright, spec)
    assert abs(int(np.median(nd)) - 100) <= 1 and abs(int(np.median(nb)) - 100) <= 1
    assert np.abs(nd.astype(int) - nb.astype(int)).mean() < 1.5
    np.testing.assert_array_equal(normalize_exposure(dark, PreprocessSpec(color="gray")), dark)
    pre = Preprocessor(spec, TensorSpec(name="x", shape=(None, 1, 32, 32)))
    prepared = pre.prepare(bright)
    np.testing.assert_allclose(
        prepared.reference[0], cv2.resize(nb, (32, 32), interpolation=cv2.INTER_AREA) / 255.0, atol=1e-6
    )


def test_training_frames_are_normalised_by_the_daemons_own_function():
    from inspectd.training.data import InputGeometry, TrainingSet

    frame = np.clip(np.random.default_rng(3).normal(60, 10, (48, 48)), 0, 255).astype(np.uint8)
    geom = InputGeometry(height=32, width=32, normalize="median", normalize_to=120)
    ds = TrainingSet([frame], geom)
    np.testing.assert_array_equal(
        ds.frames[0], normalize_exposure(frame, PreprocessSpec(color="gray", normalize="median", normalize_to=120))
    )


def test_variants_share_the_inspectors_path_and_swap_only_the_difference_kernel(separable_model):
    base = open_inspector(separable_model)
    assert native_score(base.manifest) == "gaussian-ssim"
    same, t = variant_inspector(base, "gaussian-ssim")
    assert same is base and t["pixel"] == base.manifest.thresholds.pixel
    l2, t_l2 = variant_inspector(base, "l2")
    uniform, _ = variant_inspector(base, "uniform-ssim")
    assert l2.detector is base.detector and isinstance(l2.ssim, L2Difference)
    assert uniform.ssim.window == "uniform" and uniform.ssim.size == base.manifest.ssim.size
    assert t_l2 == variant_thresholds(base.manifest, "l2") and l2.pixel_threshold == t_l2["pixel"]
    rng = np.random.default_rng(7)
    image, mask = with_spot(flat(rng), rng)
    pending = base.infer(base.prepare(image))
    ref = pending.prepared.reference
    recon = base.preprocessor.to_unit(pending.output)
    manual = base.preprocessor.stitch((ref - recon) ** 2, pending.prepared.layout)
    np.testing.assert_allclose(l2.score_map(image), smooth_map(manual, 1.0), atol=1e-6)
    inside = mask > 0
    for insp in (base, uniform, l2):
        m = insp.score_map(image)
        assert m[inside].mean() > 3 * m[~inside].mean()


def test_a_variant_without_recorded_thresholds_has_none(separable_model, tmp_path):
    raw = json.loads((separable_model / "manifest.json").read_text())
    raw["training"].pop("score_variants")
    out = tmp_path / "m"
    shutil.copytree(separable_model, out)
    (out / "manifest.json").write_text(json.dumps(raw))
    base = open_inspector(out)
    insp, t = variant_inspector(base, "l2")
    assert t is None and insp.pixel_threshold == 2.0
