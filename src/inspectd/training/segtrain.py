"""Training the segmenter's decoder (segmentation.py) on cached encoder features.

The encoder is frozen, so each image's encoder features are the same at every step: they are computed once
(`encode_all`, float16) and the decoder trains on them alone, which makes a step several times cheaper than running
the encoder (on a 2-core PC the decoder is the only part that trains). Augmentation: horizontal and vertical flips
applied to the image, its mask and its cached features together (a flip of the features stands in for the features
of the flipped image: the decoder learns not to care about orientation, which is what the flips are for).

Loss, as the scratch checker's (labelling/training.py): pixel BCE (positives weighted) + soft Dice on the map at
stride 2 against the mask area-resized there (a soft target), + BCE of the image-level probability (target: the
label has any region). The learning rate warms up over 20 steps, then follows a cosine to zero over the iterations
or the time budget, whichever ends first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.nn import functional as tf

from inspectd.training.segmentation import SegmentationNet


@dataclass(frozen=True)
class DecoderSettings:
    iterations: int = 600
    minutes: float | None = None
    batch_size: int = 16
    lr: float = 3e-3
    pos_weight: float = 1.0
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            msg = f"iterations and batch_size must be >= 1, got {self.iterations} and {self.batch_size}"
            raise ValueError(msg)


@dataclass
class Cached:
    """Images, their encoder features and labels at the segmenter's input, ready for decoder training."""

    x: np.ndarray  # N,1,H,W float16 in [0, 1]
    feats: list[np.ndarray]  # per encoder stride: N,C,h,w float16
    masks: np.ndarray  # N,1,H/2,W/2 float16 soft targets at stride 2
    labels: np.ndarray  # N float32: 1 where the label has any region

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: Sequence[int]) -> Cached:
        i = np.asarray(idx, dtype=np.int64)
        return Cached(self.x[i], [f[i] for f in self.feats], self.masks[i], self.labels[i])

    @staticmethod
    def concat(parts: Sequence[Cached]) -> Cached:
        return Cached(
            np.concatenate([p.x for p in parts]),
            [np.concatenate([p.feats[k] for p in parts]) for k in range(len(parts[0].feats))],
            np.concatenate([p.masks for p in parts]),
            np.concatenate([p.labels for p in parts]),
        )


def to_input(gray: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 grey image -> float32 H x W in [0, 1] at the segmenter's input (area interpolation, as the daemon)."""
    return cv2.resize(gray, (hw[1], hw[0]), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def soft_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """0/255 mask -> float32 H x W in [0, 1], area-resized (a defect smaller than a model pixel still counts)."""
    return np.clip(cv2.resize((mask > 0).astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_AREA), 0, 1)


def encode_all(
    net: SegmentationNet,
    x: np.ndarray,
    masks: np.ndarray,
    *,
    batch: int = 16,
    log: Callable[[str], None] | None = None,
) -> Cached:
    """Run the frozen encoder once over x (N,1,H,W float32) and masks (N,1,H,W in [0, 1])."""
    feats: list[list[np.ndarray]] = []
    t0 = time.monotonic()
    net.eval()
    for i in range(0, len(x), batch):
        out = net.encode(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32)))
        feats.append([f.numpy().astype(np.float16) for f in out])
        if log and (i // batch) % 20 == 0:
            log(f"  encoded {min(i + batch, len(x))}/{len(x)} images ({time.monotonic() - t0:.0f}s)")
    h, w = x.shape[2] // 2, x.shape[3] // 2
    half = np.stack([cv2.resize(m[0].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for m in masks])
    return Cached(
        x.astype(np.float16),
        [np.concatenate([b[k] for b in feats]) for k in range(len(feats[0]))],
        np.clip(half, 0, 1)[:, None].astype(np.float16),
        (masks.reshape(len(masks), -1).max(axis=1) > 0.25).astype(np.float32),
    )


def _loss(pixel: torch.Tensor, image: torch.Tensor, m: torch.Tensor, y: torch.Tensor, pos_weight: float):
    bce = tf.binary_cross_entropy_with_logits(pixel, m, pos_weight=torch.tensor(pos_weight))
    p = torch.sigmoid(pixel)
    dice = 1 - (2 * (p * m).sum() + 1) / (p.sum() + m.sum() + 1)
    return bce + dice + tf.binary_cross_entropy_with_logits(image[:, 0], y)


def _batch(data: Cached, idx: np.ndarray, rng: np.random.Generator):
    x = torch.from_numpy(data.x[idx].astype(np.float32))
    feats = [torch.from_numpy(f[idx].astype(np.float32)) for f in data.feats]
    m = torch.from_numpy(data.masks[idx].astype(np.float32))
    for dim in (3, 2):  # horizontal, vertical: image, mask and features together
        if rng.random() < 0.5:
            x, m, feats = x.flip(dim), m.flip(dim), [f.flip(dim) for f in feats]
    return feats, x, m, torch.from_numpy(data.labels[idx])


def train_decoder(
    net: SegmentationNet,
    data: Cached,
    settings: DecoderSettings,
    *,
    weights: np.ndarray | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[SegmentationNet, float, int]:
    """Train net's decoder on cached features; returns (net in eval mode, final loss, steps). `weights`: each
    image's probability of being drawn into a batch (default uniform)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    opt = torch.optim.Adam(net.decoder.parameters(), lr=settings.lr)
    budget = None if settings.minutes is None else settings.minutes * 60
    t0, loss_value, step = time.monotonic(), float("nan"), 0
    net.train()
    for step in range(1, settings.iterations + 1):
        elapsed = time.monotonic() - t0
        if budget is not None and elapsed >= budget and step > 1:
            if log:
                log(f"  time budget reached at step {step}")
            step -= 1
            break
        progress = min(1.0, max((step - 1) / settings.iterations, elapsed / budget if budget else 0.0))
        for group in opt.param_groups:
            group["lr"] = settings.lr * min(1.0, step / 20) * 0.5 * (1 + np.cos(np.pi * progress))
        idx = rng.choice(len(data), size=min(settings.batch_size, len(data)), replace=False, p=weights)
        feats, x, m, y = _batch(data, idx, rng)
        pixel, image = net.decoder(feats, x, full=False)
        loss = _loss(pixel, image, m, y, settings.pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss.item())
        if log and (step % 50 == 0 or step == 1):
            log(f"  step {step}/{settings.iterations} loss {loss_value:.4f} ({time.monotonic() - t0:.0f}s)")
    return net.eval(), loss_value, step


def predict_cached(net: SegmentationNet, data: Cached, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(maps N,1,H,W, image probabilities N) of cached images: what the exported model gives for them."""
    maps, probs = [], []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(data), batch):
            sl = slice(i, i + batch)
            x = torch.from_numpy(data.x[sl].astype(np.float32))
            pixel, image = net.decoder([torch.from_numpy(f[sl].astype(np.float32)) for f in data.feats], x)
            maps.append(torch.sigmoid(pixel).numpy())
            probs.append(torch.sigmoid(image).numpy().reshape(-1))
    return np.concatenate(maps), np.concatenate(probs)
