"""The sampling gate: keep sampling a new product on the line until the good:defect ratio of the
collected images equals the base model's training ratio (within a tolerance) and both counts reach their minimums.

What is counted, in a collector's output (`inspectd collect`) or any MVTec-layout tree:

    good   = DIR/train/good/*                      (the collector's false rejects marked good; the fine-tune's data)
    defect = DIR/test/<every class but good>/*     (the collector's test/confirmed_defect, or MVTec defect classes)

DIR/test/good (MVTec's defect-free test images) is evaluation data: reported, not counted. The gate is met when

    good >= min_good  and  defect >= min_defect  and  |good/defect - wanted| <= tolerance x wanted

(inclusive at every boundary). A base model trained on good images only has no ratio to match (wanted = None): then
only the minimums apply, and the report says so. When the gate is not met the result says how many more of each
kind would meet it: the fewest additional images that reach both minimums and bring the ratio into the band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from inspectd.core.mvtec import GOOD
from inspectd.registry.errors import RegistryError
from inspectd.registry.product import GatePolicy
from inspectd.training.data import IMAGE_SUFFIXES  # what the fine-tune reads (no torch in that module)

EPS = 1e-9  # relative slack so that a ratio exactly on the band's edge counts as inside despite float rounding


@dataclass(frozen=True)
class SampleCounts:
    good: int
    defect: int
    test_good: int = 0
    by_class: tuple[tuple[str, int], ...] = ()  # defect class -> images

    @property
    def ratio(self) -> float | None:
        """good / defect; None without defects."""
        return self.good / self.defect if self.defect else None


def _images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def count_samples(root: str | Path) -> SampleCounts:
    """Count a collected or MVTec-layout tree (see the module docstring)."""
    root = Path(root)
    train, test = root / "train" / GOOD, root / "test"
    if not train.is_dir() and not test.is_dir():
        msg = (
            f"{root} has neither train/good/ nor test/ (expected the collector's output or an MVTec-layout tree: "
            "DIR/train/good/*, DIR/test/<defect class>/*)"
        )
        raise RegistryError(msg)
    good = _images(train) if train.is_dir() else 0
    classes, test_good = [], 0
    if test.is_dir():
        for sub in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name == GOOD:
                test_good = _images(sub)
            else:
                classes.append((sub.name, _images(sub)))
    return SampleCounts(good, sum(n for _, n in classes), test_good, tuple(classes))


@dataclass(frozen=True)
class GateResult:
    counts: SampleCounts
    policy: GatePolicy
    wanted: float | None  # the good:defect ratio to reach (None: the base model was trained on good images only)
    wanted_from: str  # where `wanted` came from
    good_ok: bool
    defect_ok: bool
    ratio_ok: bool
    need_good: int  # more good images that would meet the gate (with need_defect more defects)
    need_defect: int

    @property
    def met(self) -> bool:
        return self.good_ok and self.defect_ok and self.ratio_ok

    def progress(self) -> str:
        """e.g. '412/500 good, 31/50 defects, ratio 13.3 vs 10.0 wanted (±10%): keep sampling: ...'"""
        c, p = self.counts, self.policy
        ratio = "no defects yet" if c.ratio is None else f"ratio {c.ratio:.1f}"
        if self.wanted is None:
            ratio += f" (no ratio to match: {self.wanted_from})"
        else:
            ratio += f" vs {self.wanted:.1f} wanted (±{p.ratio_tolerance:.0%})"
        text = f"{c.good}/{p.min_good} good, {c.defect}/{p.min_defect} defects, {ratio}"
        if self.met:
            return f"{text}: gate met"
        more = [f"{n} more {what}" for n, what in ((self.need_good, "good"), (self.need_defect, "defects")) if n]
        return f"{text}: keep sampling ({', '.join(more)})"

    def as_dict(self) -> dict:
        c = self.counts
        return {
            "met": self.met,
            "good": c.good,
            "defect": c.defect,
            "test_good": c.test_good,
            "defect_classes": dict(c.by_class),
            "ratio": c.ratio,
            "wanted_ratio": self.wanted,
            "wanted_from": self.wanted_from,
            "ratio_tolerance": self.policy.ratio_tolerance,
            "min_good": self.policy.min_good,
            "min_defect": self.policy.min_defect,
            "good_ok": self.good_ok,
            "defect_ok": self.defect_ok,
            "ratio_ok": self.ratio_ok,
            "need_good": self.need_good,
            "need_defect": self.need_defect,
            "progress": self.progress(),
        }


def _in_band(good: int, defect: int, wanted: float, tol: float) -> bool:
    if defect == 0:
        return False
    return abs(good / defect - wanted) <= tol * wanted * (1 + EPS) + EPS


def _needed(counts: SampleCounts, policy: GatePolicy, wanted: float | None) -> tuple[int, int]:
    """The fewest extra (good, defect) images that would meet the gate."""
    g = max(counts.good, policy.min_good)
    d = max(counts.defect, policy.min_defect)
    if wanted is not None:
        lo, hi = wanted * (1 - policy.ratio_tolerance), wanted * (1 + policy.ratio_tolerance)
        d = max(d, 1)
        if g / d > hi * (1 + EPS):  # too many good: more defects
            d = max(d, math.ceil(g / hi - EPS))
        elif g / d < lo * (1 - EPS):  # too few good: more good
            g = max(g, math.ceil(lo * d - EPS))
        while not _in_band(g, d, wanted, policy.ratio_tolerance):  # a rounding edge: one more step settles it
            if g / d > wanted:
                d += 1
            else:
                g += 1
    return g - counts.good, d - counts.defect


def check_gate(
    counts: SampleCounts,
    policy: GatePolicy,
    wanted: float | None,
    wanted_from: str = "the base model was trained on good images only",
) -> GateResult:
    """`wanted_from` says where `wanted` came from (or, when it is None, why there is none)."""
    if policy.ratio is not None:
        wanted, wanted_from = policy.ratio, "the product file (gate.ratio)"
    good_ok = counts.good >= policy.min_good
    defect_ok = counts.defect >= policy.min_defect
    ratio_ok = True if wanted is None else _in_band(counts.good, counts.defect, wanted, policy.ratio_tolerance)
    need_good, need_defect = _needed(counts, policy, wanted)
    return GateResult(counts, policy, wanted, wanted_from, good_ok, defect_ok, ratio_ok, need_good, need_defect)
