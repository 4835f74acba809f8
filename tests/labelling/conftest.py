"""A tiny labelled MVTec-layout set (flat noisy items, dark-spot defects), tiny checkers trained on it, and a
hand-made blurred checker map of a dark disc."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


def make_mvtec(root: Path, n_good: int = 10, n_defect: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for k in range(n_good + n_defect):
        h, w = int(rng.integers(36, 48)), int(rng.integers(36, 48))
        img = np.clip(rng.normal(140, 6, (h, w)), 0, 255).astype(np.uint8)
        cls = "good" if k < n_good else "spot"
        d = root / "test" / cls
        d.mkdir(parents=True, exist_ok=True)
        if cls == "spot":
            mask = np.zeros((h, w), np.uint8)
            centre = (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10)))
            cv2.circle(mask, centre, int(rng.integers(4, 7)), 255, -1)
            img[mask > 0] = 30
            g = root / "ground_truth" / cls
            g.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(g / f"{k:03d}_mask.png"), mask)
        cv2.imwrite(str(d / f"{k:03d}.png"), img)
    return root


def blurred_disc_map(n: int = 81, r: int = 6, blur: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gray, map, disc): a dark disc on a bright image and a checker map (max 1) that sees the disc but spills
    `blur` px past its edge, as the checkers' 128² map does on a larger image."""
    yy, xx = np.mgrid[:n, :n]
    disc = ((yy - n // 2) ** 2 + (xx - n // 2) ** 2) <= r * r
    gray = np.where(disc, 40, 200).astype(np.uint8)
    prob = cv2.GaussianBlur(disc.astype(np.float32), (0, 0), blur / 2)
    return gray, prob / prob.max(), disc


@pytest.fixture(scope="session")
def mvtec_dir(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture(scope="session")
def checkers_dir(mvtec_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="training checkers needs the train extra")
    from inspectd.labelling.checker import CheckerConfig
    from inspectd.labelling.dataset import scan
    from inspectd.labelling.training import TrainSettings, train_checkers

    out = tmp_path_factory.mktemp("checkers")
    train_checkers(
        scan(mvtec_dir),
        out,
        folds=2,
        config=CheckerConfig(32, 32, base_width=4),
        settings=TrainSettings(iterations=8, batch_size=8, threads=1),
        data_root=str(mvtec_dir),
        log=None,
    )
    return out
