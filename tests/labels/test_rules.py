"""Seed 000's rules on hand-made masks and probabilities with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.labels.rules import (
    MISSED_LABEL,
    REGION_MISMATCH,
    WRONG_LABEL,
    RuleConfig,
    combine,
    ensemble_rule,
    iou,
    judge,
    single_rule,
)


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
    assert cfg.thresholds(5) == (2.5, 4.0)  # the seed: "target probability > 4"
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
