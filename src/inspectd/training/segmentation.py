"""A supervised defect segmenter on the pretrained EfficientNet-Lite0 encoder: the network of the label checkers
(`label train-checker --encoder efficientnet-lite0`) and of the daemon's `classifier` kind (`train-supervised`).

Encoder: Lite0's stages at strides 2, 4, 8 and 16 (16, 24, 40 and 112 channels; backbone.py), ImageNet weights,
frozen (eval mode, no gradients), so their features are computed once per image and cached for training
(segtrain.py).

Decoder (light, trained): a per-pixel MLP on the *hypercolumn* (Hariharan et al. 2015; PixelNet, Bansal et al.
2017): at every pixel of the stride-2 grid, the four stages' features bilinearly upsampled there, plus the image's
grey value, go through 1x1 convolutions 193 -> 64 -> 32 -> 1 (ReLU between). Every pixel is classified from the
same vector, so training can sample pixels instead of whole images (segtrain.py): a step costs a few matrix
products, which is what makes training on a 2-core PC fit its budget. Two outputs with sigmoids, as the scratch
checker's (labelling/checker.py):
- "defect_map" (N, 1, H, W): per-pixel defect probability (the stride-2 logits, bilinear to the input);
- "defect_prob" (N, 1, 1, 1): image-level probability, a logistic function (two weights) of the map's maximum logit,
  fitted on whole training images after the pixel MLP.
The whole network, encoder included, is what is exported to ONNX: input "image" N x 1 x H x W grey in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as tf

from inspectd.training.backbone import Stages, load_lite0

ENCODERS = ("efficientnet-lite0",)
STRIDES = (2, 4, 8, 16)


@dataclass(frozen=True)
class SegConfig:
    height: int = 256
    width: int = 256
    encoder: str = "efficientnet-lite0"
    hidden: int = 64  # the MLP's first layer; its second has half as many
    image_pool: str = "max"  # the image output reads the map's maximum (the same on any input size)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            msg = f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}"
            raise ValueError(msg)
        if self.height % 32 or self.width % 32 or min(self.height, self.width) < 64:
            msg = f"input {self.height}x{self.width} must be a multiple of 32 and at least 64 (the encoder's stride)"
            raise ValueError(msg)
        if self.hidden < 4:
            msg = f"hidden must be >= 4, got {self.hidden}"
            raise ValueError(msg)

    def as_dict(self) -> dict:
        return asdict(self)


def hypercolumn(feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """Every stage's features bilinearly upsampled to the stride-2 grid, with the 2x-pooled image: N x C x H/2 x W/2."""
    half = tf.avg_pool2d(image, 2)
    size = half.shape[2:]
    ups = [
        f if f.shape[2:] == size else tf.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats
    ]
    return torch.cat([*ups, half], dim=1)


class PixelHead(nn.Module):
    """The per-pixel MLP (as 1x1 convolutions, or as linear layers on sampled vectors) and the image head."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden // 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden // 2, 1, 1),
        )
        self.image_head = nn.Linear(1, 1)

    def vectors(self, v: torch.Tensor) -> torch.Tensor:
        """Logits of sampled hypercolumn vectors, N x C -> N (the 1x1 convolutions as matrix products)."""
        x = v
        for layer in self.mlp:
            if isinstance(layer, nn.Conv2d):
                x = tf.linear(x, layer.weight.flatten(1), layer.bias)
            else:
                x = layer(x)
        return x[:, 0]

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel logits N,1,H,W at the input's size; image logits N,1)."""
        logits = self.mlp(hypercolumn(feats, image))
        peak = torch.amax(logits, dim=(2, 3))
        full = tf.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=False)
        return full, self.image_head(peak)


class SegmentationNet(nn.Module):
    """Frozen pretrained encoder + trainable pixel head; forward(x) -> (defect map, image probability)."""

    def __init__(self, config: SegConfig = SegConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder = Stages(load_lite0((config.height, config.width)), STRIDES)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.channels = sum(self.encoder.channels) + 1
        self.decoder = PixelHead(self.channels, config.hidden)

    def new_decoder(self) -> PixelHead:
        self.decoder = PixelHead(self.channels, self.config.hidden)
        return self.decoder

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
