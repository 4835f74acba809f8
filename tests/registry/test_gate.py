"""The sampling gate at its boundaries: both minimums inclusive, the ratio band inclusive on both edges, what is
still needed, what is counted in a collector's output and an MVTec tree."""

from __future__ import annotations

import pytest

from inspectd.registry.errors import RegistryError
from inspectd.registry.gate import SampleCounts, check_gate, count_samples
from inspectd.registry.product import GatePolicy

POLICY = GatePolicy(min_good=500, min_defect=50, ratio_tolerance=0.1)


def gate(good: int, defect: int, wanted: float | None = 10.0, policy: GatePolicy = POLICY):
    return check_gate(SampleCounts(good, defect), policy, wanted)


def test_the_progress_line_of_the_issue():
    r = gate(412, 31)
    assert not r.met
    assert r.progress() == (
        "412/500 good, 31/50 defects, ratio 13.3 vs 10.0 wanted (±10%): keep sampling (88 more good, 19 more defects)"
    )
    assert (r.need_good, r.need_defect) == (88, 19)  # 500 good : 50 defects = 10.0


@pytest.mark.parametrize(
    ("good", "defect", "met"),
    [
        (500, 50, True),  # exactly the minimums, exactly the ratio
        (499, 50, False),  # one good short (ratio 9.98 is fine)
        (500, 49, False),  # one defect short (ratio 10.2 is fine)
        (550, 50, True),  # ratio 11.0: the upper edge of ±10% counts as inside
        (551, 50, False),  # 11.02: outside
        (500, 55, True),  # 9.09: inside
        (500, 56, False),  # 8.93: outside (the lower edge is 9.0)
        (540, 60, True),  # 9.0: the lower edge, inside
        (539, 60, False),  # 8.98: outside
    ],
)
def test_minimums_and_ratio_band_are_inclusive(good, defect, met):
    r = gate(good, defect)
    assert r.met is met, r.progress()
    if not met:
        g, d = good + r.need_good, defect + r.need_defect
        assert gate(g, d).met, f"{g}:{d} should meet the gate"  # what it says is needed is enough ...
        if r.need_good:
            assert not gate(g - 1, d).met  # ... and no more than needed
        if r.need_defect:
            assert not gate(g, d - 1).met


def test_each_condition_is_reported_on_its_own():
    r = gate(600, 50)  # minimums met, ratio 12 too high
    assert (r.good_ok, r.defect_ok, r.ratio_ok, r.met) == (True, True, False, False)
    assert r.need_defect == 5 and r.need_good == 0  # 600 / 55 = 10.9
    r = gate(400, 60)  # ratio 6.7 too low and too few good
    assert (r.good_ok, r.ratio_ok) == (False, False) and r.need_good == 140  # 540 / 60 = 9.0


def test_zero_tolerance_needs_the_exact_ratio():
    exact = GatePolicy(min_good=10, min_defect=1, ratio_tolerance=0.0)
    assert gate(20, 2, 10.0, exact).met
    assert not gate(21, 2, 10.0, exact).met


def test_a_base_trained_on_good_images_only_checks_only_the_minimums():
    r = gate(500, 50, wanted=None)
    assert r.met and "no ratio to match" in r.progress()
    assert not gate(500, 0, wanted=None).met
    r = gate(10, 0, wanted=None, policy=GatePolicy(min_good=10, min_defect=0))
    assert r.met and "no defects yet" in r.progress()


def test_the_product_files_ratio_overrides_the_base_models():
    r = check_gate(SampleCounts(100, 20), GatePolicy(min_good=10, min_defect=1, ratio=5.0), 10.0)
    assert r.met and r.wanted == 5.0 and "gate.ratio" in r.wanted_from


def _touch(folder, n, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}{suffix}").write_bytes(b"x")


def test_counts_in_a_collector_output_and_an_mvtec_tree(tmp_path):
    col = tmp_path / "collected"
    _touch(col / "train" / "good", 12)
    _touch(col / "test" / "confirmed_defect", 3)
    (col / "meta.jsonl").write_text("")
    (col / "train" / "good" / ".0.png.tmp").write_bytes(b"")  # a temp file: not an image
    assert count_samples(col) == SampleCounts(12, 3, 0, (("confirmed_defect", 3),))
    mv = tmp_path / "mvtec"
    _touch(mv / "train" / "good", 20, ".jpg")
    _touch(mv / "test" / "good", 5)
    _touch(mv / "test" / "crack", 2)
    _touch(mv / "test" / "blowhole", 4)
    _touch(mv / "ground_truth" / "crack", 2)
    c = count_samples(mv)
    assert (c.good, c.defect, c.test_good, c.by_class) == (20, 6, 5, (("blowhole", 4), ("crack", 2)))
    with pytest.raises(RegistryError, match="neither train/good/ nor test/"):
        count_samples(tmp_path / "nothing")
