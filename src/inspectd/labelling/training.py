"""`inspectd label train-checker`: train N checker models (inspectd/labelling/checker.py), one per disjoint fold, and
export
each to checkers/checker_<k>/ (model.onnx + manifest.json), plus checkers/folds.json.

Inputs are resized to the checker's input (area interpolation); masks are resized the same way and used as soft
targets, so a defect smaller than one model pixel still teaches something. Loss: pixel BCE (positives weighted)
+ soft Dice on the map + BCE on the image-level probability (target: the label has any region). Augmentation:
horizontal and vertical flips, and random crops (default 64 px, 35 % of them placed on a labelled defect pixel):
the network is fully convolutional, so it is trained on crops (4x cheaper per sample at 128 px) and run on whole
inputs. The learning rate warms up, then follows a cosine to zero over the iterations or the time budget,
whichever ends first. After training, the pixel threshold that gives the best mean IoU on the fold's own
defective images is stored as the manifest's pixel threshold. torch is imported here, never by check.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from inspectd.labelling.checker import CheckerConfig, CheckerNet, best_pixel_threshold, write_checker_dir
from inspectd.labelling.dataset import LabelledImage, read_gray, read_mask
from inspectd.labelling.folds import assign_folds
from inspectd.training.segmentation import SegConfig

FOLDS_FILE = "folds.json"


@dataclass(frozen=True)
class TrainSettings:
    iterations: int = 600
    minutes: float | None = None  # wall-clock budget per checker; stops at whichever comes first
    batch_size: int = 16
    lr: float = 3e-3
    pos_weight: float = 1.0
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    crop: int | None = 64  # train on random crops of this size; None = whole inputs
    defect_crop_prob: float = 0.35  # share of crops placed on a labelled defect pixel
    good_share: float = 0.3  # share of each batch drawn from the extra defect-free images (when there are any)
    max_good: int | None = 300  # pretrained encoder: at most this many extra defect-free images (None = all)

    def __post_init__(self) -> None:
        if self.crop is not None and self.crop < 8:
            msg = f"crop must be >= 8 input px (or None for whole inputs), got {self.crop}"
            raise ValueError(msg)
        if not 0.0 <= self.good_share < 1.0:
            msg = f"good_share must lie in [0, 1), got {self.good_share}"
            raise ValueError(msg)


def check_crop(crop: int | None, config: CheckerConfig) -> None:
    """ValueError unless the training crop (None = whole inputs) fits the checker's pooling levels."""
    if crop is not None and crop % 2**config.depth:
        msg = f"crop {crop} must be a multiple of 2^depth = {2**config.depth} input px"
        raise ValueError(msg)


