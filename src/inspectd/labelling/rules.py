"""The label-check rules as pure functions on masks and probabilities (no I/O, no models).

- One checker: the match between the labelled region and the checker's predicted region is their IoU
  (intersection pixels / union pixels); a label whose IoU is below `iou_threshold` (default 0.8) is anomalous.
- N checkers: their image-level defect probabilities are combined by sum or mean into a *target probability*,
  each operation with its own thresholds.
  * wrong label: target < low threshold while the label says defective;
  * missed label: target > high threshold and the predicted region's area > `area_threshold` (default 15 px)
    while the label says defect-free.
  Defaults: mean -> low 0.5, high 0.8; sum -> low 0.5 * k, high 0.8 * k for the k checkers that scored the image
  (with k = 5 the high threshold is the method's example "target > 4").

The region rule (IoU) is applied after the probability rules whatever N is: the probability rules cannot see a
label that is too large (a ring around the defect) or too small (an eroded region), the IoU can.

Which predicted region the IoU compares the label with (`RuleConfig.region`):
- "global" (the method's reading): the checkers' mean probability map above their calibrated pixel threshold,
  over the whole image;
- "local": the checkers' region *near the label*: within the label grown by `local_grow` times its equivalent
  radius (sqrt(area / pi)), the pixels whose probability is above the Otsu threshold of the probabilities in that
  neighbourhood (`local_region`). It asks "where, around this label, does the checker put the defect's border?",
  which a checker can answer even when its absolute probabilities are badly calibrated or it misses or invents
  regions elsewhere in the image. A ring label (too large) leaves low-probability pixels inside the label, an
  eroded one high-probability pixels outside it; both lower this IoU.
- "contrast": no predicted region and no IoU; the label is compared with the checkers' mean probability map by
  three ratios that do not depend on where the checkers put their absolute threshold (`contrast_stats`):
  * rim / core: mean probability of the label's outer part over that of its innermost `contrast_core` share
    (default 0.5 of its area). A label drawn too large (a ring around the defect) has a rim the checkers do not
    see as defect: flagged below `rim_min` (0.5).
  * band / inside: mean probability of a band around the label (the label grown to `contrast_grow` = 2x its area,
    minus the label) over the mean inside it. A label drawn too small (an eroded region) has the defect's rest
    in that band: flagged above `band_max` (0.5).
  * inside: mean probability inside the label. A region the checkers do not see at all (a false region drawn on
    a good part) is flagged below `inside_min` (0.1).
  Any of the three makes a region mismatch. The geometry (half the area as core, a band of the label's own area)
  is deliberately not tuned to any particular corruption: it asks "is the label's border where the checkers'
  probability falls off?".

The checkers see the image at their input size (128 x 128 by default) and their map, resized back to the image,
is blurred by several image pixels at every border: a thin crack's map spills into the band around a right label.
`RuleConfig.refine = "guided"` (the default) first sharpens the mean map to the image's own edges with a guided
filter (He, Sun and Tang 2010: the map as a locally linear function of the grey image, in windows of
`refine_radius` image pixels, regularised by `refine_eps`), so the probability falls off where the image changes.
The threshold-free rules (region "local" and "contrast") read the refined map; the predicted region, cut at the
checkers' calibrated pixel threshold (global IoU, the missed label's area), stays on their own map, where that
threshold was calibrated. "none" gives the threshold-free rules the checkers' own map too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

WRONG_LABEL = "wrong_label"  # labelled defective, the checkers see no defect
MISSED_LABEL = "missed_label"  # labelled defect-free, the checkers see a defect
REGION_MISMATCH = "region_mismatch"  # labelled region and predicted region disagree (IoU below threshold)
REASONS = (WRONG_LABEL, MISSED_LABEL, REGION_MISMATCH)

Combine = Literal["mean", "sum"]


Region = Literal["global", "local", "contrast"]
REGIONS = ("global", "local", "contrast")
Refine = Literal["none", "guided"]
REFINES = ("none", "guided")


@dataclass(frozen=True)
class RuleConfig:
    iou_threshold: float = 0.8
    region: Region = "global"  # which predicted region the IoU uses (module docstring)
    local_grow: float = 0.6  # "local": the neighbourhood is the label grown by this x its equivalent radius
    contrast_core: float = 0.5  # "contrast": the label's core is its innermost share of this size
    contrast_grow: float = 2.0  # "contrast": the band around the label reaches this x the label's area
    rim_min: float = 0.5  # "contrast": rim / core below it = label too large
    band_max: float = 0.5  # "contrast": band / inside above it = label too small
    inside_min: float = 0.1  # "contrast": mean probability inside the label below it = nothing there
    combine: Combine = "mean"
    low_threshold: float | None = None  # wrong label below it; None = 0.5 (mean) or 0.5 * k (sum)
    high_threshold: float | None = None  # missed label above it; None = 0.8 (mean) or 0.8 * k (sum)
    area_threshold: int = 15  # px of the predicted region (frame pixels) needed to call a missed label
    refine: Refine = "guided"  # the checkers' map sharpened to the image's edges first (module docstring)
    refine_radius: int = 4  # "guided": window radius in image pixels
    refine_eps: float = 1e-3  # "guided": regularisation (grey values in [0, 1]); larger = smoother

    def __post_init__(self) -> None:
        if self.combine not in ("mean", "sum"):
            msg = f"combine must be 'mean' or 'sum', got {self.combine!r}"
            raise ValueError(msg)
        if not 0.0 <= self.iou_threshold <= 1.0:
            msg = f"iou_threshold must lie in [0, 1], got {self.iou_threshold}"
            raise ValueError(msg)
        if self.region not in REGIONS:
            msg = f"region must be one of {', '.join(REGIONS)}, got {self.region!r}"
            raise ValueError(msg)
        if not 0.0 < self.contrast_core < 1.0:
            msg = f"contrast_core must lie in (0, 1), got {self.contrast_core}"
            raise ValueError(msg)
        if not 1.0 < self.contrast_grow <= 10.0:
            msg = f"contrast_grow must lie in (1, 10], got {self.contrast_grow}"
            raise ValueError(msg)
        for name in ("rim_min", "band_max", "inside_min"):
            if getattr(self, name) < 0:
                msg = f"{name} must be >= 0, got {getattr(self, name)}"
                raise ValueError(msg)
        if not 0.0 < self.local_grow <= 5.0:
            msg = f"local_grow must lie in (0, 5], got {self.local_grow}"
            raise ValueError(msg)
        if self.area_threshold < 0:
            msg = f"area_threshold must be >= 0 px, got {self.area_threshold}"
            raise ValueError(msg)
        if self.refine not in REFINES:
            msg = f"refine must be one of {', '.join(REFINES)}, got {self.refine!r}"
            raise ValueError(msg)
        if not 1 <= self.refine_radius <= 64:
            msg = f"refine_radius must lie in [1, 64] image pixels, got {self.refine_radius}"
            raise ValueError(msg)
        if not self.refine_eps > 0:
            msg = f"refine_eps must be > 0, got {self.refine_eps}"
            raise ValueError(msg)

    def thresholds(self, k: int) -> tuple[float, float]:
        """(low, high) for a target combined from k checker probabilities."""
        scale = 1.0 if self.combine == "mean" else float(k)
        low = 0.5 * scale if self.low_threshold is None else self.low_threshold
        high = 0.8 * scale if self.high_threshold is None else self.high_threshold
        return low, high

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The outcome for one image: reason is None when the label is accepted."""

    reason: str | None
    iou: float
    probability: float
    label_area: int
    predicted_area: int
    iou_local: float | None = None  # IoU with the label's local region (None without a probability map / label)
    contrast: Contrast | None = None  # the label's probability contrast (None without a probability map / label)

    @property
    def flagged(self) -> bool:
        return self.reason is not None


