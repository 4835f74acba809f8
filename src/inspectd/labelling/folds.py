"""Split labelled images into N disjoint subsets, one per checker model (each checker is trained on its
own subset, so every image can be checked by checkers that never saw its label).

Stratified: within each stratum (the class folder, and whether the label is defective) images are shuffled with a
fixed seed and dealt round-robin, so every fold gets its share of each defect class. N = 1 puts everything in one
fold (the single-checker case; its check is then in-sample, which the check's JSON says).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence


def assign_folds(
    ids: Sequence[str], n: int, *, seed: int = 0, stratum: Callable[[str], str] | None = None
) -> list[list[str]]:
    """n disjoint, sorted lists of ids that together hold every id exactly once."""
    if n < 1:
        msg = f"folds must be >= 1, got {n}"
        raise ValueError(msg)
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        msg = "image ids must be unique"
        raise ValueError(msg)
    if len(unique) < n:
        msg = f"{len(unique)} images cannot fill {n} folds"
        raise ValueError(msg)
    key = stratum or (lambda i: i.split("/", 1)[0])
    groups: dict[str, list[str]] = defaultdict(list)
    for i in unique:
        groups[key(i)].append(i)
    rng = random.Random(seed)
    folds: list[list[str]] = [[] for _ in range(n)]
    start = 0
    for name in sorted(groups):
        members = groups[name]
        rng.shuffle(members)
        for j, i in enumerate(members):
            folds[(start + j) % n].append(i)
        start = (start + len(members)) % n  # keep fold sizes within one of each other
    return [sorted(f) for f in folds]


def held_out(fold_members: Sequence[Sequence[str]]) -> Callable[[str], list[int]]:
    """For an image id, the indices of the folds (checkers) that did not train on it."""
    owner = {i: k for k, members in enumerate(fold_members) for i in members}
    n = len(fold_members)

    def checkers_for(image_id: str) -> list[int]:
        k = owner.get(image_id)
        return [j for j in range(n) if j != k]

    return checkers_for
