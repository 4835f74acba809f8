"""Synthetic defects painted onto good training images.

Per image a shape and its parameters are drawn at random. The main shape is a thin, elongated ellipse: long semi-axis
a > short semi-axis b and a > a minimum length. The ellipse is unrolled in polar coordinates, r(phi) =
a*b / sqrt((b cos phi)^2 + (a sin phi)^2), and sampled at 16 angles phi_k = 2*pi*k/16; the 16 points, rotated by a
random angle and moved to a random centre, are joined into a polygon that is filled (cv2.fillPoly) with one random
grey value in 0..255. Rectangles and triangles are the other shapes. The training target stays the clean image, so
the autoencoder learns to repair defects; the returned mask marks the filled pixels so the loss can weigh them up.

Texture defects (an extension, off by default: `texture_prob`): some real defects are not a foreign grey blob but a
region whose surface texture is wrong (worn smooth, ground rougher, brighter or darker). With probability
`texture_prob` a defect is drawn as a larger, rounder shape of the same kinds whose pixels are not filled with one
grey but replaced by the image's own texture changed one way: "smooth" (blurred: the texture worn away),
"contrast" (the deviation from the local mean amplified: rougher) or "gain" (brighter or darker). The target is
still the clean image, so the model also learns to restore the normal texture.

Band defects (off by default: `band_prob`, a share of the texture defects): the changed region is a band from one
edge of the crop up to a gently tilted, wavy line across it, a part ground differently from a line on (magnetic
tile's *uneven*), and its texture change may also be "coarse" (the grain zoomed 1.6-3x, local brightness kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

SHAPES = ("ellipse", "rectangle", "triangle")
TEXTURES = ("smooth", "contrast", "gain")
BAND_TEXTURES = (*TEXTURES, "coarse")  # a band (another grinding up to a line) may also have a coarser grain


@dataclass(frozen=True)
class DefectConfig:
    """Shape distribution and sizes. Lengths are fractions of the image's shorter side."""

    shape_weights: tuple[float, float, float] = (0.6, 0.2, 0.2)  # ellipse, rectangle, triangle
    n_points: int = 16  # polygon vertices sampled on the ellipse (the method fixes 16)
    min_long: float = 0.06  # the ellipse's long semi-axis a exceeds this (a "length threshold")
    max_long: float = 0.25  # ... and stays below this
    min_aspect: float = 0.08  # b / a lies in [min_aspect, max_aspect] with max_aspect < 1: a > b, thin
    max_aspect: float = 0.45
    min_side: float = 0.03  # rectangle sides and triangle radius
    max_side: float = 0.15
    grey_range: tuple[int, int] = (0, 255)  # inclusive range of the fill value
    texture_prob: float = 0.0  # share of texture defects (see the module docstring); 0 = one-grey polygon fill only
    texture_scale: float = 3.0  # texture defects' shapes are this much larger (capped at half the shorter side)
    band_prob: float = 0.0  # share of texture defects drawn as a band from one image edge (see random_band)

    def __post_init__(self) -> None:
        if len(self.shape_weights) != len(SHAPES) or min(self.shape_weights) < 0 or sum(self.shape_weights) <= 0:
            msg = f"shape_weights must be {len(SHAPES)} non-negative numbers for {SHAPES}, got {self.shape_weights}"
            raise ValueError(msg)
        if not 0 < self.min_long < self.max_long <= 0.5:
            msg = (
                f"need 0 < min_long < max_long <= 0.5 (fractions of the shorter side), got {self.min_long}, "
                f"{self.max_long}"
            )
            raise ValueError(msg)
        if not 0 < self.min_aspect <= self.max_aspect < 1:
            msg = f"need 0 < min_aspect <= max_aspect < 1 (b < a), got {self.min_aspect}, {self.max_aspect}"
            raise ValueError(msg)
        if not 0 < self.min_side <= self.max_side <= 0.5:
            msg = f"need 0 < min_side <= max_side <= 0.5, got {self.min_side}, {self.max_side}"
            raise ValueError(msg)
        if self.n_points < 3:
            msg = f"n_points must be >= 3, got {self.n_points}"
            raise ValueError(msg)
        if not 0.0 <= self.band_prob <= 1.0:
            msg = f"need 0 <= band_prob <= 1, got {self.band_prob}"
            raise ValueError(msg)
        if not 0.0 <= self.texture_prob <= 1.0 or self.texture_scale < 1.0:
            msg = f"need 0 <= texture_prob <= 1 and texture_scale >= 1, got {self.texture_prob}, {self.texture_scale}"
            raise ValueError(msg)
        lo, hi = self.grey_range
        if not 0 <= lo <= hi <= 255:
            msg = f"grey_range must lie within 0..255 with lo <= hi, got {self.grey_range}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Defect:
    """One painted defect: what was drawn, where, and with which grey value."""

    shape: str
    polygon: np.ndarray  # (N, 2) int32 vertices (x, y), all inside the image
    value: int  # the single grey value it was filled with
    params: dict = field(default_factory=dict)  # a, b, angle, centre ... for inspection and tests
    texture: str = ""  # "" = one grey `value`; else smooth / contrast / gain of the image's texture
    amount: float = 0.0  # the texture change's strength: blur sigma, contrast factor or gain


