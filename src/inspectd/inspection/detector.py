"""The onnxruntime session for one model directory: provider choice, manifest checks, warm-up.

onnxruntime-gpu silently falls back to CPUExecutionProvider when CUDA/TensorRT cannot load; we ask the session
what it actually got (`session.get_providers()`), log it, and refuse to start when `require_gpu` is set and no
GPU provider was obtained.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

from inspectd.core.errors import ModelError
from inspectd.core.manifest import Manifest, load_manifest

ort.set_default_logger_severity(4)  # its C++ logger writes provider failures to stderr; we log them ourselves

log = structlog.get_logger("inspectd.detector")

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class SessionInfo:
    requested: tuple[str, ...]
    available: tuple[str, ...]
    obtained: tuple[str, ...]

    @property
    def on_gpu(self) -> bool:
        return bool(self.obtained) and self.obtained[0] in GPU_PROVIDERS


def _dims(shape) -> list:
    """onnxruntime reports symbolic dims as strings or None: both mean dynamic."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


class Detector:
    """Runs one model: NCHW float32 batch in, its output (an autoencoder's reconstruction, a features model's
    anomaly map) out, shaped as the manifest's output says."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        require_gpu: bool = False,
        intra_op_threads: int = 0,
        verify_hash: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir, verify_hash=verify_hash)
        # kept so that an ensemble's other models get sessions of the same kind (Inspector)
        self.options: dict[str, Any] = {
            "providers": tuple(providers),
            "require_gpu": require_gpu,
            "intra_op_threads": intra_op_threads,
        }
        available = tuple(ort.get_available_providers())
        wanted = tuple(p for p in providers if p in available)
        if not wanted:
            msg = (
                f"none of the configured providers {list(providers)} is available; this onnxruntime offers "
                f"{list(available)}"
            )
            raise ModelError(msg)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, int(intra_op_threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: provider fallbacks are reported by us, below
        # No spin-waiting between parallel sections: spinning intra-op threads take the cores the pipeline's other
        # stages (and other processes) need; measured on 2 cores under load, 2 spinning threads ran the demo model
        # at 23 frames/s, 1 thread at 44 and 2 non-spinning threads at 57 (docs/results/magnetic-tile.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        onnx_path = self.model_dir / self.manifest.onnx.file
        # onnxruntime *prints* provider failures ("EP Error ... Falling back") to stdout, which would corrupt the
        # JSON log stream: capture them and report them as one structured event instead.
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=list(wanted))
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            msg = f"onnxruntime cannot load {onnx_path}: {exc}"
            raise ModelError(msg) from exc
        self.info = SessionInfo(tuple(providers), available, tuple(self.session.get_providers()))
        self.provider_errors = [
            line.strip()[:300]
            for line in printed.getvalue().splitlines()
            if line.startswith(("EP Error", "Falling back"))
        ]
        if self.provider_errors:
            log.warning("provider_fallback", obtained=list(self.info.obtained), messages=self.provider_errors)
        if require_gpu and not self.info.on_gpu:
            msg = (
                f"require_gpu is set but onnxruntime gave {list(self.info.obtained)} "
                f"(requested {list(wanted)}); check the CUDA/TensorRT libraries, or set model.require_gpu: false"
            )
            raise ModelError(msg)
        self._check_graph()
        self.input_name = self.manifest.input.name
        self.output_name = self.manifest.output.name
        # an anomalib model also gives its image score (manifest anomalib.score_output): run_all() returns both
        extra = self.manifest.anomalib
        self.output_names = [self.output_name] + ([extra.score_output] if extra is not None else [])
        self.fixed_batch = self.manifest.input.shape[0]

    def _check_graph(self) -> None:
        """The graph's input/output names and shapes must be what the manifest says."""
        m = self.manifest
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1:
            msg = (
                f"the model has {len(inputs)} inputs {[i.name for i in inputs]}; expected exactly one "
                f"({m.input.name!r})"
            )
            raise ModelError(msg)
        got_in = inputs[0]
        if got_in.name != m.input.name:
            msg = f"the model's input is named {got_in.name!r} but the manifest says {m.input.name!r}"
            raise ModelError(msg)
        if got_in.type != "tensor(float)":
            msg = f"the model's input type is {got_in.type}; expected tensor(float) (float32)"
            raise ModelError(msg)
        self._check_shape("input", _dims(got_in.shape), list(m.input.shape))
        by_name = {o.name: o for o in outputs}
        if m.output.name not in by_name:
            msg = (
                f"the model has no output {m.output.name!r} (it has {sorted(by_name)}); the manifest disagrees "
                f"with the graph"
            )
            raise ModelError(msg)
        self._check_shape("output", _dims(by_name[m.output.name].shape), list(m.output.shape))
        if m.anomalib is not None:
            score = by_name.get(m.anomalib.score_output)
            if score is None or score.type != "tensor(float)":
                msg = (
                    f"the model has no float output {m.anomalib.score_output!r} (it has {sorted(by_name)}); the "
                    "manifest's anomalib.score_output names the image score"
                )
                raise ModelError(msg)

    def _check_shape(self, what: str, graph: list, manifest: list) -> None:
        if len(graph) != len(manifest):
            msg = f"the model's {what} has rank {len(graph)} {graph}; the manifest says {manifest}"
            raise ModelError(msg)
        for axis, (g, want) in enumerate(zip(graph, manifest, strict=False)):
            # a dynamic graph dim accepts any manifest value; a fixed one must match exactly
            if g is not None and g != want and not (axis == 0 and want is None and g == 1):
                msg = f"the model's {what} shape is {graph} but the manifest says {manifest} (axis {axis} differs)"
                raise ModelError(msg)
            if g is None and axis > 0 and want is None:
                msg = f"the model's {what} axis {axis} is dynamic; the manifest must fix it"
                raise ModelError(msg)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Reconstruct a float32 NCHW batch (an anomalib model: its anomaly map). A model with a fixed batch size is
        fed in slices."""
        return self._run([self.output_name], batch)[0]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output the manifest names, in `output_names` order (the map, then an anomalib model's score)."""
        return self._run(self.output_names, batch)

    def _run(self, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
        if self.fixed_batch is None or batch.shape[0] == self.fixed_batch:
            return self.session.run(names, {self.input_name: batch})
        step = self.fixed_batch
        parts = [
            self.session.run(names, {self.input_name: np.ascontiguousarray(batch[i : i + step])})
            for i in range(0, batch.shape[0], step)
        ]
        return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(names))]

    def warmup(self, runs: int = 3) -> float:
        """Run the model a few times on a neutral input (first runs allocate and optimise); returns seconds."""
        c, h, w = self.manifest.input.shape[1:]
        batch = np.full((self.fixed_batch or 1, c, h, w), 0.5, dtype=np.float32)
        t0 = time.perf_counter()
        for _ in range(runs):
            outs = self.run_all(batch)
        out = outs[0]
        expected = (batch.shape[0], *self.manifest.output.shape[1:])
        if out.shape != expected or not all(np.isfinite(o).all() for o in outs):
            msg = (
                f"warm-up output has shape {out.shape} (expected {expected}) or non-finite values: the model is broken"
            )
            raise ModelError(msg)
        return time.perf_counter() - t0
