"""Labelled images in the MVTec layout (inspectd.core.mvtec): test/<class>/<stem>.<ext> with its label at
ground_truth/<class>/<stem>_mask.png (0/255).

A label says "defect-free" when its mask is missing or all zero, so a deleted label and a good image read the same.
Image ids are "<class>/<stem>", the form the check's JSON uses. Image files may be symlinks (the corruption
experiment links images from ../shared and writes only masks).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspectd.core import mvtec

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class LabelledImage:
    id: str  # "<class>/<stem>"
    image_path: Path
    mask_path: Path  # where its label lives (may not exist = defect-free)

    @property
    def defect_class(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def stem(self) -> str:
        return self.id.split("/", 1)[1]


def mask_path_for(root: Path, image_id: str) -> Path:
    cls, stem = image_id.split("/", 1)
    return mvtec.mask_path(root, cls, stem)


def _is_image(f: Path) -> bool:
    return f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")


def scan(root: str | Path, split: str = "test") -> list[LabelledImage]:
    """Every image of root/<split>/<class>/, sorted by id; raises when there is none."""
    root = Path(root)
    base = root / split
    if not base.is_dir():
        msg = f"{base} does not exist: expected an MVTec-layout folder with {split}/<class>/<images>"
        raise FileNotFoundError(msg)
    items = []
    for cls_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir()):
            if _is_image(f):
                image_id = f"{cls_dir.name}/{f.stem}"
                items.append(LabelledImage(image_id, f, mask_path_for(root, image_id)))
    if not items:
        msg = f"no images under {base}/<class>/ (extensions {', '.join(IMAGE_EXTS)})"
        raise FileNotFoundError(msg)
    return items


def train_good(root: str | Path) -> list[Path]:
    """The known defect-free images of an MVTec tree (root/train/good/), sorted; [] when there is no such folder."""
    base = Path(root) / "train" / "good"
    if not base.is_dir():
        return []
    return sorted(f for f in base.iterdir() if _is_image(f))


def read_gray(path: str | Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        msg = f"cannot read image {path}"
        raise OSError(msg)
    return img


def read_mask(item: LabelledImage, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The label as a uint8 0/255 mask; zeros when missing. `shape` (h, w) checks or supplies the size."""
    if item.mask_path.is_file():
        m = read_gray(item.mask_path)
        if shape is not None and m.shape != tuple(shape):
            msg = f"mask {item.mask_path} is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}"
            raise ValueError(msg)
        return np.where(m > 127, 255, 0).astype(np.uint8)
    if shape is None:
        shape = read_gray(item.image_path).shape
    return np.zeros(shape, np.uint8)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a PNG atomically (temp file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        msg = f"cannot encode {path} as PNG"
        raise OSError(msg)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".png.tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)
    return path


def write_mask(root: str | Path, image_id: str, mask: np.ndarray) -> Path:
    """Store a label in ground_truth layout as 0/255 PNG."""
    return write_png(mask_path_for(Path(root), image_id), np.where(mask > 0, 255, 0).astype(np.uint8))


def link_image(src: Path, root: str | Path, image_id: str, split: str = "test") -> Path:
    """Reference an image from root/<split>/<class>/ by symlink (no copy); returns the link."""
    cls, stem = image_id.split("/", 1)
    dst = Path(root) / split / cls / f"{stem}{src.suffix}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(Path(src).resolve())
    return dst
