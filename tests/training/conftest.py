"""Small builders for the export/ and calibration/ tests: tiny images, a tiny trained-and-exported model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export/ tests need the train extra (pip install -e '.[train]')")


def stripes(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """n uint8 gray images of a slanted stripe pattern with random phase and a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        img = 128 + 60 * np.sin((x + 0.5 * y) * (2 * np.pi / 8) + phase) + rng.normal(0, 2, (size, size))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 32x32 gray autoencoder, trained for a few iterations, exported with a provisional manifest."""
    from inspectd.core.manifest import PreprocessSpec
    from inspectd.training.data import InputGeometry, TrainingSet
    from inspectd.training.model import ConvAutoencoder, ModelConfig
    from inspectd.training.onnx_export import write_model_dir
    from inspectd.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_model")
    cfg = ModelConfig(height=32, width=32, channels=1, base_width=8, max_width=16, latent_channels=8, depth=2)
    torch.manual_seed(0)
    model = ConvAutoencoder(cfg)
    data = TrainingSet(stripes(16), InputGeometry(height=32, width=32))
    train(model, data, TrainConfig(iterations=40, batch_size=8, seed=0, log_every=0, threads=2), log=None)
    write_model_dir(
        model,
        out,
        data.plain_inputs(4),
        name="tiny",
        preprocess=PreprocessSpec(color="gray"),
        training={"data": "stripes", "command": "pytest fixture"},
    )
    return out
