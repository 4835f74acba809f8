"""A tiny labelled MVTec-layout set (flat noisy items, dark-spot defects) and tiny checkers trained on it."""

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


@pytest.fixture(scope="session")
def mvtec_dir(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture(scope="session")
def checkers_dir(mvtec_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="training checkers needs the train extra")
    from calibration.labels.dataset import scan
    from calibration.labels.training import TrainSettings, train_checkers
    from export.checker import CheckerConfig

    out = tmp_path_factory.mktemp("checkers")
    train_checkers(scan(mvtec_dir), out, folds=2, config=CheckerConfig(32, 32, base_width=4),
                   settings=TrainSettings(iterations=8, batch_size=8, threads=1), data_root=str(mvtec_dir), log=None)
    return out
