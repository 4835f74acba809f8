"""Replays the image files of a directory in natural order (img2 before img10), once or in a loop.

Ground truth follows the MVTec AD layout: `.../test/good/x.png` is good, `.../test/<defect>/x.png` is defective
with its mask at `.../ground_truth/<defect>/x_mask.png`; an image in any other `good/` directory is good; other
images have no truth. A file that cannot be decoded becomes an error capture (image None), not an exception, so
the pipeline gives that one item an error verdict and goes on; so does one that is not a regular file (a FIFO
would block the read forever) and one whose header declares a size outside `camera.frame_size` (checked before
decoding: a 389 KB PNG can declare 20000 × 20000 pixels).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from inspectd.core import mvtec
from inspectd.core.errors import CameraError, EndOfStream
from inspectd.core.imageheader import header
from inspectd.core.types import Capture
from inspectd.daemon.cameras.base import CameraConfigBase, ConfigPath, register

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_EXPECTED = "expected PNG/JPEG/BMP/TIFF"


class FolderCameraConfig(CameraConfigBase):
    """Replays image files in natural order (an MVTec `test/` tree works; truth and masks come from its layout)."""

    type: Literal["folder"] = "folder"
    path: ConfigPath = Field(..., description="directory of images to replay (an MVTec `test/` directory works)")
    recursive: bool = Field(True, description="also replay images in subdirectories (natural order by relative path)")
    extensions: tuple[str, ...] = Field(
        DEFAULT_EXTENSIONS, min_length=1, description="file name endings to replay (case-insensitive)"
    )
    loop: bool = Field(False, description="start again from the first image after the last (else the stream ends)")
    color: Literal["keep", "gray", "bgr"] = Field(
        "keep", description="keep: as stored (HxW gray or HxWx3 BGR); gray or bgr: convert every image to that"
    )

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for ext in v:
            e = ext.strip().lower()
            if not re.fullmatch(r"\.[a-z0-9]+", e):
                msg = f"extension {ext!r} must look like '.png' (a dot and letters or digits)"
                raise ValueError(msg)
            out.append(e)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class _Item:
    path: Path
    truth: bool | None
    mask_path: Path | None  # where the defect mask would be (it may be missing)


def natural_key(rel: Path) -> tuple:
    """Sort key: path components compared case-insensitively, digit runs as numbers ('img2' < 'img10'); ties
    ('img01' and 'img1') broken by the plain path, so the order never depends on the file system."""
    parts = tuple(
        tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", part.lower()))) for part in rel.parts
    )
    return parts, rel.as_posix()


def list_images(root: Path, extensions: tuple[str, ...], recursive: bool) -> list[Path]:
    """Image files under root (hidden files and directories skipped), in natural order of their relative path."""
    found: list[Path] = []
    if recursive:
        seen: set[str] = set()  # real paths of the directories walked: a symlink cycle is walked once
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found.extend(Path(dirpath, f) for f in filenames if _wanted(f, extensions))
    else:
        found = [p for p in root.iterdir() if p.is_file() and _wanted(p.name, extensions)]
    return sorted(found, key=lambda p: natural_key(p.relative_to(root)))


def _wanted(name: str, extensions: tuple[str, ...]) -> bool:
    return not name.startswith(".") and name.lower().endswith(extensions)


def mvtec_truth(path: Path) -> tuple[bool | None, Path | None]:
    """(truth, mask path) of an image from its place in an MVTec-style tree."""
    if path.parent.name == mvtec.GOOD:
        return False, None
    mask = mvtec.mask_for_image(path)
    return (True, mask) if mask is not None else (None, None)


def read_regular_file(path: Path, *, max_bytes: int) -> np.ndarray:
    """The bytes of a regular file. OSError for anything else: a FIFO or device named like an image would block a
    plain open() or read() forever (opened non-blocking here, and refused), a file larger than max_bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "device" if stat.S_ISCHR(st.st_mode) else "special file"
            msg = f"not a regular file (a {kind}; expected an image file)"
            raise OSError(msg)
        if st.st_size > max_bytes:
            msg = f"{st.st_size} bytes, larger than any frame within camera.frame_size (limit {max_bytes})"
            raise OSError(msg)
        with os.fdopen(os.dup(fd), "rb") as f:
            return np.frombuffer(f.read(max_bytes + 1), np.uint8)
    finally:
        os.close(fd)


