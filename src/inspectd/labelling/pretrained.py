"""Checkers on the pretrained EfficientNet-Lite0 encoder (`label train-checker --encoder efficientnet-lite0`, the
default): the network is inspectd/training/segmentation.py's, trained by inspectd/training/segtrain.py.

The encoder is frozen and shared, so the features of every image are computed once, for all folds: each fold's
checker is a fresh pixel head trained on its fold's cached features (plus the known defect-free train/good images,
`good_share` of each batch, at most `max_good` of them, evenly spaced by name) and exported whole, encoder
included, with the same manifest, parity check and pixel-threshold rule as the scratch checkers
(labelling/checker.py, labelling/training.py). Folds train one after the other with all of torch's threads: a
step is small, and one process keeps the cache once in memory. `batch_size` is images per step (pixels sampled
from each: segtrain.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from inspectd.labelling.checker import best_pixel_threshold, write_checker_dir
from inspectd.labelling.dataset import LabelledImage, read_gray, read_mask
from inspectd.training.backbone import facts as backbone_facts
from inspectd.training.segmentation import SegConfig, SegmentationNet
from inspectd.training.segtrain import (
    Cached,
    DecoderSettings,
    encode_all,
    predict_cached,
    soft_mask,
    to_input,
    train_decoder,
)

Log = Callable[[str], None] | None


def load_items(items: Sequence[LabelledImage], hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(images N,1,H,W float32 in [0, 1], soft masks N,1,H,W) at the segmenter's input."""
    xs, ms = [], []
    for item in items:
        gray = read_gray(item.image_path)
        xs.append(to_input(gray, hw))
        ms.append(soft_mask(read_mask(item, gray.shape), hw))
    return np.stack(xs)[:, None], np.stack(ms)[:, None]


def spread(paths: Sequence[Path], n: int | None) -> list[Path]:
    """At most n of `paths`, evenly spaced (all when n is None or larger)."""
    paths = list(paths)
    if n is None or len(paths) <= n:
        return paths
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round()]


def train_pretrained_checkers(
    tasks: Sequence[tuple[int, Sequence[LabelledImage], list[str]]],
    out: Path,
    *,
    config: SegConfig,
    settings,
    facts_for: Callable[[int, list[str], dict], dict],
    area_threshold: int,
    goods: tuple[Sequence[Path], int | None] = ((), 300),
    log: Log = print,
) -> list[Path]:
    """Train and export checker_<k>/ for each (k, fold items, fold ids) task; returns the model dirs. `settings` is
    labelling.training.TrainSettings (iterations, minutes, batch_size, lr, pos_weight, seed, threads, good_share);
    `facts_for(k, ids, extra)` gives the manifest's training facts; goods = (known defect-free images, at most how
    many of them to use)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    hw = (config.height, config.width)
    net = SegmentationNet(config)
    items = {i.id: i for _, fold, _ in tasks for i in fold}
    order = sorted(items)
    t0 = time.monotonic()
    x, m = load_items([items[i] for i in order], hw)
    if log:
        log(f"encoding {len(order)} labelled images at {hw[1]}x{hw[0]} with the frozen {config.encoder} encoder")
    cache = encode_all(net, x, m, log=log)
    extra_good, max_good = goods
    chosen = spread(extra_good, max_good)
    good_cache = None
    if chosen:
        gx = np.stack([to_input(read_gray(p), hw) for p in chosen])[:, None]
        if log:
            log(f"encoding {len(chosen)} of {len(extra_good)} known defect-free images")
        good_cache = encode_all(net, gx, np.zeros_like(gx), log=log)
    if log:
        log(f"features cached in {time.monotonic() - t0:.0f}s")
    pos = {i: n for n, i in enumerate(order)}
    dirs = []
    for k, _fold, ids in tasks:
        say = None if log is None else (lambda msg, k=k: log(f"[checker {k}] {msg}"))
        idx = [pos[i] for i in ids]
        own = cache.subset(idx)
        data, weights = own, None
        if good_cache is not None:
            data = Cached.concat([own, good_cache])
            n, g = len(own), len(good_cache)
            weights = np.r_[np.full(n, (1 - settings.good_share) / n), np.full(g, settings.good_share / g)]
        torch.manual_seed(settings.seed + k)
        net.new_decoder()
        dec = DecoderSettings(
            iterations=settings.iterations,
            minutes=settings.minutes,
            batch_size=settings.batch_size,
            lr=settings.lr,
            seed=settings.seed + k,
        )
        if say:
            say(f"{len(idx)} images ({int(own.labels.sum())} labelled defective) + {len(chosen)} defect-free")
        net, final_loss, steps = train_decoder(net, data, dec, weights=weights, log=say)
        maps, _ = predict_cached(net, own)
        pixel = best_pixel_threshold(maps, m[idx], own.labels)
        extra = {"encoder": {**backbone_facts(), "frozen": True}, "decoder_steps": steps, "final_loss": final_loss}
        extra["extra_good"] = {
            "count": len(chosen),
            "of": len(extra_good),
            "dirs": sorted({str(Path(p).parent) for p in chosen}),
            "share": settings.good_share if chosen else 0.0,
        }
        d = out / f"checker_{k}"
        write_checker_dir(
            net,
            d,
            x[idx[: min(4, len(idx))]],
            name=f"checker_{k}",
            pixel_threshold=pixel,
            area_threshold=area_threshold,
            training=facts_for(k, ids, extra),
        )
        if say:
            say(f"wrote {d} (pixel threshold {pixel}, {steps} steps, final loss {final_loss:.4f})")
        dirs.append(d)
    return dirs
