"""The label-check rules on hand-made masks and probabilities with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd.labelling.rules import (
    MISSED_LABEL,
    REGION_MISMATCH,
    WRONG_LABEL,
    RuleConfig,
    combine,
    contrast_stats,
    ensemble_rule,
    guided_filter,
    iou,
    judge,
    refine_map,
    single_rule,
)
from tests.labelling.conftest import blurred_disc_map


def box(y0: int, x0: int, y1: int, x1: int, shape=(20, 20)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def test_iou_of_hand_made_masks():
    a = box(0, 0, 10, 10)  # 100 px
    b = box(5, 0, 15, 10)  # 100 px, 50 shared
    assert iou(a, b) == pytest.approx(50 / 150)
    assert iou(a, a) == 1.0
    assert iou(a, box(10, 10, 20, 20)) == 0.0
    assert iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # both defect-free: they agree


def test_iou_refuses_masks_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        iou(np.zeros((4, 4)), np.zeros((4, 5)))


def test_single_checker_flags_iou_below_0_8():
    label = box(0, 0, 10, 10)  # 100 px
    grown = box(0, 0, 10, 12)  # IoU 100/120 = 0.833: accepted
    ring = box(0, 0, 12, 12)  # IoU 100/144 = 0.694: a ring around the defect, flagged
    assert single_rule(label, grown) == (False, pytest.approx(100 / 120))
    flagged, value = single_rule(ring, label)
    assert flagged and value == pytest.approx(100 / 144)


def test_combine_by_sum_and_mean():
    assert combine([0.2, 0.4, 0.9], "sum") == pytest.approx(1.5)
    assert combine([0.2, 0.4, 0.9], "mean") == pytest.approx(0.5)
    with pytest.raises(ValueError):
        combine([], "mean")


def test_ensemble_rule_wrong_and_missed_labels():
    # wrong label: labelled defective, target below its threshold
    assert ensemble_rule(0.2, True, 0, low=0.5, high=0.8) == WRONG_LABEL
    assert ensemble_rule(0.6, True, 40, low=0.5, high=0.8) is None
    # missed label: labelled defect-free, target above the second threshold and region > 15 px
    assert ensemble_rule(0.9, False, 16, low=0.5, high=0.8) == MISSED_LABEL
    assert ensemble_rule(0.9, False, 15, low=0.5, high=0.8) is None  # area must exceed the threshold
    assert ensemble_rule(0.7, False, 400, low=0.5, high=0.8) is None  # not confident enough


def test_sum_thresholds_scale_with_checkers_and_match_the_seed_example():
    cfg = RuleConfig(combine="sum")
    assert cfg.thresholds(5) == (2.5, 4.0)  # the labelling method's "target probability > 4"
    assert RuleConfig().thresholds(5) == (0.5, 0.8)
    assert RuleConfig(combine="sum", high_threshold=3.0).thresholds(5) == (2.5, 3.0)


def test_judge_applies_probability_rules_then_region_rule():
    label = box(0, 0, 10, 10)
    empty = np.zeros_like(label)
    assert judge(label, label, [0.1, 0.2]).reason == WRONG_LABEL
    assert judge(box(0, 0, 14, 14), label, [0.9, 0.9]).reason == REGION_MISMATCH  # ring: IoU 100/196
    assert judge(label, box(0, 0, 5, 5), [0.9]).reason == REGION_MISMATCH  # label larger than the defect
    ok = judge(label, label, [0.9, 0.7])
    assert ok.reason is None and ok.iou == 1.0 and ok.probability == pytest.approx(0.8)
    missed = judge(empty, label, [0.95, 0.9], RuleConfig(combine="sum"))
    assert missed.reason == MISSED_LABEL and missed.predicted_area == 100
    assert judge(empty, empty, [0.1]).reason is None


def test_rule_config_rejects_bad_values():
    with pytest.raises(ValueError):
        RuleConfig(combine="max")
    with pytest.raises(ValueError):
        RuleConfig(iou_threshold=1.5)


def _disc(r: float, shape=(120, 120), centre=(60, 60)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r).astype(np.uint8) * 255


def _blurred_probability(true_mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """A badly calibrated checker: the right place, a soft border, probabilities squeezed into [low, high]."""
    soft = cv2.GaussianBlur((true_mask > 0).astype(np.float32), (0, 0), 2.0)
    return (low + (high - low) * soft).astype(np.float32)


def test_otsu_threshold_splits_two_clusters_and_is_the_midpoint_of_a_flat_map():
    from inspectd.labelling.rules import otsu_threshold

    values = np.r_[np.full(500, 0.1), np.full(200, 0.3)]
    assert 0.1 < otsu_threshold(values) <= 0.3
    assert otsu_threshold(np.full(10, 0.4)) == pytest.approx(0.4)


def test_the_local_region_accepts_a_right_label_even_when_the_checker_is_badly_calibrated():
    """Probabilities 0.05-0.3 everywhere: the global region (above 0.5) is empty, IoU 0; the local one finds the
    defect's border around the label."""
    from inspectd.labelling.rules import local_region

    truth = _disc(15)
    prob = _blurred_probability(truth, 0.05, 0.3)
    assert iou(truth, prob > 0.5) == 0.0
    assert iou(truth, local_region(truth, prob)) > 0.85
    v = judge(truth, (prob > 0.5).astype(np.uint8), [0.9], RuleConfig(region="local"), prob_map=prob)
    assert v.reason is None and v.iou == 0.0 and v.iou_local > 0.85


