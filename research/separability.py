"""Label-free separability probe: does any *local* cue tell a defect class from good surface, before or after a model
misses it?

An autoencoder trained on good images only can find a defect only where the defect looks locally unlike
good surface. This probe measures how far simple label-free cues get, per defect class of an MVTec-layout tree, with
the same image score as the default recipe (map smoothed with sigma 4, maximum) and the pixel AUROC of `inspectd
evaluate` (every defect pixel against every pixel outside the masks, sampled on a fixed grid):

- ``texture``: the Mahalanobis distance of a 16-dimensional vector of multi-scale local statistics at each pixel
  (log local mean, log local standard deviation, log mean |d/dx| and |d/dy|, each at Gaussian sigma 2, 4, 8, 16 px)
  from one Gaussian fitted to the pixels of ``DIR/train/good`` (exposure-normalised like the default recipe:
  median grey -> 100).
- ``encoder`` (with ``--checkpoint`` and ``--model``): the same distance of a trained model's encoder features (the
  output of each stride-2 stage and of the bottleneck), one Gaussian per stage fitted on the model's own tiles of
  ``DIR/train/good``, mapped back to the frame like the difference map. Needs torch (the train extra).

A class that no cue separates (AUROC near 0.5, or below: the class looks *more* regular than good surface) will not
be found by a reconstruction error either; it needs labelled examples (`inspectd train --hard-defects`). Run:

    python -m research.separability --data DIR [--model MODEL_DIR --checkpoint CKPT] [--json OUT.json]
                                       [--train-every 3] [--pixel-stride 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from inspectd.core.manifest import PreprocessSpec
from inspectd.evaluation import metrics
from inspectd.evaluation.evaluate import find_test_images, read_image, read_truth
from inspectd.inspection.preprocess import normalize_exposure

TEXTURE_SIGMAS = (2.0, 4.0, 8.0, 16.0)
IMAGE_SMOOTH_SIGMA = 4.0  # the default recipe's score.smooth_sigma
SAMPLES_PER_IMAGE = 400  # pixels per training image for the Gaussian fit


EXPOSURE = PreprocessSpec(color="gray", normalize="median")  # the default recipe's exposure normalisation


def texture_features(image: np.ndarray, sigmas: Sequence[float] = TEXTURE_SIGMAS) -> np.ndarray:
    """uint8 gray HxW -> HxWx(4 * len(sigmas)) float32 local statistics (see the module docstring)."""
    img = normalize_exposure(image, EXPOSURE).astype(np.float32)
    gx = np.abs(cv2.Sobel(img, cv2.CV_32F, 1, 0))
    gy = np.abs(cv2.Sobel(img, cv2.CV_32F, 0, 1))
    out = []
    for s in sigmas:
        mean = cv2.GaussianBlur(img, (0, 0), s)
        var = np.maximum(cv2.GaussianBlur(img * img, (0, 0), s) - mean * mean, 0.0)
        out += [
            np.log1p(mean),
            0.5 * np.log1p(var),
            np.log1p(cv2.GaussianBlur(gx, (0, 0), s)),
            np.log1p(cv2.GaussianBlur(gy, (0, 0), s)),
        ]
    return np.stack(out, axis=-1)


class Gaussian:
    """One multivariate Gaussian; distance() is the Mahalanobis distance. The covariance is shrunk by 1 % of its
    mean variance towards the identity, so that near-constant features cannot make it singular."""

    def __init__(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] <= x.shape[1]:
            msg = f"need more samples than features to fit a Gaussian, got {x.shape}"
            raise ValueError(msg)
        self.mean = x.mean(axis=0)
        cov = np.cov(x, rowvar=False)
        cov += np.eye(cov.shape[0]) * (0.01 * np.trace(cov) / cov.shape[0] + 1e-12)
        self.precision = np.linalg.inv(cov)

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = features.astype(np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", d, self.precision, d), 0.0)).astype(np.float32)


def _sample(rows: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return rows[rng.choice(len(rows), min(n, len(rows)), replace=False)]


class TextureProbe:
    name = "texture"

    def __init__(self, train_images: Sequence[np.ndarray], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        rows = [
            _sample(texture_features(im).reshape(-1, 4 * len(TEXTURE_SIGMAS)), rng, SAMPLES_PER_IMAGE)
            for im in train_images
        ]
        self.model = Gaussian(np.concatenate(rows))

    def maps(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return {self.name: self.model.distance(texture_features(image))}


class EncoderProbe:
    """Mahalanobis distance of a trained autoencoder's encoder stages (torch; the model directory's preprocessing)."""

    def __init__(
        self, model_dir: str | Path, checkpoint: str | Path, train_images: Sequence[np.ndarray], seed: int = 0
    ) -> None:
        from inspectd.core.manifest import load_manifest
        from inspectd.inspection.preprocess import Preprocessor
        from inspectd.training.train import model_from_checkpoint

        manifest = load_manifest(model_dir)
        if manifest.preprocess.mode != "tile":
            msg = (
                f"the encoder probe needs a tiled model (preprocess.mode tile), {model_dir} has "
                f"{manifest.preprocess.mode!r}"
            )
            raise ValueError(msg)
        self.pre = Preprocessor(manifest.preprocess, manifest.input)
        self.model = model_from_checkpoint(checkpoint)
        self._cuts = set(self.model.encoder_stage_ends)
        rng = np.random.default_rng(seed)
        rows: list[list[np.ndarray]] = []
        for im in train_images:
            feats = self._features(self.pre.prepare(im).batch)
            rows.append(
                [_sample(f.transpose(0, 2, 3, 1).reshape(-1, f.shape[1]), rng, SAMPLES_PER_IMAGE) for f in feats]
            )
        self.stages = [Gaussian(np.concatenate([r[k] for r in rows])) for k in range(len(self._cuts))]

    def _features(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        out, x = [], torch.from_numpy(batch)
        with torch.no_grad():
            for i, layer in enumerate(self.model.encoder):
                x = layer(x)
                if i + 1 in self._cuts:
                    out.append(x.numpy())
        return out

    def maps(self, image: np.ndarray) -> dict[str, np.ndarray]:
        prepared = self.pre.prepare(image)
        th, tw = self.pre.tile_hw
        out = {}
        for k, (gauss, f) in enumerate(zip(self.stages, self._features(prepared.batch), strict=True)):
            d = gauss.distance(f.transpose(0, 2, 3, 1))
            tiles = np.stack([cv2.resize(t, (tw, th), interpolation=cv2.INTER_LINEAR) for t in d])
            m = self.pre.stitch(tiles, prepared.layout)  # in the camera frame's pixels, also with preprocess.scale
            name = "encoder-bottleneck" if k == len(self.stages) - 1 else f"encoder-stage{k + 1}"
            out[name] = m
        return out


def image_score(score_map: np.ndarray) -> float:
    return float(cv2.GaussianBlur(score_map, (0, 0), IMAGE_SMOOTH_SIGMA).max())


def measure(
    data: str | Path, probes: Sequence[Callable[[np.ndarray], dict[str, np.ndarray]]], *, pixel_stride: int = 5
) -> dict:
    """Per cue: image and pixel AUROC of all defect classes together and of each against test/good."""
    image_scores: dict[str, list[tuple[str, float]]] = {}
    pixels: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for item in find_test_images(data):
        img = read_image(item.path, "gray")
        truth = read_truth(item, img.shape[:2])
        for probe in probes:
            for cue, m in probe(img).items():
                image_scores.setdefault(cue, []).append((item.cls, image_score(m)))
                if truth is not None:
                    pixels.setdefault(cue, []).append(
                        (
                            item.cls,
                            m[::pixel_stride, ::pixel_stride].ravel(),
                            truth[::pixel_stride, ::pixel_stride].ravel(),
                        )
                    )
    result = {}
    for cue, scored in image_scores.items():
        classes = sorted({c for c, _ in scored if c != "good"})
        good = np.array([s for c, s in scored if c == "good"])
        normal = np.concatenate([v[~t] for _, v, t in pixels.get(cue, [])] or [np.empty(0, np.float32)])

        def pair(cls_filter: Callable[[str], bool], scored=scored, cue=cue, good=good, normal=normal) -> dict:
            bad = np.array([s for c, s in scored if c != "good" and cls_filter(c)])
            defect = [v[t] for c, v, t in pixels.get(cue, []) if c != "good" and cls_filter(c)]
            defect = np.concatenate(defect) if defect else np.empty(0, np.float32)
            img_auc = metrics.auroc(np.r_[bad, good], np.r_[np.ones(bad.size, bool), np.zeros(good.size, bool)])
            pix_auc = metrics.auroc(
                np.r_[defect, normal], np.r_[np.ones(defect.size, bool), np.zeros(normal.size, bool)]
            )
            return {"n": int(bad.size), "image_auroc": img_auc, "pixel_auroc": pix_auc}

        result[cue] = {"all": pair(lambda c: True), "per_class": {c: pair(lambda k, c=c: k == c) for c in classes}}
    return result


def summary_text(result: dict) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = []
    for cue, r in result.items():
        lines.append(
            f"{cue}: all defects  image AUROC {f(r['all']['image_auroc'])}  pixel AUROC {f(r['all']['pixel_auroc'])}"
        )
        for cls, c in r["per_class"].items():
            lines.append(f"  {cls:<12} n={c['n']:<4} image {f(c['image_auroc'])}  pixel {f(c['pixel_auroc'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.separability", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", required=True, help="MVTec-layout tree: DIR/train/good, DIR/test/<class>, DIR/ground_truth"
    )
    p.add_argument("--model", help="a tiled model directory (its preprocessing) for the encoder probe")
    p.add_argument(
        "--checkpoint", help="that model's training checkpoint (export/ checkpoint.pt) for the encoder probe"
    )
    p.add_argument(
        "--train-every", type=int, default=3, metavar="K", help="fit on every K-th training image (default 3)"
    )
    p.add_argument(
        "--pixel-stride", type=int, default=5, metavar="S", help="pixel AUROC on every S-th row and column (default 5)"
    )
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    if (args.model is None) != (args.checkpoint is None):
        p.error("--model and --checkpoint go together (the encoder probe needs both)")
    if args.train_every < 1 or args.pixel_stride < 1:
        p.error("--train-every and --pixel-stride must be >= 1")
    from inspectd.training.data import image_files

    train = [read_image(f, "gray") for f in image_files(args.data)[:: args.train_every]]
    probes = [TextureProbe(train).maps]
    if args.model:
        probes.append(EncoderProbe(args.model, args.checkpoint, train).maps)
    result = measure(args.data, probes, pixel_stride=args.pixel_stride)
    print(summary_text(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"data": str(args.data), "cues": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
