"""Choose a model's pixel threshold and minimum region area from held-out images, on the daemon's own numbers.

Score maps come from inspectd.inspection.inspector.Inspector (preprocess -> ONNX -> Gaussian-SSIM map, frame-sized), and
regions are counted as inspectd.inspection.decide counts them (8-connected pixels strictly above the pixel threshold;
a region
of at least min_region_area pixels rejects the image). So a threshold chosen here means on a line what it meant
during calibration.

Rules:

- good images only (`calibrate_good_only`): pixel threshold = the `quantile` (default 99.9 %) of all good pixels'
  scores plus `margin` (default 10 %) of its distance above their median. The minimum region area is just above the
  largest region any good image still has at that threshold (times `area_margin`), so every calibration good image
  passes. If that area would exceed `max_area_frac` of the frame (a model that fires in big patches on good
  images), the pixel threshold is raised instead until it does not. The rule cannot end in "everything is a
  defect": a threshold at which a calibration good image would be rejected is never chosen.
- good and defective images with masks (`calibrate_with_defects`): candidate thresholds between the good pixels'
  99th percentile and the highest score; for each, the area rule above keeps every good image passing, and the
  candidate with the best image-level balanced accuracy wins (ties: best pixel F1, then the higher threshold).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from inspectd.core.manifest import Manifest, Thresholds, load_manifest
from inspectd.core.types import Code
from inspectd.inspection.decide import find_regions
from inspectd.inspection.inspector import Inspector


@dataclass(frozen=True)
class Calibration:
    pixel: float
    min_region_area: int
    method: str  # names the rule and the data; goes to manifest thresholds.method
    n_good: int
    good_pass_rate: float  # on the calibration good images
    n_defect: int = 0
    defect_reject_rate: float | None = None
    pixel_f1: float | None = None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


# --- score maps and regions, as the daemon computes them ----------------------------------------------------------


def open_inspector(model_dir: str | Path, *, threads: int = 0):
    """The daemon's Inspector for a model directory, on the CPU (calibration must not depend on a GPU)."""

    return Inspector.from_model_dir(model_dir, providers=("CPUExecutionProvider",), intra_op_threads=threads)


