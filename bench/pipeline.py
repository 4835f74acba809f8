"""What the daemon's pipeline costs beyond the model: its frame rate against a bare onnxruntime loop, same run.

For each model (the demo model, models/demo, and a 256x256-input autoencoder), in a fresh process each:

1. `--frames` frames of the synthetic fabric camera (256x256 gray, a quarter with defects) are written as PNG to a
   temporary folder;
2. the daemon's real parts are built as ``inspectd run`` builds them: thread budget
(inspectd.daemon.pipeline.thread_budget,
   automatic unless `--onnxruntime-threads` / `--numba-threads`), Detector (CPU), Inspector, warm-up, the folder
   camera unthrottled (rate_hz 0), the log sink (JSON rendered, written to /dev/null), Dispatcher, Pipeline;
3. a bare onnxruntime loop (the same Detector session, so the same session options and threads) runs over the same
   frames, preprocessed beforehand, before and after the pipeline run; ``ort_fps`` is the mean of the two;
4. the pipeline replays the folder: ``pipeline_fps`` is the dispatcher's steady rate (first to last verdict),
   latencies are acquisition -> verdict, ``rss_mb`` the process's resident memory after the run (peak beside it).

``ratio`` = pipeline_fps / ort_fps. Also reported: the per-stage median timings of the pipeline run and, for
context, the bare loop with onnxruntime on all usable cores (``ort_fps_all_cores``).

When models/demo does not exist (it is trained by export/), a stand-in with the demo's architecture (export/'s
ConvAutoencoder default: 128x128 gray, widths 32-64-128-128, latent 64; BatchNorm folded, random weights) is built
and flagged ``"stand_in": true``; the 256x256 model has the same architecture at 256x256. Both are plain ONNX
graphs built with the `onnx` package, so the bench needs no torch.

    python bench/pipeline.py --json OUT.json [--frames 300]
    python bench/pipeline.py --smoke --json OUT.json     # tiny models and frames, for the test suite (no timing claims)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

DEMO_DIR = REPO / "models" / "demo"
FRAME_HW = (256, 256)  # config.yaml's synthetic camera


# --- models ------------------------------------------------------------------------------------------------


def build_autoencoder(
    out_dir: Path,
    size: int,
    *,
    channels: int = 1,
    base_width: int = 32,
    max_width: int = 128,
    latent: int = 64,
    depth: int = 4,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """inspectd/training/model.py's ConvAutoencoder as an ONNX graph (BatchNorm folded into the convolutions), random
    weights.

    Encoder: per stage a 4x4 stride-2 conv and a 3x3 conv, LeakyReLU(0.2); a 1x1 conv to `latent` channels.
    Decoder: a 1x1 conv back, then per stage a 3x3 conv and a 4x4 stride-2 transposed conv; a 3x3 conv and a sigmoid.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from inspectd.core.manifest import Manifest, sha256_file

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    cur = "image"

    def conv(c_in: int, c_out: int, k: int, stride: int, pad: int, act: str | None, transpose: bool = False) -> None:
        nonlocal cur
        i = len(inits) // 2
        shape = (c_in, c_out, k, k) if transpose else (c_out, c_in, k, k)
        w = (rng.standard_normal(shape) * np.sqrt(2.0 / (c_in * k * k))).astype(np.float32)
        inits.extend(
            [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")]
        )
        op = "ConvTranspose" if transpose else "Conv"
        out = "reconstruction_logits" if act == "sigmoid" else f"c{i}"
        nodes.append(
            helper.make_node(
                op, [cur, f"w{i}", f"b{i}"], [out], kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4
            )
        )
        cur = out
        if act == "lrelu":
            nodes.append(helper.make_node("LeakyRelu", [cur], [f"a{i}"], alpha=0.2))
            cur = f"a{i}"
        elif act == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [cur], ["reconstruction"]))
            cur = "reconstruction"

    widths = [min(base_width * 2**i, max_width) for i in range(depth)]
    c_in = channels
    for w in widths:
        conv(c_in, w, 4, 2, 1, "lrelu")
        conv(w, w, 3, 1, 1, "lrelu")
        c_in = w
    conv(c_in, latent, 1, 1, 0, None)
    conv(latent, c_in, 1, 1, 0, "lrelu")
    for i in reversed(range(depth)):
        w_out = widths[i - 1] if i > 0 else widths[0]
        conv(c_in, c_in, 3, 1, 1, "lrelu")
        conv(c_in, w_out, 4, 2, 1, "lrelu", transpose=True)
        c_in = w_out
    conv(c_in, channels, 3, 1, 1, "sigmoid")
    dims = ["N", channels, size, size]
    graph = helper.make_graph(
        nodes,
        "autoencoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, dims)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    sha = sha256_file(out_dir / "model.onnx")
    shape = [None, channels, size, size]
    Manifest(
        name=name or f"bench-autoencoder-{size}",
        kind="autoencoder",
        onnx={"file": "model.onnx", "sha256": sha, "opset": 17},
        input={"name": "image", "shape": shape},
        output={"name": "reconstruction", "shape": shape},
        preprocess={"color": "gray" if channels == 1 else "bgr", "mode": "resize"},
        ssim={"window": "gaussian", "size": 11, "sigma": 1.5},
        thresholds={"pixel": 0.5, "min_region_area": 50, "model_sha256": sha, "method": "bench: not calibrated"},
        training={"data": "none: random weights, built by bench/pipeline.py (cost, not quality)"},
    ).write(out_dir)
    return out_dir


def write_frames(folder: Path, n: int, hw: tuple[int, int]) -> None:
    import cv2

    from inspectd.daemon.cameras.synthetic import SurfaceGenerator, SyntheticCameraConfig

    gen = SurfaceGenerator(SyntheticCameraConfig(width=hw[1], height=hw[0], defect_rate=0.25, seed=4))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"frame{i:05d}.png"), gen.render(i).image)


