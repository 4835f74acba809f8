"""An MVTec-layout data set rendered by the synthetic camera (inspectd.daemon.cameras.synthetic): a second surface,
woven
fabric, to check that a training recipe works untuned beyond magnetic tile, and a tiny tree for tests.

    DIR/train/good/*.png                      render_good(n) of the training seed
    DIR/test/good/*.png                       render_good(n) of the test seed
    DIR/test/<kind>/*.png                     render(n) frames of the test seed that carry a defect; <kind> is the
                                              defect kind (the first one where a frame has two)
    DIR/ground_truth/<kind>/<stem>_mask.png   its truth_mask, 0/255

    python -m research.synthetic_tree DIR [--train 600] [--test-good 100] [--test-defect 200] [--size 256]
        [--color gray|bgr]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from inspectd.core import mvtec

TRAIN_SEED = 7  # the demo model's training stream
TEST_SEED = 4321  # neither the training stream nor the demo stream (1234)


def write_synthetic_tree(
    root: str | Path,
    *,
    train: int = 600,
    test_good: int = 100,
    test_defect: int = 200,
    width: int = 256,
    height: int = 256,
    color: str = "gray",
    train_seed: int = TRAIN_SEED,
    test_seed: int = TEST_SEED,
) -> Path:
    from inspectd.daemon.cameras.synthetic import SurfaceGenerator, SyntheticCameraConfig

    root = Path(root)

    def gen(seed: int, rate: float) -> SurfaceGenerator:
        return SurfaceGenerator(
            SyntheticCameraConfig(width=width, height=height, seed=seed, defect_rate=rate, color=color)
        )

    def save(path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), image):
            msg = f"cannot write {path}"
            raise OSError(msg)

    g = gen(train_seed, 0.0)
    for n in range(train):
        save(root / "train" / "good" / f"{n:04d}.png", g.render_good(n).image)
    t = gen(test_seed, 0.5)
    for n in range(test_good):
        save(root / "test" / "good" / f"{n:04d}.png", t.render_good(n).image)
    found, n = 0, 100_000  # defect frames come from another range of frame numbers than the goods
    while found < test_defect:
        kinds = t.defects(n)
        if kinds:
            cap = t.render(n)
            if cap.truth_mask is not None and cap.truth_mask.any():
                save(root / "test" / kinds[0] / f"{n:06d}.png", cap.image)
                save(
                    mvtec.mask_path(root, kinds[0], f"{n:06d}"),
                    np.where(cap.truth_mask > 0, 255, 0).astype(np.uint8),
                )
                found += 1
        n += 1
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.synthetic_tree", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--test-good", type=int, default=100)
    p.add_argument("--test-defect", type=int, default=200)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--color", choices=("gray", "bgr"), default="gray")
    a = p.parse_args(argv)
    write_synthetic_tree(
        a.out,
        train=a.train,
        test_good=a.test_good,
        test_defect=a.test_defect,
        width=a.size,
        height=a.size,
        color=a.color,
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
