"""`python -m research.separability`: label-free local cues separate a trivially separable class, do not separate
a class that looks exactly like good surface, and the CLI writes its JSON and refuses half an encoder probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from research.separability import Gaussian, TextureProbe, measure, texture_features
from tests.conftest import REPO
from tests.evaluation.conftest import SIZE, flat

BIG = 128  # frames large against the probe's widest scale (sigma 16), so most good pixels lie far from a spot


def write_probe_tree(root: Path) -> Path:
    """train/good and test/good: flat grey with sensor noise; test/spot: a 12x12 checkerboard (its mask);
    test/invisible: images drawn exactly like good ones whose masks mark a 48x48 region with nothing in it."""
    rng = np.random.default_rng(5)

    def good() -> np.ndarray:
        return np.clip(rng.normal(100, 2, (BIG, BIG)), 0, 255).astype(np.uint8)

    def save(rel: str, img: np.ndarray) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img)

    yy, xx = np.mgrid[0:12, 0:12]
    board = np.where((yy // 2 + xx // 2) % 2 == 0, 0, 255).astype(np.uint8)
    for i in range(12):
        save(f"train/good/{i:03d}.png", good())
    for i in range(6):
        save(f"test/good/{i:03d}.png", good())
        img, mask = good(), np.zeros((BIG, BIG), np.uint8)
        y, x = (int(v) for v in rng.integers(20, BIG - 32, 2))
        img[y : y + 12, x : x + 12] = board
        mask[y : y + 12, x : x + 12] = 255
        save(f"test/spot/{i:03d}.png", img)
        save(f"ground_truth/spot/{i:03d}_mask.png", mask)
        mask = np.zeros((BIG, BIG), np.uint8)
        mask[40:88, 40:88] = 255
        save(f"test/invisible/{i:03d}.png", good())
        save(f"ground_truth/invisible/{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def tree_with_invisible_class(tmp_path_factory) -> Path:
    return write_probe_tree(tmp_path_factory.mktemp("separability"))


def test_texture_features_have_four_statistics_per_scale():
    img = flat(np.random.default_rng(0))
    assert texture_features(img).shape == (SIZE, SIZE, 16)
    assert texture_features(img, sigmas=(2.0,)).shape == (SIZE, SIZE, 4)


def test_gaussian_distance_grows_away_from_the_fitted_mean():
    rng = np.random.default_rng(0)
    g = Gaussian(rng.normal(0, 1, (2000, 3)))
    near, far = g.distance(np.zeros((1, 3))), g.distance(np.full((1, 3), 4.0))
    assert near[0] < 0.2 < 6.0 < far[0]
    with pytest.raises(ValueError, match="more samples than features"):
        Gaussian(np.zeros((3, 3)))


def test_texture_cue_separates_a_visible_defect_and_not_an_invisible_one(tree_with_invisible_class):
    from inspectd.training.data import image_files, read_image

    train = [read_image(f, "gray") for f in image_files(tree_with_invisible_class)]
    result = measure(tree_with_invisible_class, [TextureProbe(train).maps], pixel_stride=1)["texture"]
    spot, invisible = result["per_class"]["spot"], result["per_class"]["invisible"]
    assert spot["image_auroc"] == 1.0
    assert spot["pixel_auroc"] > 0.95
    # the invisible class is drawn like good images: no cue can find it, and the probe must not claim it does (its
    # masked centre scores, if anything, below the frame's border, where the blurs see the reflected edge)
    assert invisible["pixel_auroc"] < 0.6
    assert invisible["image_auroc"] < 0.8  # 6 against 6 images: chance can land anywhere near 0.5
    assert result["all"]["n"] == 12


def test_cli_writes_json_with_the_encoder_cues(separable_tree, separable_model, tmp_path):
    ckpt = separable_model.parent / f"{separable_model.name}-ckpt" / "checkpoint.pt"
    assert ckpt.is_file()
    out = tmp_path / "sep.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "research.separability",
            "--data",
            str(separable_tree),
            "--model",
            str(separable_model),
            "--checkpoint",
            str(ckpt),
            "--json",
            str(out),
            "--train-every",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cues = json.loads(out.read_text())["cues"]
    assert set(cues) == {"texture", "encoder-stage1", "encoder-stage2", "encoder-bottleneck"}
    for cue in cues.values():
        assert set(cue["per_class"]) == {"spot"}
        assert cue["per_class"]["spot"]["n"] == 6
    # a checkerboard on a flat grey surface is far outside any good feature distribution
    assert cues["texture"]["all"]["image_auroc"] == 1.0
    assert "texture: all defects" in proc.stdout


def test_cli_refuses_a_model_without_its_checkpoint(separable_tree):
    proc = subprocess.run(
        [sys.executable, "-m", "research.separability", "--data", str(separable_tree), "--model", "somewhere"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--model and --checkpoint go together" in proc.stderr