def ellipse_polygon(cx: float, cy: float, a: float, b: float, angle: float, n_points: int = 16) -> np.ndarray:
    """n_points vertices on an ellipse (semi-axes a, b, rotated by `angle` radians) at polar angle steps 2*pi/n."""
    phi = 2.0 * np.pi * np.arange(n_points) / n_points
    r = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    x, y = r * np.cos(phi), r * np.sin(phi)
    ca, sa = math.cos(angle), math.sin(angle)
    px = cx + ca * x - sa * y
    py = cy + sa * x + ca * y
    return np.stack([px, py], axis=1)


def _to_pixels(points: np.ndarray, h: int, w: int) -> np.ndarray:
    pts = np.rint(points)
    pts[:, 0] = np.clip(pts[:, 0], 0, w - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, h - 1)
    return pts.astype(np.int32)


def _centre(rng: np.random.Generator, radius: float, h: int, w: int) -> tuple[float, float]:
    """A centre such that a disc of `radius` around it lies inside the image."""
    cx = rng.uniform(radius, max(radius, w - 1 - radius))
    cy = rng.uniform(radius, max(radius, h - 1 - radius))
    return cx, cy


def random_defect(rng: np.random.Generator, h: int, w: int, cfg: DefectConfig = DefectConfig()) -> Defect:
    """Draw one random defect shape for an h x w image."""
    side = min(h, w)
    p = np.asarray(cfg.shape_weights, dtype=float)
    shape = SHAPES[int(rng.choice(len(SHAPES), p=p / p.sum()))]
    lo, hi = cfg.grey_range
    value = int(rng.integers(lo, hi + 1))
    angle = float(rng.uniform(0.0, np.pi))
    if shape == "ellipse":
        a_min = cfg.min_long * side
        a = float(rng.uniform(a_min, cfg.max_long * side))
        a = max(a, math.nextafter(a_min, math.inf))  # strictly longer than the threshold
        b = a * float(rng.uniform(cfg.min_aspect, cfg.max_aspect))
        cx, cy = _centre(rng, a, h, w)
        pts = ellipse_polygon(cx, cy, a, b, angle, cfg.n_points)
        params = {"a": a, "b": b, "a_min": a_min, "angle": angle, "cx": cx, "cy": cy}
    elif shape == "rectangle":
        rw = float(rng.uniform(cfg.min_side, cfg.max_side)) * side
        rh = float(rng.uniform(cfg.min_side, cfg.max_side)) * side
        cx, cy = _centre(rng, math.hypot(rw, rh) / 2, h, w)
        corners = np.array([[-rw, -rh], [rw, -rh], [rw, rh], [-rw, rh]]) / 2
        ca, sa = math.cos(angle), math.sin(angle)
        rot = np.array([[ca, -sa], [sa, ca]])
        pts = corners @ rot.T + [cx, cy]
        params = {"width": rw, "height": rh, "angle": angle, "cx": cx, "cy": cy}
    else:  # triangle: three points at random angles on a circle
        radius = float(rng.uniform(cfg.min_side, cfg.max_side)) * side
        cx, cy = _centre(rng, radius, h, w)
        phis = np.sort(rng.uniform(0.0, 2 * np.pi, 3))
        pts = np.stack([cx + radius * np.cos(phis), cy + radius * np.sin(phis)], axis=1)
        params = {"radius": radius, "cx": cx, "cy": cy}
    return Defect(shape=shape, polygon=_to_pixels(pts, h, w), value=value, params=params)


