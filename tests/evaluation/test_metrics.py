"""The metrics of `inspectd evaluate`: rank AUROC with ties, the histogram pixel AUROC, best F1, precision/recall."""

from __future__ import annotations

import numpy as np
import pytest

from inspectd.evaluation.evaluate import PixelHistogram, kept_region_mask
from inspectd.evaluation.metrics import auroc, f1_max, prf


def brute_force_auroc(scores, labels) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_auroc_is_the_share_of_correctly_ordered_pairs_with_ties_counted_half():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 8, 300).astype(float)  # many ties
    labels = rng.random(300) < 0.3
    assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels), abs=1e-12)
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5
    assert auroc([0.1, 0.2], [False, False]) is None


def test_the_histogram_pixel_auroc_matches_the_exact_rank_auroc():
    rng = np.random.default_rng(1)
    maps = [rng.gamma(2.0, 0.05, (40, 50)).astype(np.float32) for _ in range(6)]
    truths = [np.zeros((40, 50), bool) for _ in range(6)]
    for m, t in zip(maps[3:], truths[3:], strict=False):
        t[10:20, 10:25] = True
        m[t] += rng.uniform(0.0, 0.3, t.sum()).astype(np.float32)
    h = PixelHistogram()
    for m, t in zip(maps, truths, strict=False):
        h.add(PixelHistogram.bins(m), t)
    got, bound = h.auroc()
    exact = auroc(np.concatenate([m.ravel() for m in maps]), np.concatenate([t.ravel() for t in truths]))
    assert abs(got - exact) <= bound + 1e-9 and bound < 1e-3
    best = h.f1_max()
    assert 0.0 < best["f1"] <= 1.0 and best["threshold"] > 0


def test_f1_max_finds_the_best_threshold_and_prf_counts_decisions():
    best = f1_max(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    assert best["f1"] == pytest.approx(0.8) and best["threshold"] == pytest.approx(0.35)
    assert prf(tp=3, fp=1, fn=1) == {"f1": 0.75, "precision": 0.75, "recall": 0.75, "tp": 3, "fp": 1, "fn": 1}
    assert prf(tp=0, fp=0, fn=2)["precision"] is None


def test_predicted_pixels_are_the_regions_the_decision_keeps():
    from inspectd.inspection.decide import Decider

    m = np.zeros((30, 30), np.float32)
    m[2:4, 2:4] = 0.9  # 4 px: below the minimum area
    m[10:20, 10:15] = 0.9  # 50 px: kept
    pred = kept_region_mask(m, 0.5, 10)
    assert pred.sum() == 50 and pred[10:20, 10:15].all()
    d = Decider(0.5, 10).decide(m)
    assert d.defect_area == pred.sum()
