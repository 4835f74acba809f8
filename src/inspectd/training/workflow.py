"""One training job end to end: data -> train -> ONNX export + parity -> provisional manifest -> calibration ->
final manifest (-> optional evaluation). `inspectd train` is a thin argparse layer over `run_job`.

The held-out good images (a fraction of the training source, never trained on) calibrate the thresholds through
the daemon's own Inspector; see inspectd/evaluation/thresholds.py for the rules.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from inspectd.core.clock import utc_now
from inspectd.core.manifest import Manifest, PreprocessSpec, ScoreSpec, SsimSpec, load_manifest
from inspectd.daemon.cameras.synthetic import SurfaceGenerator, SyntheticCameraConfig
from inspectd.evaluation import thresholds as calib
from inspectd.evaluation.evaluate import trained_files
from inspectd.evaluation.scoring import calibrate_variants
from inspectd.training import data as D
from inspectd.training.defects import DefectConfig
from inspectd.training.model import ConvAutoencoder, ModelConfig, count_parameters
from inspectd.training.onnx_export import write_model_dir
from inspectd.training.train import STDERR, ProgressStream, TrainConfig, train

if TYPE_CHECKING:
    from inspectd.training.finetune import Parent

# the synthetic camera's default seed is the demo/evaluation stream; training defaults to another one
SYNTHETIC_EVAL_SEED = 1234
SYNTHETIC_EVAL_DEFECT_RATE = 0.25


# Tile mode: random crops already translate, and a whole-frame shift or a large rotation would put reflected copies of
# the frame's edges (on magnetic tile: the part's rim) where the daemon's edge tiles see the real edge.
TILE_AUGMENT = D.AugmentConfig(max_shift=0.0, max_rotation_deg=2.0)


@dataclass(frozen=True)
class SyntheticSource:
    frames: int = 800
    width: int = 256
    height: int = 256
    seed: int = 7


@dataclass(frozen=True)
class TrainJob:
    out: Path
    command: str  # the exact command line that reproduces this job (recorded in the manifest)
    data: Path | None = None  # an MVTec-layout or plain image folder; or
    synthetic: SyntheticSource | None = None  # the synthetic camera's good frames
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    color: Literal["gray", "bgr"] = "gray"
    mode: Literal["resize", "tile"] = "resize"
    tile_overlap: int = 32
    scale: float = 1.0  # tile mode: frames resized by this factor before tiling (preprocess.scale)
    normalize: Literal["none", "median"] = (
        "none"  # exposure normalisation (inspectd.inspection.preprocess.normalize_exposure)
    )
    normalize_to: float = 100.0
    train: TrainConfig = field(default_factory=TrainConfig)
    defect_prob: float = 0.5
    defect_weight: float = 5.0
    holdout: float = 0.2  # fraction of the good images kept for calibration
    checkpoint_dir: Path | None = None
    resume: Path | None = None
    calibrate_with_test: bool = False  # --data only: also calibrate on DIR/test/* + ground_truth masks
    evaluate: int = 0  # synthetic only: evaluate on this many frames of the evaluation stream (0 = no)
    init: Path | None = None  # fine-tune: continue from this model directory (inspectd/training/finetune.py)
    loss_table: tuple[tuple[int, float], ...] | None = None  # stop rule: sample count -> loss threshold
    stop_loss: float | None = None  # stop rule: a fixed loss threshold instead of the table
    hard_defects: Path | None = None  # the hard-defect set: DIR/test/<class>/* + ground_truth masks
    hard_prob: float = 0.1  # share of samples drawn from the hard-defect set (when given)
    hard_fraction: float = 1.0  # share of each defect class of hard_defects used (data.hard_defect_files)
    ssim: SsimSpec = field(default_factory=SsimSpec)  # the daemon's difference map; the SSIM loss uses its window
    score: ScoreSpec = field(default_factory=ScoreSpec)  # map post-processing and the image score's reduction
    defects: DefectConfig = field(default_factory=DefectConfig)
    edge_prob: float = 0.5  # tile mode: share of training crops flush with a frame edge (as the daemon's edge tiles)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.synthetic is None):
            msg = "a training job needs exactly one source: a data directory or the synthetic camera"
            raise ValueError(msg)
        if not 0.0 < self.holdout < 1.0:
            msg = f"holdout must be within (0, 1), got {self.holdout}"
            raise ValueError(msg)


@dataclass
class JobResult:
    model_dir: Path
    final_loss: float
    iterations: int
    train_seconds: float
    total_seconds: float
    parity_max_abs_diff: float
    calibration: calib.Calibration
    evaluation: calib.Confusion | None
    checkpoint: Path | None

    def summary(self) -> str:
        c = self.calibration
        lines = [
            f"model:        {self.model_dir}",
            (
                f"training:     {self.iterations} iterations in {self.train_seconds:.0f} s, final loss "
                f"{self.final_loss:.5f}"
            ),
            f"onnx parity:  max abs diff {self.parity_max_abs_diff:.2e} (onnxruntime CPU vs PyTorch)",
            f"thresholds:   pixel {c.pixel:.4f}, min_region_area {c.min_region_area} px",
            f"calibration:  {c.n_good} held-out good images, {c.good_pass_rate:.1%} pass"
            + (
                f"; {c.n_defect} defective, {c.defect_reject_rate:.1%} rejected"
                if c.n_defect and c.defect_reject_rate is not None
                else ""
            ),
        ]
        if self.evaluation is not None:
            lines.append(f"evaluation:   {self.evaluation}")
        if self.checkpoint is not None:
            lines.append(f"checkpoint:   {self.checkpoint}")
        lines.append(f"total time:   {self.total_seconds:.0f} s")
        return "\n".join(lines)


def _data_facts(root: Path) -> dict:
    """Which files the run saw (count and digest) and, for a collector's output, what it recorded."""
    return D.data_facts(D.image_files(root), Path(root))


