"""LabelMe JSON <-> masks, with LabelMe's own pixels: a label reviewed in LabelMe becomes exactly the mask LabelMe
(`labelme.utils.shape_to_mask`, and `shapes_to_label` for mask shapes) makes of it.

Reading (`rasterise`), shape by shape, as labelme 5 draws it with PIL.ImageDraw on an image of the JSON's size:
- polygon (or no shape_type): filled, outline included, > 2 points;
- rectangle: two corner points, filled, outline included;
- circle: centre and a point on the rim, the disc of that radius;
- line (2 points) and linestrip (open, >= 2 points): drawn `LINE_WIDTH` (10) px wide, never closed;
- point: a disc of radius `POINT_SIZE` (5) px;
- mask: a base64 PNG (0/1) placed with its top-left at the truncated first point, spanning to the second point.
Pillow is the library labelme draws with, so it is used here too: same rasteriser, same pixels.

Labels map to defect classes (`LabelMapping`): a shape's label is its class unless the mapping renames it;
`__ignore__` (labelme's own "not a class" label) and any label in `exclude` draw nothing.

Writing (`to_labelme`): one polygon per connected region (outer contour through the boundary pixels' centres, holes
filled: LabelMe polygons have none); a region that LabelMe would not draw back to the same pixels as a polygon (a
one- or two-pixel speck, a one-pixel-wide line) is written as a mask shape instead, so export + import is exact.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

LABELME_VERSION = "5.4.1"
DEFAULT_LABEL = "defect"
IGNORE_LABEL = "__ignore__"
LINE_WIDTH = 10  # labelme.utils.shape_to_mask's line_width
POINT_SIZE = 5  # labelme.utils.shape_to_mask's point_size (radius)
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")


class LabelMeError(ValueError):
    """A LabelMe document that cannot be read as LabelMe reads it; the message says which shape and why."""


@dataclass(frozen=True)
class LabelMapping:
    """Shape label -> defect class. `classes` renames labels (others keep their own name); `__ignore__` and every
    label in `exclude` are no defect and draw nothing."""

    classes: dict[str, str] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()

    def class_of(self, label: str) -> str | None:
        if label == IGNORE_LABEL or label in self.exclude:
            return None
        return self.classes.get(label, label)

    @classmethod
    def parse(cls, renames: Iterable[str] = (), exclude: Iterable[str] = ()) -> LabelMapping:
        """From 'LABEL=CLASS' strings (the CLI's --map) and labels to exclude; ValueError naming a bad entry."""
        classes = {}
        for item in renames:
            label, sep, name = item.partition("=")
            if not sep or not label or not name or "/" in name:
                msg = f"label mapping {item!r} is not LABEL=CLASS (a class is a folder name, without '/')"
                raise ValueError(msg)
            classes[label] = name
        return cls(classes, frozenset(exclude))


@dataclass
class Rasterised:
    """What a LabelMe document labels: one bool mask per defect class, and the labels that drew nothing."""

    hw: tuple[int, int]
    masks: dict[str, np.ndarray]
    excluded: list[str]

    @property
    def mask(self) -> np.ndarray:
        """All defect classes together, uint8 0/255."""
        out = np.zeros(self.hw, bool)
        for m in self.masks.values():
            out |= m
        return out.astype(np.uint8) * 255

    @property
    def main_class(self) -> str | None:
        """The class with the most labelled pixels (None when nothing is labelled)."""
        areas = {c: int(m.sum()) for c, m in self.masks.items() if m.any()}
        return max(sorted(areas), key=lambda c: areas[c]) if areas else None


def decode_mask(data: str) -> np.ndarray:
    """A mask shape's base64 PNG -> bool array (nonzero = labelled), as labelme's img_b64_to_arr(...).astype(bool)."""
    try:
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        arr = np.asarray(img)
    except (binascii.Error, ValueError, OSError) as exc:
        msg = f"its 'mask' is not a base64 PNG ({exc})"
        raise LabelMeError(msg) from exc
    if arr.ndim != 2:
        msg = f"its 'mask' PNG has shape {arr.shape}; expected one channel (labelme writes 0/1 grey PNGs)"
        raise LabelMeError(msg)
    return arr.astype(bool)


def encode_mask(mask: np.ndarray) -> str:
    """bool/0-1 array -> base64 PNG of 0/1 values, as labelme writes a mask shape."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask).astype(bool).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _points(shape: dict) -> list[tuple[float, float]]:
    pts = shape.get("points")
    try:
        return [(float(x), float(y)) for x, y in pts]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        msg = f"its points {str(pts)[:60]} are not a list of [x, y] pairs"
        raise LabelMeError(msg) from exc


def _need(kind: str, xy: list, ok: bool, want: str) -> None:
    if not ok:
        msg = f"a {kind} needs {want}, it has {len(xy)}"
        raise LabelMeError(msg)


def shape_mask(shape: dict, hw: tuple[int, int]) -> np.ndarray:
    """The bool mask (h, w) LabelMe makes of one shape (module docstring); LabelMeError when it cannot be drawn."""
    kind = shape.get("shape_type") or "polygon"
    xy = _points(shape)
    if kind == "mask":
        _need(kind, xy, len(xy) == 2, "2 points (its box)")
        if not shape.get("mask"):
            raise LabelMeError("a mask shape needs its 'mask' (base64 PNG)")
        sub = decode_mask(shape["mask"])
        (x1, y1), (x2, y2) = np.asarray(xy).astype(int)
        out = np.zeros(hw, bool)
        target = out[y1 : y2 + 1, x1 : x2 + 1]
        if x1 < 0 or y1 < 0 or target.shape != sub.shape:
            msg = (
                f"its mask PNG is {sub.shape[1]}x{sub.shape[0]} but its box ({x1},{y1})-({x2},{y2}) spans "
                f"{target.shape[1]}x{target.shape[0]} px of the image"
            )
            raise LabelMeError(msg)
        out[y1 : y2 + 1, x1 : x2 + 1] = sub
        return out
    img = Image.fromarray(np.zeros(hw, np.uint8))
    draw = ImageDraw.Draw(img)
    if kind == "circle":
        _need(kind, xy, len(xy) == 2, "2 points (centre, rim)")
        (cx, cy), (px, py) = xy
        d = float(np.hypot(cx - px, cy - py))
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind == "rectangle":
        _need(kind, xy, len(xy) == 2, "2 points (corners)")
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    elif kind in ("line", "linestrip"):
        _need(
            kind, xy, len(xy) == 2 if kind == "line" else len(xy) >= 2, "2 points" if kind == "line" else ">= 2 points"
        )
        draw.line(xy, fill=1, width=LINE_WIDTH)
    elif kind == "point":
        _need(kind, xy, len(xy) == 1, "1 point")
        (cx, cy), r = xy[0], POINT_SIZE
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif kind == "polygon":
        _need(kind, xy, len(xy) > 2, "more than 2 points")
        draw.polygon(xy, outline=1, fill=1)
    else:
        msg = f"shape_type {kind!r} is not one LabelMe draws (expected one of {', '.join(SHAPE_TYPES)})"
        raise LabelMeError(msg)
    return np.asarray(img, dtype=bool)


def image_size(doc: dict) -> tuple[int, int]:
    """(h, w) the document says its image has; LabelMeError when it does not say."""
    try:
        h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LabelMeError("it has no imageHeight/imageWidth (LabelMe writes both)") from exc
    if h < 1 or w < 1:
        msg = f"its imageHeight/imageWidth {h}x{w} are not positive"
        raise LabelMeError(msg)
    return h, w


def rasterise(doc: dict, mapping: LabelMapping | None = None, hw: tuple[int, int] | None = None) -> Rasterised:
    """Every shape of a LabelMe document drawn as LabelMe draws it, by defect class (module docstring)."""
    hw = image_size(doc) if hw is None else hw
    mapping = mapping or LabelMapping()
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise LabelMeError("it has no 'shapes' list")
    masks: dict[str, np.ndarray] = {}
    excluded = []
    for i, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            msg = f"shapes[{i}] is not an object"
            raise LabelMeError(msg)
        label = str(shape.get("label", ""))
        cls = mapping.class_of(label)
        if cls is None:
            excluded.append(label)
            continue
        try:
            m = shape_mask(shape, hw)
        except LabelMeError as exc:
            msg = f"shapes[{i}] ({shape.get('shape_type') or 'polygon'} {label!r}): {exc}"
            raise LabelMeError(msg) from exc
        masks[cls] = masks[cls] | m if cls in masks else m
    return Rasterised(hw, masks, excluded)


def embedded_image(doc: dict) -> np.ndarray | None:
    """The document's imageData (base64 image file) as a uint8 grey image, or None when it has none."""
    data = doc.get("imageData")
    if not data:
        return None
    try:
        buf = np.frombuffer(base64.b64decode(data, validate=True), np.uint8)
    except (binascii.Error, ValueError) as exc:
        raise LabelMeError(f"its imageData is not base64 ({exc})") from exc
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise LabelMeError("its imageData is not an image file")
    return img


def read_labelme(path: str | Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path} is not readable JSON ({exc})"
        raise LabelMeError(msg) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        msg = f"{path} is not a LabelMe document (expected an object with 'shapes', 'imagePath', 'imageHeight', ...)"
        raise LabelMeError(msg)
    return doc


def read_labelme_mask(
    path: str | Path, shape: tuple[int, int] | None = None, mapping: LabelMapping | None = None
) -> np.ndarray:
    """The 0/255 mask of a LabelMe file, all defect classes together."""
    return rasterise(read_labelme(path), mapping, shape).mask


def from_labelme(doc: dict, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The 0/255 mask of a LabelMe document (default mapping); `shape` (h, w) overrides its size."""
    return rasterise(doc, None, shape).mask


# --- writing ----------------------------------------------------------------------------------------------------


def mask_to_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outer contours of the nonzero regions as [[x, y], ...] point lists (pixel centres), largest first."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=cv2.contourArea, reverse=True)
    return [[[float(x), float(y)] for x, y in c.reshape(-1, 2)] for c in contours]


def polygons_to_mask(polygons: list[list[list[float]]], shape: tuple[int, int]) -> np.ndarray:
    """Polygons drawn as LabelMe draws them, as one uint8 0/255 mask of `shape` (h, w)."""
    out = np.zeros(shape, bool)
    for pts in polygons:
        out |= shape_mask({"shape_type": "polygon", "points": pts}, shape)
    return out.astype(np.uint8) * 255


def _region_shape(region: np.ndarray, label: str, desc: str) -> dict:
    """One region as a polygon when LabelMe draws that polygon back to exactly these pixels, else a mask shape."""
    base: dict = {"label": label, "group_id": None, "description": desc, "flags": {}, "mask": None}
    pts = mask_to_polygons(region)[0]
    if len(pts) > 2 and np.array_equal(shape_mask({"shape_type": "polygon", "points": pts}, region.shape), region):
        return {**base, "points": pts, "shape_type": "polygon"}
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    sub = region[y0 : y1 + 1, x0 : x1 + 1]
    return {
        **base,
        "points": [[float(x0), float(y0)], [float(x1), float(y1)]],
        "shape_type": "mask",
        "mask": encode_mask(sub),
    }


def to_labelme(
    mask: np.ndarray, image_path: str, *, label: str = DEFAULT_LABEL, scores: list[float] | None = None
) -> dict:
    """A LabelMe 5 document for one image: one shape per region, largest first (description = its score if given),
    imagePath relative to the JSON, imageData null (LabelMe then loads the image from imagePath)."""
    h, w = mask.shape[:2]
    filled = np.zeros((h, w), np.uint8)
    contours, _ = cv2.findContours((np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = sorted(contours, key=cv2.contourArea, reverse=True)
    shapes = []
    for i, c in enumerate(contours):
        filled[:] = 0
        cv2.drawContours(filled, [c], -1, 1, thickness=cv2.FILLED)
        desc = f"prelabel score {scores[i]:.4f}" if scores and i < len(scores) else ""
        shapes.append(_region_shape(filled.astype(bool), label, desc))
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(h),
        "imageWidth": int(w),
    }


def write_labelme(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path
