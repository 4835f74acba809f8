"""Matching a new product's categories against the registered models, with an explanation.

1. Each product category gets its level from the hierarchy (hierarchy.py).
2. Each level L gets a quota: q_L = ceil(r_L x n_L), n_L the product's categories on that level, r_L the policy's
   ratio for L (product.MatchPolicy; the cup example's quotas 1, 1, 1, 1, 2 come from 0.5 with 1.0 on level 5).
3. A product category p is matched by a model through the model category c nearest to it in the hierarchy: the same
   category (credit 1), or one `s` steps away along parent links, up or down (a parent or child is 1 step, a
   sibling or grandparent 2), s <= max_distance, credit related_weight ** s. A level is *covered* when at least
   q_L of its categories are matched. The candidates are the models that cover every level.
4. The match degree of a model: sum over levels of q_L x (mean credit of the level's categories), over sum of q_L;
   1.0 when every product category is matched exactly. The best candidate has the highest degree; ties go to the
   better evaluation (image AUROC of the model's latest evaluation; none counts below any), then to the newest
   registration, then to the name.

Everything here is pure: the store loads the hierarchy and the models, this module decides and explains.
docs/registry.md has a worked example.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from inspectd.registry.hierarchy import Hierarchy
from inspectd.registry.product import MatchPolicy

DEGREE_DIGITS = 9  # degrees equal to this many digits are a tie


@dataclass(frozen=True)
class ModelInfo:
    """What matching needs of a registered model."""

    id: int  # registration order: higher is newer
    name: str
    digest: str
    categories: tuple[str, ...]
    evaluation: float | None = None  # image AUROC of its latest evaluation


@dataclass(frozen=True)
class LevelQuota:
    level: int
    categories: tuple[str, ...]
    ratio: float
    quota: int


@dataclass(frozen=True)
class CategoryMatch:
    category: str  # the product's
    via: str | None  # the model's category that matched it (None: not matched)
    steps: int | None
    credit: float
    relation: str  # exact | broader (the model's category contains it) | narrower | related | none

    def describe(self) -> str:
        if self.via is None:
            return f"{self.category}: no match"
        if self.steps == 0:
            return f"{self.category} = {self.via} (exact, 1)"
        unit = "step" if self.steps == 1 else "steps"
        return f"{self.category} ~ {self.via} ({self.relation}, {self.steps} {unit}, {self.credit:g})"


@dataclass(frozen=True)
class LevelResult:
    quota: LevelQuota
    matches: tuple[CategoryMatch, ...]

    @property
    def matched(self) -> int:
        return sum(1 for m in self.matches if m.credit > 0)

    @property
    def covered(self) -> bool:
        return self.matched >= self.quota.quota

    @property
    def mean_credit(self) -> float:
        return sum(m.credit for m in self.matches) / len(self.matches)


@dataclass(frozen=True)
class Scored:
    model: ModelInfo
    levels: tuple[LevelResult, ...]
    degree: float
    unrelated: tuple[str, ...]  # the model's categories within max_distance of none of the product's

    @property
    def candidate(self) -> bool:
        return all(level.covered for level in self.levels)

    @property
    def degree_key(self) -> float:
        return round(self.degree, DEGREE_DIGITS)

    def rank_key(self) -> tuple:
        e = self.model.evaluation
        return (-self.degree_key, e is None, -(e or 0.0), -self.model.id, self.model.name)

    def shortfall(self) -> str:
        parts = []
        for lv in self.levels:
            if not lv.covered:
                missing = ", ".join(m.category for m in lv.matches if m.credit == 0)
                parts.append(f"level {lv.quota.level} matched {lv.matched} of quota {lv.quota.quota} ({missing})")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "model": self.model.name,
            "digest": self.model.digest,
            "id": self.model.id,
            "categories": list(self.model.categories),
            "evaluation_image_auroc": self.model.evaluation,
            "candidate": self.candidate,
            "degree": self.degree_key,
            "levels": [
                {
                    "level": lv.quota.level,
                    "quota": lv.quota.quota,
                    "matched": lv.matched,
                    "covered": lv.covered,
                    "matches": [
                        {
                            "category": m.category,
                            "via": m.via,
                            "steps": m.steps,
                            "credit": m.credit,
                            "relation": m.relation,
                        }
                        for m in lv.matches
                    ],
                }
                for lv in self.levels
            ],
            "unrelated": list(self.unrelated),
        }


@dataclass(frozen=True)
class MatchResult:
    categories: tuple[str, ...]
    quotas: tuple[LevelQuota, ...]
    ranked: tuple[Scored, ...]  # the candidates in rank order, then the other models by degree
    reasons: dict[str, str]  # model name -> why it is not the best

    @property
    def best(self) -> Scored | None:
        return self.ranked[0] if self.ranked and self.ranked[0].candidate else None

    def as_dict(self) -> dict:
        best = self.best
        return {
            "categories": list(self.categories),
            "levels": [
                {"level": q.level, "categories": list(q.categories), "ratio": q.ratio, "quota": q.quota}
                for q in self.quotas
            ],
            "best": best.model.name if best else None,
            "best_digest": best.model.digest if best else None,
            "degree": best.degree_key if best else None,
            "models": [s.as_dict() | {"why_not": self.reasons.get(s.model.name)} for s in self.ranked],
        }

    def explain(self) -> str:
        n_levels = len(self.quotas)
        lines = [f"{len(self.categories)} product categories on {n_levels} level{'s' * (n_levels != 1)}:"]
        for q in self.quotas:
            lines.append(f"  level {q.level}: {', '.join(q.categories):<40} quota {q.quota} (ratio {q.ratio:g})")
        best = self.best
        if best is None:
            lines.append(f"no model covers every level's quota ({len(self.ranked)} registered models considered)")
        else:
            lines.append(
                f"best: {best.model.name} (match degree {best.degree_key:.3f}, digest {best.model.digest[:12]})"
            )
            for lv in best.levels:
                lines.append(
                    f"  level {lv.quota.level}: {lv.matched}/{len(lv.matches)} matched, quota {lv.quota.quota}: "
                    + "; ".join(m.describe() for m in lv.matches)
                )
            if best.unrelated:
                lines.append(f"  its categories not related to the product: {', '.join(best.unrelated)}")
        for s in self.ranked:
            if s is not best:
                lines.append(f"  {s.model.name}: degree {s.degree_key:.3f}, {self.reasons[s.model.name]}")
        return "\n".join(lines)


def level_quotas(h: Hierarchy, categories: Iterable[str], policy: MatchPolicy) -> tuple[LevelQuota, ...]:
    """Group the product's categories by level and give each level its quota (at least 1)."""
    by_level: dict[int, list[str]] = defaultdict(list)
    for c in categories:
        by_level[h.level(c)].append(c)
    out = []
    for level, cats in sorted(by_level.items()):
        ratio = policy.ratio(level)
        quota = max(1, math.ceil(round(ratio * len(cats), DEGREE_DIGITS)))
        out.append(LevelQuota(level, tuple(sorted(cats)), ratio, min(quota, len(cats))))
    return tuple(out)


