"""ONNX export: parity with PyTorch, a truly dynamic batch, and a manifest the daemon accepts."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from inspectd.core.manifest import load_manifest
from inspectd.training.model import ConvAutoencoder, ModelConfig
from inspectd.training.onnx_export import INPUT_NAME, OUTPUT_NAME, ParityError, check_parity
from tests.training.conftest import stripes


def test_onnxruntime_matches_pytorch_within_1e4(tiny_model_dir):
    facts = load_manifest(tiny_model_dir).training["export"]
    assert facts["parity"]["max_abs_diff"] <= 1e-4
    assert facts["parity"]["batch_sizes"] == [1, 4]
    assert facts["opset"] >= 17


def test_the_exported_graph_has_a_dynamic_batch_dimension(tiny_model_dir):
    graph = onnx.load(str(tiny_model_dir / "model.onnx")).graph
    for value in (graph.input[0], graph.output[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value")
    sess = ort.InferenceSession(str(tiny_model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME]
    for n in (1, 4, 7):
        x = np.random.default_rng(n).random((n, 1, 32, 32), dtype=np.float32)
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        assert out.shape == (n, 1, 32, 32) and out.min() >= 0.0 and out.max() <= 1.0


def test_the_manifest_loads_and_its_model_runs_through_the_daemon_inspector(tiny_model_dir):
    from inspectd.inspection.inspector import Inspector

    m = load_manifest(tiny_model_dir)
    assert m.input.name == INPUT_NAME and m.output.name == OUTPUT_NAME
    assert m.input.shape == (None, 1, 32, 32) and m.output.shape == (None, 1, 32, 32)
    assert m.preprocess.divide == 255 and m.preprocess.interpolation == "area"
    assert (m.ssim.window, m.ssim.size, m.ssim.sigma) == ("gaussian", 11, 1.5)
    assert m.thresholds.model_sha256 == m.onnx.sha256
    assert m.training["data"] == "stripes" and m.training["export"]["torch"].startswith("2.13")
    inspector = Inspector.from_model_dir(tiny_model_dir, providers=("CPUExecutionProvider",))
    frame = stripes(1, size=64)[0]
    score = inspector.score_map(frame)
    assert score.shape == frame.shape and score.dtype == np.float32
    assert score.min() >= 0.0 and score.max() <= 2.0


def test_a_model_that_differs_from_the_onnx_file_fails_the_parity_check(tiny_model_dir):
    other = ConvAutoencoder(ModelConfig(height=32, width=32, base_width=8, max_width=16, latent_channels=8, depth=2))
    torch.manual_seed(99)
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        check_parity(other.eval(), tiny_model_dir / "model.onnx", x)
