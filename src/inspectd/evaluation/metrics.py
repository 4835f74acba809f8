"""Detection metrics in numpy: rank-based AUROC, the best F1 over all thresholds, precision/recall/F1 of decisions.

No scikit-learn: the AUROC is the Mann-Whitney U statistic, computed from the ranks of all scores with ties given
their average rank, which is exactly the area under the ROC curve with ties counted half (sklearn's
``roc_auc_score`` gives the same number). Scores of any size are handled; a caller holding many millions of pixels
may subsample them first (see inspectd/evaluation/evaluate.py).
"""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` (higher = more anomalous) against boolean `labels`.

    None when only one class is present (the AUROC is undefined then)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        msg = f"{s.size} scores but {y.size} labels"
        raise ValueError(msg)
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    if not np.all(np.isfinite(s)):
        msg = "scores must be finite (NaN/inf found)"
        raise ValueError(msg)
    order = np.argsort(s, kind="stable")
    ranked = s[order]
    # average rank (1-based) of each group of equal scores
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], ranked.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    group = np.repeat(np.arange(starts.size), ends - starts)
    pos_rank_sum = float(avg[group][y[order]].sum())
    u = pos_rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def f1_max(scores: np.ndarray, labels: np.ndarray) -> dict | None:
    """The best F1 over every threshold "score >= t" (an oracle threshold: for comparing score maps, not a result
    a line would get), with its precision, recall and threshold. None without positives."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or s.size == 0:
        return None
    order = np.argsort(-s, kind="stable")
    ranked, hits = s[order], y[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # only thresholds between distinct scores
    tp, fp, thr = tp[last], fp[last], ranked[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / n_pos
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1))
    return {
        "f1": float(f1[i]),
        "precision": float(precision[i]),
        "recall": float(recall[i]),
        "threshold": float(thr[i]),
    }


def prf(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall and F1 of counted decisions (None where undefined: nothing predicted or nothing to find)."""
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(false positive rate, true positive rate) at every threshold "score >= t", from (0, 0) to (1, 1); None when
    one class is missing. Its trapezoid area is auroc() (ties counted half)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        return None
    tp, fp = _cumulative_hits(s, y)
    return np.r_[0.0, fp / (y.size - n_pos)], np.r_[0.0, tp / n_pos]


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, precision) at every threshold "score >= t", highest threshold first; None without positives."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        return None
    tp, fp = _cumulative_hits(s, y)
    return tp / n_pos, tp / np.maximum(tp + fp, 1)


def _cumulative_hits(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct threshold, from the highest score down."""
    order = np.argsort(-s, kind="stable")
    ranked, hits = s[order], y[order]
    last = np.r_[ranked[1:] != ranked[:-1], True]
    return np.cumsum(hits)[last].astype(np.float64), np.cumsum(~hits)[last].astype(np.float64)
