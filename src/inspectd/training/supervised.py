"""`inspectd train-supervised`: the supervised stage of the product's loop. A segmentation model (segmentation.py:
frozen pretrained EfficientNet-Lite0 encoder, trained light decoder) learns the defect pixels of labelled images
and becomes a model directory of kind `classifier`, which the daemon runs alone or beside the anomaly map in one
ensemble (`inspectd ensemble --member AE --member THIS`).

Data, from MVTec trees:
- --data DIR: DIR/train/good/* are defect-free (a collector's output puts false rejects there). As `inspectd train`
  does, `--holdout` of them (same seed, same order: training.data.holdout_order) are held out for calibration, so
  the model records the same data digest, seed and held-out count and can join an ensemble with an autoencoder
  trained on the same DIR;
- --defects DIR2 (default DIR): every DIR2/test/<class>/* with its DIR2/ground_truth/<class>/<stem>_mask.png: the
  accepted labels (`label check --accepted`), the collector's confirmed defects. Images without a mask cannot teach
  pixels and are listed as left out. DIR2/test/good/* join as defect-free when DIR2 is not DIR (there they are the
  evaluation's). The labelled files are recorded (training.hard_defects.files), so `inspectd evaluate` leaves them
  out.
Training: segtrain.py on cached encoder features, `good_share` of each batch from the defect-free images.
Calibration: on the held-out good images through the daemon's Inspector (`_calibrate`): the lowest probability
from 0.5 up at which no held-out good image has a region larger than the area cap allows, and that area.
`--init PARENT` continues a classifier written by this command: its decoder weights (decoder.pt, sha256 in the
manifest) are loaded and must reproduce the parent's model.onnx (max abs difference <= 1e-4), as `inspectd train
--init` requires of an autoencoder.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO

import numpy as np
import torch

from inspectd.core.manifest import Manifest, OnnxSpec, PreprocessSpec, TensorSpec, Thresholds, load_manifest
from inspectd.core.manifest import sha256_file as file_sha256
from inspectd.evaluation import thresholds as calib
from inspectd.training import data as tdata
from inspectd.training.backbone import facts as backbone_facts
from inspectd.training.onnx_export import EXPORTER, OPSET, check_parity, export_onnx, utc_now
from inspectd.training.segmentation import SegConfig, SegmentationNet
from inspectd.training.segtrain import Cached, DecoderSettings, encode_all, predict_cached, soft_mask, to_input
from inspectd.training.segtrain import train_decoder as _train_decoder

MAP_OUTPUT, PROB_OUTPUT, DECODER_FILE = "defect_map", "defect_prob", "decoder.pt"


@dataclass(frozen=True)
class SupervisedJob:
    data: Path
    out: Path
    defects: Path | None = None
    size: int = 256
    holdout: float = 0.2
    good_share: float = 0.3
    max_good: int | None = None
    init: Path | None = None
    name: str = ""
    command: str = ""
    decoder: DecoderSettings = DecoderSettings()  # noqa: RUF009 (frozen)


def _say(log: IO[str] | None, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)


def labelled_defects(root: Path, log: IO[str] | None) -> list[tuple[Path, Path, str]]:
    """(image, mask, "<class>/<name>") of root/test/<class>/* with masks; images without one are reported."""
    found = tdata.hard_defect_files(root)
    with_mask = {img for img, _, _ in found}
    missing = [
        p
        for sub in sorted((root / "test").iterdir())
        if sub.is_dir() and sub.name != "good"
        for p in sorted(sub.iterdir())
        if p.suffix.lower() in tdata.IMAGE_SUFFIXES and p not in with_mask
    ]
    if missing:
        _say(log, f"left out {len(missing)} defect image(s) without a mask, e.g. {missing[0]}")
    if not found:
        msg = f"no labelled defect under {root}/test/<class>/ with ground_truth/<class>/<stem>_mask.png"
        raise FileNotFoundError(msg)
    return found


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in tdata.IMAGE_SUFFIXES)


def _mask(path: Path, hw: tuple[int, int]) -> np.ndarray:
    mask = tdata.read_image(path, "gray")
    if mask.shape != hw:
        msg = f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {hw[1]}x{hw[0]}"
        raise ValueError(msg)
    return mask


def _load_parent(net: SegmentationNet, parent: Path) -> dict:
    m = load_manifest(parent)
    facts = (m.training or {}).get("supervised") or {}
    path = parent / DECODER_FILE
    if m.kind != "classifier" or not path.is_file():
        msg = f"--init {parent} is not a classifier written by `inspectd train-supervised` (no {DECODER_FILE})"
        raise ValueError(msg)
    if file_sha256(path) != facts.get("decoder_sha256"):
        msg = f"--init {parent}: {DECODER_FILE} is not the one its manifest records; the directory was changed"
        raise ValueError(msg)
    if facts.get("config") != net.config.as_dict():
        msg = f"--init {parent} was trained as {facts.get('config')}, not {net.config.as_dict()}: use its --size"
        raise ValueError(msg)
    net.decoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    samples = np.random.default_rng(0).random((2, 1, net.config.height, net.config.width), dtype=np.float32)
    check_parity(net, parent / m.onnx.file, samples, output_names=(MAP_OUTPUT, PROB_OUTPUT))
    return {"dir": str(parent), "sha256": m.onnx.sha256, "name": m.name}


CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _calibrate(model_dir: Path, held: list[np.ndarray], data: str):
    """Pixel threshold: the lowest of CANDIDATES (from 0.5, the classifier's own decision) at which the largest
    region on every held-out good image, x 1.25 + 1, fits the area cap (0.2 % of the frame, at least 15 px); that
    becomes min_region_area, so every held-out good image passes. The good-only rule of the autoencoders (a
    quantile of the good pixels) would put it at 1.0 as soon as one good image has one confident pixel."""
    maps = calib.score_maps(calib.open_inspector(model_dir), held)
    cap = max(15, int(0.002 * float(np.median([m.size for m in maps]))))
    pixel, min_area = CANDIDATES[-1], 1
    for t in CANDIDATES:
        largest = max(calib.largest_region(m, t) for m in maps)
        pixel, min_area = t, int(np.floor(largest * 1.25)) + 1 if largest else 1
        if min_area <= cap:
            break
    method = (
        f"classifier: pixel = the lowest of {list(CANDIDATES)} where 1.25 x the largest good region + 1 <= the area "
        f"cap {cap} px (else the last); min_region_area = that; data: {data} (n={len(maps)})"
    )
    return calib.Calibration(
        pixel=pixel,
        min_region_area=min_area,
        method=method,
        n_good=len(maps),
        good_pass_rate=1.0,
        details={"area_cap": cap, "within_cap": min_area <= cap},
    )


def write_classifier_dir(net: SegmentationNet, model_dir: Path, samples: np.ndarray, *, name: str, facts: dict):
    """model.onnx (whole network, parity-checked), decoder.pt and a manifest with placeholder thresholds."""
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(net, model_dir / "model.onnx", output_names=(MAP_OUTPUT, PROB_OUTPUT))
    parity = check_parity(net, onnx_path, samples, output_names=(MAP_OUTPUT, PROB_OUTPUT))
    torch.save(net.decoder.state_dict(), model_dir / DECODER_FILE)
    sha = file_sha256(onnx_path)
    c = net.config
    facts = {**facts, "supervised": {**facts["supervised"], "decoder_sha256": file_sha256(model_dir / DECODER_FILE)}}
    facts["export"] = {"exporter": EXPORTER, "torch": torch.__version__, "opset": OPSET, "parity": parity.as_dict()}
    Manifest(
        name=name,
        kind="classifier",
        onnx=OnnxSpec(file=onnx_path.name, sha256=sha, opset=OPSET),
        input=TensorSpec(name="image", shape=(None, 1, c.height, c.width)),
        output=TensorSpec(name=MAP_OUTPUT, shape=(None, 1, c.height, c.width)),
        preprocess=PreprocessSpec.model_validate({"color": "gray", "mode": "resize", "interpolation": "area"}),
        thresholds=Thresholds(pixel=1.0, min_region_area=1, model_sha256=sha, method="uncalibrated"),
        training=facts,
        created=utc_now(),
    ).write(model_dir)


def run_supervised(job: SupervisedJob, *, log: IO[str] | None = sys.stderr) -> Path:
    t0 = time.monotonic()
    if job.out.exists():
        msg = f"--out {job.out} exists; a model is written to a new directory"
        raise ValueError(msg)
    if job.decoder.threads:
        torch.set_num_threads(job.decoder.threads)
    config = SegConfig(job.size, job.size)
    hw = (config.height, config.width)
    files = tdata.image_files(job.data)
    order = tdata.holdout_order(len(files), job.decoder.seed)
    n_hold = min(len(files) - 1, max(1, round(job.holdout * len(files))))
    held_files = [files[i] for i in order[:n_hold]]
    train_files = [files[i] for i in order[n_hold:]]
    chosen = train_files if job.max_good is None else train_files[: job.max_good]
    defects_root = job.defects or job.data
    found = labelled_defects(defects_root, log)
    extra_good = [] if defects_root == job.data else _images_in(defects_root / "test" / "good")
    _say(
        log,
        f"data: {len(chosen)} good of {job.data} ({n_hold} held out), {len(found)} labelled defects "
        f"of {defects_root}" + (f", {len(extra_good)} accepted defect-free" if extra_good else ""),
    )
    net = SegmentationNet(config)
    parent = _load_parent(net, job.init) if job.init is not None else None
    gray = [tdata.read_image(p, "gray") for p in [*chosen, *extra_good]]
    dx = [tdata.read_image(img, "gray") for img, _, _ in found]
    dm = [_mask(mask, d.shape) for (_, mask, _), d in zip(found, dx, strict=True)]
    xs = np.stack([to_input(g, hw) for g in [*gray, *dx]])[:, None]
    soft = np.stack([soft_mask(m, hw) for m in dm])[:, None]
    ms = np.concatenate([np.zeros((len(gray), 1, *hw), np.float32), soft])
    _say(log, f"encoding {len(xs)} images at {hw[1]}x{hw[0]} with the frozen {config.encoder} encoder")
    cache: Cached = encode_all(net, xs, ms, log=lambda s: _say(log, s))
    n_good, n_def = len(gray), len(dx)
    weights = np.r_[np.full(n_good, job.good_share / n_good), np.full(n_def, (1 - job.good_share) / n_def)]
    settings = job.decoder if parent is None else replace(job.decoder, lr=job.decoder.lr * 0.3)
    net, final_loss, steps = _train_decoder(net, cache, settings, weights=weights, log=lambda s: _say(log, s))
    maps, _ = predict_cached(net, cache.subset(range(n_good, n_good + n_def)))
    dice = 2 * (maps * ms[n_good:]).sum() / max(1e-6, maps.sum() + ms[n_good:].sum())
    data_facts = tdata.data_facts(files, job.data)
    facts = {
        "data": str(job.data),
        "data_files": data_facts,
        "seed": job.decoder.seed,
        "sample_count": len(train_files),
        "held_out_count": n_hold,
        "good_defect_ratio": f"{n_good}:{n_def}",
        "final_loss": final_loss,
        "command": job.command,
        "hard_defects": {
            "data": str(defects_root),
            "images": n_def,
            "files": [{"image": n, "sha256": file_sha256(img)} for img, _, n in found],
        },
        "supervised": {
            "config": config.as_dict(),
            "encoder": {**backbone_facts(), "frozen": True},
            "decoder_settings": asdict(settings),
            "steps": steps,
            "good_share": job.good_share,
            "train_soft_dice": round(float(dice), 4),
            "train_seconds": round(time.monotonic() - t0, 1),
            **({"parent": parent} if parent else {}),
        },
    }
    tmp = job.out.with_name(f".{job.out.name}.tmp-{hashlib.sha256(str(t0).encode()).hexdigest()[:8]}")
    try:
        write_classifier_dir(net, tmp, xs[-2:].astype(np.float32), name=job.name or job.out.name, facts=facts)
        held = [tdata.read_image(p, "gray") for p in held_files]
        result = _calibrate(tmp, held, f"{n_hold} held-out good images of {job.data}")
        calib.write_thresholds(tmp, result, calibrated_at=utc_now())
        tmp.rename(job.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(
        log,
        f"wrote {job.out}: pixel {result.pixel:.4f}, min_region_area {result.min_region_area}, "
        f"{steps} steps, train soft Dice {dice:.3f}, {time.monotonic() - t0:.0f} s",
    )
    return job.out
