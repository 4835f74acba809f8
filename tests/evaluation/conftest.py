"""A tiny MVTec-layout tree with trivially separable images, and a tiny model trained and calibrated on it by
export/ (so these tests need the train extra; evaluation itself needs no torch)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.training import QUIET, TINY_NET

SIZE = 48


def flat(rng: np.random.Generator) -> np.ndarray:
    """A good image: flat grey with a little sensor noise."""
    return np.clip(rng.normal(100, 2, (SIZE, SIZE)), 0, 255).astype(np.uint8)


def with_spot(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A defective image: a 12x12 black-and-white checkerboard somewhere; its 0/255 mask."""
    y, x = (int(v) for v in rng.integers(4, SIZE - 16, 2))
    out, mask = img.copy(), np.zeros_like(img)
    yy, xx = np.mgrid[0:12, 0:12]
    out[y : y + 12, x : x + 12] = np.where((yy // 2 + xx // 2) % 2 == 0, 0, 255).astype(np.uint8)
    mask[y : y + 12, x : x + 12] = 255
    return out, mask


def write_tree(root: Path, *, n_train: int = 24, n_good: int = 6, n_defect: int = 6, masks: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), flat(rng))
    for i in range(n_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), flat(rng))
    for i in range(n_defect):
        img, mask = with_spot(flat(rng), rng)
        cv2.imwrite(str(root / "test" / "spot" / f"{i:03d}.png"), img)
        if masks:
            cv2.imwrite(str(root / "ground_truth" / "spot" / f"{i:03d}_mask.png"), mask)
    return root


def tiny_train_argv(data: Path, out: Path, *extra: str, tile: int = 32, overlap: int = 8) -> list[str]:
    """`inspectd train` arguments for a seconds-long tiled model on a tiny tree (checkpoints beside `out`); `extra`
    adds or overrides options (argparse keeps the last value)."""
    return [
        "train",
        "--kind",
        "autoencoder",
        "--data",
        str(data),
        "--out",
        str(out),
        "--input-size",
        str(tile),
        "--mode",
        "tile",
        "--tile-overlap",
        str(overlap),
        *TINY_NET,
        "--iterations",
        "10",
        *QUIET,
        "--checkpoint-dir",
        str(Path(out).parent / f"{Path(out).name}-ckpt"),
        *extra,
    ]


@pytest.fixture(scope="session")
def separable_tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("separable"))


@pytest.fixture(scope="session")
def separable_model(separable_tree, tmp_path_factory) -> Path:
    """A 32x32 tiled autoencoder trained for a few seconds on the tree's train/good, calibrated on held-out goods."""
    pytest.importorskip("torch", reason="building the test model needs the train extra (pip install -e '.[train]')")
    from inspectd.cli import main

    out = tmp_path_factory.mktemp("separable_model") / "model"
    assert (
        main(tiny_train_argv(separable_tree, out, "--iterations", "30", "--batch-size", "8", "--smooth-sigma", "1"))
        == 0
    )
    return out
