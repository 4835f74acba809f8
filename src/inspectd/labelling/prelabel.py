"""`inspectd label prelabel`: the first of the two kinds of model (the unsupervised autoencoder) proposes defect labels.

For every image under --images the daemon's own Inspector makes the frame-sized difference map; pixels above the
model's calibrated pixel threshold, in 8-connected regions of at least its minimum region area (as
inspectd/inspection/decide.py
counts them), are the pre-label. Written under --out, mirroring the images' sub-folders:

- masks/<rel>/<stem>_mask.png   0/255, empty when no region
- labelme/<rel>/<stem>.json     LabelMe polygons (imagePath relative to the JSON), for review in LabelMe
- overlays/<rel>/<stem>.png     the image with the pre-label outlined, for a quick look
- prelabels.json                per image: regions, area, score
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from inspectd.core import mvtec
from inspectd.inspection.decide import find_regions
from inspectd.inspection.inspector import Inspector
from inspectd.labelling.dataset import IMAGE_EXTS, write_png
from inspectd.labelling.labelme import to_labelme, write_labelme
from inspectd.labelling.report import overlay


def regions_mask(score_map: np.ndarray, pixel_threshold: float, min_region_area: int) -> tuple[np.ndarray, list[float]]:
    """(0/255 mask of the regions above threshold with >= min_region_area pixels, their peak scores largest first)."""
    found = find_regions(score_map, pixel_threshold, min_region_area)
    peaks = [float(score_map[found.labels == k].max()) for k in found.kept]
    return found.mask().astype(np.uint8) * 255, peaks


def find_images(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        msg = f"no images ({', '.join(IMAGE_EXTS)}) under {directory}"
        raise FileNotFoundError(msg)
    return files


def prelabel(
    model_dir: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    pixel_threshold: float | None = None,
    min_region_area: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Pre-label every image under `images` with the autoencoder in `model_dir`; returns the per-image summary."""

    images, out = Path(images), Path(out)
    inspector = Inspector.from_model_dir(
        model_dir,
        providers=("CPUExecutionProvider",),
        pixel_threshold=pixel_threshold,
        min_region_area=min_region_area,
    )
    color = inspector.manifest.preprocess.color
    summary = []
    for n, path in enumerate(find_images(images), 1):
        rel = path.relative_to(images)
        frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR)
        if frame is None:
            msg = f"cannot read image {path}"
            raise OSError(msg)
        score_map = inspector.score_map(frame)
        mask, peaks = regions_mask(score_map, inspector.pixel_threshold, inspector.min_region_area)
        write_png(out / "masks" / rel.parent / f"{path.stem}{mvtec.MASK_SUFFIX}", mask)
        json_path = out / "labelme" / rel.parent / f"{path.stem}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_labelme(
            json_path, to_labelme(mask, os.path.relpath(path.resolve(), json_path.parent.resolve()), scores=peaks)
        )
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        write_png(out / "overlays" / rel.parent / f"{path.stem}.png", overlay(gray, mask, (0, 0, 230)))
        summary.append(
            {
                "image": str(rel),
                "regions": len(peaks),
                "area": int(np.count_nonzero(mask)),
                "score": float(score_map.max()),
            }
        )
        if log and n % 50 == 0:
            log(f"pre-labelled {n} images")
    (out / "prelabels.json").write_text(
        json.dumps(
            {
                "model": str(model_dir),
                "pixel_threshold": inspector.pixel_threshold,
                "min_region_area": inspector.min_region_area,
                "images": summary,
            },
            indent=1,
        )
        + "\n"
    )
    return summary
