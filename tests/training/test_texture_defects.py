"""Texture defects (an extension beyond the one-grey polygons, off by default): a larger region whose own
texture is smoothed, roughened or re-lit; the mask marks exactly the changed region; the polygon stream is unchanged
when they are off."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd.training.defects import BAND_TEXTURES, TEXTURES, DefectConfig, add_defect, random_defect
from tests.training.conftest import stripes

TEXTURE_ONLY = DefectConfig(texture_prob=1.0)


def test_texture_defects_change_only_the_masked_region_and_keep_the_images_texture_there():
    rng = np.random.default_rng(0)
    image = stripes(1, size=96, seed=3)[0]
    kinds = set()
    for _ in range(60):
        out, mask, d = add_defect(image, rng, TEXTURE_ONLY)
        inside = mask.astype(bool)
        kinds.add(d.texture)
        assert d.texture in TEXTURES and inside.any()
        np.testing.assert_array_equal(out[~inside], image[~inside])
        expected = np.zeros_like(mask)
        cv2.fillPoly(expected, [d.polygon.reshape(-1, 1, 2)], 1)
        np.testing.assert_array_equal(mask, expected)
        assert len(np.unique(out[inside])) > 1 or inside.sum() < 4  # not one grey: the image's own texture, changed
        xs, ys = d.polygon[:, 0], d.polygon[:, 1]
        assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= 95 and ys.max() <= 95
    assert kinds == set(TEXTURES)


def test_texture_defects_are_larger_than_the_seeds_shapes():
    rng = np.random.default_rng(1)
    image = np.full((128, 128), 100, np.uint8)
    seed_area = np.mean([add_defect(image, rng, DefectConfig())[1].sum() for _ in range(200)])
    texture_area = np.mean([add_defect(image, rng, TEXTURE_ONLY)[1].sum() for _ in range(200)])
    assert texture_area > 3 * seed_area


def test_with_texture_defects_off_the_seeds_random_stream_is_unchanged():
    a = random_defect(np.random.default_rng(9), 64, 64, DefectConfig())
    _, _, b = add_defect(np.zeros((64, 64), np.uint8), np.random.default_rng(9), DefectConfig(texture_prob=0.0))
    np.testing.assert_array_equal(a.polygon, b.polygon)
    assert a.value == b.value and b.texture == ""


@pytest.mark.parametrize("kwargs", [{"texture_prob": 1.5}, {"texture_scale": 0.5}])
def test_bad_texture_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="texture"):
        DefectConfig(**kwargs)


BANDS_ONLY = DefectConfig(texture_prob=1.0, band_prob=1.0)


def test_band_defects_run_from_one_edge_across_the_whole_image_and_leave_the_opposite_edge_untouched():
    rng = np.random.default_rng(4)
    image = stripes(1, size=96, seed=5)[0]
    edges, kinds = set(), set()
    for _ in range(60):
        out, mask, d = add_defect(image, rng, BANDS_ONLY)
        assert d.shape == "band" and d.texture in BAND_TEXTURES
        edges.add(d.params["edge"])
        kinds.add(d.texture)
        first, opposite = {
            "top": (mask[0], mask[-1]),
            "bottom": (mask[-1], mask[0]),
            "left": (mask[:, 0], mask[:, -1]),
            "right": (mask[:, -1], mask[:, 0]),
        }[d.params["edge"]]
        assert first.all(), "a band covers its whole edge"
        assert not opposite.any(), "and stops at a line before the opposite edge"
        assert 0.1 < mask.mean() < 0.7  # 15-60 % deep, give or take the tilt and the wave
        np.testing.assert_array_equal(out[~mask.astype(bool)], image[~mask.astype(bool)])
    assert edges == {"top", "bottom", "left", "right"} and kinds == set(BAND_TEXTURES)


def test_coarse_texture_keeps_the_local_brightness_but_widens_the_grain():
    rng = np.random.default_rng(0)
    image = stripes(1, size=96, seed=2)[0]
    for _ in range(200):
        out, mask, d = add_defect(image, rng, BANDS_ONLY)
        if d.texture == "coarse" and mask.sum() > 1500:
            break
    else:
        pytest.fail("no large coarse defect drawn in 200 tries")
    inside = mask.astype(bool)
    grain = lambda im: np.abs(np.diff(im.astype(np.float32), axis=1))[inside[:, 1:]].mean()  # noqa: E731
    assert grain(out) < 0.8 * grain(image)
    assert abs(float(out[inside].mean()) - float(image[inside].mean())) < 8


def test_with_bands_off_texture_defects_draw_the_same_shapes_as_before():
    a = add_defect(np.zeros((64, 64), np.uint8), np.random.default_rng(3), TEXTURE_ONLY)[2]
    b = add_defect(
        np.zeros((64, 64), np.uint8), np.random.default_rng(3), DefectConfig(texture_prob=1.0, band_prob=0.0)
    )[2]
    np.testing.assert_array_equal(a.polygon, b.polygon)


def test_a_band_share_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="band_prob"):
        DefectConfig(band_prob=1.5)
