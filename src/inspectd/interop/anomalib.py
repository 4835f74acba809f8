"""An anomalib ONNX export -> an inspectd model directory of kind `anomalib` (offline; needs the `onnx` package).

anomalib (>= 2.0) exports one graph that holds its whole inference: the pre-processor (resize, ImageNet
normalisation) on an RGB input in [0, 1], the model, and the post-processor (min-max normalisation of score and map
around its thresholds, so that 0.5 is anomalib's threshold, clamped to [0, 1]; then `pred_label = pred_score > t`
and `pred_mask = anomaly_map > t`). It writes no metadata file. This module:

1. finds the export's `model.onnx` (the file itself, or `weights/onnx/model.onnx` under the export root) and
   refuses what it cannot run the same way: an anomalib < 2.0 export (a `metadata.json` beside it, normalisation
   outside the graph), a graph without `anomaly_map` + `pred_score`, or without the thresholded outputs
   (`pred_label`, `pred_mask`: exported without anomalib's post-processor, so its map is not normalised);
2. evaluates the thresholds the graph compares against (the second input of the `Greater` nodes that make
   pred_label and pred_mask), removes those two outputs and their nodes from the graph, and puts the thresholds
   in the manifest (thresholds.image, thresholds.pixel), where inspectd's calibration can change them;
3. fixes the input's height and width (from the graph, or --input-size for a dynamic export), stores every
   tensor inside the one `model.onnx` (anomalib's export keeps weights in `model.onnx.data`; the manifest's sha256
   then covers all of it), checks that the new graph gives the same map and score as the export, and writes the
   manifest. The daemon resizes each frame to the input size itself (area interpolation), so the graph's own resize
   does nothing there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspectd.core.errors import ModelError
from inspectd.core.manifest import (
    AnomalibSpec,
    Manifest,
    OnnxSpec,
    PreprocessSpec,
    TensorSpec,
    Thresholds,
    sha256_file,
)

MAP_OUTPUT, SCORE_OUTPUT = "anomaly_map", "pred_score"
LABEL_OUTPUT, MASK_OUTPUT = "pred_label", "pred_mask"
_THRESHOLDED = {LABEL_OUTPUT: SCORE_OUTPUT, MASK_OUTPUT: MAP_OUTPUT}


@dataclass(frozen=True)
class Imported:
    model_dir: Path
    manifest: Manifest
    parity_max_abs: float  # the rewritten graph against the export, on a random input


def find_export(path: Path) -> Path:
    """The model.onnx of an anomalib export (the file, or an export root / its weights/onnx folder)."""
    path = Path(path)
    if path.is_file():
        onnx_path = path
    else:
        candidates = [path / "weights" / "onnx" / "model.onnx", path / "onnx" / "model.onnx", path / "model.onnx"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            msg = f"{path}: no anomalib ONNX export here (expected weights/onnx/model.onnx from engine.export)"
            raise ModelError(msg)
        onnx_path = found[0]
    for folder in {onnx_path.parent, onnx_path.parent.parent, onnx_path.parent.parent.parent}:
        if (folder / "metadata.json").is_file():
            msg = (
                f"{folder / 'metadata.json'}: an anomalib < 2.0 export (normalisation and thresholds outside the "
                "graph) is not supported; re-export the model with anomalib >= 2.0"
            )
            raise ModelError(msg)
    return onnx_path


def _dims(value_info) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in value_info.type.tensor_type.shape.dim
    ]


def import_export(
    export: Path,
    out: Path,
    *,
    name: str | None = None,
    input_size: tuple[int, int] | None = None,
    anomalib_version: str = "",
) -> Imported:
    import onnx

    src = find_export(export)
    try:
        model = onnx.load(str(src))  # loads model.onnx.data beside it too
    except Exception as exc:  # a truncated or foreign file
        msg = f"{src}: not a readable ONNX file ({exc})"
        raise ModelError(msg) from exc
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1:
        msg = f"{src}: {len(inputs)} graph inputs {[i.name for i in inputs]}; an anomalib export has one image input"
        raise ModelError(msg)
    image_in = inputs[0]
    dims = _dims(image_in)
    if len(dims) != 4 or dims[1] != 3 or image_in.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        msg = f"{src}: input {image_in.name!r} is {dims}; expected a float RGB batch N x 3 x H x W"
        raise ModelError(msg)
    hw = _input_hw(src, dims, input_size)
    outputs = {o.name: o for o in graph.output}
    missing = [n for n in (MAP_OUTPUT, SCORE_OUTPUT, LABEL_OUTPUT, MASK_OUTPUT) if n not in outputs]
    if missing:
        why = (
            "exported without anomalib's post-processor (its map is then not normalised); export with the default "
            "PostProcessor"
            if MAP_OUTPUT in outputs and SCORE_OUTPUT in outputs
            else "expected anomalib >= 2.0's outputs anomaly_map, pred_score, pred_label, pred_mask"
        )
        msg = f"{src}: outputs {sorted(outputs)} lack {missing}: {why}"
        raise ModelError(msg)
    thresholds = _graph_thresholds(model, src, image_in.name, hw)
    _strip_thresholded(model)
    for axis, size in ((2, hw[0]), (3, hw[1])):
        dim = image_in.type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_value = size

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_out = out / "model.onnx"
    tmp = out / ".model.onnx.tmp"
    onnx.save(model, str(tmp), save_as_external_data=False)
    tmp.replace(onnx_out)
    map_dims = _dims(outputs[MAP_OUTPUT])
    map_hw = (map_dims[2] or hw[0], map_dims[3] or hw[1]) if len(map_dims) == 4 else hw
    parity, map_shape = _parity(src, onnx_out, image_in.name, hw)
    sha = sha256_file(onnx_out)
    manifest = Manifest(
        name=name or src.parent.parent.parent.name or "anomalib",
        kind="anomalib",
        onnx=OnnxSpec(sha256=sha, opset=max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))),
        input=TensorSpec(name=image_in.name, shape=(None, 3, *hw)),
        output=TensorSpec(name=MAP_OUTPUT, shape=(None, 1, *(map_shape or map_hw))),
        preprocess=PreprocessSpec(color="rgb", divide=255.0, mean=0.0, std=1.0, mode="resize", interpolation="area"),
        thresholds=Thresholds(
            pixel=min(1.0, max(0.0, thresholds[MASK_OUTPUT])),
            min_region_area=1,
            image=thresholds[LABEL_OUTPUT],
            model_sha256=sha,
            method="anomalib's own thresholds, moved out of the graph (pred_label, pred_mask)",
            calibrated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ),
        anomalib=AnomalibSpec(
            score_output=SCORE_OUTPUT,
            graph_image_threshold=thresholds[LABEL_OUTPUT],
            graph_pixel_threshold=thresholds[MASK_OUTPUT],
            removed_outputs=(LABEL_OUTPUT, MASK_OUTPUT),
            source=str(src),
            source_sha256=_sha256_export(src),
            anomalib_version=anomalib_version,
        ),
        training={"imported_from": str(src), "anomalib_version": anomalib_version or "not stated"},
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    manifest.write(out)
    return Imported(out, manifest, parity)


def _input_hw(src: Path, dims: list[int | None], input_size: tuple[int, int] | None) -> tuple[int, int]:
    graph_hw = (dims[2], dims[3])
    if input_size is None:
        if None in graph_hw:
            msg = f"{src}: the input's height and width are dynamic; give the size the model expects (--input-size H W)"
            raise ModelError(msg)
        return int(dims[2]), int(dims[3])  # type: ignore[arg-type]
    for got, want in zip(graph_hw, input_size, strict=True):
        if got is not None and got != want:
            graph_size = f"{graph_hw[0]}x{graph_hw[1]}"
            msg = f"{src}: the graph's input is {graph_size}, not --input-size {input_size[0]}x{input_size[1]}"
            raise ModelError(msg)
    return int(input_size[0]), int(input_size[1])


def _graph_thresholds(model, src: Path, input_name: str, hw: tuple[int, int]) -> dict[str, float]:
    """{pred_label: t_image, pred_mask: t_pixel}: the constants the graph compares score and map with."""
    import onnx
    import onnxruntime as ort

    producers = {o: n for n in model.graph.node for o in n.output}
    wanted: dict[str, str] = {}
    for out_name, compared in _THRESHOLDED.items():
        node = producers.get(out_name)
        if node is None or node.op_type not in ("Greater", "GreaterOrEqual") or node.input[0] != compared:
            what = "no node" if node is None else f"{node.op_type}({', '.join(node.input)})"
            msg = f"{src}: {out_name} is made by {what}; expected Greater({compared}, threshold) as anomalib exports it"
            raise ModelError(msg)
        wanted[out_name] = node.input[1]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for tensor in set(wanted.values()) - known:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = sorted(set(wanted.values()))
    values = session.run(names, {input_name: np.zeros((1, 3, *hw), np.float32)})
    by_name = dict(zip(names, values, strict=True))
    out = {}
    for out_name, tensor in wanted.items():
        v = np.asarray(by_name[tensor], dtype=np.float64)
        if v.size != 1 or not np.isfinite(v).all():
            msg = f"{src}: the threshold of {out_name} ({tensor}) is {v.ravel()[:4].tolist()}; expected one number"
            raise ModelError(msg)
        out[out_name] = float(v.ravel()[0])
    return out


def _strip_thresholded(model) -> None:
    """Remove pred_label and pred_mask (outputs and the nodes that make them) from the graph."""
    drop = set(_THRESHOLDED)
    keep_outputs = [o for o in model.graph.output if o.name not in drop]
    del model.graph.output[:]
    model.graph.output.extend(keep_outputs)
    keep_nodes = [n for n in model.graph.node if not set(n.output) & drop]
    del model.graph.node[:]
    model.graph.node.extend(keep_nodes)


def _parity(src: Path, written: Path, input_name: str, hw: tuple[int, int]) -> tuple[float, tuple[int, int] | None]:
    """Max |difference| of map and score between the export and the rewritten graph on a random image (must be 0
    up to float noise), and the map's height and width."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(
        [MAP_OUTPUT, SCORE_OUTPUT], {input_name: x}
    )
    b = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"]).run(
        [MAP_OUTPUT, SCORE_OUTPUT], {input_name: x}
    )
    diff = max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(a, b, strict=True))
    if diff > 1e-5:
        msg = f"{written}: the rewritten graph differs from the export by {diff:g} (expected the same outputs)"
        raise ModelError(msg)
    shape = np.asarray(a[0]).shape
    return diff, (int(shape[2]), int(shape[3])) if len(shape) == 4 and shape[1] == 1 else None


def _sha256_export(src: Path) -> str:
    """sha256 over the export's model.onnx and its external-data file (where there is one)."""
    h = hashlib.sha256()
    for part in (src, src.with_name(src.name + ".data")):
        if part.is_file():
            h.update(bytes.fromhex(sha256_file(part)))
    return h.hexdigest()
