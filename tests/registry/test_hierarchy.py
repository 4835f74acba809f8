"""The category hierarchy: levels are depths (several parents allowed), and a bad file is refused naming what is
wrong: unknown parents (with the closest names), cycles spelt out, duplicate keys, case clashes."""

from __future__ import annotations

import pytest

from inspectd.registry.errors import RegistryError
from inspectd.registry.hierarchy import Hierarchy, load_hierarchy, parse_hierarchy
from tests.registry.conftest import CUPS


def test_the_seeds_cup_hierarchy_has_five_levels(tmp_path):
    (tmp_path / "cups.yaml").write_text(CUPS)
    h = load_hierarchy(tmp_path / "cups.yaml")
    assert {n: h.level(n) for n in ("round cup", "small", "medium", "meeting cup", "ceramic", "coffee cup", "mug")} == {
        "round cup": 1, "small": 2, "medium": 2, "meeting cup": 3, "ceramic": 4, "coffee cup": 5, "mug": 5,
    }  # fmt: skip
    assert h.parents["meeting cup"] == ("medium", "small")  # two parents
    assert h.ancestors("mug") == {"ceramic", "meeting cup", "small", "medium", "round cup"}
    assert h.distances("ceramic", 2) == {
        "ceramic": 0, "meeting cup": 1, "coffee cup": 1, "mug": 1, "small": 2, "medium": 2, "steel": 2,
    }  # fmt: skip


def test_a_level_is_one_more_than_the_deepest_parent():
    h = Hierarchy.build({"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"]})
    assert h.levels == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_unknown_parents_are_named_with_the_closest_defined_names():
    with pytest.raises(RegistryError) as err:
        parse_hierarchy({"categories": {"round cup": [], "small": ["round cupp"], "mug": "cermic"}}, "f.yaml")
    text = str(err.value)
    assert "'round cupp' (parent of 'small') (did you mean 'round cup'?)" in text
    assert "'cermic' (parent of 'mug')" in text and text.startswith("f.yaml:")


def test_a_cycle_is_refused_and_spelt_out():
    with pytest.raises(RegistryError, match=r"cycle: a -> c -> b -> a"):
        Hierarchy.build({"a": ["c"], "b": ["a"], "c": ["b"], "top": []})
    with pytest.raises(RegistryError, match="names itself"):
        Hierarchy.build({"a": ["a"]})


def test_a_category_defined_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("categories:\n  mug: []\n  small: []\n  mug: [small]\n")
    with pytest.raises(RegistryError, match=r"line 4: 'mug' is defined twice \(first on line 2\)"):
        load_hierarchy(path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"categories": {"Mug": [], "mug": []}}, "differ only in case"),
        ({"categories": {"a,b": []}}, "no comma"),
        ({"categories": {" mug": []}}, "leading or trailing space"),
        ({"categories": {}}, "is empty"),
        ({"cats": {"a": []}}, "expected a mapping with one key, `categories:`"),
        ({"categories": {"a": 3}}, "parents must be a list"),
        ({"categories": {"a": {"parent": []}}}, "unknown keys"),
        ({"categories": {"a": [], "b": ["a", "a"]}}, "names a parent twice"),
        ([1, 2], "got list"),
    ],
)
def test_malformed_hierarchies_say_what_was_expected(raw, expected):
    with pytest.raises(RegistryError, match=expected):
        parse_hierarchy(raw, "h.yaml")


def test_not_yaml_is_refused_with_the_file_name(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("categories: [unclosed\n")
    with pytest.raises(RegistryError, match=r"h\.yaml is not valid YAML"):
        load_hierarchy(path)
