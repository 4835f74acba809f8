"""The training loop: Adam on a weighted L2 loss (optionally mixed with a Gaussian-SSIM loss), a fixed iteration
count and/or a time budget, reproducible seeds, progress on stderr (a progress bar on a terminal, plus a line every
`log_every` iterations) and checkpoints.

Loss per batch, with per-pixel weight w (raised inside the synthetic defects) and reconstruction r of
the clean target t:

    l2   = sum(w * (r - t)^2) / sum(w)                        (mean over channels)
    ssim = sum(w * (1 - SSIM(r, t))) / sum(w)                 (Gaussian window, the daemon's size and sigma)
    loss = (1 - ssim_weight) * l2 + ssim_weight * ssim

The learning rate follows a cosine from `lr` down to `lr * min_lr_ratio` over the run; where a time budget is set,
progress is the larger of the iteration fraction and the time fraction. With `stop_loss` set (fine-tuning, seed
002: see inspectd/training/finetune.py), training also stops once the mean of the last `stop_window` batch losses is
at or
below it.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspectd.training.data import TrainingSet
from inspectd.training.model import ConvAutoencoder, ModelConfig

CHECKPOINT_NAME = "checkpoint.pt"


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of writing (not the one at import time)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())


class ProgressStream(Protocol):
    """Where progress goes: a text stream (a file, sys.stderr, a StringIO)."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


STDERR: ProgressStream = _CurrentStderr()  # the default progress stream; pass log=None to train silently


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 3000  # optimiser steps; training stops at whichever of iterations / minutes comes first
    minutes: float | None = None  # wall-clock budget; None = no limit
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    ssim_weight: float = 0.5  # 0 = pure weighted L2
    ssim_size: int = 11
    ssim_sigma: float = 1.5
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None = all cores
    log_every: int = 50
    checkpoint_every: int = 500  # 0 = only at the end
    final_loss_window: int = 50  # the reported final loss is the mean of the last this many batch losses
    stop_loss: float | None = None  # stop once the mean of the last stop_window batch losses is <= this (None = never)
    stop_window: int = 10

    def __post_init__(self) -> None:
        if self.iterations < 1:
            msg = f"iterations must be >= 1, got {self.iterations}"
            raise ValueError(msg)
        if self.minutes is not None and not self.minutes > 0:
            msg = f"minutes must be > 0 (or None for no budget), got {self.minutes}"
            raise ValueError(msg)
        if self.batch_size < 1:
            msg = f"batch_size must be >= 1, got {self.batch_size}"
            raise ValueError(msg)
        if not 0.0 <= self.ssim_weight <= 1.0:
            msg = f"ssim_weight must be within [0, 1], got {self.ssim_weight}"
            raise ValueError(msg)
        if self.stop_loss is not None and not self.stop_loss >= 0:
            msg = f"stop_loss must be >= 0 (or None), got {self.stop_loss}"
            raise ValueError(msg)
        if not 1 <= self.stop_window <= self.final_loss_window:
            msg = f"stop_window must be within [1, final_loss_window={self.final_loss_window}], got {self.stop_window}"
            raise ValueError(msg)
        if self.ssim_size % 2 != 1 or self.ssim_size < 3:
            msg = f"ssim_size must be odd and >= 3, got {self.ssim_size}"
            raise ValueError(msg)


