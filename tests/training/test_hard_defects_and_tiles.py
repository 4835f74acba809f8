"""The hard-defect set (target 0 inside the mask) and the native-resolution random crops of tiled models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd.training.data import (
    AugmentConfig,
    HardDefect,
    InputGeometry,
    TrainingSet,
    load_hard_defects,
    to_model_input,
)
from tests.support.training import QUIET
from tests.training.conftest import stripes

TILE = InputGeometry(height=32, width=32, mode="tile")


def _hard(size: tuple[int, int] = (80, 120)) -> HardDefect:
    img = stripes(1, size=max(size))[0][: size[0], : size[1]].copy()
    mask = np.zeros(size, np.uint8)
    mask[50:60, 90:104] = 1
    img[mask.astype(bool)] = 240
    return HardDefect(image=img, mask=mask)


@pytest.mark.parametrize("mode", ["tile", "resize"])
def test_a_hard_defect_sample_has_target_0_inside_its_mask_and_the_input_elsewhere(mode):
    geom = InputGeometry(height=32, width=32, mode=mode)
    ds = TrainingSet(stripes(4, size=64), geom, hard=[_hard()], hard_prob=1.0, defect_prob=0.0, defect_weight=5.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        inp, target, mask = ds.sample_one(rng)
        inside = mask.astype(bool)
        assert inp.shape == target.shape == mask.shape == (32, 32)
        assert inside.any()  # tile crops are chosen to hold defect pixels
        assert np.all(target[inside] == 0)
        np.testing.assert_array_equal(target[~inside], inp[~inside])
    batch = ds.sample(rng, 4)
    inside = batch.masks[:, None].astype(bool)
    np.testing.assert_array_equal(batch.targets[inside], 0.0)
    np.testing.assert_array_equal(batch.weights[inside], 5.0)
    np.testing.assert_array_equal(batch.weights[~inside], 1.0)


def test_without_augmentation_the_hard_sample_is_a_crop_of_the_image_and_mask_at_the_same_place():
    hard = _hard()
    ds = TrainingSet(stripes(2, size=64), TILE, augment=AugmentConfig.off(), hard=[hard], hard_prob=1.0)
    inp, _target, mask = ds.sample_one(np.random.default_rng(3))
    _ys, _xs = np.nonzero(hard.mask)
    hits = [
        (y, x)
        for y in range(0, 80 - 32 + 1)
        for x in range(0, 120 - 32 + 1)
        if np.array_equal(hard.image[y : y + 32, x : x + 32], inp)
        and np.array_equal(hard.mask[y : y + 32, x : x + 32], mask)
    ]
    assert hits, "the sample is not a crop of the hard-defect image with its mask"


def test_hard_defects_load_from_an_mvtec_tree_and_skip_images_without_a_mask(tmp_path):
    for sub in ("test/good", "test/crack", "ground_truth/crack"):
        (tmp_path / sub).mkdir(parents=True)
    img = stripes(1, size=48)[0]
    cv2.imwrite(str(tmp_path / "test" / "good" / "g.png"), img)
    cv2.imwrite(str(tmp_path / "test" / "crack" / "a.png"), img)
    cv2.imwrite(str(tmp_path / "test" / "crack" / "b.png"), img)  # no mask: skipped
    mask = np.zeros_like(img)
    mask[5:9, 5:30] = 255
    cv2.imwrite(str(tmp_path / "ground_truth" / "crack" / "a_mask.png"), mask)
    hard = load_hard_defects(tmp_path)
    assert len(hard) == 1 and hard[0].source == "crack/a.png"
    assert set(np.unique(hard[0].mask)) == {0, 1} and hard[0].mask.sum() == 4 * 25
    with pytest.raises(FileNotFoundError, match="test/"):
        load_hard_defects(tmp_path / "test")


def test_a_hard_prob_without_hard_defects_is_refused():
    with pytest.raises(ValueError, match="hard"):
        TrainingSet(stripes(2), TILE, hard_prob=0.5)


def test_tiled_models_train_on_random_native_resolution_crops_of_the_frame():
    frame = np.random.default_rng(1).integers(0, 256, (70, 90), dtype=np.uint8)
    rng = np.random.default_rng(2)
    origins = set()
    for _ in range(40):
        crop = to_model_input(frame, TILE, rng)
        assert crop.shape == (32, 32)
        where = [
            (y, x)
            for y in range(70 - 31)
            for x in range(90 - 31)
            if np.array_equal(frame[y : y + 32, x : x + 32], crop)
        ]
        assert len(where) == 1  # an unscaled window of the frame
        origins.add(where[0])
    assert len(origins) > 30  # random positions, not a fixed grid
    assert max(y for y, _ in origins) > 70 - 32 - 10 and max(x for _, x in origins) > 90 - 32 - 10  # far parts too


def test_frames_smaller_than_a_tile_are_padded_at_their_far_end_as_the_daemon_pads_them():
    from inspectd.core.manifest import PreprocessSpec, TensorSpec
    from inspectd.inspection.preprocess import Preprocessor

    frame = np.random.default_rng(3).integers(0, 256, (20, 50), dtype=np.uint8)
    crop = to_model_input(frame, TILE, np.random.default_rng(0))
    np.testing.assert_array_equal(crop[:20], frame[:, crop_x(frame, crop) : crop_x(frame, crop) + 32])
    pre = Preprocessor(
        PreprocessSpec(color="gray", mode="tile", tile_overlap=8), TensorSpec(name="x", shape=(None, 1, 32, 32))
    )
    tiles = pre.prepare(frame).batch[:, 0]
    padded_rows = (tiles[0] * 255).round().astype(np.uint8)[20:, :]
    np.testing.assert_array_equal(
        padded_rows, cv2.copyMakeBorder(frame[:, :32], 0, 12, 0, 0, cv2.BORDER_REFLECT_101)[20:]
    )
    np.testing.assert_array_equal(
        crop[20:],
        cv2.copyMakeBorder(frame, 0, 12, 0, 0, cv2.BORDER_REFLECT_101)[
            20:, crop_x(frame, crop) : crop_x(frame, crop) + 32
        ],
    )


def crop_x(frame: np.ndarray, crop: np.ndarray) -> int:
    for x in range(frame.shape[1] - 31):
        if np.array_equal(frame[:, x : x + 32], crop[: frame.shape[0]]):
            return x
    raise AssertionError("crop not found in the frame")


def test_train_with_a_hard_defect_set_records_it_and_its_command(tmp_path):
    from inspectd.cli import main
    from inspectd.core.manifest import load_manifest

    root = tmp_path / "data"
    for sub in ("train/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True)
    for i, img in enumerate(stripes(8, size=48, seed=4)):
        cv2.imwrite(str(root / "train" / "good" / f"{i}.png"), img)
    hard = _hard((48, 48))
    hard_mask = np.zeros((48, 48), np.uint8)
    hard_mask[20:30, 10:40] = 255
    cv2.imwrite(str(root / "test" / "crack" / "c.png"), hard.image)
    cv2.imwrite(str(root / "ground_truth" / "crack" / "c_mask.png"), hard_mask)
    out = tmp_path / "model"
    argv = [
        "train",
        "--kind",
        "autoencoder",
        "--data",
        str(root),
        "--out",
        str(out),
        "--input-size",
        "32",
        "--base-width",
        "8",
        "--max-width",
        "16",
        "--latent-channels",
        "8",
        "--iterations",
        "4",
        *QUIET,
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--hard-defects",
        str(root),
        "--hard-prob",
        "0.5",
    ]
    assert main(argv) == 0
    t = load_manifest(out).training
    assert (
        t["hard_defects"]["images"] == 1 and t["hard_defects"]["prob"] == 0.5 and t["hard_defects"]["target_value"] == 0
    )
    assert "--hard-defects" in t["command"] and "--hard-prob 0.5" in t["command"]
    m = load_manifest(out)
    assert m.preprocess.mode == "tile" and m.preprocess.normalize == "median" and m.score.smooth_sigma == 4.0


def test_edge_crops_put_a_share_of_the_tiles_flush_with_a_frame_edge_as_the_daemons_edge_tiles_are():
    from inspectd.training.data import crop_origin

    rng = np.random.default_rng(4)
    h, w = 200, 300
    flush = [crop_origin((h, w), TILE, rng, edge_prob=0.5) for _ in range(400)]
    on_edge = [y in (0, h - 32) or x in (0, w - 32) for y, x in flush]
    assert 0.4 < np.mean(on_edge) < 0.65
    plain = [crop_origin((h, w), TILE, rng) for _ in range(400)]
    assert np.mean([y in (0, h - 32) or x in (0, w - 32) for y, x in plain]) < 0.1
    ds = TrainingSet(stripes(2, size=64), TILE, edge_prob=0.5)
    assert ds.edge_prob == 0.5
    assert TrainingSet(stripes(2, size=64), InputGeometry(height=32, width=32), edge_prob=0.5).edge_prob == 0.0


def test_training_draws_a_progress_bar_on_a_terminal():
    import io

    from inspectd.training.model import ConvAutoencoder, ModelConfig
    from inspectd.training.train import TrainConfig, train

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = Tty()
    data = TrainingSet(stripes(4), InputGeometry(height=32, width=32))
    cfg = ModelConfig(height=32, width=32, base_width=8, max_width=16, latent_channels=8, depth=2)
    train(ConvAutoencoder(cfg), data, TrainConfig(iterations=6, batch_size=2, log_every=3, threads=1), log=log)
    text = log.getvalue()
    assert (
        "\rtrain [" in text and "it 3/6" in text and text.rstrip().endswith("final loss " + text.rstrip().split()[-1])
    )


def test_a_hard_defect_fraction_takes_that_share_of_each_class_by_name_and_grows_as_a_superset(tmp_path):
    from inspectd.training.data import hard_defect_files

    for cls, n in (("a", 10), ("b", 3)):
        (tmp_path / "test" / cls).mkdir(parents=True)
        (tmp_path / "ground_truth" / cls).mkdir(parents=True)
        for i in range(n):
            img = np.full((16, 16), 100, np.uint8)
            cv2.imwrite(str(tmp_path / "test" / cls / f"{i}.png"), img)
            img[4:8, 4:8] = 255
            cv2.imwrite(str(tmp_path / "ground_truth" / cls / f"{i}_mask.png"), img)
    (tmp_path / "test" / "good").mkdir()
    cv2.imwrite(str(tmp_path / "test" / "good" / "g.png"), np.zeros((16, 16), np.uint8))
    third = [s for _, _, s in hard_defect_files(tmp_path, 0.34)]
    assert sum(s.startswith("a/") for s in third) == 3 and sum(s.startswith("b/") for s in third) == 1
    assert third == [s for _, _, s in hard_defect_files(tmp_path, 0.34)]  # deterministic
    assert set(third) <= {s for _, _, s in hard_defect_files(tmp_path, 0.6)}
    assert len(hard_defect_files(tmp_path)) == 13  # all, good never included
    loaded = load_hard_defects(tmp_path, fraction=0.34)
    assert [h.source for h in loaded] == third and all(len(h.sha256) == 64 for h in loaded)
    with pytest.raises(ValueError, match="fraction"):
        hard_defect_files(tmp_path, 0.0)


def test_scaled_tiles_train_on_resized_frames_and_resized_hard_defect_masks():
    geom = InputGeometry(height=32, width=32, mode="tile", scale=0.5)
    hard = _hard((80, 120))  # mask 10 x 14 at (50, 90) -> 5 x 7 at (25, 45)
    ds = TrainingSet(stripes(2, size=128), geom, hard=[hard], hard_prob=1.0, defect_prob=0.0)
    assert ds.frames[0].shape == (64, 64)
    assert ds.hard[0].image.shape == (40, 60) and ds.hard[0].mask.shape == (40, 60)
    assert ds.hard[0].mask.sum() == 35 and ds.hard[0].mask[25:30, 45:52].all()
    inp, target, mask = ds.sample_one(np.random.default_rng(0))
    assert inp.shape == (32, 32) and mask.any() and np.all(target[mask.astype(bool)] == 0)
    tiny = HardDefect(image=hard.image, mask=np.pad(np.ones((1, 1), np.uint8), ((40, 39), (60, 59))))
    assert TrainingSet(stripes(2, size=128), geom, hard=[hard, tiny], hard_prob=0.5).hard[0].source == hard.source
    assert len(TrainingSet(stripes(2, size=128), geom, hard=[hard, tiny], hard_prob=0.5).hard) == 1
