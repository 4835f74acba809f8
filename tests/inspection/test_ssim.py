"""inspectd.inspection.ssim: the SSIM difference-map kernels, checked against skimage and a scipy float64 reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numba
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.metrics import structural_similarity

from inspectd.inspection.ssim import SsimKernel, _tile_width, set_num_threads, warmup

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4  # max abs error allowed against the float64 references

SHAPES = [(7, 7), (31, 17), (64, 64), (128, 96), (257, 263)]
SIGMAS = [0.8, 1.5, 2.5]
UNIFORM_SIZES = [3, 7, 11]


def skimage_size(sigma: float) -> int:
    """The window size skimage uses for a Gaussian sigma (truncate=3.5, radius as in scipy.ndimage)."""
    return 2 * int(3.5 * sigma + 0.5) + 1


def skimage_map(a, b, window, size, sigma=1.5, data_range=1.0, channel_axis=None):
    """skimage's full SSIM map in float64; channel-averaged for multichannel input."""
    if window == "gaussian":
        assert size == skimage_size(sigma), "skimage's Gaussian window size follows from sigma"
        kw = {"gaussian_weights": True, "sigma": sigma}
    else:
        kw = {"win_size": size, "gaussian_weights": False}
    _, s = structural_similarity(
        np.asarray(a, np.float64),
        np.asarray(b, np.float64),
        use_sample_covariance=False,
        data_range=data_range,
        full=True,
        channel_axis=channel_axis,
        **kw,
    )
    return s if channel_axis is None else s.mean(axis=channel_axis)


