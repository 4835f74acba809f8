"""The convolutional autoencoder: a strided-conv encoder extracts features, a transposed-conv decoder
rebuilds the image from them.

The layout follows Bergmann et al. ("Improving unsupervised defect segmentation by applying structural similarity
to autoencoders", 2018): pairs of a 4x4 stride-2 convolution and a 3x3 convolution, LeakyReLU(0.2), mirrored in the
decoder, a sigmoid on the output so the reconstruction lies in [0, 1] like the input (uint8 / 255). Unlike the paper,
every hidden convolution is followed by BatchNorm (the plain stack sits at a flat grey output for hundreds of steps,
far too long for a CPU budget; in eval mode the BatchNorm folds into the convolution), and the bottleneck stays
spatial (H/2^depth x W/2^depth x latent_channels): with repair training on synthetic defects the model learns
to *repair* defects, so it does not need a 1x1 bottleneck to avoid copying them, and a spatial code keeps fine
texture that a 1x1 code blurs away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Geometry and width of the autoencoder. Stored in checkpoints and the manifest's training facts."""

    height: int = 128
    width: int = 128
    channels: int = 1  # 1 = gray, 3 = BGR
    base_width: int = 32  # channels of the first stage; doubled per stage up to max_width
    max_width: int = 128
    latent_channels: int = 64  # channels of the spatial bottleneck
    depth: int = 4  # number of stride-2 stages: the bottleneck is (H / 2^depth) x (W / 2^depth)
    batch_norm: bool = True  # BatchNorm after every hidden convolution (without it training stalls at a flat output)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            msg = f"channels must be 1 (gray) or 3 (BGR), got {self.channels}"
            raise ValueError(msg)
        if self.depth < 1:
            msg = f"depth must be >= 1, got {self.depth}"
            raise ValueError(msg)
        step = 2**self.depth
        if self.height % step or self.width % step or self.height < step or self.width < step:
            msg = (
                f"input {self.height}x{self.width} must be a positive multiple of 2^depth = {step} in both "
                f"dimensions (depth {self.depth}); choose another input size or depth"
            )
            raise ValueError(msg)
        if min(self.base_width, self.max_width, self.latent_channels) < 1:
            msg = "base_width, max_width and latent_channels must be >= 1"
            raise ValueError(msg)

    def stage_widths(self) -> list[int]:
        return [min(self.base_width * 2**i, self.max_width) for i in range(self.depth)]

    def as_dict(self) -> dict:
        return asdict(self)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def _block(conv: type[nn.Module], c_in: int, c_out: int, k: int, stride: int, pad: int, bn: bool) -> list[nn.Module]:
    """conv -> (BatchNorm) -> LeakyReLU; in eval mode onnxruntime folds the BatchNorm into the convolution."""
    layers: list[nn.Module] = [conv(c_in, c_out, k, stride=stride, padding=pad, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    return [*layers, _act()]


class ConvAutoencoder(nn.Module):
    """NCHW float in [0, 1] -> reconstruction of the same shape in [0, 1]."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        widths = cfg.stage_widths()
        bn = cfg.batch_norm

        enc: list[nn.Module] = []
        ends: list[int] = []
        c_in = cfg.channels
        for w in widths:
            enc += _block(nn.Conv2d, c_in, w, 4, 2, 1, bn) + _block(nn.Conv2d, w, w, 3, 1, 1, bn)
            ends.append(len(enc))
            c_in = w
        enc += [nn.Conv2d(c_in, cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        # how many encoder layers produce each stride-2 stage's output, then the bottleneck (feature probes read these)
        self.encoder_stage_ends: tuple[int, ...] = (*ends, len(enc))

        dec: list[nn.Module] = _block(nn.Conv2d, cfg.latent_channels, c_in, 1, 1, 0, bn)
        for i in reversed(range(cfg.depth)):
            w_out = widths[i - 1] if i > 0 else widths[0]
            dec += _block(nn.Conv2d, c_in, c_in, 3, 1, 1, bn) + _block(nn.ConvTranspose2d, c_in, w_out, 4, 2, 1, bn)
            c_in = w_out
        dec += [nn.Conv2d(c_in, cfg.channels, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        c = self.config
        return (batch, c.channels, c.height, c.width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
