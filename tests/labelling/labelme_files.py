"""LabelMe documents written the way labelme 5 writes them (LabelFile.save): every key, shapes with label, points,
group_id, description, shape_type, flags and mask (base64 0/1 PNG or null), imagePath relative to the JSON,
imageData the base64 of the image file, imageHeight and imageWidth."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np

from inspectd.labelling.labelme import encode_mask


def shape(label: str, points: list, shape_type: str, mask: np.ndarray | None = None) -> dict:
    return {
        "label": label,
        "points": [[float(x), float(y)] for x, y in points],
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": None if mask is None else encode_mask(mask),
    }


def write_labelme_file(
    json_path: Path, image_path: Path, shapes: list[dict], *, embed: bool = True, hw: tuple[int, int] | None = None
) -> Path:
    """A labelme-style JSON for the image at `image_path` (written by the caller); `hw` overrides the size it
    states (to make a mismatching file)."""
    img = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
    h, w = hw or img.shape[:2]
    doc = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": str(Path(_relpath(image_path, json_path.parent))),
        "imageData": base64.b64encode(image_path.read_bytes()).decode("ascii") if embed else None,
        "imageHeight": int(h),
        "imageWidth": int(w),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    return json_path


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def noise_image(path: Path, hw: tuple[int, int] = (60, 80), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(90, 160, hw, dtype=np.uint8))
    return path
