"""The features kind: pinned backbone weights, ONNX parity, coreset, a trained model directory in the daemon."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the features kind's training needs the train extra")
pytest.importorskip("efficientnet_lite_pytorch", reason="the features kind needs the train extra's backbone")

from inspectd.training import features as feat


def test_backbone_load_refuses_a_weight_file_with_another_sha256(tmp_path):
    wrong = tmp_path / "efficientnet-lite0.pth"
    wrong.write_bytes(b"not the pinned weights")
    with pytest.raises(feat.BackboneError) as info:
        feat.load_backbone("lite0", (64, 64), weights=wrong)
    text = str(info.value)
    assert str(wrong) in text and feat.BACKBONES["lite0"].sha256 in text and feat.sha256_of(wrong) in text


def test_a_missing_backbone_package_names_the_train_extra(monkeypatch):
    monkeypatch.setitem(feat.BACKBONES, "lite9", feat.Backbone("efficientnet-lite4", "no_such_pkg_xyz", "X", "0" * 64))
    with pytest.raises(feat.BackboneError, match=r"no-such-pkg-xyz"):
        feat.weight_file("lite9")
    monkeypatch.setitem(feat.BACKBONES, "lite0", feat.Backbone("efficientnet-lite0", "no_such_pkg_xyz", "X", "0" * 64))
    with pytest.raises(feat.BackboneError, match=r"install inspectd\[train\]"):
        feat.weight_file("lite0")


def test_the_feature_graph_matches_torch_in_onnxruntime(tmp_path):
    from inspectd.training.onnx_export import check_parity, export_onnx

    ext = feat.FeatureExtractor("lite0", (2, 4, 6), (64, 96))
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((50, ext.dim)).astype(np.float32)
    model = feat.FeatureMapModel(ext, bank, k=1, scale=5.0)
    path = export_onnx(model, tmp_path / "model.onnx", output_names=(feat.OUTPUT_NAME,))
    samples = rng.random((2, 1, 64, 96), dtype=np.float32)
    report = check_parity(model, path, samples, output_names=(feat.OUTPUT_NAME,))
    assert report.max_abs_diff <= 1e-4


def test_coreset_is_deterministic_for_a_seed_and_covers_better_than_random():
    rng = np.random.default_rng(1)
    # clustered data: a random subset misses the small clusters, k-center does not
    centres = rng.standard_normal((40, 16)).astype(np.float32) * 10
    sizes = rng.integers(5, 400, size=40)
    x = np.concatenate(
        [c + rng.standard_normal((s, 16)).astype(np.float32) for c, s in zip(centres, sizes, strict=True)]
    )
    a = feat.greedy_coreset(x, 60, seed=3)
    b = feat.greedy_coreset(x, 60, seed=3)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 60
    cover = feat.nearest_distances(x, x[a]).max()
    random_cover = feat.nearest_distances(x, x[rng.choice(len(x), 60, replace=False)]).max()
    assert cover < random_cover


def _tree(root: Path, n_good: int = 12, n_bad: int = 4, size: int = 64) -> Path:
    """A tiny MVTec tree: noisy grey surfaces; defects are a dark disc."""
    rng = np.random.default_rng(0)

    def surface():
        return np.clip(rng.normal(128, 6, (size, size)), 0, 255).astype(np.uint8)

    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (root / sub).mkdir(parents=True)
    for i in range(n_good):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), surface())
    for i in range(4):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), surface())
    for i in range(n_bad):
        img, mask = surface(), np.zeros((size, size), np.uint8)
        c = (int(rng.integers(16, 48)), int(rng.integers(16, 48)))
        cv2.circle(img, c, 7, 20, -1)
        cv2.circle(mask, c, 7, 255, -1)
        cv2.imwrite(str(root / "test/hole" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth/hole" / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(scope="module")
def tiny_features_dir(tmp_path_factory) -> tuple[Path, Path]:
    from inspectd.training.features_job import FeaturesJob, run_features_job

    tree = _tree(tmp_path_factory.mktemp("tree"))
    out = tmp_path_factory.mktemp("models") / "features"
    cfg = feat.FeaturesConfig(input_hw=(64, 64), bank=200, max_vectors=5000)
    run_features_job(FeaturesJob(data=tree, out=out, command="pytest", config=cfg), log=None)
    return tree, out


def test_a_trained_features_directory_loads_in_the_daemon_and_gives_a_frame_sized_map(tiny_features_dir):
    from inspectd.core.manifest import load_manifest
    from inspectd.inspection.inspector import Inspector

    _, out = tiny_features_dir
    m = load_manifest(out)
    assert m.kind == "features" and m.thresholds.method != "uncalibrated"
    inspector = Inspector.from_model_dir(out, providers=("CPUExecutionProvider",), intra_op_threads=1)
    inspector.warmup()
    frame = np.full((50, 90), 128, np.uint8)
    result = inspector.inspect(frame)
    assert result.score_map.shape == (50, 90) and result.score_map.dtype == np.float32
    assert np.isfinite(result.score_map).all() and 0.0 <= float(result.score_map.min()) < 1.0


def test_features_kind_finds_an_obvious_defect_with_image_auroc_one(tiny_features_dir):
    from inspectd.evaluation.evaluate import evaluate

    tree, out = tiny_features_dir
    report = evaluate(out, tree, log=None)
    assert report["image_auroc"] == 1.0


def test_train_exits_2_naming_the_train_extra_when_the_backbone_package_is_missing(tmp_path, monkeypatch, capsys):
    from inspectd.cli import main

    monkeypatch.setitem(feat.BACKBONES, "lite0", feat.Backbone("efficientnet-lite0", "no_such_pkg_xyz", "X", "0" * 64))
    tree = _tree(tmp_path / "tree", n_good=3, n_bad=1)
    assert main(["train", "--data", str(tree), "--out", str(tmp_path / "m"), "--input-size", "64"]) == 2
    assert "install inspectd[train]" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.onnx").exists()