def iou(label: np.ndarray, predicted: np.ndarray) -> float:
    """Intersection over union of two same-shaped masks (nonzero = region); two empty masks match (1.0)."""
    a = np.asarray(label) > 0
    b = np.asarray(predicted) > 0
    if a.shape != b.shape:
        msg = f"masks differ in shape: label {a.shape}, predicted {b.shape}"
        raise ValueError(msg)
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of probabilities in [0, 1] (the value between the two classes that maximises the
    between-class variance); the midpoint of the range when all values are (nearly) equal."""
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, 1.0)
    if v.size == 0:
        return 0.5
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-6:
        return (lo + hi) / 2
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = v.size - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def local_region(label: np.ndarray, prob_map: np.ndarray, grow: float = 0.6) -> np.ndarray:
    """The checker's region near a labelled one (see the module docstring): bool mask of the label's shape."""

    inside = np.asarray(label) > 0
    prob_map = np.asarray(prob_map, dtype=np.float32)
    if inside.shape != prob_map.shape:
        msg = f"label {inside.shape} and probability map {prob_map.shape} differ in shape"
        raise ValueError(msg)
    area = int(np.count_nonzero(inside))
    if area == 0:
        return np.zeros_like(inside)
    radius = max(2.0, grow * float(np.sqrt(area / np.pi)))
    dist = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5)
    hood = dist <= radius
    return hood & (prob_map > otsu_threshold(prob_map[hood]))


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter: `src` (float) as a locally linear function of `guide` (float, same shape) in
    (2 radius + 1)^2 windows, regularised by eps. Edges of the guide become edges of the output."""

    guide = np.asarray(guide, dtype=np.float32)
    src = np.asarray(src, dtype=np.float32)
    if guide.shape != src.shape:
        msg = f"guide {guide.shape} and map {src.shape} differ in shape"
        raise ValueError(msg)
    k = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    m_i, m_p = box(guide), box(src)
    a = (box(guide * src) - m_i * m_p) / (box(guide * guide) - m_i * m_i + eps)
    b = m_p - a * m_i
    return box(a) * guide + box(b)


