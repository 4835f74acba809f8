"""Difference score map -> regions -> pass/reject: scores above a threshold mark defective regions.

A pixel is defective when its score is strictly greater than the pixel threshold. Defective pixels are grouped
into 8-connected regions; regions smaller than `min_region_area` pixels are noise and ignored. Any region left
means REJECT. The image score (for logs, the PLC register and calibration) is a reduction of the whole map, or the
model's own image score where it has one (an anomalib model's pred_score); with an image threshold (manifest
thresholds.image) a score strictly above it rejects the image as well, regions or not.

`find_regions` is the one definition of that region rule: the decision, calibration (thresholds), evaluation
(pixel metrics at the calibrated thresholds) and the labelling assistant's pre-labels all call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from inspectd.core.types import Code, Decision, Region

REDUCTIONS = ("max", "p99", "p999", "mean")
_QUANTILE = {"p99": 0.99, "p999": 0.999}


@dataclass(frozen=True)
class Regions:
    """The 8-connected regions of pixels strictly above a threshold, and which of them are large enough."""

    labels: np.ndarray  # int32 HxW: 0 background, 1..n-1 a region (raster order)
    stats: np.ndarray  # OpenCV's per-label [x, y, w, h, area]
    kept: np.ndarray  # label ids of the regions of at least min_region_area pixels, largest first

    @property
    def largest_area(self) -> int:
        """Area of the largest region above the threshold, kept or not (0 when there is none)."""
        return int(self.stats[1:, cv2.CC_STAT_AREA].max()) if len(self.stats) > 1 else 0

    @property
    def defect_area(self) -> int:
        return int(self.stats[self.kept, cv2.CC_STAT_AREA].sum())

    def mask(self) -> np.ndarray:
        """bool HxW: the pixels of the kept regions (what the decision calls defective)."""
        keep = np.zeros(len(self.stats), dtype=bool)
        keep[self.kept] = True
        return keep[self.labels]


_NO_STATS = np.zeros((1, 5), np.int32)


def find_regions(score_map: np.ndarray, pixel_threshold: float, min_region_area: int) -> Regions:
    """The region rule: pixels strictly above `pixel_threshold`, 8-connected, regions of >= `min_region_area`
    pixels kept, largest first (equal areas in label, i.e. raster, order)."""
    m = np.asarray(score_map)
    if m.size == 0 or float(m.max()) <= pixel_threshold:  # nothing above: no labelling needed
        return Regions(np.zeros(m.shape, np.int32), _NO_STATS, np.zeros(0, np.intp))
    mask = np.ascontiguousarray(m > pixel_threshold).view(np.uint8)
    _n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = np.flatnonzero(areas >= min_region_area) + 1  # label ids (0 is the background)
    order = kept[np.argsort(-stats[kept, cv2.CC_STAT_AREA], kind="stable")]
    return Regions(labels, stats, order)


def smooth_map(score_map: np.ndarray, sigma: float) -> np.ndarray:
    """The manifest's score-map post-processing (score.smooth_sigma): a Gaussian blur of the difference map with
    standard deviation `sigma` pixels (OpenCV's kernel, reflected borders), applied by the Inspector before the
    decision, so regions, the image score, calibration and evaluation all see the same smoothed map. It averages
    the texture's scattered single-pixel noise away while a defect's coherent patch of high scores survives.
    sigma 0 returns the map unchanged."""
    if sigma <= 0:
        return score_map
    return cv2.GaussianBlur(score_map, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)


def reduce_map(score_map: np.ndarray, reduction: str) -> float:
    """One image score from a (finite) map: max, 99th / 99.9th percentile (linear interpolation, as
    np.percentile's default) or mean."""
    if reduction == "max":
        return float(score_map.max())
    if reduction == "mean":
        return float(score_map.mean(dtype=np.float64))
    q = _QUANTILE.get(reduction)
    if q is None:
        msg = f"unknown score reduction {reduction!r}, expected one of {', '.join(REDUCTIONS)}"
        raise ValueError(msg)
    flat = score_map.ravel()
    pos = q * (flat.size - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, (lo, hi))  # O(n); no full sort
    a, b = float(part[lo]), float(part[hi])
    return a + (b - a) * (pos - lo)


class Decider:
    """Applies one model's calibrated thresholds to difference maps; cheap to build, reused for every frame."""

    def __init__(
        self,
        pixel_threshold: float,
        min_region_area: int,
        reduction: str = "max",
        max_regions: int = 16,
        image_threshold: float | None = None,
    ):
        if not math.isfinite(pixel_threshold):
            msg = f"pixel_threshold must be a finite number, got {pixel_threshold!r}"
            raise ValueError(msg)
        if int(min_region_area) != min_region_area or min_region_area < 1:
            msg = f"min_region_area must be an integer >= 1 (pixels), got {min_region_area!r}"
            raise ValueError(msg)
        if reduction not in REDUCTIONS:
            msg = f"unknown score reduction {reduction!r}, expected one of {', '.join(REDUCTIONS)}"
            raise ValueError(msg)
        if int(max_regions) != max_regions or max_regions < 0:
            msg = f"max_regions must be an integer >= 0, got {max_regions!r}"
            raise ValueError(msg)
        if image_threshold is not None and not math.isfinite(image_threshold):
            msg = f"image_threshold must be a finite number or None, got {image_threshold!r}"
            raise ValueError(msg)
        self.image_threshold = None if image_threshold is None else float(image_threshold)
        self.pixel_threshold = float(pixel_threshold)
        self.min_region_area = int(min_region_area)
        self.reduction = reduction
        self.max_regions = int(max_regions)

    def decide(
        self,
        score_map: np.ndarray,
        parts: Sequence[tuple[str, np.ndarray]] = (),
        image_score: float | None = None,
    ) -> Decision:
        """float HxW difference map -> Decision(code, score, regions largest first, defect_area of all regions).

        parts: (name, map) of the maps `score_map` combines (an ensemble's divided maps, same shape); each region
        records in `found_by` the names whose map is above the pixel threshold somewhere inside it.
        `image_score`: the model's own image score (else the map's reduction is the score).

        Raises ValueError for a map that is not 2-D and non-empty, or that holds NaN/inf, or a non-finite image
        score (the pipeline turns it into an ERROR verdict).
        """
        m = np.asarray(score_map)
        if m.ndim != 2 or m.size == 0 or not np.issubdtype(m.dtype, np.floating):
            msg = f"score map has shape {m.shape} and dtype {m.dtype}, expected a non-empty float HxW array"
            raise ValueError(msg)
        peak = float(m.max())
        if not (math.isfinite(peak) and math.isfinite(float(m.min()))):
            bad = int(m.size - np.count_nonzero(np.isfinite(m)))
            msg = (
                f"score map has {bad} non-finite values (NaN/inf) out of {m.size}: the model output or the SSIM "
                "is broken for this frame; expected finite scores"
            )
            raise ValueError(msg)
        if image_score is not None:
            score = float(image_score)
            if not math.isfinite(score):
                msg = f"image score {image_score!r} is not finite: the model output is broken for this frame"
                raise ValueError(msg)
        else:
            score = peak if self.reduction == "max" else reduce_map(m, self.reduction)
        by_score = self.image_threshold is not None and score > self.image_threshold
        without_regions = Code.REJECT if by_score else Code.PASS  # the image score alone
        if peak <= self.pixel_threshold:  # fast path: nothing above the threshold, no labelling needed
            return Decision(code=without_regions, score=score, regions=(), defect_area=0)

        found = find_regions(m, self.pixel_threshold, self.min_region_area)
        if found.kept.size == 0:
            return Decision(code=without_regions, score=score, regions=(), defect_area=0)
        kept = found.kept[: self.max_regions]
        regions = tuple(self._region(m, found.labels, found.stats, int(label), parts) for label in kept)
        return Decision(code=Code.REJECT, score=score, regions=regions, defect_area=found.defect_area)

    def _region(
        self, m: np.ndarray, labels: np.ndarray, stats: np.ndarray, label: int, parts: Sequence[tuple[str, np.ndarray]]
    ) -> Region:
        x, y, w, h, area = (int(v) for v in stats[label, :5])
        inside = labels[y : y + h, x : x + w] == label
        peak = float(m[y : y + h, x : x + w][inside].max())
        found_by = tuple(
            name for name, part in parts if (part[y : y + h, x : x + w][inside] > self.pixel_threshold).any()
        )
        return Region(x=x, y=y, w=w, h=h, area=area, peak=peak, found_by=found_by)
