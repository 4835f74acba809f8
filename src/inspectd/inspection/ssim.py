"""Per-pixel SSIM and the SSIM difference map, as Numba kernels.

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
``size = 2 * int(3.5 * sigma + 0.5) + 1``; OpenCV's ``GaussianBlur`` with ``ksize = size`` and the same sigma uses
the same weights); ``uniform`` weights ``1 / size``. Both are symmetric and separable.

Border convention: exactly ``scipy.ndimage`` ``mode='reflect'`` (half-sample symmetric; OpenCV's
``BORDER_REFLECT``), so the results match ``skimage.metrics.structural_similarity(..., full=True)[1]`` everywhere,
borders included::

    d c b a | a b c d | d c b a

For images smaller than the window the reflection repeats, as scipy's does: the line is extended periodically
with period ``2n`` (``a b | a b | b a a b b a ...``); a 1-pixel-wide line is extended as a constant.

Multichannel input (HxWxC, C = 1..4) gives the mean over channels of the per-channel SSIM maps, as skimage does
with ``channel_axis`` (its per-channel maps averaged).

Algorithm (one fused pass; nothing frame-sized is written but the output):

- The rows are split into one horizontal stripe per Numba thread (``prange``), each cut into blocks of about
  ``_BLOCK_ROWS`` rows, each block into column tiles of ``_tile_width(size)`` columns (so that the working set stays
  in the L1/L2 cache and the page set in the TLB).
- For a tile, the block's rows plus a halo of ``r`` rows above and below are walked top to bottom. Each row is
  copied once into a padded row buffer (the reflected border is applied only in tiles that touch the image
  edge), and the *horizontal* pass turns it into five moment rows (mean x, mean y, and the centred var x, var y,
  cov xy of the row window) in a rolling ring of ``size`` rows (stored twice, at slots ``s`` and ``s + size``, so
  that the window's rows are always contiguous in the ring). As soon as the ring holds the ``size`` rows around
  an output row, the *vertical* pass combines them and writes the SSIM (channel-averaged, optionally ``1 - S``)
  straight into the output row.
- Both passes use the symmetric weights (pairs of taps ``r - o`` and ``r + o`` share one multiply) and keep their
  accumulators in registers: the loop body is generated for each window size (``_stripe``'s overload), so the taps
  are unrolled at compile time and LLVM vectorises the loop over the columns. One compiled specialisation per
  (window size, gray/multichannel) is cached on disk (``cache=True``, ``NUMBA_CACHE_DIR`` honoured via
  ``inspectd.inspection._numba_env``).

Precision: everything is stored and accumulated in float32. The second moments are formed *centred*: the
horizontal pass sums ``w (x_t - x_c)^2`` with ``x_c`` the window's centre pixel and subtracts the square of the
mean offset; the vertical pass combines the rows' centred variances with ``w (m_t - m_c)^2`` around the centre
row's mean (law of total variance). That is the same quantity as ``E[x*x] - E[x]^2`` without its float32
cancellation (about 5e-4 error in SSIM in bright flat regions); against skimage in float64 the maximum absolute
error is about 1e-6 (tests/daemon/test_ssim.py checks 1e-4). The per-pixel arithmetic does not depend on the
thread count, stripe, block or tile boundaries, so the result is bit-for-bit the same for any of them.

Threads and buffers: an :class:`SsimKernel` owns per-thread scratch (a padded row pair and the moment ring, a few
tens of KiB per thread, independent of the frame size) that every call reuses; it is allocated on first use and
grows only when the calling thread's Numba thread count grows. So no call allocates anything frame-sized except
the returned map when no ``out=`` is given. An instance is NOT thread-safe: use one per thread. The kernel runs
parallel over ``numba.get_num_threads()`` threads of the *calling* thread (set it there with
``numba.set_num_threads``) and releases the GIL; calling it from several Python threads at once needs Numba's
``omp`` or ``tbb`` threading layer (``workqueue`` aborts on concurrent use).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Literal

import numpy as np

from inspectd.inspection._numba_env import ensure_numba_cache_dir

ensure_numba_cache_dir()

import numba  # noqa: E402  (the cache directory must be settled first)
from numba import njit, prange  # noqa: E402
from numba.extending import overload  # noqa: E402

__all__ = ["SsimKernel", "set_num_threads", "warmup"]

_WINDOWS = ("gaussian", "uniform")
_MAX_CHANNELS = 4
_FASTMATH = {"contract"}  # fused multiply-add only: no reassociation, no finite-math assumptions
_BLOCK_ROWS = 128  # rows per block within a thread's stripe (bounds the pages touched per column tile)
_RING_BYTES = 24 * 1024  # one ring window (5 planes x size rows x tile width, float32) should fit in L1


def _tile_width(size: int) -> int:
    """Columns per tile for a window of `size` taps: a multiple of 32 in [64, 256] whose ring window fits L1."""
    return int(min(256, max(64, _RING_BYTES // (5 * 4 * size) // 32 * 32)))


@njit(cache=True, inline="always")
def _reflect(i: int, n: int) -> int:
    """scipy.ndimage 'reflect' index: period-2n symmetric extension, valid for any i and n >= 1."""
    if 0 <= i < n:
        return i
    m = i % (2 * n)
    if m >= n:
        m = 2 * n - 1 - m
    return m


def _stripe(x, y, wts, c1, c2, pad, ring, out, difference, i0, i1):
    """Fill rows [i0, i1) of `out` (see the module docstring); its body is generated per window size below."""
    raise NotImplementedError("only callable from Numba-compiled code")


def _stripe_source(k: int, ndim: int) -> str:  # noqa: PLR0915 - the kernel written out, line by line
    """Python source of `_stripe` for a window of k taps and gray (ndim 2) or multichannel (ndim 3) images.

    Layout of the per-thread scratch (flat float32; T = tile width, P = T + 2r, R = 2 k T):
      pad[0:P] padded row of x, pad[P:2P] of y, pad[2P:2P+T] the tile's SSIM values (multichannel only);
      ring[p*R + s*T + j]: plane p (0 mean x, 1 mean y, 2 var x, 3 var y, 4 cov xy) of ring slot s, column j.
    Every array index below is the loop variable j plus a constant, so LLVM sees unit-stride accesses at fixed
    offsets from one base pointer per buffer and vectorises the loops over j.
    """
    r = k // 2
    t = _tile_width(k)
    p = t + 2 * r
    rs = 2 * k * t
    lines: list[str] = []

    def emit(indent: int, text: str) -> None:
        lines.append("    " * indent + text)

    emit(0, "def impl(x, y, wts, c1, c2, pad, ring, out, difference, i0, i1):")
    emit(1, "h = x.shape[0]")
    emit(1, "wd = x.shape[1]")
    emit(1, "nc = 1" if ndim == 2 else "nc = x.shape[2]")
    for o in range(r + 1):
        emit(1, f"w{o} = wts[{r + o}]")
    emit(1, "one = np.float32(1.0)")
    emit(1, "two = np.float32(2.0)")
    emit(1, "inv_c = np.float32(1.0 / nc)")
    emit(1, f"tmp = pad[{2 * p}:]")
    emit(1, "for c in range(nc):")
    emit(2, f"for j0 in range(0, wd, {t}):")
    emit(3, f"n = min({t}, wd - j0)")
    emit(3, f"for e in range(i0 - {r}, i1 + {r}):")
    # -- padded copy of source row reflect(e), columns j0 - r .. j0 + n + r - 1
    emit(4, "src = _reflect(e, h)")
    if ndim == 2:
        emit(4, "xr = x[src]")
        emit(4, "yr = y[src]")
    else:
        emit(4, "xr = x[src, :, c]")
        emit(4, "yr = y[src, :, c]")
    emit(4, f"if j0 >= {r} and j0 + n + {r} <= wd:")
    emit(5, f"for q in range(n + {2 * r}):")
    emit(6, f"pad[q] = xr[j0 - {r} + q]")
    emit(6, f"pad[{p} + q] = yr[j0 - {r} + q]")
    emit(4, "else:")
    emit(5, f"for q in range(n + {2 * r}):")
    emit(6, f"jj = _reflect(j0 - {r} + q, wd)")
    emit(6, "pad[q] = xr[jj]")
    emit(6, f"pad[{p} + q] = yr[jj]")
    # -- horizontal pass: window moments of this row, centred at the window's centre pixel
    emit(4, f"hr = ring[(e % {k}) * {t}:]")
    emit(4, "for j in range(n):")
    emit(5, f"cx = pad[j + {r}]")
    emit(5, f"cy = pad[j + {p + r}]")
    for o in range(1, r + 1):
        emit(5, f"dxa = pad[j + {r - o}] - cx")
        emit(5, f"dxb = pad[j + {r + o}] - cx")
        emit(5, f"dya = pad[j + {p + r - o}] - cy")
        emit(5, f"dyb = pad[j + {p + r + o}] - cy")
        op = "=" if o == 1 else "+="
        emit(5, f"sx {op} w{o} * (dxa + dxb)")
        emit(5, f"sy {op} w{o} * (dya + dyb)")
        emit(5, f"sxx {op} w{o} * (dxa * dxa + dxb * dxb)")
        emit(5, f"syy {op} w{o} * (dya * dya + dyb * dyb)")
        emit(5, f"sxy {op} w{o} * (dxa * dya + dxb * dyb)")
    moments = ("cx + sx", "cy + sy", "sxx - sx * sx", "syy - sy * sy", "sxy - sx * sy")
    for plane, value in enumerate(moments):
        emit(5, f"v{plane} = {value}")
        emit(5, f"hr[j + {plane * rs}] = v{plane}")
        emit(5, f"hr[j + {plane * rs + k * t}] = v{plane}")
    # -- vertical pass for output row i = e - r once its k rows are in the ring
    emit(4, f"i = e - {r}")
    emit(4, "if i < i0:")
    emit(5, "continue")
    emit(4, f"vr = ring[((i - {r}) % {k}) * {t}:]")
    emit(4, "orow = out[i, j0:]")
    emit(4, "dst = orow if nc == 1 else tmp")
    emit(4, "for j in range(n):")
    centre = r * t
    emit(5, f"cmx = vr[j + {centre}]")
    emit(5, f"cmy = vr[j + {rs + centre}]")
    emit(5, "ax = np.float32(0.0)")
    emit(5, "ay = np.float32(0.0)")
    emit(5, f"axx = w0 * vr[j + {2 * rs + centre}]")
    emit(5, f"ayy = w0 * vr[j + {3 * rs + centre}]")
    emit(5, f"axy = w0 * vr[j + {4 * rs + centre}]")
    for o in range(1, r + 1):
        ta, tb = (r - o) * t, (r + o) * t
        emit(5, f"dxa = vr[j + {ta}] - cmx")
        emit(5, f"dxb = vr[j + {tb}] - cmx")
        emit(5, f"dya = vr[j + {rs + ta}] - cmy")
        emit(5, f"dyb = vr[j + {rs + tb}] - cmy")
        emit(5, f"ax += w{o} * (dxa + dxb)")
        emit(5, f"ay += w{o} * (dya + dyb)")
        emit(5, f"axx += w{o} * ((vr[j + {2 * rs + ta}] + vr[j + {2 * rs + tb}]) + (dxa * dxa + dxb * dxb))")
        emit(5, f"ayy += w{o} * ((vr[j + {3 * rs + ta}] + vr[j + {3 * rs + tb}]) + (dya * dya + dyb * dyb))")
        emit(5, f"axy += w{o} * ((vr[j + {4 * rs + ta}] + vr[j + {4 * rs + tb}]) + (dxa * dya + dxb * dyb))")
    emit(5, "mux = cmx + ax")
    emit(5, "muy = cmy + ay")
    emit(5, "vx = axx - ax * ax")
    emit(5, "vy = ayy - ay * ay")
    emit(5, "vxy = axy - ax * ay")
    # ux^2 + uy^2 written as (ux - uy)^2 + 2 ux uy: with FMA contraction, identical inputs still give S == 1 exactly
    emit(5, "lum = two * mux * muy + c1")
    emit(5, "dmu = mux - muy")
    emit(5, "s = (lum * (two * vxy + c2)) / ((dmu * dmu + lum) * (vx + vy + c2))")
    emit(5, "dst[j] = one - s if difference and nc == 1 else s")
    # -- multichannel: accumulate the channel mean in the output row
    emit(4, "if nc > 1:")
    emit(5, "if c == 0:")
    emit(6, "for j in range(n):")
    emit(7, "orow[j] = tmp[j]")
    emit(5, "elif c < nc - 1:")
    emit(6, "for j in range(n):")
    emit(7, "orow[j] += tmp[j]")
    emit(5, "else:")
    emit(6, "for j in range(n):")
    emit(7, "s = (orow[j] + tmp[j]) * inv_c")
    emit(7, "orow[j] = one - s if difference else s")
    return "\n".join(lines) + "\n"


@overload(_stripe, jit_options={"fastmath": _FASTMATH, "nogil": True})
def _stripe_overload(x, y, wts, c1, c2, pad, ring, out, difference, i0, i1):
    namespace: dict = {}
    exec(_stripe_source(wts.count, x.ndim), {"np": np, "_reflect": _reflect}, namespace)
    return namespace["impl"]


@njit(cache=True, parallel=True, fastmath=_FASTMATH, nogil=True)
def _ssim_map(x, y, wts, c1, c2, pad, ring, out, difference, stripes):
    """Fill `out` (H, W) with the (channel-mean) SSIM map of x, y (H, W or H, W, C), or 1 - it when `difference`.

    wts: the k window weights as a tuple (its length selects the generated loop body); pad, ring: per-stripe
    scratch, rows 0..stripes-1 used. One stripe of rows per thread, cut into blocks of about _BLOCK_ROWS rows.
    """
    h = x.shape[0]
    for b in prange(stripes):
        i0 = b * h // stripes
        i1 = (b + 1) * h // stripes
        rows = i1 - i0
        blocks = max(1, (rows + _BLOCK_ROWS // 2) // _BLOCK_ROWS)
        for q in range(blocks):
            lo = i0 + q * rows // blocks
            hi = i0 + (q + 1) * rows // blocks
            _stripe(x, y, wts, c1, c2, pad[b], ring[b], out, difference, lo, hi)


def _window(window: str, size: int, sigma: float) -> np.ndarray:
    if window == "uniform":
        return np.full(size, 1.0 / size, dtype=np.float32)
    r = size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 / (sigma * sigma) * x * x)  # symmetric bit for bit: (-d)^2 == d^2
    return (g / g.sum()).astype(np.float32)


def _as_image(img: np.ndarray, name: str) -> np.ndarray:
    """A float32 C-contiguous HxW (gray, also for HxWx1) or HxWxC view or copy of `img`; ValueError if unusable."""
    img = np.asarray(img)
    if img.dtype.kind != "f":
        msg = f"{name} must be a float image with values in [0, data_range], got dtype {img.dtype}"
        raise ValueError(msg)
    if img.ndim not in (2, 3):
        msg = f"{name} must be HxW or HxWxC, got {img.ndim}-D array of shape {img.shape}"
        raise ValueError(msg)
    if img.ndim == 3 and not 1 <= img.shape[2] <= _MAX_CHANNELS:
        msg = f"{name} must have 1..{_MAX_CHANNELS} channels (HxWxC), got shape {img.shape}"
        raise ValueError(msg)
    if img.shape[0] == 0 or img.shape[1] == 0:
        msg = f"{name} is empty: shape {img.shape}"
        raise ValueError(msg)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return np.ascontiguousarray(img, dtype=np.float32)


class SsimKernel:
    """Per-pixel SSIM / difference maps with a fixed window; reuses its scratch buffers across frames.

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
        self._wts = tuple(np.float32(v) for v in self._w)  # a tuple: its length is a compile-time constant
        self._c1 = np.float32((self.k1 * self.data_range) ** 2)
        self._c2 = np.float32((self.k2 * self.data_range) ** 2)
        self._pad: np.ndarray | None = None
        self._ring: np.ndarray | None = None

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

    def warmup(self, channels: int | Iterable[int] = (1, 3)) -> float:
        """Compile (or load from the cache) this window size's kernels for gray (1) and/or multichannel (> 1)
        images; returns the seconds taken. A daemon warms up only the kind its model uses."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        wanted = {channels} if isinstance(channels, int) else set(channels)
        for shape in ((9, 8), (9, 8, 3)):
            if (len(shape) == 2) in {c == 1 for c in wanted}:
                a = rng.random(shape, dtype=np.float32)
                self.difference(a, a)
        return time.perf_counter() - t0

    def _run(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None, *, difference: bool) -> np.ndarray:
        x = _as_image(a, "a")
        y = _as_image(b, "b")
        if np.shape(a) != np.shape(b):
            msg = f"images must have the same shape, got a {np.shape(a)} and b {np.shape(b)}"
            raise ValueError(msg)
        h, w = x.shape[:2]
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
        stripes = self._stripes(h)
        _ssim_map(x, y, self._wts, self._c1, self._c2, self._pad, self._ring, out, difference, stripes)
        return out

    def _stripes(self, h: int) -> int:
        """One stripe per thread (none shorter than two windows), and scratch for that many; grows only."""
        stripes = max(1, min(numba.get_num_threads(), h // (2 * self.size)))
        if self._pad is None or self._pad.shape[0] < stripes:
            k, t = self.size, _tile_width(self.size)
            self._pad = np.empty((stripes, 2 * (t + 2 * (k // 2)) + t), dtype=np.float32)
            self._ring = np.empty((stripes, 5 * 2 * k * t), dtype=np.float32)
        return stripes


def set_num_threads(n: int) -> int:
    """Set the calling thread's Numba thread count (clamped to 1..NUMBA_NUM_THREADS); returns the count set.

    Numba's count is per calling thread: call this in the thread that runs the kernels."""
    n = int(min(max(1, n), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    numba.set_num_threads(n)
    return n


_DEFAULT_KERNELS: tuple[tuple[Literal["gaussian", "uniform"], int, float], ...] = (
    ("gaussian", 11, 1.5),
    ("uniform", 7, 1.5),
)


def warmup(kernels: Iterable[SsimKernel] = (), channels: int | Iterable[int] = (1, 3)) -> float:
    """Compile (or load from the cache) the kernels the daemon uses; returns the seconds taken.

    Each window size has its own compiled specialisations (gray HxW, multichannel HxWxC; ssim and difference
    share them): pass the daemon's kernels (e.g. ``Inspector.ssim``) and the channel count of its images; without
    kernels the default Gaussian (11 taps) and uniform (7 taps) windows are compiled.
    """
    t0 = time.perf_counter()
    todo = list(kernels) or [SsimKernel(window, size=size, sigma=sigma) for window, size, sigma in _DEFAULT_KERNELS]
    for kernel in todo:
        kernel.warmup(channels)
    return time.perf_counter() - t0
