"""Masks <-> LabelMe JSON, so reviewers can open pre-labels in LabelMe, fix them, and hand them back.

mask -> polygons: the outer contour of every connected region (cv2.findContours, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE;
points are pixel centres, so a region and its polygon agree to the pixel). Holes inside a region are filled (LabelMe
polygons have none).
polygons -> mask: cv2.fillPoly (boundary included); LabelMe's rectangle and circle shapes are read as well.
The JSON is LabelMe 5's: version, flags, shapes[label, points, group_id, description, shape_type, flags],
imagePath (relative to the JSON), imageData null (LabelMe then loads the image from imagePath), imageHeight/Width.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

LABELME_VERSION = "5.4.1"
DEFAULT_LABEL = "defect"


def mask_to_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outer contours of the nonzero regions as [[x, y], ...] point lists (pixel centres), largest first."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=cv2.contourArea, reverse=True)
    return [[[float(x), float(y)] for x, y in c.reshape(-1, 2)] for c in contours]


def polygons_to_mask(polygons: list[list[list[float]]], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons (point lists in pixel coordinates) into a uint8 0/255 mask of `shape` (h, w)."""
    mask = np.zeros(shape, np.uint8)
    for pts in polygons:
        arr = np.round(np.asarray(pts, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
        if len(arr) == 0:
            continue
        cv2.fillPoly(mask, [arr], 255)
        cv2.polylines(mask, [arr], True, 255)  # 1- and 2-point "polygons" (single pixels, thin lines) too
    return mask


def _shape_points(shape: dict) -> list[list[float]]:
    kind = shape.get("shape_type") or "polygon"
    pts = [[float(x), float(y)] for x, y in shape.get("points", [])]
    if kind in ("polygon", "linestrip", "line", "point"):
        return pts
    if kind == "rectangle" and len(pts) == 2:
        (x0, y0), (x1, y1) = pts
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    if kind == "circle" and len(pts) == 2:
        (cx, cy), (px, py) = pts
        r = float(np.hypot(px - cx, py - cy))
        t = np.linspace(0, 2 * np.pi, max(16, int(2 * np.pi * r)), endpoint=False)
        return [[cx + r * np.cos(a), cy + r * np.sin(a)] for a in t]
    msg = f"LabelMe shape_type {kind!r} with {len(pts)} points is not supported (use polygon, rectangle or circle)"
    raise ValueError(msg)


def to_labelme(
    mask: np.ndarray, image_path: str, *, label: str = DEFAULT_LABEL, scores: list[float] | None = None
) -> dict:
    """A LabelMe document for one image: one polygon shape per region (description = the region's score if given)."""
    h, w = mask.shape[:2]
    shapes: list[dict] = []
    for i, pts in enumerate(mask_to_polygons(mask)):
        desc = f"prelabel score {scores[i]:.4f}" if scores and i < len(scores) else ""
        shapes.append(
            {"label": label, "points": pts, "group_id": None, "description": desc, "shape_type": "polygon", "flags": {}}
        )
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(h),
        "imageWidth": int(w),
    }


def from_labelme(doc: dict, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The 0/255 mask of a LabelMe document (every shape counts as defect); `shape` (h, w) overrides its size."""
    if shape is None:
        try:
            shape = (int(doc["imageHeight"]), int(doc["imageWidth"]))
        except (KeyError, TypeError, ValueError) as exc:
            msg = "LabelMe JSON has no imageHeight/imageWidth; pass the image size"
            raise ValueError(msg) from exc
    return polygons_to_mask([_shape_points(s) for s in doc.get("shapes", [])], shape)


def write_labelme(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_labelme_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"{path} is not readable LabelMe JSON ({exc})"
        raise ValueError(msg) from exc
    return from_labelme(doc, shape)
