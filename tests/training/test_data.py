"""Training samples: sources (MVTec layout, plain folder), augmentation, defects and loss weights."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd.training.data import AugmentConfig, InputGeometry, TrainingSet, image_files, load_folder, to_model_input
from tests.training.conftest import stripes


def test_batches_hold_corrupted_inputs_clean_targets_and_raised_weights_inside_defects():
    ds = TrainingSet(stripes(8, size=48), InputGeometry(height=32, width=32), defect_prob=1.0, defect_weight=5.0)
    b = ds.sample(np.random.default_rng(0), 6)
    assert b.inputs.shape == b.targets.shape == (6, 1, 32, 32)
    assert b.inputs.dtype == np.float32 and b.inputs.min() >= 0.0 and b.inputs.max() <= 1.0
    inside = b.masks[:, None].astype(bool)
    assert inside.any(axis=(1, 2, 3)).all()  # defect_prob 1: every sample has a defect
    np.testing.assert_array_equal(b.weights[inside], 5.0)
    np.testing.assert_array_equal(b.weights[~inside], 1.0)
    np.testing.assert_array_equal(b.inputs[~inside], b.targets[~inside])  # only the defect differs


def test_without_defects_input_equals_target_and_weights_are_one():
    ds = TrainingSet(stripes(4), InputGeometry(height=32, width=32), defect_prob=0.0)
    b = ds.sample(np.random.default_rng(1), 4)
    np.testing.assert_array_equal(b.inputs, b.targets)
    assert np.all(b.weights == 1.0) and not b.masks.any()


def test_augmentation_changes_frames_and_can_be_switched_off():
    frames = stripes(1, size=64)
    geom = InputGeometry(height=32, width=32)
    on = TrainingSet(frames, geom, defect_prob=0.0)
    off = TrainingSet(frames, geom, augment=AugmentConfig.off(), defect_prob=0.0)
    rng = np.random.default_rng(2)
    plain = cv2.resize(frames[0], (32, 32), interpolation=cv2.INTER_AREA)
    assert all(np.array_equal(off.sample_one(rng)[1], plain) for _ in range(3))
    assert not all(np.array_equal(on.sample_one(rng)[1], plain) for _ in range(3))


def test_resize_mode_matches_the_daemon_preprocessing_and_tile_mode_crops():
    frame = stripes(1, size=64)[0]
    resized = to_model_input(frame, InputGeometry(height=32, width=32, mode="resize"))
    np.testing.assert_array_equal(resized, cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA))
    tile = to_model_input(frame, InputGeometry(height=32, width=32, mode="tile"), np.random.default_rng(0))
    assert tile.shape == (32, 32)


def test_folders_in_mvtec_layout_and_plain_folders_both_load(tmp_path):
    mvtec = tmp_path / "mvtec" / "train" / "good"
    plain = tmp_path / "plain"
    for d in (mvtec, plain):
        d.mkdir(parents=True)
        for i, img in enumerate(stripes(3)):
            cv2.imwrite(str(d / f"{i:03d}.png"), img)
    (plain / "notes.txt").write_text("not an image")
    assert len(load_folder(tmp_path / "mvtec")) == 3
    assert len(image_files(plain)) == 3
    bgr = load_folder(plain, color="bgr")
    assert bgr[0].shape == (32, 32, 3)


def test_an_empty_or_missing_folder_is_an_error_that_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/good"):
        image_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        image_files(tmp_path)
