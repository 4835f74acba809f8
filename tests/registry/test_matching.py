"""Matching, without a database: per-level quotas, the match degree of docs/registry.md's worked example, the
candidate rule, deterministic tie-breaks and the explanation of why each model lost."""

from __future__ import annotations

import pytest
import yaml

from inspectd.registry.errors import RegistryError
from inspectd.registry.hierarchy import parse_hierarchy
from inspectd.registry.matching import ModelInfo, level_quotas, match
from inspectd.registry.product import MatchPolicy
from tests.registry.conftest import CUPS

H = parse_hierarchy(yaml.safe_load(CUPS), "cups")
PRODUCT = ["ceramic", "coffee cup", "mug", "round cup", "small", "medium", "meeting cup"]
CUP_POLICY = MatchPolicy(quota_ratio=0.5, level_quota_ratio={5: 1.0})
CERAMIC = ("ceramic", "small", "children's thermos", "round cup")
STEEL = ("steel", "small", "children's thermos", "round cup")


def model(i: int, cats, evaluation=None, name=None) -> ModelInfo:
    return ModelInfo(i, name or f"m{i}", f"{i:064x}", tuple(cats), evaluation)


def test_the_cup_quotas_are_one_one_one_one_two():
    quotas = level_quotas(H, PRODUCT, CUP_POLICY)
    assert [(q.level, q.categories, q.quota) for q in quotas] == [
        (1, ("round cup",), 1),
        (2, ("medium", "small"), 1),
        (3, ("meeting cup",), 1),
        (4, ("ceramic",), 1),
        (5, ("coffee cup", "mug"), 2),
    ]
    assert [q.quota for q in level_quotas(H, PRODUCT, MatchPolicy(quota_ratio=1.0))] == [1, 2, 1, 1, 2]


def test_the_worked_example_degrees():
    """docs/registry.md: ceramic 17/24 (a candidate), steel 10/24 (misses level 5)."""
    r = match(H, PRODUCT, CUP_POLICY, [model(1, CERAMIC, name="ceramic"), model(2, STEEL, name="steel")])
    by = {s.model.name: s for s in r.ranked}
    assert by["ceramic"].degree == pytest.approx(17 / 24) and by["ceramic"].candidate
    assert by["steel"].degree == pytest.approx(10 / 24) and not by["steel"].candidate
    assert r.best.model.name == "ceramic"
    credits = {m.category: (m.via, m.steps, m.credit, m.relation) for lv in by["ceramic"].levels for m in lv.matches}
    assert credits == {
        "round cup": ("round cup", 0, 1.0, "exact"),
        "small": ("small", 0, 1.0, "exact"),
        "medium": ("round cup", 1, 0.5, "broader"),
        "meeting cup": ("ceramic", 1, 0.5, "narrower"),
        "ceramic": ("ceramic", 0, 1.0, "exact"),
        "coffee cup": ("ceramic", 1, 0.5, "broader"),
        "mug": ("ceramic", 1, 0.5, "broader"),
    }
    steel = {m.category: (m.via, m.credit, m.relation) for lv in by["steel"].levels for m in lv.matches}
    assert steel["ceramic"] == ("small", 0.25, "broader")  # 2 steps, as steel is; "small" sorts first
    assert steel["meeting cup"] == ("small", 0.5, "broader") and steel["mug"] == (None, 0.0, "none")
    assert r.reasons["steel"] == "not a candidate: level 5 matched 0 of quota 2 (coffee cup, mug)"


def test_a_model_matching_every_category_exactly_has_degree_one_and_wins():
    r = match(H, PRODUCT, CUP_POLICY, [model(1, CERAMIC), model(2, PRODUCT)])
    assert r.best.model.id == 2 and r.best.degree == 1.0
    assert r.reasons["m1"] == "lower match degree (0.708 < 1.000)"


def test_ties_go_to_the_better_evaluation_then_the_newest_then_the_name():
    same = CERAMIC
    r = match(H, PRODUCT, CUP_POLICY, [model(1, same, 0.90), model(2, same, 0.95), model(3, same, None)])
    assert [s.model.id for s in r.ranked] == [2, 1, 3]
    assert r.reasons["m1"] == "same match degree, worse evaluation (image AUROC 0.900 vs 0.950)"
    assert r.reasons["m3"] == "same match degree, worse evaluation (no evaluation recorded vs 0.950)"
    r = match(H, PRODUCT, CUP_POLICY, [model(5, same, 0.9), model(7, same, 0.9), model(6, same, 0.9)])
    assert [s.model.id for s in r.ranked] == [7, 6, 5]
    assert r.reasons["m5"] == "same match degree and evaluation, registered earlier (#5 before #7)"
    # the order the models arrive in changes nothing
    again = match(H, PRODUCT, CUP_POLICY, [model(6, same, 0.9), model(5, same, 0.9), model(7, same, 0.9)])
    assert [s.model.id for s in again.ranked] == [7, 6, 5]


def test_exact_only_matching_leaves_no_candidate_and_says_why():
    exact = MatchPolicy(quota_ratio=0.5, level_quota_ratio={5: 1.0}, max_distance=0)
    r = match(H, PRODUCT, exact, [model(1, CERAMIC, name="ceramic")])
    assert r.best is None
    assert r.reasons["ceramic"] == (
        "not a candidate: level 3 matched 0 of quota 1 (meeting cup); level 5 matched 0 of quota 2 (coffee cup, mug)"
    )
    assert "no model covers every level's quota" in r.explain()


def test_the_explanation_names_the_matches_level_by_level():
    text = match(H, PRODUCT, CUP_POLICY, [model(1, CERAMIC, name="ceramic"), model(2, STEEL, name="steel")]).explain()
    assert "best: ceramic (match degree 0.708" in text
    assert "level 5: 2/2 matched, quota 2: coffee cup ~ ceramic (broader, 1 step, 0.5); mug ~ ceramic" in text
    assert "steel: degree 0.417, not a candidate: level 5 matched 0 of quota 2" in text


def test_unknown_product_categories_are_refused_with_suggestions():
    with pytest.raises(
        RegistryError, match=r"unknown categories in the product: 'ceramik' \(did you mean 'ceramic'\?\)"
    ):
        match(H, ["ceramik", "mug"], CUP_POLICY, [])
