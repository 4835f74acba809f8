"""One model's reconstruction, scored three ways (the Gaussian-window claim, measured): Gaussian-window SSIM (the
daemon's default), uniform-window SSIM, and the per-pixel squared difference (L2).

Every variant is the daemon's own Inspector, preprocess -> onnxruntime -> difference map -> stitch -> map
post-processing -> decide, with only its difference kernel swapped (`Inspector.ssim`, which has one method,
`difference(reference, reconstruction, out=None)`):

- gaussian-ssim: 1 - SSIM with the manifest's Gaussian window (size, sigma); the kernel the daemon runs.
- uniform-ssim: 1 - SSIM with a uniform (mean) window of the manifest's window size.
- l2: (reference - reconstruction)^2, averaged over colour channels; values in [0, 1].

A variant's thresholds are not the manifest's (those are in the manifest's own map units): `inspectd train`
calibrates every variant on the same held-out images by the same rule and records them in the manifest's
training facts (`training.score_variants`), which the daemon ignores and `inspectd evaluate --score` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inspectd.evaluation import thresholds as calib
from inspectd.inspection.inspector import Inspector
from inspectd.inspection.ssim import SsimKernel

SCORES = ("gaussian-ssim", "uniform-ssim", "l2")


class L2Difference:
    """Per-pixel squared difference of two images in [0, 1] (HxW or HxWxC; channel mean), the SsimKernel interface."""

    def difference(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        d = np.subtract(a, b, dtype=np.float32)
        np.multiply(d, d, out=d)
        if d.ndim == 3:
            d = d.mean(axis=2, dtype=np.float32)
        if out is None:
            return d
        out[...] = d
        return out

    def warmup(self, channels=1) -> float:
        return 0.0


FEATURES_SCORE = "features-knn"  # a features model's own map (its graph's output); it has no variants
CLASSIFIER_SCORE = "classifier-probability"  # a classifier's map: the defect probability per pixel; no variants


def native_score(manifest) -> str:
    """The name of the manifest's own map: gaussian-ssim or uniform-ssim (an autoencoder), features-knn,
    classifier-probability, `anomalib` (its graph's own anomaly map), or ensemble-max / ensemble-mean (the combined
    map of the members). Only an autoencoder's map has variants."""
    if manifest.ensemble is not None:
        return f"ensemble-{manifest.ensemble.combine}"
    if manifest.kind == "anomalib":
        return "anomalib"
    if manifest.kind == "features":
        return FEATURES_SCORE
    if manifest.kind == "classifier":
        return CLASSIFIER_SCORE
    return f"{manifest.ssim.window}-ssim"


def kernel_for(score: str, manifest):
    """The difference kernel of a variant, with the manifest's window size, sigma and constants."""

    s = manifest.ssim
    if score == "l2":
        return L2Difference()
    if score in ("gaussian-ssim", "uniform-ssim"):
        return SsimKernel(
            window="gaussian" if score == "gaussian-ssim" else "uniform", size=s.size, sigma=s.sigma, k1=s.k1, k2=s.k2
        )
    msg = f"unknown score {score!r}, expected one of {', '.join(SCORES)}"
    raise ValueError(msg)


def variant_thresholds(manifest, score: str) -> dict | None:
    """{'pixel', 'min_region_area'} for a variant: the manifest's thresholds for its native score, else the ones
    `inspectd train` recorded for this model (training.score_variants, bound to the same sha256), else None."""
    if score == native_score(manifest):
        t = manifest.thresholds
        out = {"pixel": t.pixel, "min_region_area": t.min_region_area, "source": "manifest thresholds"}
        return out if t.image is None else {**out, "image": t.image}
    rec = (manifest.training or {}).get("score_variants", {}).get(score)
    if not rec or rec.get("model_sha256") != manifest.onnx.sha256:
        return None
    return {"pixel": rec["pixel"], "min_region_area": rec["min_region_area"], "source": "training.score_variants"}


def variant_inspector(inspector, score: str):
    """(Inspector scoring with `score`, its thresholds or None): the native score returns `inspector` itself;
    a variant shares its onnxruntime session. A variant without recorded thresholds gets pixel threshold 2.0
    (the map's maximum for SSIM: nothing is rejected) and None for its thresholds."""

    m = inspector.manifest
    t = variant_thresholds(m, score)
    if score == native_score(m):
        return inspector, t
    if m.kind == "anomalib":
        msg = f"{m.name!r} is an anomalib model: it is scored by its own anomaly map only (no {score!r} variant)"
        raise ValueError(msg)
    if m.ensemble is not None:
        msg = (
            f"{m.name!r} is an ensemble: it is scored by its own combined map ({native_score(m)}) only; "
            f"score {score!r} can be asked of each member model directory on its own"
        )
        raise ValueError(msg)
    if m.kind in ("features", "classifier"):
        msg = f"{m.name!r} is a {m.kind} model: its map is its graph's own output ({native_score(m)}), no variant"
        raise ValueError(msg)
    out = Inspector(
        inspector.detector,
        pixel_threshold=t["pixel"] if t else 2.0,
        min_region_area=t["min_region_area"] if t else 1,
    )
    out.ssim = kernel_for(score, m)
    return out, t


def calibrate_variants(
    model_dir: str | Path,
    good_images: Sequence[np.ndarray],
    defect_images: Sequence[np.ndarray] = (),
    defect_masks: Sequence[np.ndarray] = (),
    *,
    data: str = "held-out images",
) -> dict:
    """Thresholds of every non-native variant, by inspectd/evaluation/thresholds.py's rules on the same images:
    {score: {pixel, min_region_area, method, good_pass_rate, model_sha256}}."""

    base = calib.open_inspector(model_dir)
    variants = {s: variant_inspector(base, s)[0] for s in SCORES if s != native_score(base.manifest)}

    def maps(images) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {s: [] for s in variants}
        for image in images:  # one inference per image, scored by every variant
            pending = base.infer(base.prepare(image))
            for s, insp in variants.items():
                out[s].append(insp.finish(pending).score_map)
        return out

    good_maps = maps(good_images)
    defect_maps = maps(defect_images) if defect_images else {}
    result = {}
    for score in variants:
        if defect_images:
            cal = calib.calibrate_with_defects(good_maps[score], defect_maps[score], defect_masks, data=data)
        else:
            cal = calib.calibrate_good_only(good_maps[score], data=data)
        result[score] = {
            "pixel": cal.pixel,
            "min_region_area": cal.min_region_area,
            "method": cal.method,
            "good_pass_rate": cal.good_pass_rate,
            "model_sha256": base.manifest.onnx.sha256,
        }
    return result
