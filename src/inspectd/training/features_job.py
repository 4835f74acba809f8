"""One features-model job end to end: good images -> patch vectors -> coreset bank -> ONNX (+ parity) -> manifest ->
calibration on held-out good images through the daemon's Inspector. `inspectd train --kind features` (the default)
is a thin argparse layer over `run_features_job`; inspectd/training/features.py has the model itself.

Preprocessing is the daemon's own (inspectd.inspection.preprocess.Preprocessor with the manifest's PreprocessSpec),
so the bank holds exactly the vectors the daemon's tiles produce. The held-out split is `inspectd train`'s
(workflow._split, recorded as training.seed and held_out_count), which `inspectd ensemble` relies on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from inspectd.core.manifest import Manifest, OnnxSpec, ScoreSpec, TensorSpec, sha256_file
from inspectd.evaluation import thresholds as calib
from inspectd.inspection.preprocess import Preprocessor
from inspectd.training import data as D
from inspectd.training import features as feat
from inspectd.training.onnx_export import (
    EXPORTER,
    INPUT_NAME,
    ONNX_FILE,
    OPSET,
    check_parity,
    export_onnx,
    provisional_thresholds,
    utc_now,
)
from inspectd.training.train import STDERR, ProgressStream
from inspectd.training.workflow import _split, preprocess_spec

# Tiles per onnxruntime run (the manifest's fixed batch; the Detector feeds larger batches in slices; the graph itself
# takes any batch). It bounds the k-NN's [tiles x positions, bank] intermediate on megapixel frames: 4 x 576 x 10,000
# float32 = 92 MB at the defaults, where a 4096x256 strip's 52 native tiles in one run would need 1.2 GB.
RUN_BATCH = 4


@dataclass(frozen=True)
class FeaturesJob:
    out: Path
    command: str  # the command line that reproduces this job (recorded in the manifest)
    data: Path
    name: str = ""
    config: feat.FeaturesConfig = field(default_factory=feat.FeaturesConfig)
    color: Literal["gray", "bgr"] = "gray"
    mode: Literal["resize", "tile"] = "resize"
    tile_overlap: int = 32
    scale: float = 1.0
    normalize: Literal["none", "median"] = "median"
    normalize_to: float = 100.0
    score: ScoreSpec = field(default_factory=lambda: ScoreSpec(reduction="max", smooth_sigma=4.0))
    holdout: float = 0.2
    threads: int = 0  # torch threads (0 = all cores)


@dataclass
class FeaturesResult:
    model_dir: Path
    seconds: float
    bank: dict
    parity_max_abs_diff: float
    calibration: calib.Calibration

    def summary(self) -> str:
        c, b = self.calibration, self.bank
        return "\n".join(
            [
                f"model:        {self.model_dir} (kind features)",
                f"memory bank:  {b['bank']} of {b['vectors']} patch vectors ({b['dim']}-d), scale {b['scale']:.4g}",
                f"onnx parity:  max abs diff {self.parity_max_abs_diff:.2e} (onnxruntime CPU vs PyTorch)",
                f"thresholds:   pixel {c.pixel:.4f}, min_region_area {c.min_region_area} px",
                f"calibration:  {c.n_good} held-out good images, {c.good_pass_rate:.1%} pass",
                f"total time:   {self.seconds:.0f} s",
            ]
        )


def run_features_job(job: FeaturesJob, *, log: ProgressStream | None = STDERR) -> FeaturesResult:
    import torch

    t0 = time.monotonic()

    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    cfg = job.config
    if job.threads:
        torch.set_num_threads(job.threads)
    channels = 1 if job.color == "gray" else 3
    extractor = feat.FeatureExtractor(cfg.backbone, cfg.stages, cfg.input_hw, channels=channels, pool=cfg.pool)
    frames = D.load_folder(job.data, job.color)
    kept, held = _split(frames, job.holdout, cfg.seed)
    say(f"data: {job.data}: {len(kept)} good images for the memory bank, {len(held)} held out for calibration")
    spec = preprocess_spec(job)
    in_spec = TensorSpec(name=INPUT_NAME, shape=(RUN_BATCH, channels, *cfg.input_hw))
    pre = Preprocessor(spec, in_spec)
    batches = [pre.prepare(f).batch for f in kept]
    vectors = feat.extract(extractor, batches, cap=cfg.max_vectors, seed=cfg.seed, batch=cfg.batch)
    say(f"features: {len(vectors)} patch vectors of {extractor.dim} dimensions ({time.monotonic() - t0:.0f} s)")
    bank, scale, bank_facts = feat.build_bank(vectors, cfg)
    del vectors
    say(f"coreset: {len(bank)} bank vectors, scale {scale:.4g} ({time.monotonic() - t0:.0f} s)")
    model = feat.FeatureMapModel(extractor, bank, k=cfg.k, scale=scale)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, out / ONNX_FILE, output_names=(feat.OUTPUT_NAME,))
    samples = np.concatenate(batches[:4])[:4]
    if len(samples) < 2:
        samples = np.concatenate([samples, samples])
    parity = check_parity(model, onnx_path, samples, output_names=(feat.OUTPUT_NAME,))
    sha = sha256_file(onnx_path)
    weights = feat.weight_file(cfg.backbone)
    facts = {
        "data": f"good images of {job.data}",
        "source": "folder",
        "categories": [],
        "good_defect_ratio": "good only",
        "sample_count": len(kept),
        "held_out_count": len(held),
        "seed": cfg.seed,
        "command": job.command,
        "torch": torch.__version__,
        "time": utc_now(),
        "features": {
            **cfg.as_dict(),
            **bank_facts,
            "weights": weights.name,
            "weights_sha256": feat.BACKBONES[cfg.backbone].sha256,
        },
        "data_files": D.data_facts(D.image_files(job.data), Path(job.data)),
        "export": {"exporter": EXPORTER, "opset": OPSET, "parity": parity.as_dict(), "exported_at": utc_now()},
    }
    manifest = Manifest(
        name=job.name or out.resolve().name,
        kind="features",
        onnx=OnnxSpec(file=onnx_path.name, sha256=sha, opset=OPSET),
        input=in_spec,
        output=TensorSpec(name=feat.OUTPUT_NAME, shape=(RUN_BATCH, 1, *cfg.input_hw)),
        preprocess=spec,
        score=job.score,
        thresholds=provisional_thresholds(sha),
        training=facts,
        created=utc_now(),
    )
    manifest.write(out)
    say(f"export: {onnx_path}, parity max abs diff {parity.max_abs_diff:.2e}; calibrating ...")
    calibration = calib.calibrate(out, held, data=f"{len(held)} held-out good images of the training source")
    calib.write_thresholds(out, calibration, calibrated_at=utc_now())
    return FeaturesResult(out, time.monotonic() - t0, bank_facts, parity.max_abs_diff, calibration)
