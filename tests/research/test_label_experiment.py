"""The corruption experiment's bookkeeping: corruptions have the IoU they claim, and the rules are re-applied to
stored rows with either region (global / local IoU)."""

from __future__ import annotations

import numpy as np

from inspectd.labelling.rules import MISSED_LABEL, REGION_MISMATCH, WRONG_LABEL, RuleConfig, iou
from research.label_experiment import grow, rejudge, score, shrink


def _disc(r: int, n: int = 101) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (((yy - n // 2) ** 2 + (xx - n // 2) ** 2) <= r * r).astype(np.uint8) * 255


def test_ring_and_eroded_corruptions_leave_the_label_at_iou_0_4_with_the_truth():
    truth = _disc(20)
    assert abs(iou(truth, grow(truth)) - 0.4) < 0.02
    assert abs(iou(truth, shrink(truth)) - 0.4) < 0.02


def _row(image, label_area, iou_global, iou_local, probability=0.9, predicted_area=100, k=1):
    return {
        "image": image,
        "label_area": label_area,
        "iou": iou_global,
        "iou_local": iou_local,
        "probability": probability,
        "predicted_area": predicted_area,
        "k": k,
    }


def test_rejudge_uses_the_iou_of_the_configured_region_and_score_counts_per_kind():
    rows = [
        _row("crack/a", 50, iou_global=0.1, iou_local=0.9),  # right label, checker weak elsewhere
        _row("crack/b", 50, iou_global=0.1, iou_local=0.3),  # ring corruption
        _row("good/c", 0, iou_global=1.0, iou_local=None, probability=0.95),  # deleted label, checker sees it
        _row("crack/d", 50, iou_global=0.9, iou_local=0.9, probability=0.1),  # false region on a good image
    ]
    kinds = {"crack/b": "ring", "good/c": "deleted", "crack/d": "false_region"}
    glob = {r["image"]: r["reason"] for r in rejudge(rows, RuleConfig())}
    loc = {r["image"]: r["reason"] for r in rejudge(rows, RuleConfig(region="local"))}
    assert glob == {
        "crack/a": REGION_MISMATCH,
        "crack/b": REGION_MISMATCH,
        "good/c": MISSED_LABEL,
        "crack/d": WRONG_LABEL,
    }
    assert loc["crack/a"] is None and loc["crack/b"] == REGION_MISMATCH
    s_glob, s_loc = (
        score(rejudge(rows, RuleConfig()), kinds, []),
        score(rejudge(rows, RuleConfig(region="local")), kinds, []),
    )
    assert (s_glob["recall"], s_glob["precision"]) == (1.0, 0.75)
    assert (s_loc["recall"], s_loc["precision"]) == (1.0, 1.0)
    assert s_loc["per_kind"]["ring"] == {
        "corrupted": 1,
        "flagged": 1,
        "right_reason": 1,
        "reasons": {REGION_MISMATCH: 1},
    }


def test_rejudge_applies_the_contrast_rule_to_stored_contrast_numbers():
    right = {"inside": 0.8, "core": 0.9, "rim": 0.7, "band": 0.1}
    ring = {"inside": 0.4, "core": 0.8, "rim": 0.2, "band": 0.02}
    eroded = {"inside": 0.9, "core": 0.9, "rim": 0.9, "band": 0.7}
    rows = [
        dict(_row(i, 50, 0.1, 0.1), contrast=c) for i, c in (("crack/a", right), ("crack/b", ring), ("crack/c", eroded))
    ]
    got = {r["image"]: r["reason"] for r in rejudge(rows, RuleConfig(region="contrast"))}
    assert got == {"crack/a": None, "crack/b": REGION_MISMATCH, "crack/c": REGION_MISMATCH}
    looser = {r["image"]: r["reason"] for r in rejudge(rows, RuleConfig(region="contrast", band_max=0.9))}
    assert looser["crack/c"] is None


def test_experiment_second_round_trains_without_what_the_first_round_flagged(mvtec_dir, tmp_path):
    """`--rounds 2`: the round-2 checkers train on every image except those the round-1 contrast rule flagged
    (folds.json lists them), and result.json reports both rounds."""
    import json

    import pytest

    pytest.importorskip("torch", reason="training checkers needs the train extra")
    from research.label_experiment import main

    work = tmp_path / "work"
    assert (
        main(
            [
                "--data",
                str(mvtec_dir),
                "--work",
                str(work),
                "--fraction",
                "0.2",
                "--encoder",
                "scratch",
                "--folds",
                "2",
                "--size",
                "32",
                "--iterations",
                "6",
                "--minutes",
                "1",
                "--rounds",
                "2",
            ]
        )
        == 0
    )
    doc = json.loads((work / "result.json").read_text())
    first, second = doc["rounds"]
    assert (first["round"], second["round"]) == (1, 2) and first["excluded_from_training"] == []
    assert first["contrast_flagged"], "tiny checkers should leave something in doubt"
    assert second["excluded_from_training"] == first["contrast_flagged"]
    assert json.loads((work / "checkers_round2" / "folds.json").read_text())["excluded"] == first["contrast_flagged"]
    assert doc["round"] == 2 and len(doc["kinds"]) == 4 and len(doc["rows"]) == 20
