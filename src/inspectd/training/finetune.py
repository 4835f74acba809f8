"""Fine-tuning an existing model: continue from a parent model directory, stop at a loss threshold
chosen by the sample count.

- Weights come from the parent's own model.onnx, so any model directory can be continued and nothing beyond
  model.onnx + manifest.json is needed. The export folds most BatchNorms into their convolutions; the importer
  folds the remaining ones too and loads the result into the same architecture without BatchNorm (the manifest's
  `training.model` facts give the architecture). Then it checks that PyTorch reproduces the parent's ONNX output
  (max abs difference <= 1e-4): the fine-tune continues exactly the function the line runs, or refuses.
- Stop rule: training stops when the loss (mean of the last `stop_window` batches) is at or below a threshold that
  depends on the number of training samples. The standard table, the default: 100-500 samples -> 0.1-0.3,
  500-5000 -> 0.01-0.1, 5000-10000 -> 0.001-0.01. The bands meet at their ends, so the default is the line through
  (100, 0.3), (500, 0.1), (5000, 0.01), (10000, 0.001), interpolated in log(count) and log(threshold) and held
  flat beyond its ends: fewer samples, a higher threshold (less fitting of a small set). The iteration cap (and
  the optional time budget) still stops a run that never gets there. The values are in the units of
  inspectd/training/train.py's loss; `--loss-table` and `--loss-threshold` change them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inspectd.core.errors import ModelError
from inspectd.core.manifest import Manifest, load_manifest
from inspectd.training.model import ConvAutoencoder, ModelConfig

DEFAULT_LOSS_TABLE: tuple[tuple[int, float], ...] = ((100, 0.3), (500, 0.1), (5000, 0.01), (10000, 0.001))


def parse_loss_table(text: str) -> tuple[tuple[int, float], ...]:
    """'100:0.3,500:0.1,...' -> ((100, 0.3), (500, 0.1), ...); counts increasing, thresholds > 0."""
    try:
        points = tuple((int(c), float(t)) for c, t in (p.split(":") for p in text.replace(" ", "").split(",") if p))
    except ValueError:
        points = ()
    counts = [c for c, _ in points]
    if not points or counts != sorted(set(counts)) or min(counts) < 1 or min(t for _, t in points) <= 0:
        msg = f"expected a loss table like 100:0.3,500:0.1,5000:0.01 (increasing counts, thresholds > 0), got {text!r}"
        raise ValueError(msg)
    return points


def loss_threshold(samples: int, table: tuple[tuple[int, float], ...] = DEFAULT_LOSS_TABLE) -> float:
    """The stop threshold for a training set of `samples` images (log-log interpolation, flat beyond the ends)."""
    if samples <= table[0][0]:
        return table[0][1]
    if samples >= table[-1][0]:
        return table[-1][1]
    for (c0, t0), (c1, t1) in itertools.pairwise(table):
        if c0 <= samples <= c1:
            f = (math.log(samples) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return float(math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0))))
    raise AssertionError("unreachable: the table is sorted")


def stop_rule(
    samples: int, *, table: tuple[tuple[int, float], ...] | None = None, threshold: float | None = None
) -> dict:
    """The loss threshold for this run and how it was chosen (recorded in the manifest's training facts)."""
    if threshold is not None:
        return {"threshold": float(threshold), "sample_count": samples, "chosen_by": "--loss-threshold"}
    table = table or DEFAULT_LOSS_TABLE
    note = "" if table[0][0] <= samples <= table[-1][0] else " (outside the table: its nearest end)"
    return {
        "threshold": loss_threshold(samples, table),
        "sample_count": samples,
        "chosen_by": f"sample count{note}",
        "table": [list(p) for p in table],
    }


@dataclass(frozen=True)
class Parent:
    """A model directory to continue from: its manifest and its weights as a BatchNorm-free autoencoder."""

    path: Path
    manifest: Manifest
    model_config: ModelConfig
    state_dict: dict
    parity_max_abs_diff: float

    @property
    def sha256(self) -> str:
        return self.manifest.onnx.sha256

    def model(self) -> ConvAutoencoder:
        model = ConvAutoencoder(self.model_config)
        model.load_state_dict(self.state_dict)
        return model

    def facts(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path.resolve()),
            "name": m.name,
            "onnx_sha256": m.onnx.sha256,
            "final_loss": m.training.get("final_loss"),
            "sample_count": m.training.get("sample_count"),
            "weights": "imported from the parent's model.onnx (BatchNorm folded)",
            "import_parity_max_abs_diff": self.parity_max_abs_diff,
        }


