"""The SSIM difference map: inspectd's Numba kernel against an OpenCV reference and scikit-image, in one run.

For each frame size (square, float32 in [0, 1]: a random image and a noisy copy, the SSIM's real input pair) and
each thread count (1, and all usable cores), the three are timed interleaved, round by round, so that machine
noise hits them alike; the median call time gives megapixels per second. The window is skimage's default for
sigma 1.5 (Gaussian, 11 taps), scipy's reflect border for all three.

- inspectd: ``inspectd.inspection.ssim.SsimKernel("gaussian", 11, 1.5).difference(a, b)``, with
``numba.set_num_threads(n)``.
- OpenCV: the SSIM map as an engineer writes it with OpenCV (below, :func:`opencv_difference`): five
  ``cv2.GaussianBlur`` in float32 with the same 11x11 window and sigma (mu_x, mu_y, E[x^2], E[y^2], E[xy]) and the
  formula in numpy; ``cv2.setNumThreads(n)``, so OpenCV gets the same threads as inspectd.
- scikit-image: ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1.0, full=True)`` (single-threaded: timed once per size, shown in both thread rows).
- max_abs_err: inspectd's map against skimage's computed in float64; opencv_max_abs_err likewise.

Also the compile cost: a fresh interpreter with an empty NUMBA_CACHE_DIR times import + first call (the kernel
compiles), then another with the now-filled cache (it loads).

    python bench/ssim.py --json OUT.json                 # 256, 512, 1024, 2048; 1 and all threads (~2 min)
    python bench/ssim.py --smoke --json OUT.json         # tiny sizes, few rounds, for the test suite (no timing claims)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402

from inspectd.daemon.pipeline import usable_cores  # noqa: E402
from inspectd.inspection.ssim import SsimKernel, set_num_threads  # noqa: E402

SIZE, SIGMA, K1, K2, DATA_RANGE = 11, 1.5, 0.01, 0.03, 1.0
C1, C2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2


def opencv_difference(x: np.ndarray, y: np.ndarray, ksize: int = SIZE, sigma: float = SIGMA) -> np.ndarray:
    """1 - SSIM map with OpenCV: the float32 reference an engineer would write (OpenCV's SSIM tutorial, in Python)."""

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT)

    mu_x, mu_y = blur(x), blur(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    s_xx = blur(x * x) - mu_xx
    s_yy = blur(y * y) - mu_yy
    s_xy = blur(x * y) - mu_xy
    ssim = ((2 * mu_xy + C1) * (2 * s_xy + C2)) / ((mu_xx + mu_yy + C1) * (s_xx + s_yy + C2))
    return 1 - ssim


def skimage_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from skimage.metrics import structural_similarity

    _, s = structural_similarity(
        x, y, gaussian_weights=True, sigma=SIGMA, use_sample_covariance=False, data_range=DATA_RANGE, full=True
    )
    return 1 - s


def image_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((n, n), dtype=np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal((n, n)).astype(np.float32), 0, 1)
    return a, b


def _rounds(n: int, smoke: bool) -> int:
    if smoke:
        return 3
    return {256: 60, 512: 30, 1024: 15}.get(n, 7)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_size(n: int, threads: list[int], *, smoke: bool) -> list[dict]:
    a, b = image_pair(n, seed=n)
    kernel = SsimKernel("gaussian", size=SIZE, sigma=SIGMA, k1=K1, k2=K2, data_range=DATA_RANGE)
    want = skimage_difference(a.astype(np.float64), b.astype(np.float64))  # the float64 reference
    ours = kernel.difference(a, b)
    err = float(np.abs(ours.astype(np.float64) - want).max())
    cv_err = float(np.abs(opencv_difference(a, b).astype(np.float64) - want).max())
    # skimage is single-threaded: time it once per size (it takes seconds at 2048^2), in float32 like the others
    sk_reps = 1 if smoke else (5 if n <= 512 else (3 if n <= 1024 else 2))
    skimage_difference(a, b)
    sk_s = float(np.median([_timed(lambda: skimage_difference(a, b)) for _ in range(sk_reps)]))
    rows = []
    for t in threads:
        set_num_threads(t)
        cv2.setNumThreads(t)
        kernel.difference(a, b)  # settle scratch for this thread count
        opencv_difference(a, b)
        ins, ocv = [], []
        for _ in range(_rounds(n, smoke)):  # interleaved: noise on the machine hits both alike
            ins.append(_timed(lambda: kernel.difference(a, b)))
            ocv.append(_timed(lambda: opencv_difference(a, b)))
        ins_s, ocv_s = float(np.median(ins)), float(np.median(ocv))
        mp = n * n / 1e6
        rows.append(
            {
                "size": n,
                "threads": t,
                "inspectd_mps": round(mp / ins_s, 2),
                "opencv_mps": round(mp / ocv_s, 2),
                "skimage_mps": round(mp / sk_s, 2),
                "max_abs_err": err,
                "inspectd_ms": round(ins_s * 1e3, 4),
                "opencv_ms": round(ocv_s * 1e3, 4),
                "skimage_ms": round(sk_s * 1e3, 3),
                "inspectd_best_ms": round(min(ins) * 1e3, 4),
                "opencv_best_ms": round(min(ocv) * 1e3, 4),
                "vs_opencv": round(ocv_s / ins_s, 2),
                "vs_skimage": round(sk_s / ins_s, 1),
                "opencv_max_abs_err": cv_err,
            }
        )
    return rows


_PROBE = """
import time
t0 = time.perf_counter()
import numpy as np
from inspectd.inspection.ssim import SsimKernel
t1 = time.perf_counter()
k = SsimKernel("gaussian", size={size}, sigma={sigma})
a = np.random.default_rng(0).random((64, 64), dtype=np.float32)
k.difference(a, a)
t2 = time.perf_counter()
k.difference(np.stack([a] * 3, axis=2), np.stack([a] * 3, axis=2))
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def _probe(cache_dir: str | None) -> tuple[float, float, float, float]:
    """(import s, first gray call s, first multichannel call s, whole process s) in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    code = _PROBE.format(size=SIZE, sigma=SIGMA)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    imp, gray, multi = (float(v) for v in out.stdout.split())
    return imp, gray, multi, wall


def measure_compile(*, smoke: bool) -> dict:
    """First call in a fresh interpreter: with an empty cache (compiles) and then with the filled one (loads)."""
    with tempfile.TemporaryDirectory(prefix="inspectd-bench-numba-") as cache:
        if smoke:  # compiling takes seconds; the smoke run only loads from the cache the test suite already filled
            cold = None
        else:
            imp, gray, multi, wall = _probe(cache)
            cold = {
                "import_s": round(imp, 3),
                "gray_first_call_s": round(gray, 3),
                "multichannel_first_call_s": round(multi, 3),
                "process_s": round(wall, 3),
            }
        imp, gray, multi, wall = _probe(None if smoke else cache)
        cached = {
            "import_s": round(imp, 3),
            "gray_first_call_s": round(gray, 3),
            "multichannel_first_call_s": round(multi, 3),
            "process_s": round(wall, 3),
        }
    return {
        "first_call_compile_s": None if cold is None else cold["gray_first_call_s"],
        "cached_start_s": round(cached["import_s"] + cached["gray_first_call_s"], 3),
        "cold": cold,
        "cached": cached,
    }


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "usable_cores": usable_cores(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numba": numba.__version__,
        "numba_threading_layer": numba.config.THREADING_LAYER,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, few rounds (test suite; no timing claims)")
    p.add_argument(
        "--sizes", type=lambda s: [int(v) for v in s.split(",")], help="frame sizes (default 256,512,1024,2048)"
    )
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], help="thread counts (default 1,all)")
    p.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    args = p.parse_args(argv)
    info = machine()
    sizes = args.sizes or ([32, 64] if args.smoke else [256, 512, 1024, 2048])
    threads = args.threads or sorted({1, min(usable_cores(), numba.config.NUMBA_NUM_THREADS)})
    SsimKernel().warmup(1)
    results = []
    for n in sizes:
        results.extend(measure_size(n, threads, smoke=args.smoke))
    report = {
        "results": results,
        "compile": None if args.no_compile else measure_compile(smoke=args.smoke),
        "window": {"type": "gaussian", "size": SIZE, "sigma": SIGMA, "border": "reflect"},
        "smoke": args.smoke,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
