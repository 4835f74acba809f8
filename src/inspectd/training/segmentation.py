"""A supervised defect segmenter on the pretrained EfficientNet-Lite0 encoder: the network of the label checkers
(`label train-checker --encoder efficientnet-lite0`) and of the daemon's `classifier` kind (`train-supervised`).

Encoder: Lite0's stages at strides 4, 8 and 16 (24, 40 and 112 channels; backbone.py), ImageNet weights, frozen
(eval mode, no gradients), so their features can be computed once per image and cached for training (segtrain.py).
Decoder (light, trained): a top-down path as in a feature pyramid: 1x1 lateral convolutions to `width` channels,
bilinear 2x upsampling and a 3x3 convolution + BatchNorm + ReLU per level down to stride 4, then, with 8 channels,
to stride 2, where a small branch on the image itself (2x average-pooled, one 3x3 convolution) adds the fine detail
that the encoder's strides lose.
Two heads with sigmoid outputs, as the scratch checker's (labelling/checker.py):
- "defect_map" (N, 1, H, W): per-pixel defect probability (the stride-2 logits, bilinear to the input);
- "defect_prob" (N, 1, 1, 1): image-level probability, from the stride-16 features' global maximum and the map's
  maximum logit.
The whole network, encoder included, is what is exported to ONNX: input "image" N x 1 x H x W grey in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as tf

from inspectd.training.backbone import Stages, load_lite0

ENCODERS = ("efficientnet-lite0",)
STRIDES = (4, 8, 16)
FINE = 8  # channels of the stride-2 level


@dataclass(frozen=True)
class SegConfig:
    height: int = 256
    width: int = 256
    encoder: str = "efficientnet-lite0"
    width_decoder: int = 32  # channels of the decoder's levels
    image_pool: str = "max"  # kept for CheckerConfig's interface: the image head max-pools (same on any input)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            msg = f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}"
            raise ValueError(msg)
        if self.height % 32 or self.width % 32 or min(self.height, self.width) < 64:
            msg = f"input {self.height}x{self.width} must be a multiple of 32 and at least 64 (the encoder's stride)"
            raise ValueError(msg)
        if self.width_decoder < 4:
            msg = f"width_decoder must be >= 4, got {self.width_decoder}"
            raise ValueError(msg)

    def as_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """Cached or live encoder features (+ the image) -> (pixel logits N,1,H,W; image logits N,1)."""

    def __init__(self, channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(_conv(width, width) for _ in channels[:-1])
        self.reduce = nn.Conv2d(width, FINE, 1)  # few channels at stride 2: that level costs the most per channel
        self.image_branch = _conv(1, FINE)
        self.fine = _conv(2 * FINE, FINE)
        self.head = nn.Conv2d(FINE, 1, 1)
        self.image_head = nn.Linear(channels[-1] + 1, 1)

    def forward(
        self, feats: list[torch.Tensor], image: torch.Tensor, *, full: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """full=False leaves the pixel logits at stride 2 (training computes its loss there); the image head reads
        their maximum at stride 2 either way."""
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            x = tf.interpolate(x, size=feats[i].shape[2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](x + self.lateral[i](feats[i]))
        half = tf.avg_pool2d(image, 2)
        x = tf.interpolate(self.reduce(x), size=half.shape[2:], mode="bilinear", align_corners=False)
        x = self.fine(torch.cat([x, self.image_branch(half)], dim=1))
        logits = self.head(x)
        peak = torch.amax(logits, dim=(2, 3))  # at stride 2 whether or not the map goes on to the input's size
        if full:
            logits = tf.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=False)
        pooled = torch.amax(feats[-1], dim=(2, 3))
        return logits, self.image_head(torch.cat([pooled, peak], dim=1))


class SegmentationNet(nn.Module):
    """Frozen pretrained encoder + trainable decoder; forward(x) -> (defect map, image probability)."""

    def __init__(self, config: SegConfig = SegConfig(), *, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = Stages(load_lite0(pretrained=pretrained), STRIDES)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.decoder = Decoder(self.encoder.channels, config.width_decoder)

    def train(self, mode: bool = True) -> SegmentationNet:
        super().train(mode)
        self.encoder.eval()  # frozen: its BatchNorm statistics stay ImageNet's
        return self

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.encoder(x)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(self.encoder(x), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixel, image = self.logits(x)
        return torch.sigmoid(pixel), torch.sigmoid(image).reshape(-1, 1, 1, 1)

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return batch, 1, self.config.height, self.config.width