def reference_map(a, b, window, size, sigma=1.5, k1=0.01, k2=0.03, data_range=1.0):
    """SSIM map from scipy.ndimage filters (mode='reflect') in float64; works for any image size."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim == 3:
        maps = [reference_map(a[..., c], b[..., c], window, size, sigma, k1, k2, data_range) for c in range(a.shape[2])]
        return np.mean(maps, axis=0)
    if window == "gaussian":

        def filt(z):
            return ndi.gaussian_filter(z, sigma, mode="reflect", radius=size // 2)

    else:

        def filt(z):
            return ndi.uniform_filter(z, size, mode="reflect")

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ux, uy = filt(a), filt(b)
    vx = filt(a * a) - ux * ux
    vy = filt(b * b) - uy * uy
    vxy = filt(a * b) - ux * uy
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def image_pair(shape, seed=0, noise=0.1):
    """A random image in [0, 1] and a noisy copy of it (float32)."""
    rng = np.random.default_rng(seed)
    a = rng.random(shape, dtype=np.float32)
    b = np.clip(a + noise * rng.standard_normal(shape).astype(np.float32), 0, 1)
    return a, b


def smooth_texture(shape, seed=0):
    """A smooth grey texture around 0.6 (more like a product surface than white noise)."""
    rng = np.random.default_rng(seed)
    t = ndi.gaussian_filter(rng.random(shape), 3.0)
    return (0.6 + 0.2 * (t - t.mean()) / t.std()).clip(0, 1).astype(np.float32)


def max_err(got, want) -> float:
    assert got.dtype == np.float32
    assert got.shape == want.shape
    return float(np.abs(got.astype(np.float64) - want).max())


# ---------------------------------------------------------------------------------------------- vs skimage


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("sigma", SIGMAS)
def test_gaussian_window_matches_skimage(shape, sigma):
    size = skimage_size(sigma)
    a, b = image_pair(shape, seed=shape[0] + shape[1])
    got = SsimKernel("gaussian", size=size, sigma=sigma).ssim(a, b)
    if min(shape) >= size:
        want = skimage_map(a, b, "gaussian", size, sigma)
    else:  # skimage refuses images smaller than its window
        want = reference_map(a, b, "gaussian", size, sigma)
    assert max_err(got, want) < TOL


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("size", UNIFORM_SIZES)
def test_uniform_window_matches_skimage(shape, size):
    a, b = image_pair(shape, seed=shape[0] * shape[1])
    got = SsimKernel("uniform", size=size).ssim(a, b)
    if min(shape) >= size:
        want = skimage_map(a, b, "uniform", size)
    else:
        want = reference_map(a, b, "uniform", size)
    assert max_err(got, want) < TOL


@pytest.mark.parametrize("level", [0.05, 0.5, 0.95])
@pytest.mark.parametrize(("window", "size"), [("gaussian", 11), ("uniform", 7)])
def test_flat_regions_keep_float32_precision(level, window, size):
    # nearly constant images are where E[x^2] - E[x]^2 cancels; the kernel must stay within tolerance there too
    rng = np.random.default_rng(3)
    a = (level + 0.002 * rng.standard_normal((96, 80))).clip(0, 1).astype(np.float32)
    b = (level + 0.002 * rng.standard_normal((96, 80))).clip(0, 1).astype(np.float32)
    got = SsimKernel(window, size=size).ssim(a, b)
    assert max_err(got, skimage_map(a, b, window, size)) < TOL


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize(("window", "size", "sigma"), [("gaussian", 11, 1.5), ("uniform", 7, 1.5)])
def test_multichannel_is_the_channel_mean_of_skimage(channels, window, size, sigma):
    a, b = image_pair((48, 61, channels), seed=channels)
    b[:, :, 0] = 1.0 - b[:, :, 0]  # make the channels differ from each other
    got = SsimKernel(window, size=size, sigma=sigma).ssim(a, b)
    assert got.shape == (48, 61)
    assert max_err(got, skimage_map(a, b, window, size, sigma, channel_axis=2)) < TOL


def test_data_range_other_than_one_matches_skimage():
    a, b = image_pair((40, 50), seed=9)
    a, b = a * 255, b * 255
    got = SsimKernel("gaussian", data_range=255.0).ssim(a, b)
    assert max_err(got, skimage_map(a, b, "gaussian", 11, data_range=255.0)) < TOL


@pytest.mark.parametrize(
    ("window", "size", "sigma"), [("gaussian", 11, 1.5), ("gaussian", 29, 4.0), ("uniform", 3, 1.5)]
)
def test_wide_images_across_several_column_tiles_match_skimage(window, size, sigma):
    # widths at and around multiples of the kernel's column tile: interior tiles, edge tiles, a 1-column last tile
    t = _tile_width(size)
    for width in (t - 1, t, t + 1, 3 * t + 1, 2 * t + size // 2):
        a, b = image_pair((size + 4, width), seed=width)
        got = SsimKernel(window, size=size, sigma=sigma).ssim(a, b)
        want = skimage_map(a, b, window, size, sigma)
        assert max_err(got, want) < TOL, width


@pytest.mark.parametrize("channels", [2, 3])
def test_tall_multichannel_images_over_several_row_blocks_match_skimage(channels):
    a, b = image_pair((300, 70, channels), seed=11)
    got = SsimKernel("gaussian", size=11, sigma=1.5).difference(a, b)
    want = 1.0 - skimage_map(a, b, "gaussian", 11, 1.5, channel_axis=2)
    assert max_err(got, want) < TOL


def test_bright_flat_region_next_to_an_edge_keeps_float32_precision():
    # the hard case for float32 moments: a nearly flat bright area beside a dark one, inside the same windows
    rng = np.random.default_rng(8)
    a = np.full((64, 64), 0.97, np.float32)
    a[:, :30] = 0.03
    a += (0.001 * rng.standard_normal(a.shape)).astype(np.float32)
    b = np.clip(a + (0.001 * rng.standard_normal(a.shape)).astype(np.float32), 0, 1)
    a = np.clip(a, 0, 1)
    assert max_err(SsimKernel().ssim(a, b), skimage_map(a, b, "gaussian", 11)) < TOL


# ---------------------------------------------------------------------------------------------- odd shapes


TINY_SHAPES = [(1, 1), (1, 40), (40, 1), (2, 3), (3, 2), (5, 9), (1, 5, 3), (4, 1, 2)]
TINY_WINDOWS = [("gaussian", 11, 1.5), ("gaussian", 19, 2.5), ("uniform", 7, 1.5)]


@pytest.mark.parametrize("shape", TINY_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("window", "size", "sigma"), TINY_WINDOWS)
def test_thin_and_smaller_than_window_images_follow_scipy_reflect(shape, window, size, sigma):
    a, b = image_pair(shape, seed=sum(shape))
    got = SsimKernel(window, size=size, sigma=sigma).ssim(a, b)
    assert max_err(got, reference_map(a, b, window, size, sigma)) < TOL


# ---------------------------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("shape", [(33, 45), (33, 45, 3)])
@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_identical_images_give_zero_difference(shape, window):
    a, _ = image_pair(shape)
    d = SsimKernel(window).difference(a, a.copy())
    assert d.shape == shape[:2]
    assert np.abs(d).max() <= 1e-6


def test_difference_is_one_minus_ssim():
    a, b = image_pair((30, 40), seed=5, noise=0.4)
    k = SsimKernel()
    d = k.difference(a, b)
    assert np.array_equal(d, np.float32(1) - k.ssim(a, b))
    assert d.min() >= 0 and d.max() <= 2


@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_local_defect_scores_high_at_defect_and_zero_away_from_it(window):
    a = smooth_texture((80, 100))
    b = a.copy()
    b[40:46, 50:56] = 0.05  # a dark 6x6 defect in the reconstruction
    size = 11
    d = SsimKernel(window, size=size).difference(a, b)
    assert d[40:46, 50:56].min() > 0.5
    touched = np.zeros(d.shape, bool)
    r = size // 2
    touched[40 - r : 46 + r, 50 - r : 56 + r] = True
    assert np.abs(d[~touched]).max() <= 1e-6
    assert np.unravel_index(np.argmax(d), d.shape) in {(y, x) for y in range(40, 46) for x in range(50, 56)}


def test_out_array_is_filled_and_returned():
    a, b = image_pair((20, 30), seed=2)
    k = SsimKernel()
    out = np.full((20, 30), np.nan, np.float32)
    got = k.difference(a, b, out=out)
    assert got is out
    assert np.array_equal(out, SsimKernel().difference(a, b))
    assert k.ssim(a, b, out=out) is out


def test_results_are_not_internal_buffers_overwritten_by_later_calls():
    k = SsimKernel()
    a, b = image_pair((20, 30), seed=3)
    first = k.difference(a, b)
    kept = first.copy()
    c, d = image_pair((20, 30), seed=4)
    second = k.difference(c, d)
    assert second is not first
    assert np.array_equal(first, kept)


def test_reused_kernel_across_frame_sizes_is_bitwise_identical_to_a_fresh_one():
    reused = SsimKernel("gaussian", size=7, sigma=1.2)
    for i, shape in enumerate([(64, 48), (17, 90), (64, 48, 3), (1, 33), (64, 48), (200, 150), (17, 90)]):
        a, b = image_pair(shape, seed=i)
        fresh = SsimKernel("gaussian", size=7, sigma=1.2).difference(a, b)
        assert np.array_equal(reused.difference(a, b), fresh), shape


@pytest.mark.parametrize("shape", [(300, 257), (64, 48, 3), (23, 500)])
def test_result_is_bitwise_independent_of_the_thread_count(shape):
    a, b = image_pair(shape, seed=12)
    before = numba.get_num_threads()
    try:
        maps = []
        for threads in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            set_num_threads(threads)
            maps.append(SsimKernel().difference(a, b))
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(maps[0], m) for m in maps[1:])


def test_reused_kernel_across_sizes_and_thread_counts_matches_fresh_calls():
    reused = SsimKernel("uniform", size=7)
    before = numba.get_num_threads()
    try:
        for i, (shape, threads) in enumerate([((120, 90), 1), ((500, 40), 2), ((7, 300, 3), 2), ((120, 90), 1)]):
            set_num_threads(threads)
            a, b = image_pair(shape, seed=20 + i)
            assert np.array_equal(reused.ssim(a, b), SsimKernel("uniform", size=7).ssim(a, b)), shape
    finally:
        numba.set_num_threads(before)


def test_identical_images_give_exactly_zero_difference():
    a, _ = image_pair((50, 70), seed=13)
    assert not SsimKernel().difference(a, a.copy()).any()
    c, _ = image_pair((20, 30, 3), seed=14)
    assert not SsimKernel("uniform", size=7).difference(c, c.copy()).any()


def test_set_num_threads_clamps_to_what_numba_has():
    before = numba.get_num_threads()
    try:
        assert set_num_threads(0) == 1
        assert set_num_threads(10_000) == numba.config.NUMBA_NUM_THREADS
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(before)


def test_float64_input_gives_the_float32_result():
    a, b = image_pair((25, 35), seed=6)
    k = SsimKernel()
    assert np.array_equal(k.ssim(a.astype(np.float64), b.astype(np.float64)), k.ssim(a, b))
    # non-contiguous views are accepted too
    big_a, big_b = image_pair((50, 70), seed=7)
    view_a, view_b = big_a[::2, ::2], big_b[::2, ::2]
    assert np.array_equal(k.ssim(view_a, view_b), k.ssim(view_a.copy(), view_b.copy()))


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 10}, "window size must be an odd integer >= 3, got 10"),
        ({"size": 1}, "window size must be an odd integer >= 3, got 1"),
        ({"size": 7.0}, "window size must be an odd integer"),
        ({"window": "box"}, "window must be one of .*'box'"),
        ({"sigma": 0}, "sigma must be a finite number > 0"),
        ({"k2": -0.03}, "k2 must be a finite number > 0"),
        ({"data_range": float("nan")}, "data_range must be a finite number > 0"),
    ],
)
def test_invalid_kernel_arguments_raise_value_error_naming_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SsimKernel(**kwargs)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros((10, 12), np.float32), np.zeros((12, 10), np.float32), r"same shape, got a \(10, 12\) and b \(12,"),
        (np.zeros((10, 12), np.float32), np.zeros((10, 12, 1), np.float32), "same shape"),
        (np.zeros((2, 10, 12, 1), np.float32), np.zeros((2, 10, 12, 1), np.float32), "HxW or HxWxC, got 4-D"),
        (np.zeros(12, np.float32), np.zeros(12, np.float32), "HxW or HxWxC, got 1-D"),
        (np.zeros((10, 12, 5), np.float32), np.zeros((10, 12, 5), np.float32), "1..4 channels"),
        (np.zeros((0, 12), np.float32), np.zeros((0, 12), np.float32), "empty"),
        (np.zeros((10, 12), np.uint8), np.zeros((10, 12), np.uint8), "float image .* got dtype uint8"),
    ],
)
def test_invalid_images_raise_value_error_naming_the_problem(a, b, match):
    with pytest.raises(ValueError, match=match):
        SsimKernel().difference(a, b)


@pytest.mark.parametrize(
    "out",
    [np.zeros((10, 12), np.float64), np.zeros((12, 10), np.float32), np.zeros((10, 24), np.float32)[:, ::2]],
    ids=["float64", "wrong-shape", "non-contiguous"],
)
def test_unusable_out_array_raises_value_error(out):
    a = np.zeros((10, 12), np.float32)
    with pytest.raises(ValueError, match=r"out must be a writeable C-contiguous float32 array of shape \(10, 12\)"):
        SsimKernel().difference(a, a, out=out)


# ---------------------------------------------------------------------------------------------- warm-up


def test_warmup_compiles_the_kernels_and_reports_seconds():
    seconds = warmup()
    assert isinstance(seconds, float)
    assert seconds >= 0
    kernel = SsimKernel("gaussian", size=11)
    assert warmup([kernel], channels=1) >= 0
    assert kernel.warmup(channels=(1, 3)) >= 0


# ---------------------------------------------------------------------------------------------- real images


@pytest.mark.dataset
@pytest.mark.parametrize(("window", "size", "sigma"), [("gaussian", 11, 1.5), ("uniform", 7, 1.5)])
def test_real_tiles_against_a_blurred_copy_match_skimage(magnetic_tile, window, size, sigma):
    paths = sorted((magnetic_tile / "test" / "crack").glob("*.jpg"))[:2]
    paths += sorted((magnetic_tile / "test" / "good").glob("*.jpg"))[:1]
    assert paths, f"no images under {magnetic_tile / 'test'}"
    k = SsimKernel(window, size=size, sigma=sigma)
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert img is not None, path
        a = img.astype(np.float32) / 255
        b = cv2.GaussianBlur(a, (5, 5), 1.2)
        d = k.difference(a, b)
        err = max_err(np.float32(1) - d, skimage_map(a, b, window, size, sigma))
        assert err < TOL, f"{path.name}: max abs error {err:.2e}"
        assert d.min() >= 0 and d.max() <= 2
        assert d.mean() > 0  # blurring changes the texture


# ---------------------------------------------------------------------------------------------- numba cache dir

_PROBE = """
import json, os, sys
{pre}
import inspectd.inspection._numba_env as env
{patch}
chosen = env.ensure_numba_cache_dir()
info = {{"chosen": chosen, "cache_dir": env.CACHE_DIR, "warning": env.WARNING}}
info["env"] = os.environ.get("NUMBA_CACHE_DIR")
if "numba" in sys.modules:
    info["numba_config"] = sys.modules["numba"].core.config.CACHE_DIR
