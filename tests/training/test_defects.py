"""The synthetic defect generator: thin 16-point ellipses, rectangles, triangles, one grey value."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from inspectd.training.defects import DefectConfig, add_defect, ellipse_polygon, paint, random_defect

ELLIPSES_ONLY = DefectConfig(shape_weights=(1.0, 0.0, 0.0))


def test_ellipse_polygon_samples_16_points_at_equal_polar_angle_steps_on_the_ellipse():
    a, b, angle = 20.0, 5.0, 0.7
    pts = ellipse_polygon(50.0, 40.0, a, b, angle, 16)
    assert pts.shape == (16, 2)
    # undo the placement: every vertex lies on the ellipse x^2/a^2 + y^2/b^2 = 1 ...
    d = pts - [50.0, 40.0]
    ca, sa = math.cos(-angle), math.sin(-angle)
    x = ca * d[:, 0] - sa * d[:, 1]
    y = sa * d[:, 0] + ca * d[:, 1]
    np.testing.assert_allclose(x**2 / a**2 + y**2 / b**2, 1.0, atol=1e-9)
    # ... at polar angles 0, 2pi/16, 4pi/16, ...
    phi = np.mod(np.arctan2(y, x), 2 * np.pi)
    np.testing.assert_allclose(phi, 2 * np.pi * np.arange(16) / 16, atol=1e-9)


@pytest.mark.parametrize("size", [(32, 32), (128, 128), (64, 200)])
def test_random_ellipses_are_thin_longer_than_the_minimum_and_have_16_vertices(size):
    rng = np.random.default_rng(1)
    h, w = size
    for _ in range(200):
        d = random_defect(rng, h, w, ELLIPSES_ONLY)
        assert d.shape == "ellipse"
        assert d.polygon.shape == (16, 2)
        a, b = d.params["a"], d.params["b"]
        assert a > b
        assert a > d.params["a_min"] == pytest.approx(ELLIPSES_ONLY.min_long * min(h, w))
        assert b / a <= ELLIPSES_ONLY.max_aspect


@pytest.mark.parametrize("size", [(16, 16), (48, 96), (128, 128)])
def test_every_shape_lies_inside_the_image(size):
    rng = np.random.default_rng(2)
    h, w = size
    shapes = set()
    for _ in range(300):
        d = random_defect(rng, h, w)
        shapes.add(d.shape)
        xs, ys = d.polygon[:, 0], d.polygon[:, 1]
        assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= w - 1 and ys.max() <= h - 1
    assert shapes == {"ellipse", "rectangle", "triangle"}


def test_rectangles_have_4_vertices_and_triangles_3():
    rng = np.random.default_rng(3)
    rect = random_defect(rng, 64, 64, DefectConfig(shape_weights=(0, 1, 0)))
    tri = random_defect(rng, 64, 64, DefectConfig(shape_weights=(0, 0, 1)))
    assert rect.polygon.shape == (4, 2) and tri.polygon.shape == (3, 2)


def test_mask_marks_exactly_the_filled_pixels_and_the_fill_is_one_grey_value():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (96, 80), dtype=np.uint8)
    for _ in range(50):
        corrupted, mask, defect = add_defect(image, rng)
        inside = mask.astype(bool)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert inside.any()
        assert np.all(corrupted[inside] == defect.value)  # one grey value everywhere inside
        np.testing.assert_array_equal(corrupted[~inside], image[~inside])  # nothing else changed
        expected = np.zeros_like(mask)
        cv2.fillPoly(expected, [defect.polygon.reshape(-1, 1, 2)], 1)
        np.testing.assert_array_equal(mask, expected)  # the mask is the filled polygon, pixel for pixel
        assert 0 <= defect.value <= 255


def test_grey_values_cover_the_whole_0_to_255_range():
    rng = np.random.default_rng(5)
    values = [random_defect(rng, 64, 64).value for _ in range(2000)]
    assert min(values) < 10 and max(values) > 245


def test_bgr_images_get_the_same_grey_in_every_channel():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    corrupted, mask, defect = add_defect(image, rng)
    assert np.all(corrupted[mask.astype(bool)] == defect.value)
    np.testing.assert_array_equal(corrupted[~mask.astype(bool)], image[~mask.astype(bool)])


def test_the_same_seed_paints_the_same_defect():
    image = np.full((64, 64), 100, np.uint8)
    a = add_defect(image, np.random.default_rng(7))
    b = add_defect(image, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_paint_leaves_the_input_untouched():
    image = np.full((32, 32), 7, np.uint8)
    defect = random_defect(np.random.default_rng(8), 32, 32)
    paint(image, defect)
    assert np.all(image == 7)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_aspect": 1.0}, {"min_long": 0.3, "max_long": 0.2}, {"shape_weights": (0, 0, 0)}, {"n_points": 2}],
)
def test_config_refuses_shapes_the_seed_does_not_describe(kwargs):
    with pytest.raises(ValueError):
        DefectConfig(**kwargs)


def test_add_defect_refuses_float_images():
    with pytest.raises(ValueError, match="uint8"):
        add_defect(np.zeros((8, 8), np.float32), np.random.default_rng(0))
