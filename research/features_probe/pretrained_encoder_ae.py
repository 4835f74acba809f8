"""Does a frozen EfficientNet-Lite encoder with a trained decoder reconstruct magnetic tile's grain better than the
autoencoder trained from scratch? (issue 22, "the pretrained encoder inside the autoencoder"; bounded CPU).

Encoder: lite0 stem + stages 0-2 (stride 8, 40 channels), frozen. Decoder: three (bilinear x2, 3x3 conv, ReLU)
steps to one channel, sigmoid. Trained with the repair task (half the crops carry a synthetic defect from
inspectd.training.data, target the clean crop) on 64x64 native crops of the exposure-normalised good images, L2 +
(1 - Gaussian SSIM) loss, for --minutes. Then both models reconstruct the same held-out good tiles (the autoencoder
through its ONNX graph): mean Gaussian SSIM (11 taps, sigma 1.5) of tile and reconstruction, and the share of the
tiles' high-frequency energy (image minus its 5x5 box blur) the reconstruction keeps -- "grain".

    python research/features_probe/pretrained_encoder_ae.py --ae runs/mt-ae --minutes 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from inspectd.core.manifest import load_manifest
from inspectd.inspection.preprocess import normalize_exposure
from inspectd.inspection.ssim import SsimKernel
from inspectd.training import data as D
from inspectd.training import features as feat
from inspectd.training.workflow import _split


class PretrainedAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        ext = feat.FeatureExtractor("lite0", (2,), (64, 64), pool=1)
        self.encoder = ext
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        layers: list[nn.Module] = []
        c = ext.dim
        for out in (64, 32, 16):
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c, out, 3, padding=1),
            ]
            layers += [nn.ReLU()]
            c = out
        layers += [nn.Conv2d(c, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.encoder(u)
        return torch.sigmoid(self.decoder(f))


def crops(frames: list[np.ndarray], n: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    out = []
    for _ in range(n):
        f = frames[int(rng.integers(len(frames)))]
        y = int(rng.integers(0, max(1, f.shape[0] - size + 1)))
        x = int(rng.integers(0, max(1, f.shape[1] - size + 1)))
        c = f[y : y + size, x : x + size]
        if c.shape != (size, size):
            c = cv2.copyMakeBorder(c, 0, size - c.shape[0], 0, size - c.shape[1], cv2.BORDER_REFLECT_101)
        out.append(c)
    return np.stack(out).astype(np.float32)[:, None] / 255.0


def grain(a: np.ndarray) -> np.ndarray:
    return a - cv2.blur(a, (5, 5))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/magnetic-tile"))
    p.add_argument("--ae", type=Path, required=True, help="the autoencoder model directory to compare with")
    p.add_argument("--minutes", type=float, default=4.0)
    args = p.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = load_manifest(args.ae).preprocess
    frames = [normalize_exposure(f, spec) for f in D.load_folder(args.data, "gray")]
    kept, held = _split(frames, 0.2, 0)
    from inspectd.training.defects import add_defect  # repair training's synthetic defects

    model = PretrainedAE()
    opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-3)
    t0, it = time.monotonic(), 0
    while time.monotonic() - t0 < args.minutes * 60:
        clean = crops(kept, 16, rng)
        noisy = clean.copy()
        for i in range(0, len(noisy), 2):
            img = (noisy[i, 0] * 255).astype(np.uint8)
            painted, _mask, _ = add_defect(img, rng)
            noisy[i, 0] = painted.astype(np.float32) / 255.0
        out = model(torch.from_numpy(noisy))
        loss = F.mse_loss(out, torch.from_numpy(clean))
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
    tiles = crops(held, 256, np.random.default_rng(1))
    with torch.no_grad():
        rec_pre = model(torch.from_numpy(tiles)).numpy()
    m = load_manifest(args.ae)
    sess = ort.InferenceSession(str(args.ae / m.onnx.file), providers=["CPUExecutionProvider"])
    h, w = m.input.hw
    rec_ae = np.concatenate([sess.run(None, {m.input.name: tiles[i : i + 1, :, :h, :w]})[0] for i in range(len(tiles))])
    ssim = SsimKernel("gaussian", 11, 1.5)

    def stats(rec: np.ndarray) -> dict:
        s, g = [], []
        for t, r in zip(tiles[:, 0, :h, :w], rec[:, 0, :h, :w], strict=True):
            r = np.clip(r, 0, 1).astype(np.float32)
            s.append(1.0 - float(ssim.difference(t, r).mean()))
            gt, gr = grain(t), grain(r)
            g.append(float((gr * gt).sum() / max((gt * gt).sum(), 1e-12)))
        return {"mean_ssim": round(float(np.mean(s)), 4), "grain_kept": round(float(np.mean(g)), 3)}

    print(
        json.dumps(
            {
                "pretrained_encoder_decoder": {"iterations": it, "final_loss": float(loss), **stats(rec_pre)},
                "autoencoder": {"model": str(args.ae), **stats(rec_ae)},
                "tiles": len(tiles),
            }
        )
    )


if __name__ == "__main__":
    main()
