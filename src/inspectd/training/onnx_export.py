"""PyTorch autoencoder -> model directory (model.onnx + manifest.json), the contract of inspectd/core/manifest.py.

The graph is exported with opset 17, input "image" and output "reconstruction" (NCHW float32) and a dynamic batch
dimension. onnxruntime (CPUExecutionProvider) is then checked against PyTorch on sample inputs at batch 1 and at a
larger batch: a max abs difference above the tolerance (1e-4) is an error, so a broken export never reaches a line.

Exporter: torch 2.13 defaults to the torch.export-based (dynamo) exporter, which needs the onnxscript package. We
pass dynamo=False and use the TorchScript exporter, which still ships with the pinned torch, handles this plain
conv/transposed-conv graph exactly and needs no extra dependency. The manifest records which exporter was used.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inspectd.core.clock import utc_now
from inspectd.core.manifest import (
    Manifest,
    OnnxSpec,
    PreprocessSpec,
    ScoreSpec,
    SsimSpec,
    TensorSpec,
    Thresholds,
    sha256_file,
)
from inspectd.training.model import ConvAutoencoder

INPUT_NAME = "image"
OUTPUT_NAME = "reconstruction"
OPSET = 17
PARITY_TOLERANCE = 1e-4
ONNX_FILE = "model.onnx"
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript exporter)"


class ParityError(RuntimeError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    batch_sizes: tuple[int, ...]
    provider: str

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "batch_sizes": list(self.batch_sizes), "provider": self.provider}


def export_onnx(
    model: torch.nn.Module, path: str | Path, *, opset: int = OPSET, output_names: tuple[str, ...] = (OUTPUT_NAME,)
) -> Path:
    """Write the model as ONNX with a dynamic batch dimension on the input and every output (file written whole,
    then renamed into place). `model.input_shape(batch)` gives the example input's shape."""
    if opset < 17:
        msg = f"opset {opset} is too old: inspectd models use opset >= 17"
        raise ValueError(msg)
    path = Path(path)
    model = model.eval()
    example = torch.zeros(model.input_shape(1))  # type: ignore[operator]  # ConvAutoencoder or CheckerNet
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export": on purpose
        # the pretrained encoder's same-padding slices: folding them is an optimisation, parity is checked below
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # shapes compared while tracing are the fixed input's (the manifest fixes H and W); parity is checked below
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
            do_constant_folding=True,
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    import onnx  # offline dependency (the train extra), like torch

    onnx.checker.check_model(str(path))
    return path


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | Path,
    samples: np.ndarray,
    *,
    tolerance: float = PARITY_TOLERANCE,
    output_names: tuple[str, ...] = (OUTPUT_NAME,),
) -> ParityReport:
    """Run onnxruntime (CPU) and PyTorch on `samples` (float32 NCHW) at batch 1 and at the full batch;
    raise ParityError when any output differs by more than `tolerance` (max abs) or the shapes disagree.
    A model with several outputs returns them as a tuple in the order of `output_names`."""
    import onnxruntime as ort

    samples = np.ascontiguousarray(samples, dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval()
    worst = 0.0
    sizes = sorted({1, samples.shape[0]})
    for n in sizes:
        x = samples[:n]
        got = session.run(list(output_names), {INPUT_NAME: x})
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        want = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape:
                msg = f"onnxruntime returned shape {g.shape} for batch {n}, PyTorch {w.shape}: the export is broken"
                raise ParityError(msg)
            worst = max(worst, float(np.max(np.abs(g - w))))
    if not worst <= tolerance:
        msg = (
            f"onnxruntime differs from PyTorch by {worst:.3g} (max abs) > tolerance {tolerance:g}: the export is broken"
        )
        raise ParityError(msg)
    return ParityReport(max_abs_diff=worst, batch_sizes=tuple(sizes), provider="CPUExecutionProvider")


def provisional_thresholds(sha256: str) -> Thresholds:
    """Thresholds that let everything pass (pixel 2.0 is the map's maximum): a placeholder until calibration."""
    return Thresholds(pixel=2.0, min_region_area=1, model_sha256=sha256, method="uncalibrated", calibrated_at="")


def build_manifest(
    model: ConvAutoencoder,
    onnx_path: Path,
    *,
    name: str,
    preprocess: PreprocessSpec,
    ssim: SsimSpec = SsimSpec(),
    score: ScoreSpec = ScoreSpec(),
    training: dict | None = None,
    thresholds: Thresholds | None = None,
    opset: int = OPSET,
) -> Manifest:
    sha = sha256_file(onnx_path)
    c = model.config
    spec = (None, c.channels, c.height, c.width)
    return Manifest(
        name=name,
        kind="autoencoder",
        onnx=OnnxSpec(file=onnx_path.name, sha256=sha, opset=opset),
        input=TensorSpec(name=INPUT_NAME, shape=spec),
        output=TensorSpec(name=OUTPUT_NAME, shape=spec),
        preprocess=preprocess,
        ssim=ssim,
        score=score,
        thresholds=thresholds or provisional_thresholds(sha),
        training=training or {},
        created=utc_now(),
    )


def write_model_dir(
    model: ConvAutoencoder,
    model_dir: str | Path,
    samples: np.ndarray,
    *,
    name: str,
    preprocess: PreprocessSpec,
    ssim: SsimSpec = SsimSpec(),
    score: ScoreSpec = ScoreSpec(),
    training: dict | None = None,
    opset: int = OPSET,
) -> tuple[Manifest, ParityReport]:
    """Export, check parity on `samples` (float32 NCHW, >= 2 items to exercise the dynamic batch) and write
    the manifest with provisional (uncalibrated) thresholds. Returns the manifest and the parity report."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, model_dir / ONNX_FILE, opset=opset)
    parity = check_parity(model, onnx_path, samples)
    facts = dict(training or {})
    facts["export"] = {
        "exporter": EXPORTER,
        "torch": torch.__version__,
        "opset": opset,
        "parity": parity.as_dict(),
        "exported_at": utc_now(),
    }
    manifest = build_manifest(
        model, onnx_path, name=name, preprocess=preprocess, ssim=ssim, score=score, training=facts, opset=opset
    )
    manifest.write(model_dir)
    return manifest, parity
