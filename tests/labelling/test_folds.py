"""Checker folds are disjoint, cover the data and keep each class spread over the folds."""

from __future__ import annotations

import pytest

from inspectd.labelling.folds import assign_folds, held_out

IDS = [f"crack/{i:03d}" for i in range(7)] + [f"good/{i:03d}" for i in range(12)] + [f"hole/{i:03d}" for i in range(5)]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_folds_are_disjoint_and_cover_the_data(n):
    folds = assign_folds(IDS, n, seed=3)
    assert len(folds) == n
    flat = [i for f in folds for i in f]
    assert sorted(flat) == sorted(IDS) and len(flat) == len(set(flat))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_stratified_and_reproducible():
    folds = assign_folds(IDS, 2, seed=1)
    for cls, total in (("crack", 7), ("good", 12), ("hole", 5)):
        counts = [sum(i.startswith(cls) for i in f) for f in folds]
        assert max(counts) - min(counts) <= 1 and sum(counts) == total
    assert assign_folds(IDS, 2, seed=1) == folds


def test_held_out_names_the_checkers_that_did_not_train_on_an_image():
    folds = assign_folds(IDS, 3)
    others = held_out(folds)
    for k, members in enumerate(folds):
        for i in members:
            assert others(i) == [j for j in range(3) if j != k]
    assert others("new/unseen") == [0, 1, 2]


def test_bad_fold_counts_are_refused():
    with pytest.raises(ValueError):
        assign_folds(IDS, 0)
    with pytest.raises(ValueError):
        assign_folds(IDS[:2], 3)
