"""`inspectd label import`: reviewed labels (LabelMe JSON, mask PNGs) -> the MVTec layout the checkers read.

What becomes what:
- a LabelMe JSON (`<stem>.json`, anywhere under --labels): its image is, in this order, the file its `imagePath`
  names (relative to the JSON, as LabelMe writes it), the image of that stem under --images, or its embedded
  `imageData` (written to out/ as PNG). Its shapes are drawn as LabelMe draws them (labelme.py); the image's class
  is the defect class with the most labelled pixels (LabelMapping: labels renamed by --map, `__ignore__` and
  --exclude-label draw nothing, the pre-label's generic label "defect" is --class). The JSON's imageHeight and
  imageWidth must be the image's size;
- a mask PNG: `<stem>_mask.png`, or `<stem>.png` that is not itself one of the images (so `--labels X --images X`
  never reads a photo as a mask), with at most two grey levels; its class is its folder under --labels (else
  --class); it must have its image's size;
- an image whose label is empty goes to class "good" with no mask.
Every label file that is not imported is listed with the reason (`ImportReport.skipped`), never dropped silently:
no image found, size mismatch, unreadable or undrawable JSON, a second label for the same image, a photo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from inspectd.core.mvtec import MASK_SUFFIX
from inspectd.labelling.dataset import IMAGE_EXTS, link_image, read_gray, write_mask, write_png
from inspectd.labelling.labelme import (
    DEFAULT_LABEL,
    LabelMapping,
    LabelMeError,
    embedded_image,
    image_size,
    rasterise,
    read_labelme,
)

REPORT_FILE = "import.json"


def label_sources(data: str | Path) -> dict[str, Path]:
    """{image id: the label file it was imported from} of an MVTec folder written by import ({} when none is
    recorded or the record is unreadable: the review page then writes LabelMe files of its own)."""
    try:
        doc = json.loads((Path(data) / REPORT_FILE).read_text())
        return {str(k): Path(v) for k, v in dict(doc.get("sources", {})).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


@dataclass
class ImportReport:
    written: list[str] = field(default_factory=list)  # image ids "<class>/<stem>"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (label file, why)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (label file, what was done about it)
    sources: dict[str, str] = field(default_factory=dict)  # image id -> the label file it was imported from

    def as_dict(self) -> dict:
        return {
            "written": self.written,
            "sources": self.sources,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "notes": [{"file": f, "note": n} for f, n in self.notes],
        }


class _SkipError(Exception):
    """This label file is not imported; the message says why."""


@dataclass(frozen=True)
class _Label:
    mask: np.ndarray  # uint8 0/255 at the image's size
    cls: str
    image: Path | None  # the image file, or None when it came embedded
    embedded: np.ndarray | None = None


def _size(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


def _json_label(f: Path, by_stem: dict[str, Path], mapping: LabelMapping, notes: list) -> _Label:
    try:
        doc = read_labelme(f)
        h, w = image_size(doc)
    except LabelMeError as exc:
        raise _SkipError(str(exc)) from exc
    image, embedded = _find_image(f, doc, by_stem)
    gray = read_gray(image) if image is not None else embedded
    if gray is None:  # _find_image returns one of the two
        raise _SkipError("no image")
    if gray.shape != (h, w):
        where = image if image is not None else "its imageData"
        msg = f"the JSON says the image is {w}x{h} but {where} is {_size(gray)}: labelled on another image size?"
        raise _SkipError(msg)
    try:
        r = rasterise(doc, mapping, (h, w))
    except LabelMeError as exc:
        raise _SkipError(str(exc)) from exc
    if r.excluded:
        notes.append((str(f), f"drew nothing for the excluded label(s) {sorted(set(r.excluded))}"))
    classes = sorted(c for c, m in r.masks.items() if m.any())
    if len(classes) > 1:
        notes.append((str(f), f"labels of several classes {classes}: filed under {r.main_class!r}, the largest"))
    return _Label(r.mask, r.main_class or "good", image, embedded if image is None else None)


def _find_image(f: Path, doc: dict, by_stem: dict[str, Path]) -> tuple[Path | None, np.ndarray | None]:
    rel = doc.get("imagePath")
    if isinstance(rel, str) and rel:
        named = (f.parent / rel.replace("\\", "/")).resolve()
        if named.is_file():
            return named, None
    if f.stem in by_stem:
        return by_stem[f.stem], None
    try:
        embedded = embedded_image(doc)
    except LabelMeError as exc:
        raise _SkipError(str(exc)) from exc
    if embedded is not None:
        return None, embedded
    msg = (
        f"no image: imagePath {rel!r} does not exist next to it, no image named {f.stem}.* under --images, no imageData"
    )
    raise _SkipError(msg)


def _png_label(f: Path, stem: str, by_stem: dict[str, Path], src: Path, default_class: str) -> _Label:
    if stem not in by_stem:
        msg = f"no image named {stem}.* under --images"
        raise _SkipError(msg)
    image = by_stem[stem]
    mask = read_gray(f)
    gray = read_gray(image)
    if mask.shape != gray.shape:
        msg = f"the mask is {_size(mask)} but its image {image} is {_size(gray)}"
        raise _SkipError(msg)
    levels = np.unique(mask)
    if len(levels) > 2:
        msg = f"not a mask: {len(levels)} grey levels (a mask has 0 and one other value)"
        raise _SkipError(msg)
    cls = f.parent.name if f.parent != src else default_class
    return _Label(np.where(mask > 0, 255, 0).astype(np.uint8), cls, image)


def _label_stem(f: Path, photos: set[Path]) -> str | None:
    """The image stem a label file names, or None when `f` is no label file (one of the images, another file)."""
    suffix = f.suffix.lower()
    if suffix == ".json":
        return f.stem
    if suffix == ".png" and f.name.endswith(MASK_SUFFIX):
        return f.name[: -len(MASK_SUFFIX)]
    if suffix == ".png" and f.resolve() not in photos:
        return f.stem
    return None


def import_labels(
    src: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    default_class: str = "defect",
    mapping: LabelMapping | None = None,
) -> ImportReport:
    """Label files under `src` -> out/test/<class>/ (image links) + out/ground_truth/<class>/<stem>_mask.png, and
    out/import.json (the report). FileNotFoundError when `src` holds no label file at all."""
    src, out = Path(src), Path(out)
    mapping = mapping or LabelMapping()
    if DEFAULT_LABEL not in mapping.classes:  # the pre-label's generic label names no class: --class does
        mapping = replace(mapping, classes={**mapping.classes, DEFAULT_LABEL: default_class})
    if not src.is_dir():
        msg = f"--labels {src} is not a folder"
        raise FileNotFoundError(msg)
    image_files = [] if images is None else sorted(Path(images).rglob("*"))
    image_files = [p for p in image_files if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    by_stem = {p.stem: p for p in image_files}
    photos = {p.resolve() for p in image_files}
    report = ImportReport()
    done: dict[str, str] = {}  # stem -> label file it came from
    candidates = [f for f in sorted(src.rglob("*")) if f.is_file() and not f.name.startswith(".")]
    found_any = False
    for f in candidates:
        stem = _label_stem(f, photos)
        if stem is None:
            continue  # an image (of --images), or no label file
        suffix = f.suffix.lower()
        found_any = True
        try:
            if stem in done:
                msg = f"a second label for image {stem!r} (imported from {done[stem]})"
                raise _SkipError(msg)
            if suffix == ".json":
                label = _json_label(f, by_stem, mapping, report.notes)
            else:
                label = _png_label(f, stem, by_stem, src, default_class)
        except _SkipError as exc:
            report.skipped.append((str(f), str(exc)))
            continue
        except OSError as exc:
            report.skipped.append((str(f), f"cannot read it or its image ({exc})"))
            continue
        done[stem] = str(f)
        cls = label.cls if label.mask.any() else "good"
        image_id = f"{cls}/{stem}"
        if label.image is not None:
            link_image(label.image, out, image_id)
        elif label.embedded is not None:
            write_png(out / "test" / cls / f"{stem}.png", label.embedded)
            report.notes.append((str(f), "image taken from its imageData"))
        if cls != "good":
            write_mask(out, image_id, label.mask)
        report.written.append(image_id)
        report.sources[image_id] = str(f.resolve())
    if not found_any:
        msg = f"no LabelMe JSON or mask PNG under {src}"
        raise FileNotFoundError(msg)
    out.mkdir(parents=True, exist_ok=True)
    doc = report.as_dict()
    # earlier imports into the same folder keep their sources (a re-import of fixed labels adds to them)
    doc["sources"] = {**{k: str(v) for k, v in label_sources(out).items()}, **report.sources}
    tmp = out / f".{REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out / REPORT_FILE)
    return report
