"""`inspectd evaluate`: a model directory over an MVTec-layout test tree, through the daemon's own code path.

Every image is read as the daemon's folder camera reads it (inspectd.daemon.cameras.folder.decode) and inspected by
inspectd.inspection.inspector.Inspector: preprocess -> onnxruntime -> difference map -> stitch -> map post-processing
-> decide
at the manifest's calibrated thresholds. Nothing here re-implements a step of that path; only the metrics are new.
No torch: onnxruntime does the inference, as on a line.

Metrics (inspectd/evaluation/metrics.py):

- image_auroc: the image score (Decision.score: the manifest's score.reduction of the map) of test/good against
  every other test/<class> (null when one of the two is missing).
- pixel_auroc: every pixel of every image with ground truth (test/good counts as all-normal), defect pixels from
  ground_truth/<class>/<stem>_mask.png. All pixels are used, none subsampled: each map's scores go into per-label
  histograms of 2^18 bins over sqrt(score) in [0, sqrt(2)] (scores above 2 in the top bin), and the AUROC is read
  off the histograms, a pair in one bin counting half. `pixel_auroc_tie_bound` is the most that binning can move
  the result (half the share of positive-negative pairs sharing a bin). null without any ground truth mask.
- precision, recall, f1: image-level, at the calibrated thresholds (reject = some region >= min_region_area
  above the pixel threshold), defective = positive. `pixel` holds the same at pixel level, predicted pixels being
  the regions the decision keeps.
- image_f1_max, pixel_f1_max: the best F1 over all thresholds (an oracle threshold, to compare score maps; a line
  gets the calibrated one).
- per_class: for each test/<class>: count, its image AUROC and pixel AUROC against test/good, the rejected share.
- throughput: images per second and per-image milliseconds of the inspection itself (prepare + infer + finish;
  reading files and the metrics excluded), with the onnxruntime thread count.

`scores` evaluates the same reconstruction scored by other difference kernels (inspectd/evaluation/scoring.py); with
several, one inference feeds all of them and the JSON holds each under `by_score`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from inspectd.core import mvtec
from inspectd.core.manifest import sha256_file
from inspectd.daemon.cameras.folder import convert, decode, load_mask, natural_key
from inspectd.evaluation import metrics
from inspectd.evaluation.report import ReportWriter
from inspectd.evaluation.scoring import SCORES, native_score, variant_inspector
from inspectd.evaluation.thresholds import json_safe, open_inspector
from inspectd.inspection.decide import find_regions
from inspectd.inspection.inspector import Inspector

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
HIST_BINS = 1 << 18
HIST_TOP = math.sqrt(2.0)


@dataclass(frozen=True)
class TestImage:
    path: Path
    cls: str  # the test/<class> folder: "good" or a defect kind
    mask: Path | None  # ground truth mask file (None for good images, or a defect image without one)

    @property
    def defective(self) -> bool:
        return self.cls != "good"


def find_test_images(data: str | Path) -> list[TestImage]:
    """DIR/test/<class>/* (or DIR itself being the test/ folder), with DIR/ground_truth/<class>/<stem>_mask.png."""

    root = Path(data)
    test = root / "test" if (root / "test").is_dir() else root
    if not test.is_dir() or test.name != "test":
        msg = f"{root} has no test/ folder (expected the MVTec layout: DIR/test/<class>/*, DIR/ground_truth/<class>/)"
        raise FileNotFoundError(msg)
    out = []
    for sub in sorted((p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name):
        files = [p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        for f in sorted(files, key=lambda p: natural_key(p.relative_to(test))):
            mask = None
            if sub.name != "good":
                candidate = mvtec.mask_path(test.parent, sub.name, f.stem)
                mask = candidate if candidate.is_file() else None
            out.append(TestImage(f, sub.name, mask))
    if not out:
        msg = f"no images ({', '.join(IMAGE_SUFFIXES)}) under {test}/<class>/"
        raise FileNotFoundError(msg)
    return out


def trained_files(training: dict | None) -> list[dict]:
    """[{image, sha256}] of every labelled defect file a model's training facts say it learnt from: its own
    (training.hard_defects.files) and a fine-tuning parent's (inherited_files)."""
    hard = (training or {}).get("hard_defects") or {}
    return list(hard.get("files") or []) + list(hard.get("inherited_files") or [])


def trained_on(manifest) -> dict[str, str]:
    """sha256 -> "<class>/<name>" of the labelled defect images the model was trained on (the hard-defect
    set, trained_files): evaluating on them would measure memory, not detection."""
    files = trained_files(manifest.training)
    return {f["sha256"]: f["image"] for f in files if isinstance(f, dict) and f.get("sha256")}


def leave_out_trained(items: list[TestImage], manifest) -> tuple[list[TestImage], list[str]]:
    """The test images minus those whose file the model was trained on (by sha256, whatever their path here)."""
    known = trained_on(manifest)
    if not known:
        return items, []

    kept, left_out = [], []
    for item in items:
        if sha256_file(item.path) in known:
            left_out.append(f"{item.cls}/{item.path.name}")
        else:
            kept.append(item)
    return kept, left_out


def read_image(path: Path, color: str) -> np.ndarray:

    return convert(decode(np.fromfile(path, np.uint8), str(path)), color)


def read_truth(item: TestImage, hw: tuple[int, int]) -> np.ndarray | None:
    """Boolean defect mask of an image; all False for good images; None when a defect image has no usable mask."""
    if not item.defective:
        return np.zeros(hw, dtype=bool)
    if item.mask is None:
        return None

    m = load_mask(item.mask, hw)
    return None if m is None else m > 0


# --- accumulators ---------------------------------------------------------------------------------------------


class PixelHistogram:
    """Per-label histograms of pixel scores (see the module docstring); AUROC and best F1 from them."""

    def __init__(self) -> None:
        self.pos = np.zeros(HIST_BINS, dtype=np.int64)
        self.neg = np.zeros(HIST_BINS, dtype=np.int64)

    @staticmethod
    def bins(score_map: np.ndarray) -> np.ndarray:
        s = np.sqrt(np.clip(score_map, 0.0, 2.0, dtype=np.float32))
        return np.minimum((s * (HIST_BINS / HIST_TOP)).astype(np.int64), HIST_BINS - 1)

    def add(self, bins: np.ndarray, truth: np.ndarray) -> None:
        self.pos += np.bincount(bins[truth], minlength=HIST_BINS)
        self.neg += np.bincount(bins[~truth], minlength=HIST_BINS)

    def merged(self, other: PixelHistogram) -> PixelHistogram:
        out = PixelHistogram()
        out.pos = self.pos + other.pos
        out.neg = self.neg + other.neg
        return out

    def curves(self) -> dict | None:
        """ROC (fpr, tpr) and PR (recall, precision) points from the highest bin down; None without both labels."""
        tp = np.cumsum(self.pos[::-1]).astype(np.float64)
        fp = np.cumsum(self.neg[::-1]).astype(np.float64)
        if tp[-1] == 0 or fp[-1] == 0:
            return None
        keep = np.r_[tp[0] + fp[0] > 0, (np.diff(tp) > 0) | (np.diff(fp) > 0)]  # bins that hold pixels
        tp, fp = tp[keep], fp[keep]
        return {
            "fpr": np.r_[0.0, fp / fp[-1]],
            "tpr": np.r_[0.0, tp / tp[-1]],
            "recall": tp / tp[-1],
            "precision": tp / np.maximum(tp + fp, 1),
        }

    def auroc(self) -> tuple[float | None, float | None]:
        """(AUROC, bound on its binning error)."""
        p, n = self.pos.astype(np.float64), self.neg.astype(np.float64)
        n_pos, n_neg = p.sum(), n.sum()
        if n_pos == 0 or n_neg == 0:
            return None, None
        below = np.cumsum(n) - n
        u = float((p * (below + 0.5 * n)).sum())
        tie = float((p * n).sum()) / (n_pos * n_neg)
        return u / (n_pos * n_neg), 0.5 * tie

    def f1_max(self) -> dict | None:
        if self.pos.sum() == 0:
            return None
        tp = np.cumsum(self.pos[::-1])  # predicted positive: bins >= b, b from the top
        fp = np.cumsum(self.neg[::-1])
        precision = tp / np.maximum(tp + fp, 1)
        recall = tp / tp[-1]
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        i = int(np.argmax(f1))
        b = HIST_BINS - 1 - i
        threshold = (b * HIST_TOP / HIST_BINS) ** 2
        return {
            "f1": float(f1[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "threshold": threshold,
        }


def kept_region_mask(score_map: np.ndarray, pixel: float, min_area: int) -> np.ndarray:
    """The pixels the decision calls defective: regions above `pixel` of at least `min_area` pixels (decide.py)."""
    return find_regions(score_map, pixel, min_area).mask()


class _ScoreResults:
    """Everything one score variant collects over the run."""

    def __init__(self, score: str, inspector, thresholds: dict | None) -> None:
        self.score = score
        self.inspector = inspector
        self.thresholds = thresholds
        self.records: list[dict] = []
        self.hist_good = PixelHistogram()
        self.hist_class: dict[str, PixelHistogram] = {}
        self.pixel_counts = {"tp": 0, "fp": 0, "fn": 0}
        self.no_truth = 0

    def add(self, item: TestImage, inspection, truth: np.ndarray | None, ms: float) -> dict:
        d = inspection.decision
        rec = {
            "file": str(item.path),
            "class": item.cls,
            "score": float(d.score),
            "reject": d.code.name != "PASS",
            "defect_area": int(d.defect_area),
            "regions": [r.as_dict() for r in d.regions],
            "ms": round(ms, 2),
        }
        if inspection.parts is not None:  # an ensemble: each model's own image score (its divided map)
            rec["model_scores"] = [float(v) for v in inspection.parts]
        self.records.append(rec)
        if truth is None:
            self.no_truth += 1
            return rec
        rec["truth_area"] = int(np.count_nonzero(truth))
        bins = PixelHistogram.bins(inspection.score_map)
        hist = self.hist_good if not item.defective else self.hist_class.setdefault(item.cls, PixelHistogram())
        hist.add(bins, truth)
        if self.thresholds is not None:
            pred = kept_region_mask(
                inspection.score_map, self.inspector.pixel_threshold, self.inspector.min_region_area
            )
            self.pixel_counts["tp"] += int(np.count_nonzero(pred & truth))
            self.pixel_counts["fp"] += int(np.count_nonzero(pred & ~truth))
            self.pixel_counts["fn"] += int(np.count_nonzero(~pred & truth))
        return rec

    def pixel_histogram(self) -> PixelHistogram:
        """Every pixel with ground truth: the good images' and each defect class's."""
        total = self.hist_good
        for h in self.hist_class.values():
            total = total.merged(h)
        return total

    def summary(self) -> dict:
        recs = self.records
        scores = np.array([r["score"] for r in recs])
        y = np.array([r["class"] != "good" for r in recs])
        rejected = np.array([r["reject"] for r in recs])
        known = self.thresholds is not None
        out: dict = {"score": self.score, "image_auroc": metrics.auroc(scores, y)}
        total = self.pixel_histogram()
        out["pixel_auroc"], out["pixel_auroc_tie_bound"] = total.auroc()
        image_prf = metrics.prf(
            int(np.count_nonzero(rejected & y)),
            int(np.count_nonzero(rejected & ~y)),
            int(np.count_nonzero(~rejected & y)),
        )
        for k in ("f1", "precision", "recall"):
            out[k] = image_prf[k] if known else None
        out["thresholds"] = self.thresholds
        out["confusion"] = (
            {
                "good_pass": int(np.count_nonzero(~rejected & ~y)),
                "good_reject": int(np.count_nonzero(rejected & ~y)),
                "defect_reject": int(np.count_nonzero(rejected & y)),
                "defect_pass": int(np.count_nonzero(~rejected & y)),
            }
            if known
            else None
        )
        out["pixel"] = metrics.prf(**self.pixel_counts) if known and out["pixel_auroc"] is not None else None
        out["image_f1_max"] = metrics.f1_max(scores, y)
        out["pixel_f1_max"] = total.f1_max() if out["pixel_auroc"] is not None else None
        per_class = {}
        for cls in sorted({r["class"] for r in recs}):
            sel = np.array([r["class"] in (cls, "good") for r in recs])
            mine = np.array([r["class"] == cls for r in recs])
            entry: dict[str, Any] = {
                "n": int(mine.sum()),
                "reject_rate": float(rejected[mine].mean()) if known else None,
                "mean_score": float(scores[mine].mean()),
            }
            if cls != "good":
                entry["image_auroc"] = metrics.auroc(scores[sel], y[sel])
                hist = self.hist_class.get(cls)
                entry["pixel_auroc"] = hist.merged(self.hist_good).auroc()[0] if hist is not None else None
            per_class[cls] = entry
        out["per_class"] = per_class
        out["images_without_ground_truth"] = self.no_truth
        if recs and "model_scores" in recs[0]:  # an ensemble: how each model alone ranks the same images
            out["model_image_auroc"] = [
                metrics.auroc(np.array([r["model_scores"][i] for r in recs]), y)
                for i in range(len(recs[0]["model_scores"]))
            ]
        return out


# --- the run --------------------------------------------------------------------------------------------------


def _score_runs(base: Inspector, scores: Sequence[str]) -> list[_ScoreResults]:
    """One result set per score asked for (default: the model's own), each with its Inspector, warmed up."""
    native = native_score(base.manifest)
    wanted = list(dict.fromkeys(scores or [native]))
    for s in wanted:
        if s not in SCORES and s != native:
            msg = f"unknown score {s!r}, expected {native} (the model's own) or one of {', '.join(SCORES)}"
            raise ValueError(msg)
    runs = [_ScoreResults(s, *variant_inspector(base, s)) for s in wanted]
    base.warmup()
    for r in runs:
        if r.inspector is not base:
            r.inspector.ssim.warmup(r.inspector.preprocessor.channels)
    return runs


def evaluate(
    model_dir: str | Path,
    data: str | Path,
    *,
    scores: Sequence[str] = (),
    threads: int = 0,
    report: str | Path | None = None,
    report_max: int | None = None,
    log: IO[str] | None = sys.stderr,
) -> dict:
    """Evaluate a model directory on DIR/test (see the module docstring). `scores`: variants to compute (default:
    the manifest's own); the first one is the headline result. Writes an HTML report when `report` is set."""

    t_start = time.monotonic()
    items = find_test_images(data)
    base = open_inspector(model_dir, threads=threads)
    manifest = base.manifest
    items, left_out = leave_out_trained(items, manifest)
    if left_out and log is not None:
        print(
            f"evaluate: {len(left_out)} test images left out: the model was trained on them (hard-defect set)", file=log
        )
    if not items:
        msg = f"every test image under {data} is in the model's training set (manifest training.hard_defects)"
        raise ValueError(msg)
    runs = _score_runs(base, scores)

    writer = None
    if report is not None:
        writer = ReportWriter(
            report, pixel_threshold=runs[0].inspector.pixel_threshold, min_region_area=runs[0].inspector.min_region_area
        )

    infer_s = 0.0
    per_image_ms: list[float] = []
    bar = _Progress(len(items), log)
    for k, item in enumerate(items):
        image = read_image(item.path, manifest.preprocess.color)
        truth = read_truth(item, image.shape[:2])
        t0 = time.perf_counter()
        pending = base.infer(base.prepare(image))
        t_shared = time.perf_counter() - t0
        first: tuple | None = None
        for i, r in enumerate(runs):
            t1 = time.perf_counter()
            result = r.inspector.finish(pending, keep_reconstruction=(i == 0 and writer is not None), model_scores=True)
            ms = (t_shared + time.perf_counter() - t1) * 1e3
            rec = r.add(item, result, truth, ms)
            if i == 0:
                first = (result, rec, ms)
        assert first is not None  # runs is never empty
        result, rec, ms = first
        per_image_ms.append(ms)
        infer_s += ms / 1e3
        if writer is not None:
            recon = _stitch_reconstruction(base, result.reconstruction, pending.prepared.layout)
            writer.add(k, item, image, recon, result.score_map, result.decision, truth, rec)
        bar.step(k + 1)
    bar.done()

    by_score = {r.score: r.summary() for r in runs}
    head = by_score[runs[0].score]
    per_ms = np.array(per_image_ms)
    out = {
        "model": str(model_dir),
        "model_name": manifest.name,
        "model_sha256": manifest.identity,  # onnx.sha256, or an ensemble's identity
        **(
            {"ensemble": manifest.training.get("ensemble", {}) | {"combine": manifest.ensemble.combine}}
            if manifest.ensemble is not None
            else {}
        ),
        "data": str(data),
        "n_images": len(items),
        "n_good": sum(1 for t in items if not t.defective),
        "n_defective": sum(1 for t in items if t.defective),
        "left_out_trained_on": {
            "count": len(left_out),
            "images": left_out,
            "why": "the model was trained on them (manifest training.hard_defects)",
        },
        "score": head["score"],
        "score_spec": {
            "ssim": manifest.ssim.model_dump(mode="json"),
            "reduction": manifest.score.reduction,
            "smooth_sigma": manifest.score.smooth_sigma,
        },
        "preprocess": manifest.preprocess.model_dump(mode="json"),
        **{k: v for k, v in head.items() if k != "score"},
        "throughput": {
            "images_per_s": len(items) / max(infer_s, 1e-9),
            "ms_per_image_mean": float(per_ms.mean()),
            "ms_per_image_p50": float(np.percentile(per_ms, 50)),
            "ms_per_image_p99": float(np.percentile(per_ms, 99)),
            "onnxruntime_threads": threads or "default",
            "note": "prepare + infer + finish per image (file reading and metrics excluded); "
            + ("one inference shared by every --score variant, the time of the first" if len(runs) > 1 else ""),
        },
        "images": runs[0].records,
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    if len(runs) > 1:
        out["by_score"] = {
            k: {kk: vv for kk, vv in v.items() if kk != "per_class"} | {"per_class": v["per_class"]}
            for k, v in by_score.items()
        }
    out = json_safe(out)
    if writer is not None:
        out["report"] = str(writer.finish(out, report_max, pixels=runs[0].pixel_histogram()))
    return out


def _stitch_reconstruction(inspector, recon: np.ndarray | None, layout) -> np.ndarray | None:
    """Per-tile reconstructions in [0, 1] -> one frame-sized uint8 image (the score map's stitching rule)."""
    if recon is None:
        return None
    pre = inspector.preprocessor
    if recon.ndim == 3:
        frame = pre.stitch(recon, layout)
    else:
        frame = np.dstack([pre.stitch(np.ascontiguousarray(recon[..., c]), layout) for c in range(recon.shape[3])])
    return np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)


class _Progress:
    """A one-line progress bar on a terminal; a line every 10 % otherwise."""

    def __init__(self, total: int, log: IO[str] | None) -> None:
        self.total, self.log = total, log
        self.tty = bool(log is not None and getattr(log, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.last_decile = 0

    def step(self, n: int) -> None:
        if self.log is None:
            return
        elapsed = time.monotonic() - self.t0
        if self.tty:
            filled = int(30 * n / self.total)
            eta = elapsed / n * (self.total - n)
            self.log.write(
                f"\revaluate [{'#' * filled}{'.' * (30 - filled)}] {n}/{self.total}  {elapsed:.0f} s, eta {eta:.0f} s"
            )
            self.log.flush()
        elif n * 10 // self.total > self.last_decile or n == self.total:
            self.last_decile = n * 10 // self.total
            print(f"evaluate: {n}/{self.total} images, {elapsed:.0f} s", file=self.log, flush=True)

    def done(self) -> None:
        if self.log is not None and self.tty:
            self.log.write("\n")
            self.log.flush()