# --- one model, in its own process -------------------------------------------------------------------------


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return round(fields.get("VmRSS", 0.0), 1), round(fields.get("VmHWM", 0.0), 1)


def _bare_loop(detector, batches: list[np.ndarray]) -> float:
    """Frames per second of detector.run over the batches (one pass)."""
    t0 = time.perf_counter()
    for batch in batches:
        detector.run(batch)
    return len(batches) / (time.perf_counter() - t0)


class _Timings:
    """A sink that keeps each verdict's stage timings (for the profile)."""

    name = "timings"

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def emit(self, verdict) -> None:
        self.rows.append(verdict.timings_ms)

    def close(self) -> None:
        pass


def run_one(
    model_dir: Path, frames_dir: Path, ort_threads: int, numba_threads: int, all_cores: bool, rate_hz: float = 0.0
) -> dict:
    from inspectd.core import logs
    from inspectd.daemon.cameras import build_camera
    from inspectd.daemon.cameras.folder import FolderCameraConfig, list_images
    from inspectd.daemon.dispatch import Dispatcher
    from inspectd.daemon.logsink import LogSink
    from inspectd.daemon.pipeline import Pipeline, thread_budget
    from inspectd.inspection.detector import Detector
    from inspectd.inspection.inspector import Inspector

    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    logs.configure("info", "json", stream=devnull)  # the log sink renders its JSON lines, as in production
    budget = thread_budget(ort_threads, numba_threads)
    detector = Detector(model_dir, providers=("CPUExecutionProvider",), intra_op_threads=budget.onnxruntime)
    inspector = Inspector(detector)
    warm_s = inspector.warmup()

    import cv2

    images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in list_images(frames_dir, (".png",), False)]
    batches = [inspector.prepare(img).prepared.batch for img in images]
    _bare_loop(detector, batches[: max(3, len(batches) // 10)])  # settle
    ort_before = _bare_loop(detector, batches)

    cam_cfg = FolderCameraConfig(path=frames_dir, rate_hz=rate_hz, recursive=False)
    timings = _Timings()
    dispatcher = Dispatcher([LogSink("all"), timings])
    pipeline = Pipeline(
        build_camera(cam_cfg), cam_cfg, inspector, dispatcher, queue_size=4, overrun="auto", numba_threads=budget.numba
    )
    t0 = time.perf_counter()
    pipeline.start()
    if not pipeline.wait(600):
        msg = "the pipeline did not finish within 600 s"
        raise RuntimeError(msg)
    wall = time.perf_counter() - t0
    gaps = dispatcher.flush()
    summary = dispatcher.summary()
    rss, peak = _rss_mb()
    ort_after = _bare_loop(detector, batches)
    ort_fps = (ort_before + ort_after) / 2
    result = {
        "model": str(model_dir),
        "input": list(detector.manifest.input.shape[1:]),
        "frames": summary["frames"],
        "errors": summary["error"],
        "gaps": gaps,
        "kind": detector.manifest.kind,
        "line_rate_hz": rate_hz,
        "threads": {"onnxruntime": budget.onnxruntime, "numba": budget.numba, "cores": budget.cores},
        "pipeline_fps": summary["fps"],
        "pipeline_fps_wall": round(summary["frames"] / wall, 2),
        "ort_fps": round(ort_fps, 2),
        "ort_fps_before_after": [round(ort_before, 2), round(ort_after, 2)],
        "ratio": round(summary["fps"] / ort_fps, 3) if ort_fps else None,
        "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p99": summary["latency_ms_p99"],
        "p99_over_p50": (
            round(summary["latency_ms_p99"] / summary["latency_ms_p50"], 3) if summary["latency_ms_p50"] else None
        ),
        "rss_mb": rss,
        "rss_peak_mb": peak,
        "stage_ms_p50": {
            k: round(float(np.median([row[k] for row in timings.rows if k in row])), 3)
            for k in ("preprocess", "inference", "ssim", "decide")
            if any(k in row for row in timings.rows)
        },
        "warmup_s": round(warm_s, 3),
    }
    if all_cores and budget.onnxruntime != budget.cores:
        full = Detector(model_dir, providers=("CPUExecutionProvider",), intra_op_threads=budget.cores)
        _bare_loop(full, batches[: max(3, len(batches) // 10)])
        result["ort_fps_all_cores"] = round(_bare_loop(full, batches), 2)
    if all_cores:  # onnxruntime's own defaults (all cores, spin-waiting threads), the same graph and batches
        import onnxruntime as ort

        plain = ort.InferenceSession(str(model_dir / detector.manifest.onnx.file), providers=["CPUExecutionProvider"])
        name = detector.manifest.input.name

        class _Plain:
            def run(self, batch):
                return plain.run(None, {name: batch})

        _bare_loop(_Plain(), batches[: max(3, len(batches) // 10)])
        result["ort_fps_plain_defaults"] = round(_bare_loop(_Plain(), batches), 2)
        result["ratio_vs_plain_defaults"] = round(summary["fps"] / result["ort_fps_plain_defaults"], 3)
    if "ort_fps_all_cores" in result or budget.onnxruntime == budget.cores:
        base = result.get("ort_fps_all_cores", result["ort_fps"])
        result["ratio_vs_all_cores"] = round(summary["fps"] / base, 3) if base else None
    return result


# --- cost per frame size (line-scan strips) ----------------------------------------------------------------


def _variant(model_dir: Path, out: Path, **preprocess) -> Path:
    """A copy of a model directory with other preprocess settings (same graph and thresholds)."""
    import shutil

    from inspectd.core.manifest import load_manifest

    shutil.copytree(model_dir, out)
    m = load_manifest(out)
    raw = m.model_dump(mode="json")
    raw["preprocess"] = {**raw["preprocess"], **preprocess}
    type(m).model_validate(raw).write(out)
    return out


def frame_cost(model_dir: Path, widths: tuple[int, ...], height: int, repeats: int) -> dict:
    """Median ms of one whole inspection (prepare + infer + finish, the daemon's Inspector, all cores) per frame
    width; frames are synthetic fabric strips of `height` rows."""
    from inspectd.daemon.cameras.synthetic import SurfaceGenerator, SyntheticCameraConfig
    from inspectd.daemon.pipeline import usable_cores
    from inspectd.inspection.inspector import Inspector

    insp = Inspector.from_model_dir(model_dir, providers=("CPUExecutionProvider",), intra_op_threads=usable_cores())
    insp.warmup()
    rows = []
    for w in widths:
        gen = SurfaceGenerator(SyntheticCameraConfig(width=w, height=height, defect_rate=0.25, seed=5))
        frames = [gen.render(i).image for i in range(repeats)]
        insp.inspect(frames[0])
        times = []
        for f in frames:
            t0 = time.perf_counter()
            insp.inspect(f)
            times.append((time.perf_counter() - t0) * 1e3)
        pending = insp.prepare(frames[0])
        rows.append(
            {
                "frame": f"{w}x{height}",
                "megapixels": round(w * height / 1e6, 3),
                "tiles": int(pending.prepared.batch.shape[0]),
                "ms_p50": round(float(np.median(times)), 1),
                "ms_max": round(float(np.max(times)), 1),
            }
        )
    base = rows[0]
    for r in rows:
        r["ms_per_megapixel"] = round(r["ms_p50"] / r["megapixels"], 1)
        r["cost_ratio_vs_pixel_ratio"] = round(
            (r["ms_p50"] / base["ms_p50"]) / (r["megapixels"] / base["megapixels"]), 3
        )
    m = insp.manifest
    return {
        "model": str(model_dir),
        "mode": m.preprocess.mode,
        "scale": m.preprocess.scale,
        "input": list(m.input.shape[1:]),
        "rows": rows,
    }


# --- orchestration -----------------------------------------------------------------------------------------


def _spawn(model_dir: Path, frames_dir: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        str(model_dir),
        "--frames-dir",
        str(frames_dir),
        "--onnxruntime-threads",
        str(args.onnxruntime_threads),
        "--numba-threads",
        str(args.numba_threads),
    ]
    if not args.smoke:
        cmd.append("--all-cores")
    if args.line_rate:
        cmd += ["--line-rate", str(args.line_rate)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        msg = f"bench worker for {model_dir} failed (exit {out.returncode}):\n{out.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--smoke", action="store_true", help="tiny models and frames (test suite; no timing claims)")
    p.add_argument("--frames", type=int, default=300, help="frames per model (default 300)")
    p.add_argument("--demo-model", type=Path, default=DEMO_DIR, help="the demo model directory (default models/demo)")
    p.add_argument("--onnxruntime-threads", type=int, default=0, help="0 = automatic (the daemon's rule)")
    p.add_argument("--numba-threads", type=int, default=0, help="0 = automatic (the daemon's rule)")
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # worker: measure this model directory
    p.add_argument("--frames-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--all-cores", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--features-model",
        type=Path,
        default=None,
        help="also measure this model directory (e.g. the default recipe's `inspectd train` output)",
    )
    p.add_argument(
        "--line-rate",
        type=float,
        default=0.0,
        help="camera rate in frames/s for the latency percentiles (default 0 = as fast as it goes)",
    )
    p.add_argument(
        "--strips",
        action="store_true",
        help="with --features-model: cost of one frame of 256 rows and 256..4096 columns (1 megapixel), in the "
        "model's own mode and as native tiles (scale 1 and 0.5)",
    )
    p.add_argument("--cost", type=Path, help=argparse.SUPPRESS)  # worker: frame_cost of this model directory
    args = p.parse_args(argv)

    if args.one is not None:  # worker process
        result = run_one(
            args.one, args.frames_dir, args.onnxruntime_threads, args.numba_threads, args.all_cores, args.line_rate
        )
        print(json.dumps(result))
        return 0
    if args.cost is not None:  # worker process
        print(json.dumps(frame_cost(args.cost, (256, 1024, 2048, 4096), 256, 3 if args.smoke else 8)))
        return 0

    from inspectd.daemon.pipeline import usable_cores

    with tempfile.TemporaryDirectory(prefix="inspectd-bench-pipeline-") as tmp:
        tmp_path = Path(tmp)
        frames_dir = tmp_path / "frames"
        n_frames = 24 if args.smoke else args.frames
        hw = (64, 64) if args.smoke else FRAME_HW
        write_frames(frames_dir, n_frames, hw)
        models: list[tuple[str, Path, bool]] = []
        if args.smoke:  # tiny stand-ins: the machinery, not the numbers
            tiny = {"base_width": 4, "max_width": 8, "latent": 4, "depth": 2}
            models.append(("demo", build_autoencoder(tmp_path / "demo", 32, name="demo-stand-in", **tiny), True))
            models.append(("256x256", build_autoencoder(tmp_path / "m64", 64, **tiny), True))
        else:
            demo_ok = (args.demo_model / "manifest.json").is_file() and (args.demo_model / "model.onnx").is_file()
            demo = args.demo_model if demo_ok else build_autoencoder(tmp_path / "demo", 128, name="demo-stand-in")
            models.append(("demo", demo, not demo_ok))
            models.append(("256x256", build_autoencoder(tmp_path / "ae256", 256), False))
        if args.features_model is not None:
            models.append(("features", args.features_model, False))
        out = []
        for name, model_dir, stand_in in models:
            result = _spawn(model_dir, frames_dir, args)
            out.append({"name": name, "stand_in": stand_in, **result})
        strips = []
        if args.strips and args.features_model is not None:
            variants = [args.features_model]
            variants.append(_variant(args.features_model, tmp_path / "tile1", mode="tile", scale=1.0))
            variants.append(_variant(args.features_model, tmp_path / "tile05", mode="tile", scale=0.5))
            for v in variants:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--cost", str(v)]
                res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    msg = f"bench cost worker for {v} failed (exit {res.returncode}):\n{res.stderr[-3000:]}"
                    raise RuntimeError(msg)
                strips.append(json.loads(res.stdout.strip().splitlines()[-1]))
    report = {
        "models": out,
        "strips": strips,
        "frame_hw": list(hw),
        "smoke": args.smoke,
        "usable_cores": usable_cores(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
