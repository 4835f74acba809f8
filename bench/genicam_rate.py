"""Frame rates from a GenTL producer through camera.type genicam (default: viky.cti from PyPI's genicam wheel).

Two measurements, each beside a peer in the same run:

1. the camera alone: GenICamCamera.read() back to back (rate_hz 0) with the device's AcquisitionFrameRate set to
   each --rates value, for --seconds each, Mono8 and RGBa8 (viky's 400x400 formats): delivered frames per second,
   the device's own rate from its frame ids, and the frames it made that read() never saw (newest-frame mode
   skips them). Peer: harvesters' own fetch loop on the same device and settings (`ia.fetch()`, no conversion).
2. the daemon: `inspectd run` with the genicam camera free-running at --daemon-rate on the demo model for
   --frames frames (the summary's fps and error count). Peer: the same run with the synthetic camera at the
   same rate.

    .venv/bin/python bench/genicam_rate.py --json out/genicam.json [--cti PATH] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def viky() -> Path:
    import genicam

    return Path(genicam.__file__).parent / "viky.cti"


def camera_alone(cti: Path, serial: str, fmt: str, rate: float, seconds: float) -> dict:
    from inspectd.daemon.cameras.genicam import GenICamCamera, GenICamCameraConfig

    cfg = GenICamCameraConfig(
        cti=cti, serial_number=serial, pixel_format=fmt, rate_hz=0, nodes={"AcquisitionFrameRate": rate}
    )
    cam = GenICamCamera(cfg)
    cam.open()
    try:
        first = cam.read(2.0)
        t0 = time.perf_counter()
        n, last = 0, first
        while time.perf_counter() - t0 < seconds:
            last = cam.read(2.0)
            n += 1
        elapsed = time.perf_counter() - t0
    finally:
        cam.close()
    ids = int(last.source.rsplit("#", 1)[1]) - int(first.source.rsplit("#", 1)[1])
    return {
        "pixel_format": fmt,
        "requested_hz": rate,
        "delivered_fps": round(n / elapsed, 2),
        "device_fps": round(ids / elapsed, 2),
        "not_seen": ids - n,
    }


def harvesters_alone(cti: Path, serial: str, fmt: str, rate: float, seconds: float) -> dict:
    from harvesters.core import Harvester

    h = Harvester()
    h.add_file(str(cti))
    h.update()
    ia = h.create({"serial_number": serial})
    try:
        nm = ia.remote_device.node_map
        nm.PixelFormat.value = fmt
        nm.AcquisitionFrameRate.value = rate
        ia.start()
        with ia.fetch(timeout=2.0):
            pass
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            with ia.fetch(timeout=2.0):
                n += 1
        elapsed = time.perf_counter() - t0
    finally:
        ia.destroy()
        h.reset()
    return {"pixel_format": fmt, "requested_hz": rate, "delivered_fps": round(n / elapsed, 2)}


def daemon_run(camera: str, frames: int, work: Path, name: str) -> dict:
    cfg = work / f"{name}.yaml"
    cfg.write_text(
        f"line: bench\ncamera:\n{camera}\nmodel:\n  path: {REPO / 'models' / 'demo'}\n"
        "  providers: [CPUExecutionProvider]\nlogging:\n  format: json\n  verdicts: none\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "inspectd", "run", "--config", str(cfg), "--max-frames", str(frames)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if res.returncode != 0:
        msg = f"inspectd run ({name}) exited {res.returncode}: {res.stderr[-800:]}"
        raise RuntimeError(msg)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    return {k: summary.get(k) for k in ("frames", "pass", "reject", "error", "fps", "latency_ms_p50", "latency_ms_p99")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cti", type=Path, default=None, help="GenTL producer (default: viky.cti)")
    p.add_argument("--serial", default="0")
    p.add_argument("--rates", type=float, nargs="+", default=[20, 50, 100, 200])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--daemon-rate", type=float, default=15.0)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--smoke", action="store_true", help="tiny run: checks the machinery, not the numbers")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    cti = a.cti or viky()
    if a.smoke:
        a.rates, a.seconds, a.frames = [50.0], 0.3, 10
    out: dict = {"cti": str(cti), "camera_alone": [], "harvesters_alone": []}
    for fmt in ("Mono8", "RGBa8"):
        for rate in a.rates:
            out["camera_alone"].append(camera_alone(cti, a.serial, fmt, rate, a.seconds))
            out["harvesters_alone"].append(harvesters_alone(cti, a.serial, fmt, rate, a.seconds))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gen = f"  type: genicam\n  cti: {cti}\n  serial_number: '{a.serial}'\n  pixel_format: Mono8\n"
        gen += f"  rate_hz: {a.daemon_rate}"
        syn = f"  type: synthetic\n  width: 400\n  height: 400\n  rate_hz: {a.daemon_rate}"
        out["daemon"] = {
            "rate_hz": a.daemon_rate,
            "genicam": daemon_run(gen, a.frames, work, "genicam"),
            "synthetic_peer": daemon_run(syn, a.frames, work, "synthetic"),
        }
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