def load_arrays(items: Sequence[LabelledImage], config: CheckerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images N,1,H,W in [0,1], soft masks N,1,H,W in [0,1], image labels N) at the checker's input size."""
    size = (config.width, config.height)
    xs, ms, ys = [], [], []
    for item in items:
        img = read_gray(item.image_path)
        mask = read_mask(item, img.shape)
        xs.append(cv2.resize(img, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
        ms.append(cv2.resize(mask.astype(np.float32) / 255.0, size, interpolation=cv2.INTER_AREA))
        ys.append(float(mask.any()))
    return np.stack(xs)[:, None], np.clip(np.stack(ms), 0, 1)[:, None], np.asarray(ys, np.float32)


def load_good_arrays(paths: Sequence[Path], config: CheckerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Known defect-free images (MVTec train/good) as (images, empty masks, zero labels) at the checker's input."""
    size = (config.width, config.height)
    xs = [cv2.resize(read_gray(p), size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0 for p in paths]
    x = np.stack(xs)[:, None]
    return x, np.zeros_like(x), np.zeros(len(xs), np.float32)


def _loss(model: CheckerNet, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, pos_weight: float) -> torch.Tensor:
    pixel, image = model.logits(x)
    bce = F.binary_cross_entropy_with_logits(pixel, m, pos_weight=torch.tensor(pos_weight))
    p = torch.sigmoid(pixel)
    inter = (p * m).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + m.sum() + 1)
    img = F.binary_cross_entropy_with_logits(image[:, 0], y)
    return bce + dice + img


def train_one(
    images: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    config: CheckerConfig,
    settings: TrainSettings,
    log: Callable[[str], None] | None = print,
    weights: np.ndarray | None = None,
) -> tuple[CheckerNet, float]:
    """Train one checker on the given arrays; returns (model in eval mode, final loss). `weights`: each image's
    probability of being drawn into a batch (default uniform)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = CheckerNet(config)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    h, w = images.shape[2:]
    crop = settings.crop if settings.crop and settings.crop < min(h, w) else None
    check_crop(crop, config)
    defect_pixels = [np.argwhere(m[0] > 0.25) for m in masks]
    budget = None if settings.minutes is None else settings.minutes * 60
    t0, loss_value, step = time.monotonic(), float("nan"), 0
    model.train()
    for step in range(1, settings.iterations + 1):
        elapsed = time.monotonic() - t0
        progress = min(1.0, max((step - 1) / settings.iterations, elapsed / budget if budget else 0.0))
        if budget is not None and elapsed >= budget and step > 1:
            if log:
                log(f"  time budget reached at step {step}")
            break
        warm = min(1.0, step / 20)
        for group in opt.param_groups:
            group["lr"] = settings.lr * warm * 0.5 * (1 + np.cos(np.pi * progress))
        idx = rng.choice(len(images), size=min(settings.batch_size, len(images)), replace=False, p=weights)
        if crop is None:
            x, m, y = images[idx], masks[idx], labels[idx]
        else:
            xs, ms = [], []
            for i in idx:
                pix = defect_pixels[i]
                if len(pix) and rng.random() < settings.defect_crop_prob:
                    cy, cx = pix[rng.integers(len(pix))]
                    top = int(np.clip(cy - rng.integers(0, crop), 0, h - crop))
                    left = int(np.clip(cx - rng.integers(0, crop), 0, w - crop))
                else:
                    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
                xs.append(images[i, :, top : top + crop, left : left + crop])
                ms.append(masks[i, :, top : top + crop, left : left + crop])
            x, m = np.stack(xs), np.stack(ms)
            y = (m.max(axis=(1, 2, 3)) > 0.25).astype(np.float32)
        xt, mt, yt = (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.ascontiguousarray(m)),
            torch.from_numpy(y),
        )
        if rng.random() < 0.5:
            xt, mt = xt.flip(3), mt.flip(3)
        if rng.random() < 0.5:
            xt, mt = xt.flip(2), mt.flip(2)
        loss = _loss(model, xt, mt, yt, settings.pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss.item())
        if log and (step % 100 == 0 or step == 1):
            log(f"  step {step}/{settings.iterations} loss {loss_value:.4f} ({time.monotonic() - t0:.0f}s)")
    return model.eval(), loss_value


def predict(model: CheckerNet, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    maps, probs = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            m, p = model(torch.from_numpy(images[i : i + batch]))
            maps.append(m.numpy())
            probs.append(p.numpy().reshape(-1))
    return np.concatenate(maps), np.concatenate(probs)


def _train_fold(
    k: int,
    fold_items: Sequence[LabelledImage],
    ids: list[str],
    out: Path,
    folds: int,
    config: CheckerConfig,
    settings: TrainSettings,
    data_root: str,
    area_threshold: int,
    log: Callable[[str], None] | None,
    extra_good: Sequence[Path] = (),
) -> Path:
    """Train, threshold and export the checker of fold k into out/checker_<k>/ (runs in a worker process when
    train_checkers has jobs > 1)."""
    say = None if log is None else (lambda msg: log(f"[checker {k}] {msg}"))
    images, masks, labels = load_arrays(fold_items, config)
    n = len(images)
    if say:
        extra = (
            f" + {len(extra_good)} extra defect-free ({settings.good_share:.0%} of each batch)" if extra_good else ""
        )
        say(f"{n} images ({int(labels.sum())} labelled defective){extra}")
    weights = None
    train_x, train_m, train_y = images, masks, labels
    if extra_good:
        gx, gm, gy = load_good_arrays(extra_good, config)
        train_x, train_m = np.concatenate([images, gx]), np.concatenate([masks, gm])
        train_y = np.concatenate([labels, gy])
        weights = np.r_[np.full(n, (1 - settings.good_share) / n), np.full(len(gx), settings.good_share / len(gx))]
    model, final_loss = train_one(train_x, train_m, train_y, config, settings, say, weights=weights)
    maps, _ = predict(model, images)
    pixel = best_pixel_threshold(maps, masks, labels)
    facts = {
        "data": data_root,
        "command": "inspectd label train-checker",
        "sample_count": len(ids),
        "defective_count": int(labels.sum()),
        "final_loss": final_loss,
        "settings": settings.__dict__,
        "checker": {"fold": k, "folds": folds, "members": ids},
        "extra_good": {
            "count": len(extra_good),
            "dirs": sorted({str(Path(p).parent) for p in extra_good}),
            "share": settings.good_share if extra_good else 0.0,
        },
    }
    d = out / f"checker_{k}"
    write_checker_dir(
        model,
        d,
        images[: min(4, len(images))],
        name=f"checker_{k}",
        pixel_threshold=pixel,
        area_threshold=area_threshold,
        training=facts,
    )
    if say:
        say(f"wrote {d} (pixel threshold {pixel}, final loss {final_loss:.4f})")
    return d


def _printer(msg: str) -> None:  # picklable log for worker processes
    print(msg, flush=True)


def _exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Worker initializer: end this worker as soon as the process that started it is gone. A parent stopped by
    SIGTERM or SIGKILL (systemd, `kill`, an OOM kill) cannot shut its pool down, and spawned workers would go on
    training, a full core each, for the rest of their budget on a PC that also runs the line."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def train_checkers(
    items: Sequence[LabelledImage],
    out: str | Path,
    *,
    folds: int,
    config: CheckerConfig | SegConfig = CheckerConfig(),
    settings: TrainSettings = TrainSettings(),
    data_root: str = "",
    area_threshold: int = 15,
    log: Callable[[str], None] | None = print,
    jobs: int = 1,
    extra_good: Sequence[Path] = (),
    exclude: Iterable[str] = (),
) -> list[Path]:
    """Train one checker per fold and write out/checker_<k>/ and out/folds.json; returns the model dirs.

    config: CheckerConfig trains the scratch network (checker.py); SegConfig the pretrained-encoder one
    (pretrained.py), which uses at most `settings.max_good` of extra_good and ignores jobs (its folds share one cache).

    exclude: image ids no checker trains on (the labels a previous check flagged, still in doubt): they are in no
    fold, so every checker checks them, and the folds are dealt from the other images. folds.json lists them.

    extra_good: known defect-free images that are never checked (an MVTec tree's train/good): every checker
    trains on all of them besides its fold, `settings.good_share` of each batch, so it learns what the clean
    surface looks like from many more images than the fold's few good ones.

    jobs > 1 trains up to that many folds at once, each in its own process (spawned, so torch's thread pools are
    not shared) with `settings.threads` threads (1 where it is 0): on a 2-core PC two folds train in the wall
    time of one. Each fold's result depends only on its data, the seed and the thread count, not on jobs. A
    failing fold fails the whole call (no partial checker set is returned); workers end when this process ends,
    however it is stopped (`_exit_with_parent`)."""
    out = Path(out)
    if jobs < 1:
        msg = f"jobs must be >= 1, got {jobs}"
        raise ValueError(msg)
    if isinstance(config, CheckerConfig):
        check_crop(settings.crop, config)  # before any worker starts
    extra_good = [Path(p) for p in extra_good]
    by_id = {i.id: i for i in items}
    left_out = set(exclude)
    excluded = sorted(left_out)
    unknown = [i for i in excluded if i not in by_id]
    if unknown:
        msg = f"{len(unknown)} excluded image(s) are not in the data, e.g. {unknown[0]!r}: expected <class>/<stem> ids"
        raise ValueError(msg)
    kept = [i.id for i in items if i.id not in left_out]
    if len(kept) < folds:
        msg = f"{len(kept)} images left after excluding {len(excluded)} cannot fill {folds} folds"
        raise ValueError(msg)
    members = assign_folds(kept, folds, seed=settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"folds": members, "data": data_root, "excluded": excluded}
    (out / FOLDS_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    tasks = [(k, [by_id[i] for i in ids], ids) for k, ids in enumerate(members)]
    if isinstance(config, SegConfig):  # the pretrained encoder: features once, folds one after the other
        from inspectd.labelling.pretrained import train_pretrained_checkers

        def facts_for(k: int, ids: list[str], extra: dict) -> dict:
            return {
                "data": data_root,
                "command": "inspectd label train-checker",
                "sample_count": len(ids),
                "defective_count": sum(1 for i in ids if read_mask(by_id[i]).any()),
                "settings": settings.__dict__,
                "checker": {"fold": k, "folds": folds, "members": ids},
                **extra,
            }

        return train_pretrained_checkers(
            tasks,
            out,
            config=config,
            settings=settings,
            facts_for=facts_for,
            area_threshold=area_threshold,
            goods=(extra_good, settings.max_good),
            log=log,
        )
    if jobs == 1 or folds == 1:
        return [
            _train_fold(k, its, ids, out, folds, config, settings, data_root, area_threshold, log, extra_good)
            for k, its, ids in tasks
        ]

    worker_settings = settings if settings.threads else replace(settings, threads=1)
    worker_log = None if log is None else _printer
    with ProcessPoolExecutor(
        max_workers=min(jobs, folds),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = [
            pool.submit(
                _train_fold,
                k,
                its,
                ids,
                out,
                folds,
                config,
                worker_settings,
                data_root,
                area_threshold,
                worker_log,
                extra_good,
            )
            for k, its, ids in tasks
        ]
        return [f.result() for f in futures]