def _onnx_convs(onnx_path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(op, weight, bias) of every Conv / ConvTranspose in graph order, a following BatchNormalization folded in."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # the exporter de-duplicates equal initializers through Identity / Constant nodes
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
        elif node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = []
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            if node.op_type == "BatchNormalization" and not any(
                p.op_type in ("Conv", "ConvTranspose") and p.output[0] == node.input[0] for p in graph.node
            ):
                raise ValueError("a BatchNormalization that does not follow a convolution cannot be imported")
            continue
        w = values[node.input[1]].astype(np.float32)
        out_ch = w.shape[0] if node.op_type == "Conv" else w.shape[1]
        b = (
            values[node.input[2]].astype(np.float32)
            if len(node.input) > 2 and node.input[2]
            else np.zeros(out_ch, np.float32)
        )
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "BatchNormalization":
            bn = after[0]
            gamma, beta, mean, var = (values[n].astype(np.float64) for n in bn.input[1:5])
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            scale = gamma / np.sqrt(var + eps)
            shape = (-1, 1, 1, 1) if node.op_type == "Conv" else (1, -1, 1, 1)
            w = (w * scale.reshape(shape)).astype(np.float32)
            b = ((b - mean) * scale + beta).astype(np.float32)
        convs.append((node.op_type, w, b))
    return convs


def load_parent(model_dir: str | Path) -> Parent:
    """Read a parent model directory; ValueError with a clear message when it cannot be continued."""
    from torch import nn

    from inspectd.training.onnx_export import ParityError, check_parity

    model_dir = Path(model_dir)
    try:
        manifest = load_manifest(model_dir)
    except ModelError as exc:
        raise ValueError(f"--init {model_dir}: {exc}") from exc
    if manifest.ensemble is not None:
        msg = (
            f"--init {model_dir} is an ensemble of {len(manifest.ensemble.members) + 1} models; fine-tune each "
            "member model directory on its own, then rebuild the ensemble (`inspectd ensemble`)"
        )
        raise ValueError(msg)
    arch = manifest.training.get("model")
    if manifest.kind != "autoencoder" or not isinstance(arch, dict):
        msg = (
            f"--init {model_dir}: the manifest has no training.model facts (the architecture); only "
            "autoencoders made by `inspectd train` can be continued"
        )
        raise ValueError(msg)
    try:
        config = ModelConfig(**{**arch, "batch_norm": False})
    except TypeError as exc:
        raise ValueError(f"--init {model_dir}: training.model does not describe an autoencoder: {exc}") from exc
    model = ConvAutoencoder(config)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    convs = _onnx_convs(model_dir / manifest.onnx.file)
    kinds = [("Conv" if isinstance(m, nn.Conv2d) else "ConvTranspose", tuple(m.weight.shape)) for m in layers]
    if kinds != [(op, w.shape) for op, w, _ in convs]:
        msg = f"--init {model_dir}: model.onnx does not have the layers its manifest's training.model describes"
        raise ValueError(msg)
    with torch.no_grad():
        for layer, (_, w, b) in zip(layers, convs, strict=False):
            layer.weight.copy_(torch.from_numpy(w))
            assert layer.bias is not None  # the exported convolutions all have a bias
            layer.bias.copy_(torch.from_numpy(b))
    model.eval()
    samples = np.random.default_rng(0).random(model.input_shape(2), dtype=np.float32)
    try:
        parity = check_parity(model, model_dir / manifest.onnx.file, samples)
    except ParityError as exc:
        raise ValueError(f"--init {model_dir}: the imported weights do not reproduce model.onnx: {exc}") from exc
    return Parent(model_dir, manifest, config, model.state_dict(), parity.max_abs_diff)