def refine_map(gray: np.ndarray, prob_map: np.ndarray, config: RuleConfig) -> np.ndarray:
    """The checkers' mean map as the rules read it (module docstring): guided by the grey image, in [0, 1]."""
    prob_map = np.asarray(prob_map, dtype=np.float32)
    if config.refine == "none":
        return prob_map
    guide = np.asarray(gray, dtype=np.float32) / 255.0
    return np.clip(guided_filter(guide, prob_map, config.refine_radius, config.refine_eps), 0.0, 1.0)


def grow_to_area(mask: np.ndarray, factor: float) -> np.ndarray:
    """The mask grown outwards (by distance from it) until it covers `factor` x its area (bool)."""

    inside = np.asarray(mask) > 0
    area = int(np.count_nonzero(inside))
    outside = ~inside
    extra = min(int(round((factor - 1) * area)), int(np.count_nonzero(outside)))
    if extra <= 0:
        return inside.copy()
    d = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, 5)
    r = np.partition(d[outside], extra - 1)[extra - 1]
    return inside | (d <= r)


def inner_part(mask: np.ndarray, keep: float) -> np.ndarray:
    """The innermost `keep` share of the mask's area (by distance to its border; at least one pixel) (bool)."""

    inside = np.asarray(mask) > 0
    area = int(np.count_nonzero(inside))
    if area == 0:
        return inside.copy()
    d = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
    n = max(1, int(round(keep * area)))
    t = -np.partition(-d[inside], n - 1)[n - 1]
    return inside & (d >= t)


@dataclass(frozen=True)
class Contrast:
    """Mean checker probabilities of one label's parts (module docstring, region "contrast")."""

    inside: float
    core: float
    rim: float
    band: float

    @property
    def rim_ratio(self) -> float:
        return self.rim / max(self.core, 1e-6)

    @property
    def band_ratio(self) -> float:
        return self.band / max(self.inside, 1e-6)

    def problems(self, config: RuleConfig) -> list[str]:
        """Which of the three tests fail (empty = the label's border is where the checkers see it)."""
        out = []
        if self.inside < config.inside_min:
            out.append("inside")
        if self.rim_ratio < config.rim_min:
            out.append("too_large")
        if self.band_ratio > config.band_max:
            out.append("too_small")
        return out

    def excess(self, config: RuleConfig) -> float:
        """How far the worst of the three tests lies beyond its limit, relative to it (0 = all within)."""
        return max(
            1.0 - self.inside / max(config.inside_min, 1e-6),
            1.0 - self.rim_ratio / max(config.rim_min, 1e-6),
            self.band_ratio / max(config.band_max, 1e-6) - 1.0,
            0.0,
        )

    def as_dict(self) -> dict:
        return {
            "inside": round(self.inside, 4),
            "core": round(self.core, 4),
            "rim": round(self.rim, 4),
            "band": round(self.band, 4),
        }