def default_checkpoint_dir(out: Path) -> Path:
    """Checkpoints stay out of the model directory: $XDG_CACHE_HOME/inspectd/checkpoints/<model dir name>."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "inspectd" / "checkpoints" / (out.resolve().name or "model")


def _split(frames: list[np.ndarray], holdout: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(frames) < 2:
        msg = f"need at least 2 good images to train and hold some out for calibration, got {len(frames)}"
        raise ValueError(msg)
    order = D.holdout_order(len(frames), seed)
    n_hold = min(len(frames) - 1, max(1, int(round(holdout * len(frames)))))
    held = [frames[i] for i in order[:n_hold]]
    kept = [frames[i] for i in order[n_hold:]]
    return kept, held


def _load_source(job: TrainJob) -> tuple[list[np.ndarray], str]:
    if job.synthetic is not None:
        s = job.synthetic
        frames = D.synthetic_frames(s.frames, width=s.width, height=s.height, seed=s.seed, color=job.color)
        return frames, D.synthetic_description(s.width, s.height, s.seed)
    assert job.data is not None
    return D.load_folder(job.data, job.color), f"good images of {job.data} ({D.image_files(job.data)[0].parent})"


def _hard_defect_facts(job: TrainJob, hard: list, target_value: int, parent) -> dict:
    """The manifest's training.hard_defects: this run's labelled defect files (image and sha256), plus those a
    fine-tuning parent was trained on (`inherited_files`), so `inspectd evaluate` leaves out both."""

    inherited = trained_files(parent.manifest.training) if parent is not None else []
    if not hard and not inherited:
        return {}
    facts: dict = {"inherited_files": inherited} if inherited else {}
    if hard:
        facts |= {
            "data": str(job.hard_defects),
            "images": len(hard),
            "prob": job.hard_prob,
            "fraction": job.hard_fraction,
            "target_value": target_value,
            "files": [{"image": h.source, "sha256": h.sha256} for h in hard],
        }
    return {"hard_defects": facts}


class FrameSettings(Protocol):
    """How a job's frames become model input: what `preprocess_spec` reads (TrainJob and FeaturesJob have it)."""

    @property
    def color(self) -> Literal["gray", "bgr"]: ...
    @property
    def mode(self) -> Literal["resize", "tile"]: ...
    @property
    def tile_overlap(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def normalize(self) -> Literal["none", "median"]: ...
    @property
    def normalize_to(self) -> float: ...


def preprocess_spec(job: FrameSettings) -> PreprocessSpec:
    """The manifest's preprocessing for a job's frames: uint8 / 255, area interpolation, the job's colour, resize or
    tiles, scale and exposure normalisation."""
    return PreprocessSpec(
        color=job.color,
        divide=255.0,
        mean=0.0,
        std=1.0,
        mode=job.mode,
        tile_overlap=job.tile_overlap,
        interpolation="area",
        normalize=job.normalize,
        normalize_to=job.normalize_to,
        scale=job.scale,
    )


def _continue_parent(job: TrainJob, say: Callable[[str], None]) -> tuple[TrainJob, Parent | None]:
    """With --init: the parent model and the job with the parent's architecture, colour and preprocessing."""
    if job.init is None:
        return job, None
    from inspectd.training.finetune import load_parent

    parent = load_parent(job.init)
    pp = parent.manifest.preprocess
    if pp.color == "rgb":  # only anomalib models take RGB, and load_parent refuses those already
        msg = f"--init {job.init}: an RGB model cannot be continued (expected an autoencoder from `inspectd train`)"
        raise ValueError(msg)
    job = replace(
        job,
        model=parent.model_config,
        color=pp.color,
        mode=pp.mode,
        tile_overlap=pp.tile_overlap,
        normalize=pp.normalize,
        normalize_to=pp.normalize_to,
        scale=pp.scale,
    )
    say(
        f"init: {job.init} (sha256 {parent.sha256[:16]}), weights imported from its model.onnx "
        f"(max abs diff {parent.parity_max_abs_diff:.1e})"
    )
    return job, parent


def _calibrate(job: TrainJob, held_out: list[np.ndarray], hard: list, say: Callable[[str], None]) -> calib.Calibration:
    """Thresholds from the held-out good images (and, with --calibrate-with-test, DIR/test less the hard-defect
    images), written to the manifest with the other score variants'."""
    images = D.CalibrationImages(held_out, description=f"{len(held_out)} held-out good images of the training source")
    if job.calibrate_with_test and job.data is not None:
        trained_on = frozenset(h.sha256 for h in hard)
        images = images.with_test_set(job.data, job.color, trained_on, "hard-defect images")
    calibration = calib.calibrate(job.out, images.goods, images.defects, images.masks, data=images.description)
    calib.write_thresholds(job.out, calibration, calibrated_at=utc_now())
    say(f"calibration: pixel {calibration.pixel:.4f}, min_region_area {calibration.min_region_area}")
    _record_score_variants(job.out, images.goods, images.defects, images.masks, images.description)
    return calibration


def run_job(job: TrainJob, *, log: ProgressStream | None = STDERR) -> JobResult:
    t_start = time.monotonic()

    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    job, parent = _continue_parent(job, say)
    cfg = job.model
    if cfg.channels != (1 if job.color == "gray" else 3):
        msg = f"model channels {cfg.channels} do not match color {job.color!r}"
        raise ValueError(msg)
    geometry = D.InputGeometry(
        height=cfg.height,
        width=cfg.width,
        color=job.color,
        mode=job.mode,
        normalize=job.normalize,
        normalize_to=job.normalize_to,
        scale=job.scale,
    )
    frames, description = _load_source(job)
    train_frames, held_out = _split(frames, job.holdout, job.train.seed)
    say(f"data: {description}: {len(train_frames)} for training, {len(held_out)} held out for calibration")
    hard = []
    if job.hard_defects is not None:
        hard = D.load_hard_defects(job.hard_defects, job.color, fraction=job.hard_fraction)
        say(
            f"hard defects: {len(hard)} labelled images of {job.hard_defects}"
            + (f" ({job.hard_fraction:.0%} of each class)" if job.hard_fraction < 1 else "")
            + f" (target 0 inside the mask), {job.hard_prob:.0%} of the samples; `inspectd evaluate` leaves them out"
        )
    dataset = D.TrainingSet(
        train_frames,
        geometry,
        defects=job.defects,
        defect_prob=job.defect_prob,
        defect_weight=job.defect_weight,
        description=description,
        hard=hard,
        hard_prob=job.hard_prob if hard else 0.0,
        augment=TILE_AUGMENT if job.mode == "tile" else D.AugmentConfig(),
        edge_prob=job.edge_prob,
    )

    import torch

    torch.manual_seed(job.train.seed)
    model = ConvAutoencoder(cfg)
    if parent is not None:
        model.load_state_dict(parent.state_dict)
    say(f"model: {count_parameters(model):,} parameters, {cfg}")
    ckpt_dir = job.checkpoint_dir or default_checkpoint_dir(job.out)
    rule = None
    if parent is not None or job.loss_table is not None or job.stop_loss is not None:
        from inspectd.training.finetune import stop_rule

        rule = stop_rule(len(train_frames), table=job.loss_table, threshold=job.stop_loss)
        say(f"stop rule: loss <= {rule['threshold']:.4g} ({rule['chosen_by']}) or {job.train.iterations} iterations")
    train_cfg = replace(job.train, stop_loss=rule["threshold"]) if rule is not None else job.train
    ssim_spec = parent.manifest.ssim if parent is not None else job.ssim
    score_spec = parent.manifest.score if parent is not None else job.score
    train_cfg = replace(train_cfg, ssim_size=ssim_spec.size, ssim_sigma=ssim_spec.sigma)  # loss = the daemon's window
    result = train(model, dataset, train_cfg, checkpoint_dir=ckpt_dir, resume=job.resume, log=log)

    preprocess = preprocess_spec(job)
    if parent is not None:
        preprocess = parent.manifest.preprocess
    held_set = D.TrainingSet(held_out, geometry, augment=D.AugmentConfig.off(), defect_prob=0.0)
    samples = held_set.plain_inputs(4)
    facts = {
        "data": description,
        "source": "synthetic" if job.synthetic else "folder",
        "categories": [],
        "good_defect_ratio": "good only (synthetic defects painted during training)",
        "sample_count": len(train_frames),
        "held_out_count": len(held_out),
        "iterations": result.iterations,
        "stopped_by": result.stopped_by,
        "final_loss": result.final_loss,
        "train_seconds": round(result.seconds, 1),
        "seed": job.train.seed,
        "command": job.command,
        "torch": torch.__version__,
        "time": utc_now(),
        "model": cfg.as_dict(),
        "train_config": asdict(train_cfg),
        "defects": {"prob": job.defect_prob, "loss_weight": job.defect_weight, **asdict(job.defects)},
        **_hard_defect_facts(job, hard, dataset.hard_value, parent),
        "augment": asdict(dataset.augment),
        **({"parent": parent.facts()} if parent is not None else {}),
        **({"stop_rule": rule} if rule is not None else {}),
        **({"data_files": _data_facts(job.data)} if job.data is not None else {}),
    }
    name = job.name or job.out.resolve().name
    _manifest, parity = write_model_dir(
        model,
        job.out,
        samples,
        name=name,
        preprocess=preprocess,
        training=facts,
        ssim=ssim_spec,
        score=score_spec,
    )
    say(f"export: {job.out}/model.onnx, parity max abs diff {parity.max_abs_diff:.2e}; calibrating ...")

    calibration = _calibrate(job, held_out, hard, say)

    evaluation = None
    if job.evaluate and job.synthetic is not None:
        evaluation = evaluate_synthetic(job.out, job.evaluate, job.synthetic.width, job.synthetic.height, job.color)
        _record_evaluation(job.out, evaluation, job.evaluate, job.synthetic)
    return JobResult(
        model_dir=job.out,
        final_loss=result.final_loss,
        iterations=result.iterations,
        train_seconds=result.seconds,
        total_seconds=time.monotonic() - t_start,
        parity_max_abs_diff=parity.max_abs_diff,
        calibration=calibration,
        evaluation=evaluation,
        checkpoint=result.checkpoint,
    )


def evaluate_synthetic(
    model_dir: Path,
    n: int,
    width: int = 256,
    height: int = 256,
    color: str = "gray",
    seed: int = SYNTHETIC_EVAL_SEED,
    defect_rate: float = SYNTHETIC_EVAL_DEFECT_RATE,
) -> calib.Confusion:
    """Confusion of the model's calibrated verdicts on frames 0..n-1 of the synthetic evaluation stream."""

    gen = SurfaceGenerator(
        SyntheticCameraConfig(width=width, height=height, seed=seed, defect_rate=defect_rate, color=color)
    )
    captures = [gen.render(i) for i in range(n)]
    inspector = calib.open_inspector(model_dir)
    images = [c.image for c in captures if c.image is not None]  # the synthetic camera always renders one
    return calib.evaluate(inspector, images, (bool(c.truth) for c in captures))


def _record_score_variants(model_dir: Path, goods, defect_images, defect_masks, data: str) -> None:
    """Thresholds for the other difference maps of the same model (`inspectd evaluate --score`), calibrated by the
    same rule on the same images, in the manifest's training facts (the daemon uses only the manifest's own)."""

    variants = calibrate_variants(model_dir, goods, defect_images, defect_masks, data=data)
    raw = load_manifest(model_dir).model_dump(mode="json")
    raw["training"]["score_variants"] = calib.json_safe(variants)
    Manifest.model_validate(raw).write(model_dir)


def _record_evaluation(model_dir: Path, confusion: calib.Confusion, n: int, src: SyntheticSource) -> None:

    manifest = load_manifest(model_dir)
    raw = manifest.model_dump(mode="json")
    raw["training"]["evaluation"] = {
        "data": (
            f"synthetic camera frames 0..{n - 1}, seed {SYNTHETIC_EVAL_SEED}, defect_rate "
            f"{SYNTHETIC_EVAL_DEFECT_RATE}, {src.width}x{src.height} (not used for training or calibration)"
        ),
        **calib.json_safe(confusion.as_dict()),
    }
    Manifest.model_validate(raw).write(model_dir)