@dataclass
class TrainResult:
    final_loss: float  # mean of the last `final_loss_window` batch losses
    iterations: int  # optimiser steps done in total (including resumed ones)
    seconds: float  # wall time of this run
    stopped_by: str  # "iterations", "time" or "loss" (stop_loss reached)
    checkpoint: Path | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> int:
    n = threads if threads and threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    i = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(i**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(
    a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, k1: float = 0.01, k2: float = 0.03
) -> torch.Tensor:
    """Per-pixel SSIM (N x C x H x W) of images in [0, 1] with a separable window, reflected borders."""
    c = a.shape[1]
    k = window.numel()
    wh = window.view(1, 1, 1, k).repeat(c, 1, 1, 1)
    wv = window.view(1, 1, k, 1).repeat(c, 1, 1, 1)
    pad = k // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(F.conv2d(x, wh, groups=c), wv, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a * mu_a
    sbb = blur(b * b) - mu_b * mu_b
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = k1**2, k2**2
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


class ReconstructionLoss(nn.Module):
    def __init__(self, ssim_weight: float, ssim_size: int = 11, ssim_sigma: float = 1.5) -> None:
        super().__init__()
        self.ssim_weight = float(ssim_weight)
        self.register_buffer("window", gaussian_window(ssim_size, ssim_sigma))

    def forward(self, recon: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        wsum = weight.sum()
        l2 = (weight * (recon - target).pow(2).mean(dim=1, keepdim=True)).sum() / wsum
        if self.ssim_weight == 0.0:
            return l2
        window: torch.Tensor = self.window  # type: ignore[assignment]  # a registered buffer
        dssim = (1.0 - ssim_map(recon, target, window)).mean(dim=1, keepdim=True)
        ssim_term = (weight * dssim).sum() / wsum
        return (1.0 - self.ssim_weight) * l2 + self.ssim_weight * ssim_term


def save_checkpoint(
    path: Path, model: ConvAutoencoder, optimizer: torch.optim.Optimizer, iteration: int, cfg: TrainConfig, loss: float
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model_config": model.config.as_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "train_config": asdict(cfg),
            "loss": loss,
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def model_from_checkpoint(path: str | Path) -> ConvAutoencoder:
    ckpt = load_checkpoint(path)
    model = ConvAutoencoder(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


class _Progress:
    """Training's log lines and, on a terminal, a one-line progress bar below them (iterations or time, whichever
    is nearer to done)."""

    def __init__(self, log: ProgressStream | None, iterations: int, budget_s: float | None) -> None:
        self.log, self.iterations, self.budget_s = log, iterations, budget_s
        self.tty = bool(log is not None and getattr(log, "isatty", lambda: False)())
        self.bar_shown = 0.0  # when the bar was last drawn (0: not on screen)

    def say(self, text: str) -> None:
        if self.log is None:
            return
        if self.bar_shown:
            self.log.write("\r\033[K")  # clear the bar's line, print, let the bar redraw below
            self.bar_shown = 0.0
        print(text, file=self.log, flush=True)

    def done_fraction(self, it: int, elapsed: float) -> float:
        frac = it / self.iterations
        if self.budget_s is not None:
            frac = max(frac, elapsed / self.budget_s)
        return min(frac, 1.0)

    def bar(self, it: int, loss: float, elapsed: float) -> None:
        now = time.monotonic()
        if self.log is None or not self.tty or now - self.bar_shown < 0.25:
            return
        frac = self.done_fraction(it, elapsed)
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        filled = int(30 * frac)
        self.log.write(
            f"\rtrain [{'#' * filled}{'.' * (30 - filled)}] {frac:4.0%}  it {it}  loss {loss:.4f}  "
            f"{elapsed:.0f} s, eta {eta:.0f} s"
        )
        self.log.flush()
        self.bar_shown = now

    def close(self) -> None:
        if self.bar_shown:
            self.say("")


def cosine_lr(cfg: TrainConfig, progress: float) -> float:
    """The learning rate at `progress` (0..1) of the run: cosine from cfg.lr down to cfg.lr * cfg.min_lr_ratio."""
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _resume_from(path: str | Path, model: ConvAutoencoder, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """Load a checkpoint into model and optimizer; returns its iteration and its loss."""
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return int(ckpt["iteration"]), float(ckpt.get("loss", float("nan")))


def _loss_reached(cfg: TrainConfig, trained: int, recent: list[float]) -> bool:
    return (
        cfg.stop_loss is not None
        and trained >= cfg.stop_window
        and float(np.mean(recent[-cfg.stop_window :])) <= cfg.stop_loss
    )


def train(
    model: ConvAutoencoder,
    data: TrainingSet,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    log: ProgressStream | None = STDERR,
) -> TrainResult:
    """Train `model` in place on batches from `data`; returns the final loss and where the checkpoint is."""
    seed_everything(cfg.seed)
    threads = set_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    loss_fn = ReconstructionLoss(cfg.ssim_weight, cfg.ssim_size, cfg.ssim_sigma)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_it = 0
    resumed_loss = float("nan")  # reported if nothing is left to train
    if resume is not None:
        start_it, resumed_loss = _resume_from(resume, model, optimizer)
        # a resumed run continues the random stream from a new point instead of replaying the first batches
        rng = np.random.default_rng([cfg.seed, start_it])
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    budget_s = cfg.minutes * 60.0 if cfg.minutes is not None else None
    progress = _Progress(log, cfg.iterations, budget_s)
    progress.say(
        f"train: {len(data)} images, input {data.geometry.height}x{data.geometry.width} {data.geometry.color}, "
        f"batch {cfg.batch_size}, iterations {cfg.iterations}"
        + (f", budget {cfg.minutes:g} min" if budget_s else "")
        + f", threads {threads}, seed {cfg.seed}"
        + (f", resumed at {start_it}" if start_it else "")
    )
    model.train()
    recent: list[float] = []
    t0 = time.monotonic()
    it = start_it
    stopped_by = "iterations"
    loss_value = float("nan")
    while it < cfg.iterations:
        elapsed = time.monotonic() - t0
        if budget_s is not None and elapsed >= budget_s:
            stopped_by = "time"
            break
        lr = cosine_lr(cfg, progress.done_fraction(it, elapsed))
        for group in optimizer.param_groups:
            group["lr"] = lr

        batch = data.sample(rng, cfg.batch_size)
        recon = model(torch.from_numpy(batch.inputs))
        loss = loss_fn(recon, torch.from_numpy(batch.targets), torch.from_numpy(batch.weights))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        it += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            msg = f"training diverged at iteration {it} (loss {loss_value}); lower the learning rate (now {lr:g})"
            raise FloatingPointError(msg)
        recent.append(loss_value)
        del recent[: -cfg.final_loss_window]
        progress.bar(it, loss_value, time.monotonic() - t0)

        if cfg.log_every and (it % cfg.log_every == 0 or it == cfg.iterations):
            rate = (it - start_it) / max(time.monotonic() - t0, 1e-9)
            progress.say(
                f"train: it {it}/{cfg.iterations}  loss {loss_value:.5f}  avg{len(recent)} {np.mean(recent):.5f}  "
                f"lr {lr:.2e}  {rate:.2f} it/s  {time.monotonic() - t0:.0f} s"
            )
        if ckpt_path is not None and cfg.checkpoint_every and it % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt_path, model, optimizer, it, cfg, loss_value)
        if _loss_reached(cfg, it - start_it, recent):
            stopped_by = "loss"
            break

    model.eval()
    progress.close()
    final = float(np.mean(recent)) if recent else (loss_value if it > start_it else resumed_loss)
    if ckpt_path is not None and it > start_it:
        save_checkpoint(ckpt_path, model, optimizer, it, cfg, final)
    seconds = time.monotonic() - t0
    progress.say(f"train: done, {it} iterations in {seconds:.1f} s (stopped by {stopped_by}), final loss {final:.5f}")
    return TrainResult(final_loss=final, iterations=it, seconds=seconds, stopped_by=stopped_by, checkpoint=ckpt_path)
