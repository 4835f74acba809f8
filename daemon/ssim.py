"""Per-pixel SSIM and the SSIM difference map (seed 001), as Numba kernels.

The difference map is ``1 - SSIM``, one value per pixel, the same size as the image: 0 where image and
reconstruction agree, up to 2 where they are anti-correlated; larger = more different.

Definition (Wang et al. 2004, population variances, as ``skimage.metrics.structural_similarity`` with
``use_sample_covariance=False``)::

    ux, uy = w*x, w*y                 (w* = weighted local mean over the window)
    sx = w*(x*x) - ux^2   sy = w*(y*y) - uy^2   sxy = w*(x*y) - ux*uy
    S  = ((2 ux uy + C1) (2 sxy + C2)) / ((ux^2 + uy^2 + C1) (sx + sy + C2))
    C1 = (k1 R)^2, C2 = (k2 R)^2, R = data_range

Windows: ``gaussian`` weights ``w[i] = exp(-(i - r)^2 / (2 sigma^2))`` normalised to sum 1, ``i = 0..size-1``,
``r = size // 2`` (scipy's Gaussian kernel when its radius is ``r``; skimage's default window for a given sigma has
``size = 2 * int(3.5 * sigma + 0.5) + 1``); ``uniform`` weights ``1 / size``. Both are separable and applied as a
horizontal then a vertical pass over the five moment images x, y, x*x, y*y, x*y, which are formed on the fly.

Border convention: exactly ``scipy.ndimage`` ``mode='reflect'`` (half-sample symmetric), so the results match
``skimage.metrics.structural_similarity(..., full=True)[1]`` everywhere, borders included::

    d c b a | a b c d | d c b a

For images smaller than the window the reflection repeats, as scipy's does: the line is extended periodically
with period ``2n`` (``a b | a b | b a a b b a ...``); a 1-pixel-wide line is extended as a constant.

Multichannel input (HxWxC, C = 1..4) gives the mean over channels of the per-channel SSIM maps, as skimage does
with ``channel_axis`` (its per-channel maps averaged).

Precision: everything is stored and accumulated in float32. The second moments are formed centred around the
window means (see ``_ssim_map``) instead of as ``E[x*x] - E[x]^2``, which in float32 cancels to ~5e-4 error in
bright flat regions; against skimage in float64 the maximum absolute error is then ~1e-6
(tests/daemon/test_ssim.py checks 1e-4).

Threads: an :class:`SsimKernel` caches scratch buffers and is NOT thread-safe; use one instance per thread. The
kernel runs parallel over row blocks (Numba ``prange``) and releases the GIL; calling it from several Python
threads at once needs Numba's ``omp`` or ``tbb`` threading layer (``workqueue`` aborts on concurrent use).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from daemon._numba_env import ensure_numba_cache_dir

ensure_numba_cache_dir()

import numba  # noqa: E402  (the cache directory must be settled first)
from numba import njit, prange  # noqa: E402

__all__ = ["SsimKernel", "warmup"]

_WINDOWS = ("gaussian", "uniform")
_MAX_CHANNELS = 4


@njit(cache=True, inline="always")
def _reflect(i: int, n: int) -> int:
    """scipy.ndimage 'reflect' index: period-2n symmetric extension, valid for any i and n >= 1."""
    if 0 <= i < n:
        return i
    m = i % (2 * n)
    if m >= n:
        m = 2 * n - 1 - m
    return m


@njit(cache=True, parallel=True, fastmath=False, nogil=True)
def _ssim_map(x, y, w, c1, c2, hbuf, pbuf, acc, out, difference):  # noqa: PLR0913 (one kernel, its buffers)
    """Fill `out` (H, W) with the channel-mean SSIM map of x, y (H, W, C), or 1 - it when `difference`.

    w: (K,) float32 window weights, K odd. c1, c2: float32 constants.
    Scratch: hbuf (5, H, W) the horizontal pass's per-row window moments (mean x, mean y, and the centred
    var x, var y, cov xy within the row's window); pbuf (B, 2, W + K - 1) one reflected row of x and y per row
    block; acc (B, 5, W) one row of the 2-D moments per block. B = number of row blocks; the per-pixel arithmetic
    (and so the result, bit for bit) does not depend on B.

    The second moments are formed centred (law of total covariance over the window's rows) rather than as
    E[x*x] - E[x]^2: the same quantity, but float32 then keeps its precision in bright flat regions, where the
    naive form cancels to about 5e-4 error in SSIM.
    """
    h, wd, nc = x.shape
    k = w.shape[0]
    r = k // 2
    nb = pbuf.shape[0]
    two = np.float32(2.0)
    one = np.float32(1.0)
    inv_c = np.float32(1.0 / nc)
    for c in range(nc):
        # horizontal pass: per row, the window means of x and y, then the centred second moments around them
        for b in prange(nb):
            px = pbuf[b, 0]
            py = pbuf[b, 1]
            for i in range(b * h // nb, (b + 1) * h // nb):
                for jj in range(wd + k - 1):
                    j = _reflect(jj - r, wd)
                    px[jj] = x[i, j, c]
                    py[jj] = y[i, j, c]
                mx = hbuf[0, i]
                my = hbuf[1, i]
                sxx = hbuf[2, i]
                syy = hbuf[3, i]
                sxy = hbuf[4, i]
                w0 = w[0]
                for j in range(wd):
                    mx[j] = w0 * px[j]
                    my[j] = w0 * py[j]
                for t in range(1, k):
                    wt = w[t]
                    for j in range(wd):
                        mx[j] += wt * px[j + t]
                        my[j] += wt * py[j + t]
                for j in range(wd):
                    sxx[j] = 0
                    syy[j] = 0
                    sxy[j] = 0
                for t in range(k):
                    wt = w[t]
                    for j in range(wd):
                        dx = px[j + t] - mx[j]
                        dy = py[j + t] - my[j]
                        sxx[j] += wt * (dx * dx)
                        syy[j] += wt * (dy * dy)
                        sxy[j] += wt * (dx * dy)
        # vertical pass: 2-D means, then the 2-D centred moments, fused with the SSIM formula and channel mean
        for b in prange(nb):
            ux = acc[b, 0]
            uy = acc[b, 1]
            vx = acc[b, 2]
            vy = acc[b, 3]
            vxy = acc[b, 4]
            for i in range(b * h // nb, (b + 1) * h // nb):
                row = _reflect(i - r, h)
                w0 = w[0]
                for j in range(wd):
                    ux[j] = w0 * hbuf[0, row, j]
                    uy[j] = w0 * hbuf[1, row, j]
                for t in range(1, k):
                    row = _reflect(i + t - r, h)
                    wt = w[t]
                    for j in range(wd):
                        ux[j] += wt * hbuf[0, row, j]
                        uy[j] += wt * hbuf[1, row, j]
                for j in range(wd):
                    vx[j] = 0
                    vy[j] = 0
                    vxy[j] = 0
                for t in range(k):
                    row = _reflect(i + t - r, h)
                    wt = w[t]
                    for j in range(wd):
                        dx = hbuf[0, row, j] - ux[j]
                        dy = hbuf[1, row, j] - uy[j]
                        vx[j] += wt * (hbuf[2, row, j] + dx * dx)
                        vy[j] += wt * (hbuf[3, row, j] + dy * dy)
                        vxy[j] += wt * (hbuf[4, row, j] + dx * dy)
                for j in range(wd):
                    mux = ux[j]
                    muy = uy[j]
                    s = ((two * mux * muy + c1) * (two * vxy[j] + c2)) / (
                        (mux * mux + muy * muy + c1) * (vx[j] + vy[j] + c2)
                    )
                    if c > 0:
                        s += out[i, j]
                    if c == nc - 1:
                        if nc > 1:
                            s *= inv_c
                        if difference:
                            s = one - s
                    out[i, j] = s


def _window(window: str, size: int, sigma: float) -> np.ndarray:
    if window == "uniform":
        return np.full(size, 1.0 / size, dtype=np.float32)
    r = size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (g / g.sum()).astype(np.float32)


def _as_image(img: np.ndarray, name: str) -> np.ndarray:
    """A float32 C-contiguous (H, W, C) view or copy of `img`; ValueError naming what is wrong."""
    img = np.asarray(img)
    if img.dtype.kind != "f":
        msg = f"{name} must be a float image with values in [0, data_range], got dtype {img.dtype}"
        raise ValueError(msg)
    if img.ndim == 2:
        img = img[:, :, None]
    elif img.ndim != 3:
        msg = f"{name} must be HxW or HxWxC, got {img.ndim}-D array of shape {img.shape}"
        raise ValueError(msg)
    h, w, c = img.shape
    if not 1 <= c <= _MAX_CHANNELS:
        msg = f"{name} must have 1..{_MAX_CHANNELS} channels (HxWxC), got shape {img.shape}"
        raise ValueError(msg)
    if h == 0 or w == 0:
        msg = f"{name} is empty: shape {img.shape}"
        raise ValueError(msg)
    return np.ascontiguousarray(img, dtype=np.float32)


class SsimKernel:
    """Per-pixel SSIM / difference maps with a fixed window; reuses scratch buffers across frames.

    Not thread-safe: the instance owns scratch buffers that every call overwrites; use one per thread.
    The returned arrays are never those buffers.
    """

    def __init__(
        self,
        window: Literal["gaussian", "uniform"] = "gaussian",
        size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        data_range: float = 1.0,
    ) -> None:
        if window not in _WINDOWS:
            msg = f"window must be one of {_WINDOWS}, got {window!r}"
            raise ValueError(msg)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 3 or size % 2 != 1:
            msg = f"window size must be an odd integer >= 3, got {size!r}"
            raise ValueError(msg)
        for name, value in (("sigma", sigma), ("k1", k1), ("k2", k2), ("data_range", data_range)):
            if not np.isfinite(value) or value <= 0:
                msg = f"{name} must be a finite number > 0, got {value!r}"
                raise ValueError(msg)
        self.window = window
        self.size = int(size)
        self.sigma = float(sigma)
        self.k1, self.k2, self.data_range = float(k1), float(k2), float(data_range)
        self._w = _window(window, self.size, self.sigma)
        self._c1 = np.float32((self.k1 * self.data_range) ** 2)
        self._c2 = np.float32((self.k2 * self.data_range) ** 2)
        self._scratch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        sigma = f", sigma={self.sigma}" if self.window == "gaussian" else ""
        return (
            f"SsimKernel(window={self.window!r}, size={self.size}{sigma}, k1={self.k1}, k2={self.k2}, "
            f"data_range={self.data_range})"
        )

    def ssim(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The per-pixel SSIM map (float32 HxW, in [-1, 1]) of a and b (HxW or HxWxC, values in [0, data_range])."""
        return self._run(a, b, out, difference=False)

    def difference(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The difference map 1 - SSIM (float32 HxW, in [0, 2], larger = more different)."""
        return self._run(a, b, out, difference=True)

    def _run(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None, *, difference: bool) -> np.ndarray:
        x = _as_image(a, "a")
        y = _as_image(b, "b")
        if np.shape(a) != np.shape(b):
            msg = f"images must have the same shape, got a {np.shape(a)} and b {np.shape(b)}"
            raise ValueError(msg)
        h, w, _ = x.shape
        if out is None:
            out = np.empty((h, w), dtype=np.float32)
        elif not (
            isinstance(out, np.ndarray)
            and out.dtype == np.float32
            and out.shape == (h, w)
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            msg = f"out must be a writeable C-contiguous float32 array of shape {(h, w)}, got {got}"
            raise ValueError(msg)
        hbuf, pbuf, acc = self._buffers(h, w)
        _ssim_map(x, y, self._w, self._c1, self._c2, hbuf, pbuf, acc, out, difference)
        return out

    def _buffers(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self._scratch
        if s is None or s[0].shape[1:] != (h, w):
            # a few row blocks per thread, for balance; the result does not depend on the block count
            nb = max(1, min(h, 4 * numba.get_num_threads()))
            k = self.size
            s = (
                np.empty((5, h, w), dtype=np.float32),
                np.empty((nb, 2, w + k - 1), dtype=np.float32),
                np.empty((nb, 5, w), dtype=np.float32),
            )
            self._scratch = s
        return s


def warmup() -> float:
    """Compile (or load from the cache) every kernel specialisation the daemon uses; returns the seconds taken.

    Covers gray HxW and multichannel HxWxC input, gaussian and uniform windows, ssim and difference.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for window in _WINDOWS:
        kernel = SsimKernel(window, size=7)
        for shape in ((9, 8), (9, 8, 3)):
            a = rng.random(shape, dtype=np.float32)
            kernel.ssim(a, a)
            kernel.difference(a, a)
    return time.perf_counter() - t0
