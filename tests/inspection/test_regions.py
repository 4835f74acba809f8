"""find_regions, the one region rule (pixels strictly above the threshold, 8-connected, a minimum area), and the
places that must count regions exactly as the decision does."""

from __future__ import annotations

import numpy as np

from inspectd.core.types import Code
from inspectd.evaluation.evaluate import kept_region_mask
from inspectd.evaluation.thresholds import largest_region
from inspectd.inspection.decide import Decider, find_regions
from inspectd.labelling.prelabel import regions_mask


def _map() -> np.ndarray:
    m = np.zeros((20, 20), np.float32)
    m[2, 2] = m[3, 3] = m[4, 4] = 0.9  # a diagonal line: one region of 3 under 8-connectivity
    m[10:14, 10:14] = 0.8  # a 16-pixel square
    m[18, 18] = 0.5  # exactly at the threshold: not above it
    return m


def test_regions_are_8_connected_strictly_above_the_threshold_largest_first():
    found = find_regions(_map(), 0.5, 3)
    areas = [int(found.stats[k, 4]) for k in found.kept]
    assert areas == [16, 3]
    assert found.defect_area == 19 and found.largest_area == 16
    assert found.mask().sum() == 19 and not found.mask()[18, 18]


def test_regions_below_the_minimum_area_are_not_kept():
    found = find_regions(_map(), 0.5, 4)
    assert [int(found.stats[k, 4]) for k in found.kept] == [16]
    assert found.largest_area == 16
    assert find_regions(_map(), 0.95, 1).kept.size == 0 and find_regions(_map(), 0.95, 1).largest_area == 0


def test_decision_calibration_evaluation_and_prelabels_count_the_same_regions():
    m = _map()
    for threshold, min_area in ((0.5, 3), (0.5, 4), (0.85, 1), (0.95, 1)):
        found = find_regions(m, threshold, min_area)
        d = Decider(pixel_threshold=threshold, min_region_area=min_area).decide(m)
        assert d.defect_area == found.defect_area
        assert (d.code is Code.REJECT) == (found.kept.size > 0)
        assert [r.area for r in d.regions] == [int(found.stats[k, 4]) for k in found.kept]
        np.testing.assert_array_equal(kept_region_mask(m, threshold, min_area), found.mask())
        mask, peaks = regions_mask(m, threshold, min_area)
        np.testing.assert_array_equal(mask > 0, found.mask())
        assert len(peaks) == found.kept.size
        assert largest_region(m, threshold) == found.largest_area