def score_maps(inspector, images: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Frame-sized difference maps (1 - SSIM) of uint8 images through the daemon's code path."""
    return [inspector.score_map(img) for img in images]


def largest_region(score_map: np.ndarray, threshold: float) -> int:
    """Area (pixels) of the largest 8-connected region strictly above `threshold`; 0 when there is none."""
    return find_regions(score_map, threshold, 1).largest_area


def _quantile(maps: Sequence[np.ndarray], q: float, max_values: int = 4_000_000) -> float:
    """q-quantile of all pixels of all maps (a strided subsample beyond max_values pixels)."""
    flat = np.concatenate([m.ravel() for m in maps])
    if flat.size > max_values:
        flat = flat[:: int(math.ceil(flat.size / max_values))]
    return float(np.quantile(flat, q))


def _min_area_for(good_areas: np.ndarray, area_margin: float, floor: int) -> int:
    """Smallest region area that no calibration good image reaches (with a margin)."""
    worst = int(good_areas.max()) if good_areas.size else 0
    return max(floor, int(math.floor(worst * area_margin)) + 1)


# --- rules --------------------------------------------------------------------------------------------------------


def calibrate_good_only(
    good_maps: Sequence[np.ndarray],
    *,
    quantile: float = 0.999,
    margin: float = 0.1,
    area_margin: float = 1.25,
    min_area_floor: int = 1,
    max_area_frac: float = 0.002,
    data: str = "held-out good images",
    max_pixel: float = 2.0,
) -> Calibration:
    """Thresholds from good images alone (see the module docstring); every calibration good image passes.
    `max_pixel`: the map's range (2 for one model's SSIM map; an ensemble's combined map goes higher)."""
    if not good_maps:
        msg = "calibration needs at least one good image"
        raise ValueError(msg)
    frame_area = int(np.median([m.size for m in good_maps]))
    area_cap = max(min_area_floor, int(max_area_frac * frame_area))
    t_q = _quantile(good_maps, quantile)
    median = _quantile(good_maps, 0.5)
    pixel = min(max_pixel, t_q + margin * max(0.0, t_q - median))
    areas = np.array([largest_region(m, pixel) for m in good_maps])
    raised = False
    if _min_area_for(areas, area_margin, min_area_floor) > area_cap:
        # patches on good images are too big for a sensible area filter: raise the pixel threshold instead
        raised = True
        peak = max(float(m.max()) for m in good_maps)
        for t in np.linspace(pixel, peak, 64)[1:]:
            areas = np.array([largest_region(m, float(t)) for m in good_maps])
            if _min_area_for(areas, area_margin, min_area_floor) <= area_cap:
                pixel = float(t)
                break
        else:
            pixel, areas = peak, np.zeros(len(good_maps), dtype=int)
    min_area = _min_area_for(areas, area_margin, min_area_floor)
    passed = float(np.mean(areas < min_area))
    method = (
        f"good-only: pixel = q{quantile * 100:g} of good pixel scores + {margin:g} x (q - median)"
        + (", raised until good regions < area cap" if raised else "")
        + f"; min_region_area = {area_margin:g} x largest good region + 1; data: {data} (n={len(good_maps)})"
    )
    return Calibration(
        pixel=round(float(pixel), 6),
        min_region_area=int(min_area),
        method=method,
        n_good=len(good_maps),
        good_pass_rate=passed,
        details={
            "quantile": quantile,
            "quantile_score": t_q,
            "median_score": median,
            "largest_good_region": int(areas.max()) if areas.size else 0,
            "area_cap": area_cap,
            "raised_for_area_cap": raised,
        },
    )


def calibrate_with_defects(
    good_maps: Sequence[np.ndarray],
    defect_maps: Sequence[np.ndarray],
    defect_masks: Sequence[np.ndarray],
    *,
    candidates: int = 48,
    area_margin: float = 1.25,
    min_area_floor: int = 1,
    max_area_frac: float = 0.002,
    data: str = "held-out good and defective images",
) -> Calibration:
    """Thresholds from good and defective images (masks: nonzero = defect pixel, frame-sized)."""
    if not good_maps or not defect_maps:
        msg = "calibration with defects needs at least one good and one defective image"
        raise ValueError(msg)
    if len(defect_maps) != len(defect_masks):
        msg = f"{len(defect_maps)} defective score maps but {len(defect_masks)} masks"
        raise ValueError(msg)
    truths = [np.asarray(m) > 0 for m in defect_masks]
    for m, t in zip(defect_maps, truths, strict=False):
        if m.shape != t.shape:
            msg = f"a defect mask has shape {t.shape} but its score map {m.shape}: masks must be frame-sized"
            raise ValueError(msg)
    frame_area = int(np.median([m.size for m in good_maps]))
    area_cap = max(min_area_floor, int(max_area_frac * frame_area))
    lo = _quantile(good_maps, 0.99)
    hi = max(float(m.max()) for m in list(good_maps) + list(defect_maps))
    best: tuple | None = None
    for candidate in np.linspace(lo, hi, candidates, endpoint=False):
        level = float(candidate)
        g_areas = np.array([largest_region(m, level) for m in good_maps])
        min_area = min(_min_area_for(g_areas, area_margin, min_area_floor), area_cap)
        good_pass = float(np.mean(g_areas < min_area))
        d_areas = np.array([largest_region(m, level) for m in defect_maps])
        reject = float(np.mean(d_areas >= min_area))
        tp = sum(int(np.count_nonzero((m > level) & y)) for m, y in zip(defect_maps, truths, strict=False))
        fp = sum(int(np.count_nonzero((m > level) & ~y)) for m, y in zip(defect_maps, truths, strict=False))
        fn = sum(int(np.count_nonzero((m <= level) & y)) for m, y in zip(defect_maps, truths, strict=False))
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        key = ((good_pass + reject) / 2, f1, level)
        if best is None or key > best[0]:
            best = (key, level, min_area, good_pass, reject, f1)
    assert best is not None
    (bacc, _, _), pixel, min_area, good_pass, reject, f1 = best
    method = (
        "good+defect: pixel maximises image balanced accuracy (ties: pixel F1); min_region_area = "
        f"{area_margin:g} x largest good region + 1 (cap {area_cap}); data: {data} "
        f"(n_good={len(good_maps)}, n_defect={len(defect_maps)})"
    )
    return Calibration(
        pixel=round(pixel, 6),
        min_region_area=int(min_area),
        method=method,
        n_good=len(good_maps),
        good_pass_rate=good_pass,
        n_defect=len(defect_maps),
        defect_reject_rate=reject,
        pixel_f1=f1,
        details={"balanced_accuracy": bacc, "area_cap": area_cap, "search_range": [lo, hi]},
    )


def calibrate(
    model_dir: str | Path,
    good_images: Sequence[np.ndarray],
    defect_images: Sequence[np.ndarray] = (),
    defect_masks: Sequence[np.ndarray] = (),
    *,
    data: str = "held-out images",
    threads: int = 0,
    **kwargs,
) -> Calibration:
    """Score the images through the daemon's Inspector and apply the matching rule."""
    inspector = open_inspector(model_dir, threads=threads)
    good_maps = score_maps(inspector, good_images)
    if defect_images:
        return calibrate_with_defects(
            good_maps, score_maps(inspector, defect_images), defect_masks, data=data, **kwargs
        )
    kwargs.setdefault("max_pixel", inspector.manifest.pixel_limit)
    return calibrate_good_only(good_maps, data=data, **kwargs)


def write_thresholds(model_dir: str | Path, result: Calibration, *, calibrated_at: str) -> Manifest:
    """Rewrite the model directory's manifest with the calibrated thresholds (bound to the current model.onnx).
    The region rule alone decides afterwards: an image threshold (an anomalib model's own, thresholds.image) is
    dropped, since the calibration chose the pixel threshold and area for every calibration good image to pass."""
    manifest = load_manifest(model_dir)
    thresholds = Thresholds(
        pixel=min(manifest.pixel_limit, max(0.0, result.pixel)),
        min_region_area=result.min_region_area,
        model_sha256=manifest.onnx.sha256,
        method=result.method,
        calibrated_at=calibrated_at,
    )
    raw = manifest.model_dump(mode="json")
    raw["thresholds"] = thresholds.model_dump(mode="json")
    raw["training"] = {**raw.get("training", {}), "calibration": _facts(result)}
    updated = Manifest.model_validate(raw)
    updated.write(model_dir)
    return updated


def _facts(result: Calibration) -> dict:
    out = {k: v for k, v in result.as_dict().items() if k not in ("method",)}
    return json_safe(out)


def json_safe(value):
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- evaluation ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    good_pass: int
    good_reject: int
    defect_reject: int
    defect_pass: int

    @property
    def n_good(self) -> int:
        return self.good_pass + self.good_reject

    @property
    def n_defect(self) -> int:
        return self.defect_reject + self.defect_pass

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "good_pass_rate": self.good_pass / self.n_good if self.n_good else None,
            "defect_reject_rate": self.defect_reject / self.n_defect if self.n_defect else None,
        }

    def __str__(self) -> str:
        g = f"{self.good_pass}/{self.n_good} good passed" if self.n_good else "no good images"
        d = f"{self.defect_reject}/{self.n_defect} defective rejected" if self.n_defect else "no defective images"
        return f"{g}, {d}"


def evaluate(inspector, images: Iterable[np.ndarray], truths: Iterable[bool]) -> Confusion:
    """Pass/reject of each image with the inspector's thresholds, against ground truth (True = defective)."""

    counts = {"good_pass": 0, "good_reject": 0, "defect_reject": 0, "defect_pass": 0}
    for image, truth in zip(images, truths, strict=False):
        rejected = inspector.inspect(image).decision.code != Code.PASS
        key = ("defect_" if truth else "good_") + ("reject" if rejected else "pass")
        counts[key] += 1
    return Confusion(**counts)
