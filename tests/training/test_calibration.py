"""Threshold calibration: good images always pass; with defects, the threshold separates them."""

from __future__ import annotations

import numpy as np

from inspectd.core.manifest import load_manifest
from inspectd.core.types import Code
from inspectd.evaluation.thresholds import (
    Confusion,
    calibrate,
    calibrate_good_only,
    calibrate_with_defects,
    evaluate,
    largest_region,
    open_inspector,
    write_thresholds,
)
from inspectd.inspection.decide import Decider
from tests.training.conftest import stripes


def _good_maps(n: int, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.abs(rng.normal(0.05, 0.03, (size, size))).astype(np.float32) for _ in range(n)]


def _passes(maps, cal) -> list[bool]:
    d = Decider(cal.pixel, cal.min_region_area)
    return [d.decide(m).code == Code.PASS for m in maps]


def test_good_only_calibration_lets_every_calibration_good_image_pass():
    goods = _good_maps(30)
    cal = calibrate_good_only(goods)
    assert all(_passes(goods, cal)) and cal.good_pass_rate == 1.0
    assert 0.0 < cal.pixel < 2.0 and cal.min_region_area >= 1
    assert "good-only" in cal.method and "n=30" in cal.method


def test_good_images_with_large_bright_patches_raise_the_threshold_instead_of_rejecting_everything():
    goods = _good_maps(30)
    goods[7][10:18, 10:18] = 0.6  # one good image with a patch bigger than a sensible area filter (cap 20 px)
    cal = calibrate_good_only(goods, max_area_frac=0.005)
    assert cal.details["raised_for_area_cap"] and all(_passes(goods, cal))
    assert cal.pixel >= 0.6 and cal.min_region_area <= 0.005 * 64 * 64


def test_calibration_with_defects_rejects_the_defects_and_passes_the_goods():
    goods = _good_maps(20, seed=1)
    defects, masks = _good_maps(20, seed=2), []
    for i, m in enumerate(defects):
        mask = np.zeros(m.shape, np.uint8)
        y, x = 5 + i, 30 - i
        mask[y : y + 8, x : x + 8] = 1
        m[mask.astype(bool)] = 0.9
        masks.append(mask)
    cal = calibrate_with_defects(goods, defects, masks)
    assert all(_passes(goods, cal))
    assert not any(_passes(defects, cal))
    assert cal.defect_reject_rate == 1.0 and cal.pixel_f1 > 0.9


def test_largest_region_counts_8_connected_pixels_strictly_above_the_threshold():
    m = np.zeros((10, 10), np.float32)
    m[1, 1] = m[2, 2] = m[3, 3] = 0.5  # diagonal: one 8-connected region of 3
    m[8, 8] = 0.3
    assert largest_region(m, 0.3) == 3
    assert largest_region(m, 0.5) == 0


def test_calibrating_a_real_model_through_the_inspector_writes_thresholds_all_goods_pass(tiny_model_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    assert load_manifest(model_dir).thresholds.method == "uncalibrated"
    goods = stripes(12, size=64, seed=5)
    cal = calibrate(model_dir, goods, data="12 stripe images")
    manifest = write_thresholds(model_dir, cal, calibrated_at="2026-01-01T00:00:00+00:00")
    assert manifest.thresholds.pixel == cal.pixel and manifest.thresholds.min_region_area == cal.min_region_area
    assert manifest.thresholds.model_sha256 == manifest.onnx.sha256
    assert load_manifest(model_dir).thresholds.method.startswith("good-only")
    inspector = open_inspector(model_dir)
    confusion = evaluate(inspector, goods, [False] * len(goods))
    assert confusion == Confusion(good_pass=12, good_reject=0, defect_reject=0, defect_pass=0)
