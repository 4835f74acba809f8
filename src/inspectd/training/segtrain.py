"""Training the segmenter's pixel head (segmentation.py) on cached encoder features, by sampling pixels.

The encoder is frozen, so each image's encoder features are the same at every step: they are computed once
(`encode_all`, float16, at each stage's own stride) and only the head trains. The head classifies each stride-2
pixel from its own hypercolumn vector, so a training step does not need whole images: it draws `batch_size` images
(by `weights`) and `points` pixels from each — a third on labelled defect pixels, a third on a band just around
them (where a label's border is decided), a third anywhere; on a defect-free image half anywhere and, once mined,
half on its hard negatives (`hard_every`: every so many steps the head's map of `hard_images` defect-free images is
computed and their 2 % most defect-like pixels kept; the supervised stage uses it, good parts' edges and scratches
being what a classifier trained on defects mistakes for one) — gathers their
hypercolumns (bilinear, exactly as the exported network upsamples, read at the stride-2 pixel centres only) and
takes one step of pixel BCE against the mask area-resized to stride 2 (a soft target). PixelNet (Bansal et al.
2017) showed such sampling trains as well as whole images; here it makes a step a few matrix products instead of
a dozen small convolutions, about two orders of magnitude less CPU per labelled pixel.

Then the image head (two weights) is fitted on whole training images: logistic regression of "the label has a
region" on the map's maximum logit. The learning rate warms up over 20 steps, then follows a cosine to zero over the
iterations or the time budget, whichever ends first.
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

BAND_PX = 4  # stride-2 pixels around a defect that count as its border band


@dataclass(frozen=True)
class DecoderSettings:
    iterations: int = 1500
    minutes: float | None = None
    batch_size: int = 32  # images per step
    points: int = 192  # pixels per image per step
    lr: float = 3e-3
    seed: int = 0
    threads: int = 0
    hard_every: int = 0  # every this many steps, re-mine hard negatives on defect-free images (0 = never)
    hard_images: int = 64  # defect-free images mined each time

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.points < 3:
            msg = (
                f"iterations and batch_size must be >= 1 and points >= 3, got {self.iterations}, "
                f"{self.batch_size}, {self.points}"
            )
            raise ValueError(msg)


@dataclass
class Cached:
    """Images, their encoder features and labels at the segmenter's input, ready for head training."""

    x: np.ndarray  # N,1,H,W float16 in [0, 1]
    feats: list[np.ndarray]  # per encoder stride: N,C,h,w float16
    masks: np.ndarray  # N,1,H/2,W/2 float16 soft targets at stride 2
    labels: np.ndarray  # N float32: 1 where the label has any region

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: Sequence[int] | np.ndarray) -> Cached:
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
    net: SegmentationNet, x: np.ndarray, masks: np.ndarray, *, batch: int = 16, log: Callable[[str], None] | None = None
) -> Cached:
    """Run the frozen encoder once over x (N,1,H,W float32) and masks (N,1,H,W in [0, 1])."""
    feats: list[list[np.ndarray]] = []
    t0 = time.monotonic()
    net.eval()
    for i in range(0, len(x), batch):
        out = net.encode(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32)))
        feats.append([f.numpy().astype(np.float16) for f in out])
        if log and (i // batch) % 10 == 0:
            log(f"  encoded {min(i + batch, len(x))}/{len(x)} images ({time.monotonic() - t0:.0f}s)")
    h, w = x.shape[2] // 2, x.shape[3] // 2
    half = np.stack([cv2.resize(m[0].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for m in masks])
    return Cached(
        x.astype(np.float16),
        [np.concatenate([b[k] for b in feats]) for k in range(len(feats[0]))],
        np.clip(half, 0, 1)[:, None].astype(np.float16),
        (masks.reshape(len(masks), -1).max(axis=1) > 0.25).astype(np.float32),
    )


class _Sampler:
    """Per image: flat stride-2 indices of its defect pixels and of the band around them."""

    def __init__(self, data: Cached) -> None:
        self.h, self.w = data.masks.shape[2:]
        kernel = np.ones((2 * BAND_PX + 1, 2 * BAND_PX + 1), np.uint8)
        self.defect, self.band = [], []
        self.hard: dict[int, np.ndarray] = {}  # defect-free image -> flat indices the head finds most defect-like
        for m in data.masks[:, 0]:
            d = (m.astype(np.float32) > 0.5).astype(np.uint8)
            band = cv2.dilate(d, kernel) & (1 - d) if d.any() else d
            self.defect.append(np.flatnonzero(d))
            self.band.append(np.flatnonzero(band))

    def points(self, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
        parts = [p for p in (self.defect[i], self.band[i], self.hard.get(i, ())) if len(p)]
        k = n // 3 if parts else 0
        chosen = [p[rng.integers(0, len(p), k)] for p in parts]
        rest = n - sum(len(c) for c in chosen)
        chosen.append(rng.integers(0, self.h * self.w, rest))
        return np.concatenate(chosen)


def _bilinear(f: np.ndarray, img: np.ndarray, ys: np.ndarray, xs: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Features f (N,C,h,w) at stride-2 pixel centres (ys, xs: B x P) of images img (B): bilinear, as
    interpolate(mode="bilinear", align_corners=False) upsamples to the stride-2 grid (hw); B x P x C float32."""
    h, w = f.shape[2:]
    if (h, w) == hw:
        return f[img[:, None], :, ys, xs].astype(np.float32)
    sy = np.clip((ys + 0.5) * (h / hw[0]) - 0.5, 0, None)
    sx = np.clip((xs + 0.5) * (w / hw[1]) - 0.5, 0, None)
    y0, x0 = np.minimum(sy.astype(np.int64), h - 1), np.minimum(sx.astype(np.int64), w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    b = img[:, None]

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return f[b, :, yy, xx].astype(np.float32)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def _gather(data: Cached, idx: np.ndarray, flat: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hypercolumn vectors B*P x C, soft targets B*P) of stride-2 pixels `flat` (B x P) of images `idx`."""
    ys, xs = np.divmod(flat, hw[1])
    cols = [_bilinear(f, idx, ys, xs, hw) for f in data.feats]
    # the 2x average-pooled image at those pixels
    x = data.x[:, 0]
    b = idx[:, None]
    half = (
        x[b, 2 * ys, 2 * xs].astype(np.float32)
        + x[b, 2 * ys + 1, 2 * xs]
        + x[b, 2 * ys, 2 * xs + 1]
        + x[b, 2 * ys + 1, 2 * xs + 1]
    ) / 4
    cols.append(half[..., None])
    v = np.concatenate(cols, axis=2).reshape(-1, sum(c.shape[2] for c in cols))
    target = data.masks[b, 0, ys, xs].astype(np.float32).reshape(-1)
    return torch.from_numpy(v), torch.from_numpy(target)


def _mine(net: SegmentationNet, data: Cached, sampler: _Sampler, settings: DecoderSettings, rng) -> None:
    """Hard negatives: on `hard_images` defect-free images, the 2 % of stride-2 pixels with the highest logits."""
    clean = np.flatnonzero(data.labels == 0)
    if not len(clean):
        return
    pick = np.sort(rng.choice(clean, size=min(settings.hard_images, len(clean)), replace=False))
    logits = half_logits(net, data.subset(pick)).reshape(len(pick), -1)
    k = max(1, logits.shape[1] // 50)
    sampler.hard = {int(i): np.argpartition(-row, k)[:k] for i, row in zip(pick, logits, strict=True)}
    net.train()


def train_decoder(
    net: SegmentationNet,
    data: Cached,
    settings: DecoderSettings,
    *,
    weights: np.ndarray | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[SegmentationNet, float, int]:
    """Train net's pixel head on sampled pixels, then fit its image head; returns (net in eval mode, final loss,
    steps). `weights`: each image's probability of being drawn into a step (default uniform)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    head = net.decoder
    opt = torch.optim.Adam(head.mlp.parameters(), lr=settings.lr)
    sampler = _Sampler(data)
    hw = (sampler.h, sampler.w)
    budget = None if settings.minutes is None else settings.minutes * 60
    t0, loss_value, step = time.monotonic(), float("nan"), 0
    recent: list[float] = []
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
        if settings.hard_every and step % settings.hard_every == 0:
            _mine(net, data, sampler, settings, rng)
        flat = np.stack([sampler.points(int(i), settings.points, rng) for i in idx])
        v, target = _gather(data, idx, flat, hw)
        loss = tf.binary_cross_entropy_with_logits(head.vectors(v), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = [*recent[-49:], float(loss.item())]
        loss_value = float(np.mean(recent))
        if log and (step % 250 == 0 or step == 1):
            log(f"  step {step}/{settings.iterations} loss {loss_value:.4f} ({time.monotonic() - t0:.0f}s)")
    fit_image_head(net, data, weights=weights, rng=rng)
    return net.eval(), loss_value, step


def half_logits(net: SegmentationNet, data: Cached, batch: int = 8) -> np.ndarray:
    """The pixel head's stride-2 logits N,1,H/2,W/2 of cached images (what the exported model computes)."""
    from inspectd.training.segmentation import hypercolumn

    out = []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(data), batch):
            sl = slice(i, i + batch)
            x = torch.from_numpy(data.x[sl].astype(np.float32))
            col = hypercolumn([torch.from_numpy(f[sl].astype(np.float32)) for f in data.feats], x)
            out.append(net.decoder.mlp(col).numpy())
    return np.concatenate(out)


def fit_image_head(
    net: SegmentationNet, data: Cached, *, weights: np.ndarray | None, rng: np.random.Generator, most: int = 400
) -> None:
    """Logistic regression of the image label on the map's maximum logit, on up to `most` training images (drawn as
    training draws them)."""
    n = min(most, len(data))
    idx = np.sort(rng.choice(len(data), size=n, replace=False, p=weights))
    peaks = torch.from_numpy(half_logits(net, data.subset(idx)).reshape(n, -1).max(axis=1)).float()[:, None]
    y = torch.from_numpy(data.labels[idx])[:, None]
    lin = net.decoder.image_head
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(0.0)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = tf.binary_cross_entropy_with_logits(lin(peaks), y)
        loss.backward()
        return loss

    opt.step(closure)


def predict_cached(net: SegmentationNet, data: Cached, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(maps N,1,H,W, image probabilities N) of cached images: what the exported model gives for them."""
    logits = half_logits(net, data, batch)
    h, w = data.x.shape[2:]
    with torch.no_grad():
        t = torch.from_numpy(logits)
        full = torch.sigmoid(tf.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)).numpy()
        image = torch.sigmoid(net.decoder.image_head(t.flatten(1).amax(dim=1, keepdim=True))).numpy().reshape(-1)
    return full, image