def decode(data: bytes | np.ndarray, what: str) -> np.ndarray:
    """Bytes of an image file -> uint8 HxW or HxWx3 BGR. Raises ValueError saying why it cannot."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    if buf.size == 0:
        msg = f"cannot decode {what} as an image: the file is empty ({_EXPECTED})"
        raise ValueError(msg)
    if buf[:2].tobytes() == b"\xff\xd8" and _jpeg_truncated(buf.tobytes()):
        # some libjpeg builds decode a truncated JPEG with a grey bottom and only a warning
        msg = f"cannot decode {what} as an image: truncated JPEG (no end-of-image marker)"
        raise ValueError(msg)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)  # keeps gray gray, drops alpha
    except cv2.error:
        img = None
    if img is None:
        msg = f"cannot decode {what} as an image ({_EXPECTED})"
        raise ValueError(msg)
    if img.dtype == np.uint16:
        img = (img.astype(np.uint16) >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        scale = 255.0 if float(np.nanmax(img, initial=0)) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        msg = f"cannot use {what}: pixel type {img.dtype} (expected 8- or 16-bit unsigned, or float)"
        raise ValueError(msg)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _jpeg_truncated(data: bytes) -> bool:
    # entropy-coded data never holds a bare 0xFFD9, so a complete file has one after its last start-of-scan marker
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def convert(img: np.ndarray, color: str) -> np.ndarray:
    if color == "gray" and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif color == "bgr" and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img)


def load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A 0/255 uint8 mask from a file (0/1 masks are scaled), or None if missing, undecodable or the wrong size."""
    try:
        m = decode(read_regular_file(path, max_bytes=shape[0] * shape[1] * 8 + (1 << 20)), str(path))
    except (OSError, ValueError):
        return None
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.shape != shape:
        return None
    level = 0 if m.max() <= 1 else 127
    return np.where(m > level, np.uint8(255), np.uint8(0))


@register(FolderCameraConfig)
class FolderCamera:
    """A replay source: waits for the pipeline, so `live` is False."""

    live = False

    def __init__(self, cfg: FolderCameraConfig) -> None:
        self.cfg = cfg
        self._items: list[_Item] = []
        self._next = 0
        self._open = False

    def open(self) -> None:
        root = self.cfg.path
        exts = "/".join(self.cfg.extensions)
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "does not exist"
            msg = f"folder {root} {what} (expected a directory of {exts} images)"
            raise CameraError(msg)
        try:
            paths = list_images(root, self.cfg.extensions, self.cfg.recursive)
        except OSError as e:
            msg = f"cannot list folder {root}: {e}"
            raise CameraError(msg) from e
        if not paths:
            where = "in it or its subdirectories" if self.cfg.recursive else "in it (recursive is off)"
            msg = f"folder {root} has no images {where} (looked for {exts})"
            raise CameraError(msg)
        self._items = [_Item(p, *mvtec_truth(p)) for p in paths]
        self._next = 0
        self._open = True

    def read(self, timeout_s: float) -> Capture:
        if not self._open:
            msg = f"folder camera {self.cfg.path} is not open (expected open() before read())"
            raise CameraError(msg)
        if self._next >= len(self._items):
            if not self.cfg.loop:
                msg = f"end of folder {self.cfg.path}: all {len(self._items)} images replayed"
                raise EndOfStream(msg)
            self._next = 0
        item = self._items[self._next]
        self._next += 1
        return self._load(item)

    def _load(self, item: _Item) -> Capture:
        source = str(item.path)
        bounds = self.cfg.frame_size
        try:
            data = read_regular_file(item.path, max_bytes=int(bounds.max_megapixels * 1e6) * 8 + (1 << 20))
        except OSError as e:
            return Capture(image=None, source=source, truth=item.truth, error=f"cannot read {source}: {e}")
        try:
            if data.size:  # the header first: its size is checked before a single pixel is decoded
                h = header(data.data)
                why = bounds.refusal(h.width, h.height)
                if why is not None:
                    return Capture(image=None, source=source, truth=item.truth, error=f"{source}: {why}")
            img = decode(data, source)
        except ValueError as e:
            msg = str(e) if str(e).startswith("cannot") else f"cannot decode {source} as an image: {e}"
            return Capture(image=None, source=source, truth=item.truth, error=msg)
        mask = None
        if item.truth is False:
            mask = np.zeros(img.shape[:2], np.uint8)
        elif item.mask_path is not None:
            mask = load_mask(item.mask_path, img.shape[:2])
        return Capture(image=convert(img, self.cfg.color), source=source, truth=item.truth, truth_mask=mask)

    def close(self) -> None:
        self._open = False

    def describe(self) -> dict:
        return {
            "type": "folder",
            "path": str(self.cfg.path),
            "images": len(self._items),
            "recursive": self.cfg.recursive,
            "loop": self.cfg.loop,
            "color": self.cfg.color,
        }
