"""inspectd.inspection.decide: difference map -> regions -> pass/reject verdict."""

from __future__ import annotations

import numpy as np
import pytest

from inspectd.core.types import Code, Region
from inspectd.inspection.decide import Decider, reduce_map


def blank(h=60, w=80, value=0.05) -> np.ndarray:
    return np.full((h, w), value, dtype=np.float32)


def test_region_below_min_area_is_dropped_and_the_big_one_rejects():
    m = blank()
    m[10:15, 20:28] = 0.6  # 5 x 8 = 40 px
    m[12, 22] = 0.9  # its peak
    m[40:42, 60:62] = 1.5  # 4 px: noise below min area, though hotter
    d = Decider(pixel_threshold=0.5, min_region_area=10).decide(m)
    assert d.code is Code.REJECT
    assert d.regions == (Region(x=20, y=10, w=8, h=5, area=40, peak=pytest.approx(0.9)),)
    assert d.defect_area == 40
    assert d.score == pytest.approx(1.5) and isinstance(d.score, float)


def test_all_low_map_passes_with_no_regions():
    d = Decider(pixel_threshold=0.5, min_region_area=1).decide(blank())
    assert d.code is Code.PASS and d.regions == () and d.defect_area == 0
    assert d.score == pytest.approx(0.05)


def test_only_small_regions_pass():
    m = blank()
    m[5, 5] = 1.0
    d = Decider(pixel_threshold=0.5, min_region_area=2).decide(m)
    assert d.code is Code.PASS and d.regions == () and d.defect_area == 0


def test_threshold_is_strict():
    m = blank()
    m[3:6, 3:6] = 0.5
    assert Decider(pixel_threshold=0.5, min_region_area=1).decide(m).code is Code.PASS
    m[4, 4] = np.nextafter(np.float32(0.5), np.float32(1))
    d = Decider(pixel_threshold=0.5, min_region_area=1).decide(m)
    assert d.code is Code.REJECT and d.defect_area == 1


def test_regions_are_8_connected():
    m = blank()
    for i in range(6):  # a diagonal line touches only at corners
        m[10 + i, 10 + i] = 1.0
    d = Decider(pixel_threshold=0.5, min_region_area=6).decide(m)
    assert d.code is Code.REJECT
    assert d.regions == (Region(x=10, y=10, w=6, h=6, area=6, peak=1.0),)


def test_peak_is_taken_from_the_region_pixels_only_not_its_bbox():
    m = blank()
    m[10:20, 10] = 0.7  # an L-shaped region whose bbox contains a hotter pixel of another region
    m[19, 10:20] = 0.7
    m[11, 15] = 1.8  # inside the L's bbox, not connected to it
    d = Decider(pixel_threshold=0.5, min_region_area=5).decide(m)
    assert len(d.regions) == 1
    assert d.regions[0].peak == pytest.approx(0.7)
    assert d.regions[0].area == 19


def test_max_regions_truncates_the_list_but_not_defect_area():
    m = blank(100, 100)
    sizes = [2, 3, 4, 5, 6]  # squares of side s at distinct places
    for i, s in enumerate(sizes):
        m[5 + 18 * i : 5 + 18 * i + s, 10 : 10 + s] = 1.0
    d = Decider(pixel_threshold=0.5, min_region_area=1, max_regions=2).decide(m)
    assert [r.area for r in d.regions] == [36, 25]  # largest first
    assert d.defect_area == sum(s * s for s in sizes)
    assert d.code is Code.REJECT


def test_max_regions_zero_still_rejects():
    m = blank()
    m[0:4, 0:4] = 1.0
    d = Decider(pixel_threshold=0.5, min_region_area=1, max_regions=0).decide(m)
    assert d.code is Code.REJECT and d.regions == () and d.defect_area == 16


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_map_raises(bad):
    m = blank()
    m[1, 1] = bad
    m[2, 2] = bad
    with pytest.raises(ValueError, match="score map has 2 non-finite values"):
        Decider(pixel_threshold=0.5, min_region_area=1).decide(m)


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 5), np.float32), np.zeros((2, 3, 4), np.float32), np.zeros((4, 4), np.uint8)]
)
def test_malformed_map_raises(bad):
    with pytest.raises(ValueError, match="expected a non-empty float HxW array"):
        Decider(pixel_threshold=0.5, min_region_area=1).decide(bad)


@pytest.mark.parametrize("reduction", ["max", "p99", "p999", "mean"])
def test_reductions_give_the_right_numbers(reduction):
    m = np.random.default_rng(1).random((123, 77), dtype=np.float32) * 2
    expected = {
        "max": m.max(),
        "p99": np.percentile(m, 99),
        "p999": np.percentile(m, 99.9),
        "mean": m.mean(dtype=np.float64),
    }[reduction]
    d = Decider(pixel_threshold=5.0, min_region_area=1, reduction=reduction).decide(m)
    assert d.score == pytest.approx(float(expected), rel=1e-6)
    assert d.code is Code.PASS


def test_percentile_on_known_values():
    m = np.arange(1000, dtype=np.float32).reshape(10, 100)
    assert reduce_map(m, "p99") == pytest.approx(989.01)
    assert reduce_map(m, "p999") == pytest.approx(998.001)
    assert reduce_map(np.ones((1, 1), np.float32), "p999") == 1.0


def test_decide_does_not_modify_the_map():
    m = blank()
    m[10:20, 10:20] = 0.9
    before = m.copy()
    Decider(pixel_threshold=0.5, min_region_area=1, reduction="p99").decide(m)
    np.testing.assert_array_equal(m, before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixel_threshold": float("nan"), "min_region_area": 1}, "pixel_threshold"),
        ({"pixel_threshold": 0.5, "min_region_area": 0}, "min_region_area"),
        ({"pixel_threshold": 0.5, "min_region_area": 1, "reduction": "median"}, "unknown score reduction 'median'"),
        ({"pixel_threshold": 0.5, "min_region_area": 1, "max_regions": -1}, "max_regions"),
    ],
)
def test_invalid_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decider(**kwargs)


def test_an_image_score_above_the_image_threshold_rejects_without_regions():
    d = Decider(pixel_threshold=0.5, min_region_area=1, image_threshold=0.5)
    low = d.decide(blank(), image_score=0.4)
    assert low.code is Code.PASS and low.score == pytest.approx(0.4)  # the model's own score, not the map's
    assert d.decide(blank(), image_score=0.5).code is Code.PASS  # strictly above, as for pixels
    high = d.decide(blank(), image_score=0.7)
    assert high.code is Code.REJECT and high.regions == () and high.defect_area == 0
    m = blank()
    m[10:14, 10:14] = 0.9
    assert d.decide(m, image_score=0.1).code is Code.REJECT  # a region still rejects a low score
    with pytest.raises(ValueError, match="not finite"):
        d.decide(blank(), image_score=float("nan"))
    with pytest.raises(ValueError, match="image_threshold"):
        Decider(0.5, 1, image_threshold=float("inf"))
