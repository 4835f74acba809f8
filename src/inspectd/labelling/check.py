"""`inspectd label check`: run the checker models (onnxruntime only, never torch) over a labelled MVTec folder and
flag labelling anomalies by the label-check rules (rules.py).

Each image is checked only by the checkers that did not train on it (their folds are in the manifests); an image
that every checker trained on (the N = 1 case) is checked by all of them and marked `in_sample`. The checkers'
maps are averaged, resized to the image and cut at the mean of their pixel thresholds: that is the predicted
region (the global IoU, the missed label's area). The threshold-free region rules (local, contrast) read the mean
map sharpened to the image's edges (`RuleConfig.refine`, rules.py). Their image-level probabilities are combined
by sum or mean into the target probability.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inspectd.core.errors import ModelError
from inspectd.core.manifest import load_manifest
from inspectd.labelling.dataset import LabelledImage, read_gray, read_mask
from inspectd.labelling.rules import REASONS, RuleConfig, Verdict, judge, refine_map


class Checker:
    """One exported checker model directory (kind "classifier", written by `inspectd label train-checker`)."""

    def __init__(self, model_dir: str | Path) -> None:
        import onnxruntime as ort

        self.dir = Path(model_dir)
        m = load_manifest(self.dir)
        facts = m.training.get("checker") or {}
        if m.kind != "classifier" or "image_output" not in facts:
            msg = f"{self.dir} is not a label checker (kind {m.kind!r}); expected one written by train-checker"
            raise ModelError(msg)
        self.manifest = m
        self.name = m.name
        self.members = frozenset(facts.get("members", ()))
        self.pixel_threshold = float(m.thresholds.pixel)
        self._outputs = [m.output.name, facts["image_output"]]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # tiny model: more threads only spin on a busy machine
        self.session = ort.InferenceSession(str(self.dir / m.onnx.file), opts, providers=["CPUExecutionProvider"])
        self.hw = m.input.hw

    def predict(self, gray: np.ndarray) -> tuple[np.ndarray, float]:
        """(per-pixel probability at the image's size, image-level probability) for one uint8 gray image."""
        h, w = self.hw
        p = self.manifest.preprocess
        x = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = ((x / p.divide - p.mean) / p.std)[None, None]
        prob_map, prob = self.session.run(self._outputs, {self.manifest.input.name: x})
        full = cv2.resize(prob_map[0, 0], (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
        return full, float(np.asarray(prob).reshape(-1)[0])


def load_checkers(directory: str | Path) -> list[Checker]:
    """Every checker_*/ (or the directory itself when it is one model directory) under `directory`."""
    directory = Path(directory)
    dirs = (
        [directory]
        if (directory / "manifest.json").is_file()
        else sorted(p for p in directory.iterdir() if (p / "manifest.json").is_file())
    )
    if not dirs:
        msg = f"no checker model directories (with manifest.json) in {directory}; run `inspectd label train-checker`"
        raise ModelError(msg)
    return [Checker(d) for d in dirs]


@dataclass
class ImageCheck:
    item: LabelledImage
    verdict: Verdict
    checkers: list[str]
    in_sample: bool
    predicted: np.ndarray | None = field(default=None, repr=False)  # kept for flagged images (the report)
    probability_map: np.ndarray | None = field(default=None, repr=False)  # float16, flagged images only
    config: RuleConfig = field(default_factory=RuleConfig)

    @property
    def severity(self) -> float:
        """How strongly the checkers disagree with the label: for a defective label 1 - IoU (region global or
        local) or how far its worst contrast ratio lies beyond its limit (region contrast), else the mean
        probability (used to sort the review worst first)."""
        v, cfg = self.verdict, self.config
        if v.label_area > 0 and cfg.region == "contrast" and v.contrast is not None:
            return v.contrast.excess(cfg)
        if v.label_area > 0:
            return 1.0 - (v.iou_local if cfg.region == "local" and v.iou_local is not None else v.iou)
        return v.probability / max(len(self.checkers), 1) if cfg.combine == "sum" else v.probability

    def as_json(self) -> dict:
        v = self.verdict
        return {
            "image": self.item.id,
            "reason": v.reason,
            "iou": round(v.iou, 4),
            "iou_local": None if v.iou_local is None else round(v.iou_local, 4),
            "contrast": None if v.contrast is None else v.contrast.as_dict(),
            "contrast_problems": None if v.contrast is None else v.contrast.problems(self.config),
            "probability": round(v.probability, 4),
            "label_area": v.label_area,
            "predicted_area": v.predicted_area,
            "checkers": self.checkers,
            "in_sample": self.in_sample,
        }


def rule_maps(
    gray: np.ndarray, maps: Sequence[np.ndarray], pixel_thresholds: Sequence[float], config: RuleConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted region 0/255, probability map for the threshold-free rules) from the checkers' maps: the mean map
    cut at the mean pixel threshold, which was calibrated on the unrefined map, and the mean map refined."""
    mean_map = np.mean(maps, axis=0)
    predicted = (mean_map > float(np.mean(pixel_thresholds))).astype(np.uint8) * 255
    return predicted, refine_map(gray, mean_map, config)


def check_image(item: LabelledImage, checkers: Sequence[Checker], config: RuleConfig) -> ImageCheck:
    gray = read_gray(item.image_path)
    label = read_mask(item, gray.shape)
    use = [c for c in checkers if item.id not in c.members]
    in_sample = not use
    use = use or list(checkers)
    maps, probs = zip(*(c.predict(gray) for c in use), strict=False)
    predicted, prob_map = rule_maps(gray, maps, [c.pixel_threshold for c in use], config)
    verdict = judge(label, predicted, probs, config, prob_map=prob_map)
    if not verdict.flagged:
        return ImageCheck(item, verdict, [c.name for c in use], in_sample, None, None, config)
    kept = prob_map.astype(np.float16)
    return ImageCheck(item, verdict, [c.name for c in use], in_sample, predicted, kept, config)


def run_check(
    items: Iterable[LabelledImage],
    checkers: Sequence[Checker],
    config: RuleConfig = RuleConfig(),
    log: Callable[[str], None] | None = None,
) -> list[ImageCheck]:
    results = []
    for n, item in enumerate(items, 1):
        results.append(check_image(item, checkers, config))
        if log and n % 100 == 0:
            log(f"checked {n} images")
    return results


def worst_first(results: Iterable[ImageCheck]) -> list[ImageCheck]:
    return sorted((r for r in results if r.verdict.flagged), key=lambda r: (-r.severity, r.item.id))


def summary(results: Sequence[ImageCheck], checkers: Sequence[Checker], config: RuleConfig) -> dict:
    flagged = worst_first(results)
    return {
        "flagged": [r.as_json() for r in flagged],
        "checked": len(results),
        "counts": {reason: sum(r.verdict.reason == reason for r in flagged) for reason in REASONS},
        "rules": config.as_dict(),
        "checkers": [{"name": c.name, "dir": str(c.dir), "pixel_threshold": c.pixel_threshold} for c in checkers],
    }


def flagged_ids(path: str | Path) -> list[str]:
    """The image ids a `label check` JSON flagged; ValueError naming what is wrong with the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"cannot read the check result {path}: {exc}"
        raise ValueError(msg) from exc
    flagged = doc.get("flagged") if isinstance(doc, dict) else None
    if not isinstance(flagged, list) or not all(
        isinstance(f, dict) and isinstance(f.get("image"), str) for f in flagged
    ):
        msg = f'{path} is not a `label check` result: expected {{"flagged": [{{"image": "<class>/<stem>"}}, ...]}}'
        raise ValueError(msg)
    return [f["image"] for f in flagged]


def write_json(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path
