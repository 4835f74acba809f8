"""The label checker: a small supervised segmentation network, and its export to a model directory.

Layout ("convolution, pooling, activation, batch norm"): a U-Net-like stack. Encoder: per level one 3x3
convolution + BatchNorm + ReLU, then 2x2 max pooling; a dilated 3x3 bottleneck widens the context. Decoder: bilinear
2x upsampling, concatenation with the encoder level's features, 3x3 convolution + BatchNorm + ReLU. Two heads with
sigmoid outputs:

- "defect_map" (N, 1, H, W): per-pixel defect probability;
- "defect_prob" (N, 1, 1, 1): image-level defect probability, from the bottleneck's global maximum (or average,
  `image_pool`; the maximum is the same on a training crop and on the whole input) and the map's global
  maximum logit (kept 4-D so it is a TensorSpec like every other output).

Export: opset 17, dynamic batch, TorchScript exporter (as inspectd/training/onnx_export.py, for the same reasons),
parity of
onnxruntime vs PyTorch <= 1e-4 on both outputs, manifest kind "classifier" whose `output` is the map; the image
output's name, the fold the checker trained on and the image ids of that fold are in `training["checker"]`.
Thresholds: pixel = the map probability that makes a predicted region (chosen on the training fold),
min_region_area = the area threshold of the missed-label rule (15 px).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from inspectd.core.manifest import Manifest, OnnxSpec, PreprocessSpec, TensorSpec, Thresholds, sha256_file
from inspectd.training.onnx_export import (
    EXPORTER,
    OPSET,
    PARITY_TOLERANCE,
    ParityReport,
    check_parity,
    export_onnx,
    utc_now,
)
from inspectd.training.segmentation import SegmentationNet

INPUT_NAME = "image"
MAP_OUTPUT = "defect_map"
PROB_OUTPUT = "defect_prob"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class CheckerConfig:
    height: int = 128
    width: int = 128
    base_width: int = 12  # channels of the first level, doubled per level
    depth: int = 3  # pooling levels: the bottleneck is (H / 2^depth) x (W / 2^depth)
    image_pool: str = "max"  # how the image head pools the bottleneck: "max" or "mean" (see CheckerNet)

    def __post_init__(self) -> None:
        step = 2**self.depth
        if self.depth < 1 or self.height % step or self.width % step:
            msg = f"input {self.height}x{self.width} must be a multiple of 2^depth = {step} (depth {self.depth} >= 1)"
            raise ValueError(msg)
        if self.image_pool not in ("mean", "max"):
            msg = f"image_pool must be 'mean' or 'max', got {self.image_pool!r}"
            raise ValueError(msg)
        if self.base_width < 1:
            msg = f"base_width must be >= 1, got {self.base_width}"
            raise ValueError(msg)

    def as_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CheckerNet(nn.Module):
    def __init__(self, config: CheckerConfig = CheckerConfig()) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_width * 2**i for i in range(config.depth)]
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(_block(cin, cin, dilation=2), _block(cin, cin))
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(_block(cin + w, w))
            cin = w
        self.head = nn.Conv2d(cin, 1, 1)
        self.image_head = nn.Linear(widths[-1] + 1, 1)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel logits N,1,H,W; image logits N,1) for inputs N,1,H,W in [0, 1]."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        # "max" answers "is there a defect anywhere" the same on a training crop and on the whole input; a mean
        # over a whole input that is larger than the crops is diluted by the extra clean area
        pooled = torch.amax(x, dim=(2, 3)) if self.config.image_pool == "max" else x.mean(dim=(2, 3))
        for block, skip in zip(self.up, reversed(skips), strict=False):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        pixel = self.head(x)
        peak = torch.amax(pixel, dim=(2, 3))
        image = self.image_head(torch.cat([pooled, peak], dim=1))
        return pixel, image

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixel, image = self.logits(x)
        return torch.sigmoid(pixel), torch.sigmoid(image).reshape(-1, 1, 1, 1)

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return batch, 1, self.config.height, self.config.width


def export_checker_onnx(model: CheckerNet | SegmentationNet, path: str | Path, *, opset: int = OPSET) -> Path:
    return export_onnx(model, path, opset=opset, output_names=(MAP_OUTPUT, PROB_OUTPUT))


def check_checker_parity(
    model: CheckerNet | SegmentationNet,
    onnx_path: str | Path,
    samples: np.ndarray,
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """onnxruntime vs PyTorch on both outputs at batch 1 and the full batch; ParityError above `tolerance`."""
    return check_parity(model, onnx_path, samples, tolerance=tolerance, output_names=(MAP_OUTPUT, PROB_OUTPUT))


def write_checker_dir(
    model: CheckerNet | SegmentationNet,
    model_dir: str | Path,
    samples: np.ndarray,
    *,
    name: str,
    pixel_threshold: float = 0.5,
    area_threshold: int = 15,
    training: dict | None = None,
) -> tuple[Manifest, ParityReport]:
    """Export, check parity on `samples` (float32 N,1,H,W in [0, 1], N >= 2) and write manifest.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_checker_onnx(model, model_dir / ONNX_FILE)
    parity = check_checker_parity(model, onnx_path, samples)
    sha = sha256_file(onnx_path)
    c = model.config
    facts = dict(training or {})
    checker = dict(facts.get("checker", {}))
    checker.update({"image_output": PROB_OUTPUT, "map_output": MAP_OUTPUT, "config": c.as_dict()})
    facts["checker"] = checker
    facts["export"] = {
        "exporter": EXPORTER,
        "torch": torch.__version__,
        "opset": OPSET,
        "parity": parity.as_dict(),
        "exported_at": utc_now(),
    }
    manifest = Manifest(
        name=name,
        kind="classifier",
        onnx=OnnxSpec(file=onnx_path.name, sha256=sha, opset=OPSET),
        input=TensorSpec(name=INPUT_NAME, shape=(None, 1, c.height, c.width)),
        output=TensorSpec(name=MAP_OUTPUT, shape=(None, 1, c.height, c.width)),
        preprocess=PreprocessSpec(color="gray", mode="resize", interpolation="area"),
        thresholds=Thresholds(
            pixel=float(pixel_threshold),
            min_region_area=max(1, int(area_threshold)),
            model_sha256=sha,
            method="checker: pixel probability chosen for best mean IoU on the training fold",
            calibrated_at=utc_now(),
        ),
        training=facts,
        created=utc_now(),
    )
    manifest.write(model_dir)
    return manifest, parity


def best_pixel_threshold(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> float:
    """The map probability with the best mean IoU over the defective images (0.5 if there are none)."""
    sel = labels > 0
    if not sel.any():
        return 0.5
    truth = masks[sel] > 0.5
    best, best_t = -1.0, 0.5
    for t in np.arange(0.2, 0.96, 0.05):
        pred = maps[sel] > t
        inter = (pred & truth).sum(axis=(1, 2, 3))
        union = (pred | truth).sum(axis=(1, 2, 3))
        score = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
        if score > best:
            best, best_t = score, float(round(t, 2))
    return best_t
