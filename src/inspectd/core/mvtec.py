"""The MVTec AD folder layout, which anomaly-detection users already have: the one definition of its paths.

DIR/train/good/*                          defect-free training images
DIR/test/good/*                           defect-free test images
DIR/test/<class>/<stem>.<ext>             defective test images of one class
DIR/ground_truth/<class>/<stem>_mask.png  their masks, 0/255, same size as the image
"""

from __future__ import annotations

from pathlib import Path

GOOD = "good"
MASK_SUFFIX = "_mask.png"


def mask_path(root: str | Path, cls: str, stem: str) -> Path:
    """Where the mask of test image `<cls>/<stem>.*` of the tree at `root` lives (whether or not it exists)."""
    return Path(root) / "ground_truth" / cls / f"{stem}{MASK_SUFFIX}"


def mask_for_image(image: str | Path) -> Path | None:
    """The mask path of an image at DIR/test/<class>/<stem>.<ext>; None for a good image or one outside test/."""
    image = Path(image)
    cls = image.parent
    if cls.name == GOOD or cls.parent.name != "test":
        return None
    return mask_path(cls.parent.parent, cls.name, image.stem)
