"""LabelMe JSON round trip: mask -> polygons -> mask, and polygons -> mask -> polygons within a pixel."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from inspectd.labelling.labelme import (
    from_labelme,
    mask_to_polygons,
    polygons_to_mask,
    read_labelme_mask,
    to_labelme,
    write_labelme,
)


def shapes_mask() -> np.ndarray:
    m = np.zeros((60, 80), np.uint8)
    cv2.ellipse(m, (25, 30), (15, 8), 30, 0, 360, 255, -1)
    cv2.fillPoly(m, [np.array([[55, 5], [75, 10], [65, 30]], np.int32)], 255)
    m[50, 70] = 255  # a one-pixel region
    m[45:47, 5:30] = 255  # a thin scratch
    return m


def test_mask_to_labelme_json_and_back_is_exact(tmp_path):
    mask = shapes_mask()
    doc = to_labelme(mask, "../images/a.png")
    assert doc["imageHeight"] == 60 and doc["imageWidth"] == 80 and doc["imageData"] is None
    assert len(doc["shapes"]) == 4 and all(s["shape_type"] == "polygon" for s in doc["shapes"])
    path = write_labelme(tmp_path / "a.json", doc)
    assert json.loads(path.read_text())["imagePath"] == "../images/a.png"
    np.testing.assert_array_equal(read_labelme_mask(path), mask)


def test_polygons_to_mask_to_polygons_within_a_pixel():
    polygons = [[[10.0, 10.0], [40.0, 12.0], [35.0, 40.0], [12.0, 30.0]], [[50.0, 45.0], [70.0, 45.0], [70.0, 55.0]]]
    mask = polygons_to_mask(polygons, (60, 80))
    back = mask_to_polygons(mask)
    assert len(back) == 2
    for original, found in zip(polygons, back, strict=False):  # largest first, as given
        contour = np.asarray(found, np.float32).reshape(-1, 1, 2)
        for x, y in original:  # every original vertex lies on (or within a pixel of) the recovered outline
            assert abs(cv2.pointPolygonTest(contour, (x, y), True)) <= 1.0
    np.testing.assert_array_equal(polygons_to_mask(back, (60, 80)), mask)


def test_reads_labelme_rectangles_and_circles():
    doc = {
        "imageHeight": 30,
        "imageWidth": 30,
        "shapes": [
            {"label": "defect", "points": [[2, 2], [6, 5]], "shape_type": "rectangle"},
            {"label": "defect", "points": [[20, 20], [24, 20]], "shape_type": "circle"},
        ],
    }
    m = from_labelme(doc)
    assert np.count_nonzero(m[2:6, 2:7]) == 20 and m[20, 20] == 255 and m[20, 25] == 0


def test_unknown_shape_type_is_an_error():
    with pytest.raises(ValueError, match="not supported"):
        from_labelme({"imageHeight": 5, "imageWidth": 5, "shapes": [{"points": [[1, 1]], "shape_type": "mask"}]})


def test_empty_mask_gives_no_shapes():
    doc = to_labelme(np.zeros((8, 8), np.uint8), "x.png")
    assert doc["shapes"] == [] and not from_labelme(doc).any()
