"""The training loop: it learns, it is reproducible, it checkpoints and resumes."""

from __future__ import annotations

import numpy as np
import torch

from inspectd.training.data import InputGeometry, TrainingSet
from inspectd.training.model import ConvAutoencoder, ModelConfig
from inspectd.training.train import (
    ReconstructionLoss,
    TrainConfig,
    load_checkpoint,
    model_from_checkpoint,
    ssim_map,
    train,
)
from tests.training.conftest import stripes

TINY = ModelConfig(height=32, width=32, channels=1, base_width=8, max_width=16, latent_channels=8, depth=2)


def _data() -> TrainingSet:
    return TrainingSet(stripes(16), InputGeometry(height=32, width=32), defect_prob=0.5)


def _loss_on(model: ConvAutoencoder, data: TrainingSet) -> float:
    batch = data.sample(np.random.default_rng(123), 16)
    loss_fn = ReconstructionLoss(0.5)
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(batch.inputs))
        return float(loss_fn(out, torch.from_numpy(batch.targets), torch.from_numpy(batch.weights)))


def test_a_few_seconds_of_training_lowers_the_loss():
    data = _data()
    torch.manual_seed(0)
    model = ConvAutoencoder(TINY)
    model.eval()
    before = _loss_on(model, data)
    result = train(model, data, TrainConfig(iterations=80, batch_size=8, seed=0, log_every=0, threads=2), log=None)
    after = _loss_on(model, data)
    assert result.iterations == 80 and np.isfinite(result.final_loss)
    assert after < 0.7 * before


def test_the_same_seed_gives_the_same_model():
    def run() -> dict:
        torch.manual_seed(1)
        model = ConvAutoencoder(TINY)
        train(model, _data(), TrainConfig(iterations=5, batch_size=4, seed=3, log_every=0, threads=1), log=None)
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_budget_stops_training_early():
    model = ConvAutoencoder(TINY)
    cfg = TrainConfig(iterations=100000, minutes=0.02, batch_size=4, seed=0, log_every=0, threads=1)
    result = train(model, _data(), cfg, log=None)
    assert result.stopped_by == "time" and result.iterations < 100000


def test_checkpoints_hold_model_optimizer_and_iteration_and_training_resumes_from_them(tmp_path):
    model = ConvAutoencoder(TINY)
    cfg = TrainConfig(iterations=6, batch_size=4, seed=0, log_every=0, threads=1, checkpoint_every=3)
    result = train(model, _data(), cfg, checkpoint_dir=tmp_path, log=None)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["iteration"] == 6 and "state" in ckpt["optimizer"] and ckpt["model_config"]["depth"] == 2
    restored = model_from_checkpoint(result.checkpoint)
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in model.state_dict().items())
    more = train(
        ConvAutoencoder(TINY),
        _data(),
        TrainConfig(iterations=9, batch_size=4, seed=0, log_every=0, threads=1),
        checkpoint_dir=tmp_path / "b",
        resume=result.checkpoint,
        log=None,
    )
    assert more.iterations == 9


def test_resuming_a_finished_run_reports_the_checkpoints_loss_not_nan(tmp_path):
    """A run whose export failed after training is finished by resuming from its last checkpoint: nothing is left
    to train, and the manifest must still get the real final loss."""
    cfg = TrainConfig(iterations=4, batch_size=4, seed=0, log_every=0, threads=1)
    done = train(ConvAutoencoder(TINY), _data(), cfg, checkpoint_dir=tmp_path, log=None)
    again = train(ConvAutoencoder(TINY), _data(), cfg, checkpoint_dir=tmp_path / "b", resume=done.checkpoint, log=None)
    assert again.iterations == 4 and again.final_loss == done.final_loss


def test_progress_lines_go_to_the_log_stream(capsys):
    import sys

    train(
        ConvAutoencoder(TINY), _data(), TrainConfig(iterations=4, batch_size=2, log_every=2, threads=1), log=sys.stderr
    )
    err = capsys.readouterr().err
    assert "it 2/4" in err and "it 4/4" in err and "final loss" in err


def test_torch_ssim_matches_the_daemon_ssim_kernel():
    from inspectd.inspection.ssim import SsimKernel

    rng = np.random.default_rng(0)
    a = rng.random((40, 40)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    from inspectd.training.train import gaussian_window

    ours = ssim_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], gaussian_window(11, 1.5))[0, 0]
    theirs = SsimKernel(window="gaussian", size=11, sigma=1.5).ssim(a, b)
    # identical away from the border (the loss reflects the border slightly differently)
    np.testing.assert_allclose(ours.numpy()[6:-6, 6:-6], theirs[6:-6, 6:-6], atol=1e-4)