def _relation(h: Hierarchy, product_cat: str, model_cat: str, steps: int) -> str:
    if steps == 0:
        return "exact"
    if model_cat in h.ancestors(product_cat):
        return "broader"
    if product_cat in h.ancestors(model_cat):
        return "narrower"
    return "related"


def score_model(h: Hierarchy, quotas: Sequence[LevelQuota], policy: MatchPolicy, model: ModelInfo) -> Scored:
    known = sorted(c for c in model.categories if c in h)
    near = {c: h.distances(c, policy.max_distance) for c in known}
    levels = []
    for q in quotas:
        matches = []
        for p in q.categories:
            best: tuple | None = None
            for c in known:
                steps = near[c].get(p)
                if steps is None:
                    continue
                credit = 1.0 if steps == 0 else policy.related_weight**steps
                key = (-credit, steps, c)
                if credit > 0 and (best is None or key < best):
                    best = key
            if best is None:
                matches.append(CategoryMatch(p, None, None, 0.0, "none"))
            else:
                credit, steps, c = -best[0], best[1], best[2]
                matches.append(CategoryMatch(p, c, steps, credit, _relation(h, p, c, steps)))
        levels.append(LevelResult(q, tuple(matches)))
    total = sum(q.quota for q in quotas)
    degree = sum(lv.quota.quota * lv.mean_credit for lv in levels) / total if total else 0.0
    product = {p for q in quotas for p in q.categories}
    unrelated = tuple(c for c in sorted(model.categories) if c not in near or not product & near[c].keys())
    return Scored(model, tuple(levels), degree, unrelated)


def _why_not(s: Scored, best: Scored | None) -> str:
    if not s.candidate:
        return f"not a candidate: {s.shortfall()}"
    assert best is not None
    if s.degree_key != best.degree_key:
        return f"lower match degree ({s.degree_key:.3f} < {best.degree_key:.3f})"
    e, be = s.model.evaluation, best.model.evaluation
    if e != be:
        mine = "no evaluation recorded" if e is None else f"image AUROC {e:.3f}"
        return f"same match degree, worse evaluation ({mine} vs {be:.3f})"
    if s.model.id != best.model.id:
        return f"same match degree and evaluation, registered earlier (#{s.model.id} before #{best.model.id})"
    return f"same match degree, evaluation and registration; {best.model.name!r} sorts first by name"


def match(h: Hierarchy, categories: Sequence[str], policy: MatchPolicy, models: Iterable[ModelInfo]) -> MatchResult:
    """Rank every model for a product with these categories (RegistryError for categories the hierarchy lacks)."""
    h.require(categories, "the product")
    quotas = level_quotas(h, categories, policy)
    scored = [score_model(h, quotas, policy, m) for m in models]
    candidates = sorted((s for s in scored if s.candidate), key=Scored.rank_key)
    others = sorted((s for s in scored if not s.candidate), key=Scored.rank_key)
    best = candidates[0] if candidates else None
    reasons = {s.model.name: _why_not(s, best) for s in (*candidates[1:], *others)}
    return MatchResult(tuple(categories), quotas, (*candidates, *others), reasons)