def random_band(rng: np.random.Generator, h: int, w: int, n_points: int = 16) -> Defect:
    """A band from one image edge: the region between that edge and a gently tilted, wavy line across the image
    (n_points on the line, plus the edge's two corners), 15-60 % of the image deep. A region ground or coated
    differently up to a line across the part (magnetic tile's *uneven*) has this shape."""
    edge = ("top", "bottom", "left", "right")[int(rng.integers(4))]
    along, across = (w, h) if edge in ("top", "bottom") else (h, w)
    depth = float(rng.uniform(0.15, 0.6)) * across
    t = np.linspace(0.0, along - 1.0, n_points)
    tilt = float(rng.uniform(-0.1, 0.1))
    wave = (
        float(rng.uniform(0.0, 0.03))
        * across
        * np.sin(2 * np.pi * t / along * float(rng.uniform(0.5, 2.0)) + float(rng.uniform(0, 2 * np.pi)))
    )
    d = np.clip(depth + tilt * (t - along / 2) + wave, 1.0, across - 1.0)
    line = np.stack([t, d], axis=1)  # (along, depth from the edge)
    poly = np.concatenate([line, [[along - 1.0, 0.0], [0.0, 0.0]]])
    if edge == "bottom":
        poly[:, 1] = h - 1 - poly[:, 1]
    elif edge in ("left", "right"):
        poly = poly[:, ::-1].copy()
        if edge == "right":
            poly[:, 0] = w - 1 - poly[:, 0]
    return Defect(
        shape="band", polygon=_to_pixels(poly, h, w), value=0, params={"edge": edge, "depth": depth, "tilt": tilt}
    )


def random_texture_defect(rng: np.random.Generator, h: int, w: int, cfg: DefectConfig = DefectConfig()) -> Defect:
    """A texture defect: a larger, rounder shape (scaled by texture_scale) or, with probability band_prob, a band
    from one edge (random_band), and a texture change with its amount."""
    k = cfg.texture_scale
    big = replace(
        cfg,
        min_long=min(0.49, cfg.min_long * k),
        max_long=min(0.5, cfg.max_long * k),
        min_aspect=max(cfg.min_aspect, 0.3),
        max_aspect=max(cfg.max_aspect, 0.9),
        min_side=min(0.49, cfg.min_side * k),
        max_side=min(0.5, cfg.max_side * k),
    )
    kinds: tuple[str, ...]
    if cfg.band_prob > 0 and rng.random() < cfg.band_prob:
        shape, kinds = random_band(rng, h, w, cfg.n_points), BAND_TEXTURES
    else:
        shape, kinds = random_defect(rng, h, w, big), TEXTURES
    texture = kinds[int(rng.integers(len(kinds)))]
    if texture == "smooth":
        amount = float(rng.uniform(1.5, 4.0))  # blur sigma, pixels
    elif texture == "contrast":
        amount = float(rng.uniform(1.8, 3.0))  # factor on the deviation from the local mean
    elif texture == "coarse":
        amount = float(rng.uniform(1.6, 3.0))  # zoom factor of the texture: the grain this much coarser
    else:
        amount = float(rng.uniform(0.55, 0.8)) if rng.random() < 0.5 else float(rng.uniform(1.25, 1.8))  # gain
    return replace(shape, texture=texture, amount=amount)


def _blur(img: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """Gaussian blur; at the default sigma, the local mean that contrast and coarse changes keep."""
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _retextured(image: np.ndarray, defect: Defect) -> np.ndarray:
    img = image.astype(np.float32)
    if defect.texture == "smooth":
        out = _blur(img, defect.amount)
    elif defect.texture == "contrast":
        local = _blur(img)
        out = local + defect.amount * (img - local)
    elif defect.texture == "coarse":  # the grain zoomed about the centre, on the original local brightness
        h, w = img.shape[:2]
        big = cv2.resize(img, None, fx=defect.amount, fy=defect.amount, interpolation=cv2.INTER_LINEAR)
        y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
        zoomed = big[y0 : y0 + h, x0 : x0 + w]
        out = _blur(img) + zoomed - _blur(zoomed)
    else:
        out = img * defect.amount
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def paint(image: np.ndarray, defect: Defect) -> tuple[np.ndarray, np.ndarray]:
    """Fill the defect's polygon with its grey value (or, for a texture defect, with the image's texture changed);
    returns (corrupted copy, uint8 mask 0/1 of the changed pixels)."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [defect.polygon.reshape(-1, 1, 2)], 1)
    out = image.copy()
    inside = mask.astype(bool)
    if defect.texture:
        out[inside] = _retextured(image, defect)[inside]
    else:
        out[inside] = defect.value  # one grey value; on BGR images every channel gets it
    return out, mask


def add_defect(
    image: np.ndarray, rng: np.random.Generator, cfg: DefectConfig = DefectConfig()
) -> tuple[np.ndarray, np.ndarray, Defect]:
    """Paint one random defect on a uint8 image (HxW or HxWx3): (corrupted, mask 0/1, defect)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        msg = f"add_defect expects a uint8 HxW or HxWxC image, got {image.dtype} with shape {image.shape}"
        raise ValueError(msg)
    if cfg.texture_prob > 0 and rng.random() < cfg.texture_prob:
        defect = random_texture_defect(rng, image.shape[0], image.shape[1], cfg)
    else:
        defect = random_defect(rng, image.shape[0], image.shape[1], cfg)
    corrupted, mask = paint(image, defect)
    return corrupted, mask, defect
