"""LabelMe JSON <-> masks with LabelMe's own pixels: every shape type as labelme.utils.shape_to_mask draws it, labels
mapped to classes, and an export that imports back exactly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from inspectd.labelling.labelme import (
    LabelMapping,
    LabelMeError,
    decode_mask,
    from_labelme,
    rasterise,
    read_labelme,
    read_labelme_mask,
    shape_mask,
    to_labelme,
    write_labelme,
)
from tests.conftest import SHARED_DATASETS
from tests.labelling.labelme_files import shape

EXAMPLES = SHARED_DATASETS / "labelme-examples"  # beside the repository, or INSPECTD_SHARED_DATASETS
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} (labelme's example files) is absent")


def test_rectangle_includes_both_corners_in_either_order():
    for pts in ([[2, 3], [6, 5]], [[6, 5], [2, 3]]):
        m = shape_mask(shape("d", pts, "rectangle"), (10, 10))
        assert m.sum() == 5 * 3 and m[3:6, 2:7].all()


def test_point_is_a_disc_of_radius_five():
    m = shape_mask(shape("d", [[20, 20]], "point"), (40, 40))
    assert m.sum() == 97  # what labelme makes of a point (shape_to_mask's point_size 5)
    assert m[20, 15] and m[20, 25] and not m[20, 26] and not m[14, 20]


def test_line_is_ten_pixels_wide():
    m = shape_mask(shape("d", [[5, 20], [35, 20]], "line"), (40, 40))
    rows = np.flatnonzero(m.any(axis=1))
    assert len(rows) == 10 and m[:, 20].sum() == 10 and m[rows[0] : rows[-1] + 1, 5:36].all()


def test_linestrip_stays_open():
    pts = [[5, 5], [35, 5], [35, 35]]
    open_strip = shape_mask(shape("d", pts, "linestrip"), (40, 40))
    closed = shape_mask(shape("d", pts, "polygon"), (40, 40))
    assert not open_strip[15, 25] and closed[15, 25]  # inside the triangle: a linestrip does not fill it
    assert open_strip[5, 20] and open_strip[20, 35] and not open_strip[20, 20]


def test_circle_radius_is_the_distance_to_the_rim_point():
    m = shape_mask(shape("d", [[20, 20], [20, 26]], "circle"), (40, 40))
    assert m[20, 14] and m[20, 26] and not m[20, 27] and not m[20, 13]
    assert abs(int(m.sum()) - np.pi * 36) < 20


def test_polygon_includes_its_vertices_and_outline():
    m = shape_mask(shape("d", [[10, 10], [30, 10], [10, 30]], "polygon"), (40, 40))
    assert m[10, 10] and m[10, 30] and m[30, 10] and m[20, 20] and not m[25, 25]


def test_mask_shape_places_its_png_at_the_truncated_box():
    sub = np.zeros((4, 6), bool)
    sub[1:3, 2:5] = True
    m = shape_mask(shape("d", [[10.7, 5.2], [15.9, 8.9]], "mask", sub), (20, 20))
    assert m.sum() == 6 and m[6:8, 12:15].all()


def test_mask_shape_whose_png_does_not_fit_its_box_is_an_error():
    with pytest.raises(LabelMeError, match="spans"):
        shape_mask(shape("d", [[0, 0], [3, 3]], "mask", np.ones((2, 2), bool)), (20, 20))


def test_undrawable_shapes_name_the_shape_and_why():
    doc = {"imageHeight": 9, "imageWidth": 9, "shapes": [shape("d", [[1, 1], [2, 2]], "polygon")]}
    with pytest.raises(LabelMeError, match=r"shapes\[0\] \(polygon 'd'\): a polygon needs more than 2 points"):
        rasterise(doc)
    doc["shapes"] = [shape("d", [[1, 1]], "ellipse")]
    with pytest.raises(LabelMeError, match="not one LabelMe draws"):
        rasterise(doc)


def test_labels_map_to_classes_and_ignore_labels_draw_nothing():
    doc = {
        "imageHeight": 20,
        "imageWidth": 20,
        "shapes": [
            shape("scratch", [[1, 1], [4, 4]], "rectangle"),
            shape("hole", [[10, 10], [12, 12]], "rectangle"),
            shape("__ignore__", [[15, 15], [18, 18]], "rectangle"),
            shape("dust", [[15, 1], [18, 3]], "rectangle"),
        ],
    }
    r = rasterise(doc, LabelMapping.parse(["scratch=crack"], ["dust"]))
    assert sorted(r.masks) == ["crack", "hole"] and r.excluded == ["__ignore__", "dust"]
    assert r.main_class == "crack" and r.mask[16, 16] == 0 and r.mask[2, 16] == 0 and r.mask[2, 2] == 255
    with pytest.raises(ValueError, match="LABEL=CLASS"):
        LabelMapping.parse(["scratch"])


@needs_examples
def test_labelme_primitives_example_gives_labelmes_pixels():
    doc = read_labelme(EXAMPLES / "primitives.json")
    r = rasterise(doc)
    area = {c: int(m.sum()) for c, m in r.masks.items()}
    assert area["line"] == 514 and area["point"] == 97  # labelme's own shape_to_mask counts for this file
    octagon = next(s for s in doc["shapes"] if s["shape_type"] == "mask")
    (x1, y1), _ = np.asarray(octagon["points"]).astype(int)
    sub = decode_mask(octagon["mask"])
    np.testing.assert_array_equal(r.masks["octagon"][y1 : y1 + sub.shape[0], x1 : x1 + sub.shape[1]], sub)
    assert area["octagon"] == int(sub.sum())
    strip = next(s for s in doc["shapes"] if s["shape_type"] == "linestrip")
    closed = shape_mask({**strip, "shape_type": "polygon"}, r.hw)
    assert area["line_strip"] < 0.5 * closed.sum()  # open: not the filled triangle


@needs_examples
def test_labelme_instance_example_leaves_ignore_out():
    r = rasterise(read_labelme(EXAMPLES / "2011_000003.json"))
    assert sorted(r.masks) == ["bottle", "person"] and r.excluded == ["__ignore__"]
    doc = read_labelme(EXAMPLES / "2011_000003.json")
    ignore = next(s for s in doc["shapes"] if s["label"] == "__ignore__")
    only_ignored = shape_mask(ignore, r.hw) & ~r.mask.astype(bool)
    assert only_ignored.any()  # those pixels are not labelled defect


def shapes_mask() -> np.ndarray:
    m = np.zeros((60, 80), np.uint8)
    cv2.ellipse(m, (25, 30), (15, 8), 30, 0, 360, 255, -1)
    cv2.fillPoly(m, [np.array([[55, 5], [75, 10], [65, 30]], np.int32)], 255)
    m[50, 70] = 255  # a one-pixel region
    m[45:47, 5:30] = 255  # a thin scratch
    m[55, 40:60] = 255  # a one-pixel-wide line
    return m


def test_mask_to_labelme_json_and_back_is_exact(tmp_path):
    mask = shapes_mask()
    doc = to_labelme(mask, "../images/a.png")
    assert doc["imageHeight"] == 60 and doc["imageWidth"] == 80 and doc["imageData"] is None
    assert len(doc["shapes"]) == 5 and doc["shapes"][0]["shape_type"] == "polygon"
    path = write_labelme(tmp_path / "a.json", doc)
    assert json.loads(path.read_text())["imagePath"] == "../images/a.png"
    np.testing.assert_array_equal(read_labelme_mask(path), mask)


def test_random_blobs_export_and_import_exactly():
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = np.zeros((50, 50), np.uint8)
        for _ in range(3):
            c = (int(rng.integers(5, 45)), int(rng.integers(5, 45)))
            ax = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
            cv2.ellipse(m, c, ax, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        filled = np.zeros_like(m)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(filled, contours, -1, 255, cv2.FILLED)
        np.testing.assert_array_equal(from_labelme(to_labelme(m, "a.png")), filled)


def test_empty_mask_gives_no_shapes():
    doc = to_labelme(np.zeros((8, 8), np.uint8), "x.png")
    assert doc["shapes"] == [] and not from_labelme(doc).any()
