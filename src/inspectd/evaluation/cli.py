"""`inspectd evaluate`: a model directory over an MVTec-layout test tree, through the daemon's own code path
(inspectd/evaluation/evaluate.py), to JSON and optionally an HTML report; no torch.

Exit codes: 0 done; 2 bad arguments, model or data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inspectd.core.errors import ModelError

EXIT_OK, EXIT_USAGE = 0, 2
SCORE_CHOICES = ("gaussian-ssim", "uniform-ssim", "l2", "all")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on an MVTec-layout test tree (AUROC, F1 at the calibrated thresholds, report)",
        description="Run the daemon's inspection (preprocess, onnxruntime, difference map, decide) over DIR/test/* "
        "and write image/pixel AUROC, precision/recall/F1 at the model's calibrated thresholds, per-class numbers "
        "and throughput as JSON.",
    )
    p.add_argument("--model", type=Path, required=True, help="model directory (model.onnx + manifest.json)")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="MVTec-layout directory: DIR/test/<class>/*, DIR/ground_truth/<class>/<stem>_mask.png",
    )
    p.add_argument("--json", type=Path, required=True, dest="json_out", help="where to write the results")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write DIR/index.html: per image input, reconstruction, heat map, regions, ground truth",
    )
    p.add_argument(
        "--report-max",
        type=int,
        default=None,
        metavar="N",
        help="keep at most N images in the report: every missed defect and false reject, then the most anomalous",
    )
    p.add_argument(
        "--score",
        action="append",
        choices=SCORE_CHOICES,
        default=None,
        help="difference map: the manifest's own (default), gaussian-ssim, uniform-ssim, l2, or all "
        "three side by side (one inference feeds them); repeatable, the first is the headline",
    )
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_evaluate)


def _scores(chosen: list[str] | None) -> list[str]:
    out: list[str] = []
    for s in chosen or []:
        out += ["gaussian-ssim", "uniform-ssim", "l2"] if s == "all" else [s]
    return list(dict.fromkeys(out))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from inspectd.evaluation.evaluate import evaluate

    try:
        result = evaluate(
            args.model,
            args.data,
            scores=_scores(args.score),
            threads=args.threads,
            report=args.report,
            report_max=args.report_max,
            log=None if args.quiet else sys.stderr,
        )
    except (FileNotFoundError, ValueError, ModelError) as exc:
        print(f"inspectd evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    print(summary_text(result))
    return EXIT_OK


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summary_text(r: dict) -> str:
    lines = [
        (
            f"model {r['model_name']} on {r['data']}: {r['n_images']} images ({r['n_good']} good, {r['n_defective']} "
            f"defective)"
        ),
        *(
            [f"left out: {r['left_out_trained_on']['count']} images the model was trained on (hard-defect set)"]
            if r.get("left_out_trained_on", {}).get("count")
            else []
        ),
    ]
    variants = r.get("by_score") or {r["score"]: r}
    lines.append("score           image AUROC  pixel AUROC  F1     precision  recall")
    for name, v in variants.items():
        lines.append(
            f"{name:<15} {_f(v['image_auroc']):<12} {_f(v['pixel_auroc']):<12} {_f(v['f1']):<6} "
            f"{_f(v['precision']):<10} {_f(v['recall'])}"
        )
    if r.get("model_image_auroc"):  # an ensemble: each model alone on the same images
        names = [m.get("name", "?") for m in r.get("ensemble", {}).get("models", [])]
        lines.append(
            "models alone (image AUROC, same images): "
            + ", ".join(f"{n} {_f(a)}" for n, a in zip(names, r["model_image_auroc"], strict=False))
        )
    lines.append("class      n    image AUROC  pixel AUROC  rejected")
    for cls, c in r["per_class"].items():
        lines.append(
            f"{cls:<10} {c['n']:<4} {_f(c.get('image_auroc')):<12} {_f(c.get('pixel_auroc')):<12} "
            f"{_f(c.get('reject_rate'))}"
        )
    t = r["throughput"]
    lines.append(f"throughput {t['images_per_s']:.1f} images/s ({t['ms_per_image_mean']:.1f} ms mean per image)")
    if r.get("report"):
        lines.append(f"report     {r['report']}")
    return "\n".join(lines)