@pytest.mark.parametrize("label_radius, why", [(15 * 1.58, "ring: 2.5x the area"), (15 * 0.63, "eroded: 40 %")])
def test_the_local_region_flags_labels_too_large_or_too_small(label_radius, why):
    truth = _disc(15)
    prob = _blurred_probability(truth, 0.05, 0.3)
    label = _disc(label_radius)
    v = judge(label, (prob > 0.5).astype(np.uint8), [0.9], RuleConfig(region="local"), prob_map=prob)
    assert v.reason == REGION_MISMATCH, why
    assert v.iou_local < 0.6, why


def test_the_local_region_ignores_checker_regions_far_from_the_label():
    from inspectd.labelling.rules import local_region

    truth = _disc(10, centre=(30, 30))
    prob = _blurred_probability(truth, 0.05, 0.3) + _blurred_probability(_disc(12, centre=(90, 90)), 0.0, 0.6)
    assert iou(truth, prob > 0.2) < 0.5  # the global region holds both
    assert iou(truth, local_region(truth, prob)) > 0.8


def test_region_local_needs_the_probability_map():
    with pytest.raises(ValueError, match="probability map"):
        judge(_disc(5), _disc(5), [0.9], RuleConfig(region="local"))
    with pytest.raises(ValueError, match="region"):
        RuleConfig(region="nearby")


def test_grow_to_area_and_inner_part_reach_the_asked_share_of_the_area():
    from inspectd.labelling.rules import grow_to_area, inner_part

    m = _disc(15)
    area = np.count_nonzero(m)
    grown, core = grow_to_area(m, 2.0), inner_part(m, 0.5)
    assert abs(np.count_nonzero(grown) / area - 2.0) < 0.1 and (grown >= (m > 0)).all()
    assert abs(np.count_nonzero(core) / area - 0.5) < 0.1 and not (core & (m == 0)).any()
    one = np.zeros((9, 9), np.uint8)
    one[4, 4] = 255
    assert np.count_nonzero(inner_part(one, 0.5)) == 1  # at least one pixel


def test_region_contrast_accepts_a_right_label_whatever_the_checkers_absolute_calibration():
    """A defect seen at probabilities 0.05-0.3 (the global region is empty) and one seen at 0.1-0.95: both right
    labels pass, and their ratios do not depend on the scale."""
    from inspectd.labelling.rules import contrast_stats

    truth = _disc(15)
    for lo, hi in ((0.05, 0.3), (0.1, 0.95)):
        prob = _blurred_probability(truth, lo, hi)
        v = judge(truth, (prob > 0.5).astype(np.uint8), [0.9], RuleConfig(region="contrast"), prob_map=prob)
        assert v.reason is None, (lo, hi, v.contrast)
        c = contrast_stats(truth, prob)
        assert c.rim_ratio > 0.7 and c.band_ratio < 0.3


@pytest.mark.parametrize("label_radius, problem", [(15 * 1.58, "too_large"), (15 * 0.63, "too_small")])
def test_region_contrast_flags_a_ring_as_too_large_and_an_eroded_label_as_too_small(label_radius, problem):
    truth = _disc(15)
    prob = _blurred_probability(truth, 0.05, 0.3)
    label = _disc(label_radius)
    cfg = RuleConfig(region="contrast")
    v = judge(label, (prob > 0.5).astype(np.uint8), [0.9], cfg, prob_map=prob)
    assert v.reason == REGION_MISMATCH
    assert v.contrast.problems(cfg) == [problem]


def test_region_contrast_flags_a_region_the_checkers_do_not_see():
    prob = np.full((120, 120), 0.02, np.float32)  # a good part: nothing anywhere
    cfg = RuleConfig(region="contrast")
    v = judge(_disc(10), np.zeros((120, 120), np.uint8), [0.9], cfg, prob_map=prob)
    assert v.reason == REGION_MISMATCH and "inside" in v.contrast.problems(cfg)


def test_region_contrast_needs_the_map_and_checks_its_limits():
    with pytest.raises(ValueError, match="probability map"):
        judge(_disc(5), _disc(5), [0.9], RuleConfig(region="contrast"))
    with pytest.raises(ValueError, match="contrast_core"):
        RuleConfig(contrast_core=1.0)
    with pytest.raises(ValueError, match="contrast_grow"):
        RuleConfig(contrast_grow=1.0)
    with pytest.raises(ValueError, match="rim_min"):
        RuleConfig(rim_min=-0.1)


def test_guided_refinement_pulls_a_blurred_map_back_to_the_image_edge():
    gray, prob, disc = blurred_disc_map()
    refined = refine_map(gray, prob, RuleConfig())
    assert refined.min() >= 0.0 and refined.max() <= 1.0
    before = contrast_stats(disc, prob).band_ratio
    after = contrast_stats(disc, refined).band_ratio
    assert after < 0.7 * before, (before, after)
    assert np.array_equal(refine_map(gray, prob, RuleConfig(refine="none")), prob.astype(np.float32))


def test_guided_refinement_turns_a_blur_flagged_right_label_into_an_accepted_one():
    gray, prob, disc = blurred_disc_map()
    cfg = RuleConfig(region="contrast")
    label = disc.astype(np.uint8) * 255
    unrefined = judge(label, label, [0.9], RuleConfig(region="contrast", refine="none"), prob_map=prob)
    refined = judge(label, label, [0.9], cfg, prob_map=refine_map(gray, prob, cfg))
    assert unrefined.contrast.problems(cfg) == ["too_small"]
    assert refined.reason is None


def test_guided_filter_of_a_flat_guide_is_a_box_mean_and_shapes_must_match():
    src = np.zeros((21, 21), np.float32)
    src[10, 10] = 1.0
    out = guided_filter(np.full_like(src, 0.5), src, 2, 1e-3)
    assert abs(float(out.sum()) - 1.0) < 1e-4 and out.max() < 0.2
    with pytest.raises(ValueError, match="differ in shape"):
        guided_filter(np.zeros((3, 4)), np.zeros((4, 3)), 1, 1e-3)
