"""Builders and fakes reused across tests: small real ONNX models, configs, image trees, CLI runners.

The models are real ONNX graphs run by onnxruntime (built with the `onnx` package, no torch), so tests exercise
the daemon's real detector path in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def make_blur_model(
    out_dir: Path,
    *,
    size: tuple[int, int] = (64, 64),
    color: str = "gray",
    mode: str = "resize",
    tile_overlap: int = 16,
    pixel_threshold: float = 0.5,
    min_region_area: int = 4,
    fixed_batch: int | None = None,
    input_name: str = "image",
    output_name: str = "reconstruction",
    window: str = "gaussian",
    scale: float = 1.0,
) -> Path:
    """A real ONNX 'autoencoder' whose reconstruction is a 5x5 box blur of its input.

    Smooth regions reconstruct well; sharp spots (a defect drawn on a flat background) do not, so the SSIM map
    lights up exactly there.
    """
    import onnx
    from onnx import TensorProto, helper

    from inspectd.core.manifest import Manifest, sha256_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = 1 if color == "gray" else 3
    h, w = size
    k = np.zeros((c, 1, 5, 5), dtype=np.float32) + 1.0 / 25.0
    weight = helper.make_tensor("w", TensorProto.FLOAT, k.shape, k.ravel().tolist())
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 2, 2, 0, 0, 2, 2])
    # reflect-pad then blur, so borders reconstruct as well as the middle
    ident = helper.make_node("Pad", [input_name, "pads"], ["x_in"], mode="reflect")
    node = helper.make_node("Conv", ["x_in", "w"], [output_name], group=c)
    batch = fixed_batch if fixed_batch is not None else "N"
    graph = helper.make_graph(
        [ident, node],
        "blur",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, c, h, w])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, c, h, w])],
        initializer=[weight, pads],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx_path = out_dir / "model.onnx"
    onnx.save(model, str(onnx_path))
    sha = sha256_file(onnx_path)
    Manifest(
        name="test-blur",
        kind="autoencoder",
        onnx={"file": "model.onnx", "sha256": sha, "opset": 17},
        input={"name": input_name, "shape": [fixed_batch, c, h, w]},
        output={"name": output_name, "shape": [fixed_batch, c, h, w]},
        preprocess={"color": color, "mode": mode, "tile_overlap": tile_overlap, "scale": scale},
        ssim={"window": window, "size": 7 if window == "uniform" else 11, "sigma": 1.5},
        thresholds={
            "pixel": pixel_threshold,
            "min_region_area": min_region_area,
            "model_sha256": sha,
            "method": "test",
        },
        training={"data": "none: a fixed 5x5 box blur built by tests/support/helpers.py"},
    ).write(out_dir)
    return out_dir


def make_dark_classifier(
    out_dir: Path,
    *,
    size: tuple[int, int] = (64, 64),
    dark_below: float = 0.3,
    pixel_threshold: float = 0.5,
    min_region_area: int = 4,
    name: str = "test-dark-classifier",
) -> Path:
    """A real ONNX supervised 'classifier' (manifest kind classifier): its defect-probability map is
    sigmoid(40 * (dark_below - x)), so pixels darker than `dark_below` (of 1) are defect with probability > 0.5.
    Unlike the blur autoencoder it finds smooth dark blobs and misses bright spots."""
    import onnx
    from onnx import TensorProto, helper

    from inspectd.core.manifest import Manifest, sha256_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    consts = [
        helper.make_tensor("t", TensorProto.FLOAT, [], [dark_below]),
        helper.make_tensor("k", TensorProto.FLOAT, [], [40.0]),
    ]
    nodes = [
        helper.make_node("Sub", ["t", "image"], ["d"]),
        helper.make_node("Mul", ["d", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["defect_map"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dark",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, h, w])],
        [helper.make_tensor_value_info("defect_map", TensorProto.FLOAT, ["N", 1, h, w])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out_dir / "model.onnx"))
    sha = sha256_file(out_dir / "model.onnx")
    Manifest(
        name=name,
        kind="classifier",
        onnx={"file": "model.onnx", "sha256": sha, "opset": 17},
        input={"name": "image", "shape": [None, 1, h, w]},
        output={"name": "defect_map", "shape": [None, 1, h, w]},
        preprocess={"color": "gray", "mode": "resize"},
        thresholds={"pixel": pixel_threshold, "min_region_area": min_region_area, "model_sha256": sha},
    ).write(out_dir)
    return out_dir


def make_ensemble_dir(
    out_dir: Path,
    primary: Path,
    members: list[tuple[Path, float]],
    *,
    primary_divide_by: float,
    pixel_threshold: float = 1.0,
    min_region_area: int = 4,
    combine: str = "max",
) -> Path:
    """An ensemble model directory written by hand (no torch, no calibration), as `inspectd ensemble` lays it out:
    `primary` copied to out_dir, each (member, divide_by) under out_dir/members/<i>/."""
    import json
    import shutil

    from inspectd.core.manifest import Manifest

    shutil.copytree(primary, out_dir)
    specs = []
    for i, (member, divide_by) in enumerate(members, start=1):
        shutil.copytree(member, out_dir / "members" / str(i))
        sha = json.loads((member / "manifest.json").read_text())["onnx"]["sha256"]
        specs.append({"dir": f"members/{i}", "sha256": sha, "divide_by": divide_by})
    raw = json.loads((out_dir / "manifest.json").read_text())
    raw["training"] = {"ensemble": {"models": [{"dir": ".", "name": raw["name"]}]}}  # as `inspectd ensemble` writes
    raw["name"] = "test-ensemble"
    raw["ensemble"] = {"combine": combine, "divide_by": primary_divide_by, "members": specs}
    raw["thresholds"] |= {"pixel": pixel_threshold, "min_region_area": min_region_area}
    Manifest.model_validate(raw).write(out_dir)
    return out_dir


def write_config(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def synthetic_camera(*, rate_hz: float = 0, trigger: str = "free_run", size: int = 128) -> str:
    """The body of a `camera:` section (indented for daemon_config) for the synthetic camera."""
    return (
        f"          type: synthetic\n          width: {size}\n          height: {size}\n"
        f"          rate_hz: {rate_hz}\n          trigger: {trigger}"
    )


def daemon_config(
    tmp: Path,
    model: Path,
    camera: str,
    *,
    extra: str = "",
    line: str = "test-line",
    status_interval_s: float = 0.2,
    name: str = "c.yaml",
) -> Path:
    """A daemon config for tests: JSON logs, CPU only. `camera` is the indented body of the camera section
    (10 spaces, e.g. synthetic_camera()), `extra` more top-level sections (8 spaces, as the text below)."""
    return write_config(
        tmp / name,
        f"""
        line: {line}
        camera:
{camera}
        model:
          path: {model}
          providers: [CPUExecutionProvider]
        logging:
          format: json
        service:
          status_interval_s: {status_interval_s}
{extra}
        """,
    )


def verify_systemd_unit(tmp: Path, unit_name: str) -> str:
    """`systemd-analyze verify` on systemd/<unit_name> with the venv's inspectd in place of /opt/...; skips where
    systemd-analyze is missing, fails on any warning. Returns the unit's text."""
    import shutil

    import pytest

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (REPO / "systemd" / unit_name).read_text()
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "inspectd"
    if not exe.exists():
        exe = Path(shutil.which("inspectd") or "/bin/true")
    local = tmp / unit_name
    local.write_text(unit.replace("/opt/inspectd/venv/bin/inspectd", str(exe)))
    res = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", f"systemd-analyze verify warned:\n{res.stderr}"
    return unit


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, timeout: float = 120, env: dict | None = None, cwd: Path | None = None, input: str | None = None
):
    """Run the real `inspectd` CLI in a subprocess (the same entry point as the console script)."""
    return subprocess.run(
        [sys.executable, "-m", "inspectd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=cwd or REPO,
        input=input,
    )


def popen_cli(*args: str, env: dict | None = None, cwd: Path | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "inspectd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=cwd or REPO,
        **kw,
    )


def parse_json_lines(text: str) -> list[dict]:
    import json

    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def draw_item(size: tuple[int, int] = (96, 96), *, defect: bool, seed: int = 0) -> np.ndarray:
    """A flat grey item, optionally with a small dark square (a defect the blur model cannot reconstruct)."""
    rng = np.random.default_rng(seed)
    img = np.full(size, 128, dtype=np.uint8) + rng.integers(0, 3, size=size, dtype=np.uint8)
    if defect:
        y, x = size[0] // 3, size[1] // 3
        img[y : y + 8, x : x + 8] = 10
    return img


# --- fakes for the parts that cannot misbehave on demand here (a physical camera) -------------------------


class ScriptedCamera:
    """A camera that fails when told to: opens that fail, reads that fail, unreadable frames, end of stream.

    Serves `draw_item` frames (a defect on every `defect_every`-th frame). Implements inspectd.core.types.Camera.
    """

    def __init__(
        self,
        *,
        live: bool = True,
        fail_opens: int = 0,
        fail_reads: set[int] | frozenset = frozenset(),
        bad_frames: set[int] | frozenset = frozenset(),
        total: int | None = None,
        defect_every: int = 0,
        size: tuple[int, int] = (96, 96),
        read_delay_s: float = 0.0,
    ) -> None:
        self.live = live
        self.fail_opens = fail_opens
        self.fail_reads = set(fail_reads)
        self.bad_frames = set(bad_frames)
        self.total = total
        self.defect_every = defect_every
        self.size = size
        self.read_delay_s = read_delay_s
        self.reads = 0
        self.opens = 0
        self.open_attempts = 0
        self.is_open = False

    def open(self) -> None:
        from inspectd.core.errors import CameraError

        self.open_attempts += 1
        if self.fail_opens > 0:
            self.fail_opens -= 1
            raise CameraError("scripted open failure")
        self.opens += 1
        self.is_open = True

    def read(self, timeout_s: float):
        import time

        from inspectd.core.errors import CameraError, EndOfStream
        from inspectd.core.types import Capture

        assert self.is_open, "read() on a closed camera"
        if self.read_delay_s:
            time.sleep(self.read_delay_s)
        n = self.reads
        if self.total is not None and n >= self.total:
            raise EndOfStream("scripted end")
        self.reads += 1
        if n in self.fail_reads:
            raise CameraError(f"scripted read failure at read {n}")
        if n in self.bad_frames:
            return Capture(image=None, source=f"scripted#{n}", error="scripted corrupt frame")
        defect = bool(self.defect_every) and n % self.defect_every == 0
        return Capture(image=draw_item(self.size, defect=defect, seed=n), source=f"scripted#{n}", truth=defect)

    def close(self) -> None:
        self.is_open = False

    def describe(self) -> dict:
        return {"type": "scripted"}


class CollectSink:
    """Keeps every verdict it receives (thread-safe append)."""

    name = "collect"

    def __init__(self) -> None:
        self.verdicts = []

    def emit(self, verdict) -> None:
        self.verdicts.append(verdict)

    def close(self) -> None:
        pass


class SlowInspector:
    """Wraps a real Inspector and adds a fixed delay, to make the pipeline slower than the camera."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def inspect(self, image):
        import time

        time.sleep(self.delay_s)
        return self.inner.inspect(image)
