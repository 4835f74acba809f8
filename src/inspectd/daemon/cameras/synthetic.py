"""A simulated camera looking at woven fabric, with injected defects: the demo source and the test oracle.

Frame n is a pure function of (seed, n, config): its texture variation (thread phase, per-thread thickness and
brightness, fibre noise, a slight rotation, illumination, sensor noise) comes from one random stream and its
defects from another, so `render_good(n)` is frame n with the same texture and no defect, and `render(n)` of a
good frame equals `render_good(n)` exactly.

Defect kinds (each clearly visible, each covering at least ~0.3 % of the frame):
hole (dark ragged blob), stain (soft darker or brighter blotch), broken_thread (a missing thread: a dark gap along
the weave), scratch (a thin straight line at any angle), knot (a small bright dense spot).
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from inspectd.core.errors import CameraError
from inspectd.core.types import Capture
from inspectd.daemon.cameras.base import CameraConfigBase, register

DEFECT_KINDS = ("hole", "stain", "broken_thread", "scratch", "knot")

_MAX_ANGLE_DEG = 1.5  # fabric rotation per frame, uniform in +-this
_MIN_AREA_FRAC = 0.004  # smallest defect area as a fraction of the frame (the brief asks >= 0.3 %)
_MAX_AREA_FRAC = 0.02
# BGR tints of the two thread systems in "bgr" mode (a denim-like indigo warp on an off-white weft)
_WARP_TINT = np.array([1.15, 0.78, 0.55], np.float32)
_WEFT_TINT = np.array([0.95, 1.0, 1.05], np.float32)
_BANK_PAD = 64  # noise banks are this much larger than what a frame uses: 64 x 64 crop offsets
_FIBRE = 0.07  # relative brightness variation of the fibres along a thread
_SHADOW = 0.45  # brightness of a thread where it shows through the gaps of the one on top


class SyntheticCameraConfig(CameraConfigBase):
    """A procedural woven-fabric surface with simulated defects at `defect_rate`, deterministic from `seed` (demo "
    "and tests)."""

    type: Literal["synthetic"] = "synthetic"
    width: int = Field(256, ge=16, le=8192, description="frame width in pixels")
    height: int = Field(256, ge=16, le=8192, description="frame height in pixels")
    color: Literal["gray", "bgr"] = Field(
        "gray", description="gray: HxW frames; bgr: HxWx3 frames of a tinted fabric (indigo warp, off-white weft)"
    )
    defect_rate: float = Field(0.25, ge=0, le=1, description="probability that a frame carries a simulated defect")
    seed: int = Field(1234, ge=0, le=2**63 - 1, description="random seed; frame n is a pure function of (seed, n)")
    thread_period_px: float = Field(
        12.0, ge=4, le=256, description="thread pitch of the plain weave in pixels (the weave repeats every 2 pitches)"
    )
    noise: float = Field(3.0, ge=0, le=50, description="sensor noise standard deviation in grey levels")


class SurfaceGenerator:
    """Renders frame n of the simulated fabric.

    Construction precomputes (noise banks: a few frames' worth of float32); render() is cheap: under 1 ms for a
    256x256 gray frame, about 1.5 ms in bgr. Thread-safe: render() keeps no state between calls.
    """

    def __init__(self, cfg: SyntheticCameraConfig) -> None:
        self.cfg = cfg
        self.h, self.w = cfg.height, cfg.width
        p = float(cfg.thread_period_px)
        # margin so that a rotated, translated crop of the canvas covers the whole frame
        self._m = int(math.ceil(max(self.h, self.w) * math.sin(math.radians(_MAX_ANGLE_DEG)) / 2 + 2))
        self._hc, self._wc = self.h + 2 * self._m, self.w + 2 * self._m
        self._xc = np.arange(self._wc, dtype=np.float32)
        self._yc = np.arange(self._hc, dtype=np.float32)
        self._xn = (np.arange(self.w, dtype=np.float32) - self.w / 2) / self.w  # -0.5 .. 0.5 for the gradient
        self._yn = (np.arange(self.h, dtype=np.float32) - self.h / 2) / self.h
        self._min_area = _MIN_AREA_FRAC * self.h * self.w
        # Noise banks, cropped at a random offset per frame (drawing fresh Gaussian noise per frame would cost more
        # than all the rest of a frame): fibre streaks along warp and along weft threads, and sensor noise.
        bank_rng = np.random.default_rng([cfg.seed, 0x5EED])
        k = max(3, int(round(p * 0.8)) | 1)  # fibre streak length
        bank = (self._hc + _BANK_PAD, self._wc + _BANK_PAD)
        self._fibre_v = 1 + cv2.blur(bank_rng.standard_normal(bank, dtype=np.float32), (1, k)) * np.float32(
            _FIBRE * math.sqrt(k)
        )
        self._fibre_h = 1 + cv2.blur(bank_rng.standard_normal(bank, dtype=np.float32), (k, 1)) * np.float32(
            _FIBRE * math.sqrt(k)
        )
        sensor = (self.h + _BANK_PAD, self.w + _BANK_PAD) + ((3,) if cfg.color == "bgr" else ())
        self._sensor = bank_rng.standard_normal(sensor, dtype=np.float32)

    # ---------------------------------------------------------------- public API

    def render(self, n: int) -> Capture:
        """Frame n: a defect with probability defect_rate; truth and truth_mask say where."""
        return self._render(n, allow_defects=True)

    def render_good(self, n: int) -> Capture:
        """Frame n forced defect-free: the same texture, illumination and noise as render(n)."""
        return self._render(n, allow_defects=False)

    def defects(self, n: int) -> list[str]:
        """The defect kinds render(n) injects (empty for a good frame)."""
        return [kind for kind, _ in self._plan(n)]

    # ---------------------------------------------------------------- internals

    def _rngs(self, n: int) -> tuple[np.random.Generator, np.random.Generator]:
        if n < 0:
            msg = f"frame number must be >= 0, got {n}"
            raise ValueError(msg)
        return (
            np.random.default_rng([self.cfg.seed, n, 0]),  # texture, illumination, noise
            np.random.default_rng([self.cfg.seed, n, 1]),  # defects
        )

    def _plan(self, n: int) -> list[tuple[str, np.random.Generator]]:
        _, rng = self._rngs(n)
        if rng.random() >= self.cfg.defect_rate:
            return []
        count = 1 if rng.random() < 0.8 else 2
        return [(DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))], rng) for _ in range(count)]

    def _render(self, n: int, allow_defects: bool) -> Capture:
        rng, _ = self._rngs(n)
        base, warpness, angle = self._weave(rng)
        img = self._illuminate(rng, base, warpness)
        mask = np.zeros((self.h, self.w), np.uint8)
        if allow_defects:
            for kind, drng in self._plan(n):
                getattr(self, f"_draw_{kind}")(drng, img, mask, angle)
        oy, ox = rng.integers(0, _BANK_PAD, 2)
        sensor = self._sensor[oy : oy + self.h, ox : ox + self.w]
        # img + noise * sensor, rounded and saturated to uint8 in one pass
        image = cv2.addWeighted(img, 1.0, sensor, float(self.cfg.noise), 0.0, dtype=cv2.CV_8U)
        truth = bool(mask.any())
        return Capture(image=np.ascontiguousarray(image), source=f"synthetic#{n}", truth=truth, truth_mask=mask)

    def _weave(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, float]:
        """Plain weave reflectance (about 0..1, HxW float32), the share of warp thread per pixel (bgr only), angle."""
        p = np.float32(self.cfg.thread_period_px)
        nx, ny = int(self._wc / p) + 3, int(self._hc / p) + 3
        phx, phy = rng.uniform(0, 2 * p, size=2).astype(np.float32)  # phase of the 2-thread repeat
        # per-thread half width (fraction of the pitch) and brightness; a few slubs (thick threads)
        hw_x = rng.uniform(0.34, 0.46, nx).astype(np.float32)
        hw_y = rng.uniform(0.34, 0.46, ny).astype(np.float32)
        hw_x[rng.random(nx) < 0.04] = 0.5
        hw_y[rng.random(ny) < 0.04] = 0.5
        b_x = (1 + 0.07 * rng.standard_normal(nx)).astype(np.float32)
        b_y = (1 + 0.07 * rng.standard_normal(ny)).astype(np.float32)

        # 1-D profiles (cheap) in canvas coordinates: thread index i and position f (0..1) across the pitch
        ux, uy = (self._xc + phx) / p, (self._yc + phy) / p
        ix, iy = np.floor(ux).astype(np.int32), np.floor(uy).astype(np.int32)
        fx, fy = ux - ix, uy - iy
        # cross-section of a round thread (darker at its edges, 0 in the gaps) and its bulge between crossings
        across_x = np.clip(1 - ((fx - 0.5) / hw_x[ix]) ** 2, 0, None) ** 0.6 * b_x[ix]  # warp threads (vertical)
        across_y = np.clip(1 - ((fy - 0.5) / hw_y[iy]) ** 2, 0, None) ** 0.6 * b_y[iy]  # weft threads (horizontal)
        bulge_x = 0.55 + 0.45 * np.sin(np.pi * fx)
        bulge_y = 0.55 + 0.45 * np.sin(np.pi * fy)
        # Plain weave: warp thread i lies on top of weft thread j where i + j is even. The thread underneath shows
        # only through the gaps of the one on top, in its shadow. In a row of weft thread j the over/under pattern
        # depends on x alone, so each thread system is a per-row choice between two 1-D profiles times a 1-D factor.
        even_x = (ix & 1) == 0
        warp_rows = np.stack([across_x * np.where(even_x, 1, _SHADOW), across_x * np.where(even_x, _SHADOW, 1)])
        weft_rows = np.stack([bulge_x * np.where(even_x, _SHADOW, 1), bulge_x * np.where(even_x, 1, _SHADOW)])
        par_y = iy & 1
        oy, ox = rng.integers(0, _BANK_PAD, 2)
        warp = warp_rows.astype(np.float32)[par_y]
        warp *= bulge_y.astype(np.float32)[:, None]
        warp *= self._fibre_v[oy : oy + self._hc, ox : ox + self._wc]
        weft = weft_rows.astype(np.float32)[par_y]
        weft *= across_y.astype(np.float32)[:, None]
        weft *= self._fibre_h[oy : oy + self._hc, ox : ox + self._wc]
        top = (warp > weft).astype(np.float32) if self.cfg.color == "bgr" else None
        base = np.maximum(warp, weft, out=warp)

        # slight rotation and sub-pixel translation of the whole surface
        angle = float(rng.uniform(-_MAX_ANGLE_DEG, _MAX_ANGLE_DEG))
        rot = cv2.getRotationMatrix2D((self._wc / 2, self._hc / 2), angle, 1.0)
        rot[:, 2] -= self._m
        dsize = (self.w, self.h)
        out = cv2.warpAffine(base, rot, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        warpness = None
        if top is not None:
            warpness = cv2.warpAffine(top, rot, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out, warpness, angle

    def _illuminate(self, rng: np.random.Generator, base: np.ndarray, warpness: np.ndarray | None) -> np.ndarray:
        """Grey levels (float32): gain with a gentle linear gradient, times reflectance, plus a dark floor; tint."""
        gain = float(rng.uniform(0.85, 1.15)) * 165.0
        offset = float(rng.uniform(-12, 12)) + 30.0
        gx, gy = (float(v) for v in rng.uniform(-0.12, 0.12, 2))
        img = (gain * gy * self._yn)[:, None] + (gain * (1 + gx * self._xn))[None, :]
        img *= base
        img += np.float32(offset)
        if warpness is None:
            return img
        lw = img * warpness
        d = _WARP_TINT - _WEFT_TINT
        return cv2.merge([cv2.addWeighted(img, float(_WEFT_TINT[c]), lw, float(d[c]), 0.0) for c in range(3)])

    # ---------------------------------------------------------------- defects

    def _place(self, rng: np.random.Generator, radius: float) -> tuple[float, float]:
        """A centre that keeps a disc of `radius` inside the frame (as far as the frame allows)."""
        rx, ry = min(radius, self.w / 2), min(radius, self.h / 2)
        return float(rng.uniform(rx, self.w - rx)), float(rng.uniform(ry, self.h - ry))

    def _blob(self, rng: np.random.Generator, area: float, elong: tuple[float, float]) -> tuple[np.ndarray, float]:
        """A ragged ellipse of about `area` pixels as a 16-point polygon (int32 Nx2), and its bounding radius."""
        ratio = rng.uniform(*elong)
        b = math.sqrt(area / (math.pi * ratio))
        a = b * ratio
        limit = 0.45 * min(self.w, self.h)
        if a > limit:  # tiny frames: shrink to fit
            a, b = limit, limit / ratio
        cx, cy = self._place(rng, a * 1.2)
        theta = rng.uniform(0, np.pi)
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False) + rng.uniform(-0.15, 0.15, 16)
        r = rng.uniform(0.85, 1.2, 16)
        xs, ys = a * r * np.cos(t), b * r * np.sin(t)
        c, s = math.cos(theta), math.sin(theta)
        pts = np.stack([cx + c * xs - s * ys, cy + s * xs + c * ys], axis=1)
        return np.round(pts).astype(np.int32), a * 1.2

    def _area(self, rng: np.random.Generator) -> float:
        return float(np.exp(rng.uniform(math.log(_MIN_AREA_FRAC), math.log(_MAX_AREA_FRAC)))) * self.h * self.w

    def _box(self, pts: np.ndarray, pad: float) -> tuple[slice, slice]:
        """Row and column slices of the frame around points (Nx2 x,y), padded, clipped to the frame."""
        x0, y0 = np.floor(pts.min(axis=0) - pad).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0) + pad + 1).astype(int)
        return slice(max(y0, 0), min(y1, self.h)), slice(max(x0, 0), min(x1, self.w))

    @staticmethod
    def _paint(img: np.ndarray, alpha: np.ndarray, value: np.ndarray | float) -> None:
        """img = img * (1 - alpha) + value * alpha on a region: alpha hxw in 0..1, value a scalar, BGR or hxw."""
        if img.ndim == 3:
            alpha = alpha[:, :, None]
        img *= 1 - alpha
        img += alpha * value

    def _grey(self, v: float) -> np.ndarray | np.float32:
        return np.full(3, v, np.float32) if self.cfg.color == "bgr" else np.float32(v)

    def _draw_polygon(self, img, mask, pts, value) -> None:
        """A filled anti-aliased polygon of `value`; its pixels (without the anti-aliasing fringe) go to the mask."""
        ys, xs = self._box(pts, 2)
        origin = np.array([xs.start, ys.start], np.int32)
        alpha = np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.float32)
        cv2.fillPoly(alpha, [pts - origin], 1.0, lineType=cv2.LINE_AA)
        cv2.fillPoly(mask, [pts], 255)
        value = value(alpha.shape) if callable(value) else value
        self._paint(img[ys, xs], alpha, value)

    def _draw_line(self, img, mask, p0, p1, thickness: int, value, opacity: float = 1.0) -> None:
        ys, xs = self._box(np.array([p0, p1]), thickness)
        if ys.stop <= ys.start or xs.stop <= xs.start:
            return
        o = (xs.start, ys.start)
        alpha = np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.float32)
        cv2.line(alpha, (p0[0] - o[0], p0[1] - o[1]), (p1[0] - o[0], p1[1] - o[1]), opacity, thickness, cv2.LINE_AA)
        cv2.line(mask, p0, p1, 255, thickness)
        self._paint(img[ys, xs], alpha, value)

    def _endpoints(self, rng, length: float, direction: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """Two ends of a segment of `length` at `direction` (radians), placed inside the frame where it fits."""
        dx, dy = math.cos(direction) * length / 2, math.sin(direction) * length / 2
        mx, my = min(abs(dx), self.w / 2), min(abs(dy), self.h / 2)
        cx, cy = rng.uniform(mx, self.w - mx), rng.uniform(my, self.h - my)
        return (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy))

    def _draw_hole(self, rng, img, mask, angle) -> None:
        """A hole: the dark backing shows through a ragged opening."""
        pts, _ = self._blob(rng, self._area(rng) * 1.1, (1.0, 1.8))
        self._draw_polygon(img, mask, pts, self._grey(rng.uniform(5, 30)))

    def _draw_stain(self, rng, img, mask, angle) -> None:
        """A soft blotch, darker (oil, dirt; brownish in bgr) or brighter (bleach); the weave shows through."""
        pts, rad = self._blob(rng, self._area(rng) * 1.5, (1.0, 2.0))
        sigma = max(1.0, rad / 5)
        ys, xs = self._box(pts, 3 * sigma)
        core = np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.float32)
        cv2.fillPoly(core, [pts - np.array([xs.start, ys.start], np.int32)], 1.0)
        alpha = cv2.GaussianBlur(core, (0, 0), sigma)
        mask[ys, xs][alpha >= 0.5] = 255
        roi = img[ys, xs]
        if img.ndim == 3:
            alpha = alpha[:, :, None]
        if rng.random() < 0.65:
            tone = np.array([0.25, 0.4, 0.55], np.float32) if img.ndim == 3 else np.float32(0.35)
            roi *= 1 - alpha * (1 - tone * np.float32(rng.uniform(0.8, 1.2)))
        else:
            roi += alpha * np.float32(rng.uniform(0.6, 0.8)) * (255 - roi)

    def _draw_broken_thread(self, rng, img, mask, angle) -> None:
        """A missing stretch of one warp or weft thread: a dark gap along the weave."""
        thickness = max(2, min(round(self.cfg.thread_period_px * rng.uniform(0.5, 0.8)), min(self.w, self.h) // 4))
        vertical = rng.random() < 0.5
        extent = self.h if vertical else self.w
        length = min(self._area(rng) * 1.2 / thickness, 0.9 * extent)
        direction = math.radians(-angle) + (math.pi / 2 if vertical else 0.0)
        p0, p1 = self._endpoints(rng, length, direction)
        self._draw_line(img, mask, p0, p1, thickness, self._grey(rng.uniform(15, 40)), 0.9)

    def _draw_scratch(self, rng, img, mask, angle) -> None:
        """A thin straight line at any angle, mostly bright (abrasion), sometimes dark."""
        thickness = max(2, round(min(self.w, self.h) * rng.uniform(0.009, 0.016)))
        direction = rng.uniform(0, np.pi)
        # the longest segment at this direction that fits in the frame
        fit = min(self.w / max(abs(math.cos(direction)), 1e-6), self.h / max(abs(math.sin(direction)), 1e-6))
        length = min(self._area(rng) / thickness, 0.9 * fit)
        p0, p1 = self._endpoints(rng, length, direction)
        value = self._grey(rng.uniform(215, 250) if rng.random() < 0.7 else rng.uniform(5, 25))
        self._draw_line(img, mask, p0, p1, thickness, value)

    def _draw_knot(self, rng, img, mask, angle) -> None:
        """A small bright dense spot of tangled fibres."""
        pts, _ = self._blob(rng, self._min_area * rng.uniform(1.0, 2.0), (1.0, 1.4))
        v = rng.uniform(225, 250)
        bgr = self.cfg.color == "bgr"

        def value(shape: tuple[int, int]) -> np.ndarray:
            tex = (v + rng.uniform(-18, 8, shape)).astype(np.float32)
            return tex[:, :, None] if bgr else tex

        self._draw_polygon(img, mask, pts, value)


@register(SyntheticCameraConfig)
class SyntheticCamera:
    """A live camera that renders SurfaceGenerator frames 0, 1, 2, ... (pacing is the pipeline's job)."""

    live = True

    def __init__(self, cfg: SyntheticCameraConfig) -> None:
        self.cfg = cfg
        self._gen: SurfaceGenerator | None = None
        self._n = 0  # not reset by a reopen: a source name is never handed out twice per camera

    def open(self) -> None:
        self._gen = SurfaceGenerator(self.cfg)

    def read(self, timeout_s: float) -> Capture:
        if self._gen is None:
            msg = "synthetic camera is not open (expected open() before read())"
            raise CameraError(msg)
        cap = self._gen.render(self._n)
        self._n += 1
        return cap

    def close(self) -> None:
        self._gen = None

    def describe(self) -> dict:
        c = self.cfg
        return {
            "type": "synthetic",
            "size": f"{c.width}x{c.height}",
            "color": c.color,
            "defect_rate": c.defect_rate,
            "seed": c.seed,
            "thread_period_px": c.thread_period_px,
        }
