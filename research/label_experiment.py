"""The label-check measurement: corrupt a known 10 % of a labelled MVTec set, train checkers on the
corrupted labels, run the check, and count what it finds, per corruption kind.

    python -m research.label_experiment --data ../shared/datasets/magnetic-tile --work /tmp/labelcheck

Defaults (issue #23): three checkers on the frozen pretrained EfficientNet-Lite0 encoder (`train-checker`'s
default), 3 minutes of pixel-head training each; `train_seconds` in result.json is the whole train-checker time
(features + three decoders + export), the number the 20-minute budget is about.

Nothing is copied: the corrupted set under --work links its images to --data and holds only masks. Corruptions
(each leaves the corrupted label at IoU 0.4 with the true one, or IoU 0 for the last two):
- ring: the defect's label grown by a band around it to 2.5x its area (distance transform of the outside);
- eroded: the label shrunk to its innermost 40 % (distance transform of the inside);
- deleted: the mask removed (a missed label);
- false_region: an ellipse, sized like a real defect, drawn on a good image.

The check runs twice, on the checkers' map as it is and sharpened to the image's edges (RuleConfig.refine "none"
and "guided"), and the rules are swept over thresholds for both (result.json: by_refine, sweep, best_in_sweep).
`--rounds N` repeats train + check, each round after the first training its checkers without the images the previous
round's contrast rule flagged (`train-checker --exclude`); result.json's top level is the last round, `rounds` lists
every round's scores, exclusions and flags.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from inspectd.labelling.dataset import LabelledImage, link_image, read_gray, read_mask, scan, train_good, write_mask
from inspectd.labelling.rules import (
    MISSED_LABEL,
    REGION_MISMATCH,
    WRONG_LABEL,
    Contrast,
    RuleConfig,
    grow_to_area,
    inner_part,
    region_mismatch,
)

KINDS = ("ring", "eroded", "deleted", "false_region")
EXPECTED = {
    "ring": {REGION_MISMATCH},
    "eroded": {REGION_MISMATCH},
    "deleted": {MISSED_LABEL},
    "false_region": {WRONG_LABEL, REGION_MISMATCH},
}


def grow(mask: np.ndarray, factor: float = 2.5) -> np.ndarray:
    return (grow_to_area(mask, factor) * 255).astype(np.uint8)


def shrink(mask: np.ndarray, keep: float = 0.4) -> np.ndarray:
    return (inner_part(mask, keep) * 255).astype(np.uint8)


def false_region(shape: tuple[int, int], area: float, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    ratio = rng.uniform(1.0, 3.0)
    b = max(2.0, np.sqrt(area / (np.pi * ratio)))
    a = min(b * ratio, 0.4 * min(h, w))
    cx, cy = rng.uniform(a, w - a), rng.uniform(a, h - a)
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, (int(cx), int(cy)), (int(a), int(b)), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return m


def corrupt(
    data: Path, work: Path, fraction: float, seed: int
) -> tuple[list[LabelledImage], dict[str, str], list[str]]:
    """Build work/ (image links + masks); returns (items, {id: kind}, ids whose original mask is empty)."""
    rng = np.random.default_rng(seed)
    items = scan(data)
    n_bad = int(round(fraction * len(items)))
    masks = {i.id: read_mask(i, read_gray(i.image_path).shape) for i in items}
    defective = [i.id for i in items if masks[i.id].any()]
    good = [i.id for i in items if i.defect_class == "good"]
    empty_originals = [i.id for i in items if i.defect_class != "good" and not masks[i.id].any()]
    r = random.Random(seed)
    per = [n_bad // 4 + (k < n_bad % 4) for k in range(4)]
    picked_def = r.sample(defective, per[0] + per[1] + per[2])
    kinds = {}
    for k, kind in enumerate(KINDS[:3]):
        for i in picked_def[sum(per[:k]) : sum(per[: k + 1])]:
            kinds[i] = kind
    for i in r.sample(good, per[3]):
        kinds[i] = "false_region"
    areas = [int(np.count_nonzero(masks[i])) for i in defective]
    out = []
    for item in items:
        link = link_image(item.image_path, work, item.id)
        new = LabelledImage(
            item.id, link, work / "ground_truth" / item.mask_path.relative_to(item.mask_path.parents[1])
        )
        m = masks[item.id]
        kind = kinds.get(item.id)
        if kind == "ring":
            m = grow(m)
        elif kind == "eroded":
            m = shrink(m)
        elif kind == "deleted":
            m = np.zeros_like(m)
        elif kind == "false_region":
            m = false_region(m.shape, float(rng.choice(areas)), rng)
        if m.any():
            write_mask(work, item.id, m)
        out.append(new)
    return out, kinds, empty_originals


def score(records: list[dict], kinds: dict[str, str], empty: list[str]) -> dict:
    flagged = {r["image"]: r["reason"] for r in records if r["reason"]}
    per_kind = {}
    for kind in KINDS:
        ids = [i for i, k in kinds.items() if k == kind]
        per_kind[kind] = {
            "corrupted": len(ids),
            "flagged": sum(i in flagged for i in ids),
            "right_reason": sum(flagged.get(i) in EXPECTED[kind] for i in ids),
            "reasons": dict(Counter(flagged[i] for i in ids if i in flagged)),
        }
    tp = sum(i in kinds for i in flagged)
    fp_ids = [i for i in flagged if i not in kinds]
    fp_empty = sum(i in empty for i in fp_ids)
    return {
        "corrupted": len(kinds),
        "flagged": len(flagged),
        "true_positives": tp,
        "recall": tp / max(len(kinds), 1),
        "precision": tp / max(len(flagged), 1),
        "precision_counting_empty_originals_as_found": (tp + fp_empty) / max(len(flagged), 1),
        "false_positives_by_reason": dict(Counter(flagged[i] for i in fp_ids)),
        "false_positives_on_defective_images": sum(i.split("/")[0] != "good" for i in fp_ids),
        "flagged_empty_originals": fp_empty,
        "per_kind": per_kind,
    }


def rejudge(rows: list[dict], cfg: RuleConfig) -> list[dict]:
    """Re-apply the rules to stored per-image numbers (iou, target, areas, k checkers) under other thresholds."""
    out = []
    for r in rows:
        low, high = cfg.thresholds(r["k"])
        reason = None
        if r["label_area"] > 0 and r["probability"] < low:
            reason = WRONG_LABEL
        elif r["label_area"] == 0 and r["probability"] > high and r["predicted_area"] > cfg.area_threshold:
            reason = MISSED_LABEL
        elif r["label_area"] > 0 and region_mismatch(
            r["iou"], r.get("iou_local"), Contrast(**r["contrast"]) if r.get("contrast") else None, cfg
        ):
            reason = REGION_MISMATCH
        out.append({"image": r["image"], "reason": reason})
    return out


def _sweep_row(cfg: RuleConfig, s: dict) -> dict:
    if cfg.region == "contrast":
        knobs = {
            "rim_min": cfg.rim_min,
            "band_max": cfg.band_max,
            "high_threshold": cfg.high_threshold,
            "low_threshold": cfg.low_threshold,
        }
    else:
        knobs = {"iou_threshold": cfg.iou_threshold, "low_threshold": cfg.low_threshold}
    return {
        "region": cfg.region,
        "thresholds": knobs,
        "recall": round(s["recall"], 3),
        "precision": round(s["precision"], 3),
        "flagged": s["flagged"],
    }


def _sweep(rows: list[dict], kinds: dict[str, str], empty: list[str]) -> list[dict]:
    """The rules re-applied to stored rows over a grid of thresholds (each row: region, thresholds, R, P, n)."""
    out = []
    for region in ("global", "local"):
        for iou_t in (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
            for low in (0.5, 0.3, 0.2, 0.1):
                cfg = RuleConfig(iou_threshold=iou_t, low_threshold=low, region=region)
                out.append(_sweep_row(cfg, score(rejudge(rows, cfg), kinds, empty)))
    for rim, band, high, low in itertools.product(
        (0.3, 0.4, 0.5, 0.6), (0.4, 0.5, 0.6, 0.8, 1.0), (0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999), (0.5, 0.1)
    ):
        cfg = RuleConfig(region="contrast", rim_min=rim, band_max=band, high_threshold=high, low_threshold=low)
        out.append(_sweep_row(cfg, score(rejudge(rows, cfg), kinds, empty)))
    return out


def _check_round(items: list[LabelledImage], checkers: list, kinds: dict[str, str], empty: list[str]):
    """(scores per refinement, sweep rows, rows per refinement) of one set of checkers."""
    from inspectd.labelling.check import run_check

    by_refine, sweep, all_rows = {}, [], {}
    for refine in ("none", "guided"):
        results = run_check(items, checkers, RuleConfig(refine=refine), log=print)
        rows = all_rows[refine] = [{**r.as_json(), "k": len(r.checkers)} for r in results]
        by_refine[refine] = {
            name: score(rejudge(rows, RuleConfig(region=region)), kinds, empty)
            for name, region in (
                ("default_rules", "global"),
                ("local_region_rules", "local"),
                ("contrast_region_rules", "contrast"),
            )
        }
        sweep += [{**row, "refine": refine} for row in _sweep(rows, kinds, empty)]
    return by_refine, sweep, all_rows


def _print_round(rnd: int, by_refine: dict, sweep: list[dict], best: dict) -> None:
    for refine, scores in by_refine.items():
        for name, res in scores.items():
            print(f"round {rnd}, refine {refine}, {name}")
            print(json.dumps({k: res[k] for k in res if k != "per_kind"}, indent=1))
            for kind, v in res["per_kind"].items():
                print(f"{kind:13s} {v}")
    print(f"round {rnd} sweep (refine, region, its thresholds, recall, precision, flagged):")
    for s in sweep:
        print(
            f"  {s['refine']:6s} {s['region']:8s} {s['thresholds']}  R={s['recall']:.3f} P={s['precision']:.3f} "
            f"n={s['flagged']}"
        )
    for k, v in best.items():
        print(f"round {rnd} best precision at {k}: {v}")


def main(argv: list[str] | None = None) -> int:
    from inspectd.labelling.check import load_checkers
    from inspectd.labelling.checker import CheckerConfig
    from inspectd.labelling.training import TrainSettings, train_checkers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/inspectd-labelcheck"))
    p.add_argument("--fraction", type=float, default=0.10)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument(
        "--encoder",
        choices=("efficientnet-lite0", "scratch"),
        default="efficientnet-lite0",
        help="the checkers' network (train-checker --encoder)",
    )
    p.add_argument("--size", type=int, default=0, help="checker input (0: 256 pretrained, 128 scratch)")
    p.add_argument("--max-good", type=int, default=300, help="pretrained: at most this many train/good images")
    p.add_argument("--iterations", type=int, default=2500)
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per checker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop", type=int, default=64, help="training crop (input px); 0 = whole inputs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-pool", choices=("mean", "max"), default="max")
    p.add_argument("--jobs", type=int, default=1, help="checkers trained at once (one process and thread each)")
    p.add_argument("--no-train-good", action="store_true", help="checkers train on the corrupted test/ labels only")
    p.add_argument("--good-share", type=float, default=0.3, help="share of each batch drawn from train/good")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of train + check; each round after the first trains without the images the "
        "previous round's contrast rule flagged",
    )
    p.add_argument(
        "--skip-training",
        action="store_true",
        help="reuse the checkers already under --work (rounds without stored checkers still train)",
    )
    a = p.parse_args(argv)
    t0 = time.monotonic()
    items, kinds, empty = corrupt(a.data, a.work / "data", a.fraction, a.seed)
    print(f"corrupted {len(kinds)} of {len(items)} labels: {dict(Counter(kinds.values()))}")
    if a.encoder == "scratch":
        config = CheckerConfig(a.size or 128, a.size or 128, image_pool=a.image_pool)
    else:
        from inspectd.training.segmentation import SegConfig

        config = SegConfig(a.size or 256, a.size or 256, encoder=a.encoder)
    settings = TrainSettings(
        iterations=a.iterations,
        minutes=a.minutes,
        seed=a.seed,
        threads=1 if a.jobs > 1 else 0,
        batch_size=a.batch_size,
        crop=a.crop or None,
        good_share=a.good_share,
        max_good=a.max_good or None,
    )
    exclude: list[str] = []
    rounds = []
    for rnd in range(1, a.rounds + 1):
        checkers_dir = a.work / ("checkers" if rnd == 1 else f"checkers_round{rnd}")
        t_round = time.monotonic()
        if not (a.skip_training and (checkers_dir / "folds.json").is_file()):
            train_checkers(
                items,
                checkers_dir,
                folds=a.folds,
                config=config,
                settings=settings,
                data_root=str(a.work / "data"),
                jobs=a.jobs,
                extra_good=[] if a.no_train_good else train_good(a.data),
                exclude=exclude,
            )
        t_train = time.monotonic() - t_round
        by_refine, sweep, all_rows = _check_round(items, load_checkers(checkers_dir), kinds, empty)
        best = {
            f"recall>={r}": max((s for s in sweep if s["recall"] >= r), key=lambda s: s["precision"], default=None)
            for r in (0.8, 0.9)
        }
        # the next round's checkers do not train on what this round's contrast rule flagged (still in doubt)
        doubt = sorted(r["image"] for r in rejudge(all_rows["guided"], RuleConfig(region="contrast")) if r["reason"])
        rounds.append(
            {
                **by_refine["guided"],
                "by_refine": by_refine,
                "sweep": sweep,
                "best_in_sweep": best,
                "rows": all_rows["guided"],
                "rows_unrefined": all_rows["none"],
                "round": rnd,
                "excluded_from_training": exclude,
                "contrast_flagged": doubt,
                "train_seconds": round(t_train),
            }
        )
        _print_round(rnd, by_refine, sweep, best)
        exclude = doubt
    doc = {
        **rounds[-1],
        "rounds": [{k: v for k, v in r.items() if k not in ("rows", "rows_unrefined", "sweep")} for r in rounds],
        "kinds": kinds,
        "total_seconds": round(time.monotonic() - t0),
        "args": {k: str(v) for k, v in vars(a).items()},
    }
    (a.work / "result.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.work / 'result.json'} in {doc['total_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