if {compute}:
    from inspectd.inspection.ssim import SsimKernel
    import numpy as np
    a = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    info["diff_max"] = float(SsimKernel().difference(a, a).max())
print(json.dumps(info))
"""


def run_probe(tmp_path, env_updates, *, pre="", patch="", compute=False):
    """Run ensure_numba_cache_dir() in a fresh interpreter with a modified environment; its findings as a dict.

    compute=True also imports inspectd.inspection.ssim and runs a kernel there (compiling it when the cache dir is new).
    """
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(env_updates)
    env["PYTHONPATH"] = str(REPO)
    code = _PROBE.format(pre=pre, patch=patch, compute=compute)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_writable_dir(path):
    assert path is not None
    probe = Path(path) / "probe"
    probe.write_text("x")
    probe.unlink()


def test_unwritable_numba_cache_dir_falls_back_to_a_writable_one_with_a_warning(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file: nothing can be created under it")
    bad = blocker / "numba"
    info = run_probe(tmp_path, {"NUMBA_CACHE_DIR": str(bad)}, compute=True)
    assert str(bad) in info["warning"]
    assert "not a writable directory" in info["warning"]
    assert info["env"] != str(bad)
    assert info["cache_dir"] == info["chosen"] == info["env"]  # None: numba's default beside the sources
    if info["chosen"] is not None:
        assert_writable_dir(info["chosen"])
    assert info["diff_max"] == 0.0


def test_writable_numba_cache_dir_is_created_and_used(tmp_path):
    wanted = tmp_path / "deep" / "numba-cache"
    info = run_probe(tmp_path, {"NUMBA_CACHE_DIR": str(wanted)}, compute=True)
    assert info["chosen"] == info["env"] == str(wanted)
    assert info["warning"] is None
    assert wanted.is_dir()
    assert any(wanted.rglob("*.nbi")), "numba wrote its index into the chosen cache dir"


def test_read_only_source_tree_uses_xdg_cache_then_tempdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    patch = "env._in_tree_writable = lambda: False"
    xdg = tmp_path / "xdg"
    info = run_probe(tmp_path, {"XDG_CACHE_HOME": str(xdg)}, patch=patch)
    assert info["chosen"] == info["env"] == str(xdg / "inspectd" / "numba")
    assert_writable_dir(info["chosen"])

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    info = run_probe(tmp_path, {"XDG_CACHE_HOME": str(blocker), "TMPDIR": str(tmp)}, patch=patch)
    assert Path(info["chosen"]).parent == tmp
    assert_writable_dir(info["chosen"])


def test_numba_already_imported_sees_the_changed_cache_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    info = run_probe(
        tmp_path,
        {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
        pre=f"import numba; os.environ['NUMBA_CACHE_DIR'] = {str(blocker / 'numba')!r}",
        patch="env._in_tree_writable = lambda: False",
    )
    assert info["chosen"] == str(tmp_path / "xdg" / "inspectd" / "numba")
    assert info["numba_config"] == info["chosen"]
    assert info["warning"] is not None