def contrast_stats(label: np.ndarray, prob_map: np.ndarray, core: float = 0.5, grow: float = 2.0) -> Contrast:
    """The label's probability contrast: mean probability inside it, in its core, its rim and a band around it.
    A label too thin to have a rim (every pixel is core) gets rim = core; a label covering the image, band = 0."""
    inside = np.asarray(label) > 0
    prob_map = np.asarray(prob_map, dtype=np.float32)
    if inside.shape != prob_map.shape:
        msg = f"label {inside.shape} and probability map {prob_map.shape} differ in shape"
        raise ValueError(msg)
    if not inside.any():
        msg = "contrast_stats needs a non-empty label"
        raise ValueError(msg)
    c = inner_part(inside, core)
    rim = inside & ~c
    band = grow_to_area(inside, grow) & ~inside
    p_core = float(prob_map[c].mean())
    return Contrast(
        inside=float(prob_map[inside].mean()),
        core=p_core,
        rim=float(prob_map[rim].mean()) if rim.any() else p_core,
        band=float(prob_map[band].mean()) if band.any() else 0.0,
    )


def combine(probabilities: Sequence[float], how: Combine) -> float:
    """The target probability of N checkers' probabilities: their sum or their mean."""
    p = np.asarray(list(probabilities), dtype=np.float64)
    if p.size == 0:
        msg = "combine() needs at least one checker probability"
        raise ValueError(msg)
    if how == "sum":
        return float(p.sum())
    if how == "mean":
        return float(p.mean())
    msg = f"combine must be 'mean' or 'sum', got {how!r}"
    raise ValueError(msg)


def single_rule(label: np.ndarray, predicted: np.ndarray, iou_threshold: float = 0.8) -> tuple[bool, float]:
    """One checker: (anomalous, iou) with anomalous = IoU < threshold."""
    value = iou(label, predicted)
    return value < iou_threshold, value


def ensemble_rule(
    target: float,
    label_defective: bool,
    predicted_area: int,
    *,
    low: float,
    high: float,
    area_threshold: int = 15,
) -> str | None:
    """N checkers: WRONG_LABEL, MISSED_LABEL or None, from the combined target probability."""
    if label_defective and target < low:
        return WRONG_LABEL
    if not label_defective and target > high and predicted_area > area_threshold:
        return MISSED_LABEL
    return None


def judge(
    label: np.ndarray,
    predicted: np.ndarray,
    probabilities: Sequence[float],
    config: RuleConfig = RuleConfig(),
    prob_map: np.ndarray | None = None,
) -> Verdict:
    """Apply the probability rules, then the region (IoU) rule to a defective label, for one image.

    `label` and `predicted` are same-shaped masks; `probabilities` are the image-level probabilities of the
    checkers that scored this image (those that did not train on it); `prob_map` their mean per-pixel
    probability (needed by region "local"; with it the verdict carries both IoUs)."""
    if config.region in ("local", "contrast") and prob_map is None:
        msg = f"region {config.region!r} needs the checkers' probability map"
        raise ValueError(msg)
    label_area = int(np.count_nonzero(label))
    predicted_area = int(np.count_nonzero(predicted))
    target = combine(probabilities, config.combine)
    low, high = config.thresholds(len(probabilities))
    value = iou(label, predicted)
    local = contrast = None
    if prob_map is not None and label_area > 0:
        local = iou(label, local_region(label, prob_map, config.local_grow))
        contrast = contrast_stats(label, prob_map, config.contrast_core, config.contrast_grow)
    reason = ensemble_rule(
        target, label_area > 0, predicted_area, low=low, high=high, area_threshold=config.area_threshold
    )
    if reason is None and label_area > 0 and region_mismatch(value, local, contrast, config):
        reason = REGION_MISMATCH
    return Verdict(reason, value, target, label_area, predicted_area, local, contrast)


def region_mismatch(iou_global: float, iou_local: float | None, contrast: Contrast | None, config: RuleConfig) -> bool:
    """The region rule of `config.region` for a defective label (module docstring)."""
    if config.region == "contrast":
        return contrast is not None and bool(contrast.problems(config))
    used = iou_local if config.region == "local" and iou_local is not None else iou_global
    return used < config.iou_threshold
