"""Frame -> model batch, as the manifest's PreprocessSpec says; and the way back for score maps.

Two policies (PreprocessSpec.mode):

- resize: the whole frame is resized to the model input (one batch item); `stitch` resizes the one score map back
  to the frame size (bilinear), so there is one score per frame pixel.
- tile: the frame is cut, without resizing, into model-size tiles that share `tile_overlap` pixels with their
  neighbours (all tiles form one batch). Along each axis tiles start at 0, stride, 2*stride ... with
  stride = tile - overlap, and the last tile is moved back so that it ends flush with the frame's far edge (no tile
  hangs over). A frame dimension smaller than the tile is padded at its far end by reflection up to the tile size;
  `stitch` crops the padding off again. With `scale` < 1 the (exposure-normalised) frame is first resized by that
  factor (INTER_AREA) and tiled as above; `stitch` resizes the map back to the camera frame's size (bilinear), so
  regions and areas are always in camera pixels while each tile covers 1/scale times more of the part.

Stitching (tile mode): every frame pixel takes its score from exactly one tile, the tile whose centre is nearest
along each axis (ties go to the earlier tile). The overlap between two neighbours is thereby split in half, so a
tile's border band, where the SSIM window suffers border effects, is never used where a neighbour covers the
pixel better. There is no blending: a defect straddling a seam keeps its full score on both sides.

Exposure (PreprocessSpec.normalize = "median"): before anything else each frame is multiplied by one gain so that
its median grey level becomes `normalize_to` (uint8, rounded and saturated, as cv2.convertScaleAbs does); the model
and the SSIM reference both see the normalised frame. A camera's exposure or a lamp's brightness then no longer
changes the difference map's scale (a brighter frame has proportionally more texture contrast, which the SSIM
constants C1 and C2 would otherwise weigh differently).

Values: the model sees (u - mean) / std with u = pixel / divide (float32, NCHW, C-contiguous); the SSIM compares
the reconstruction against `reference` = u clipped to [0, 1]. `to_unit` maps model output back to that scale.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from inspectd.core.manifest import PreprocessSpec, TensorSpec

_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
_LAYOUT_CACHE_SIZE = 8  # frames from one camera have one size; a few sizes at most


@dataclass(frozen=True)
class TileLayout:
    """How the batch items map back to the frame.

    frame_hw: the frame's size; tile_hw: the model input size; origins: (y, x) of each batch item's tile in the
    (padded) frame, row-major (all tiles of the first row, left to right, then the next row); padded_hw: the frame
    size after reflection padding (= frame_hw unless the frame is smaller than a tile; equal to frame_hw in resize
    mode); mode: "resize" (one item, the whole frame resized) or "tile". native_hw: the camera frame's size when
    preprocess.scale resized it before tiling (frame_hw is then the resized size); None when not resized.
    """

    frame_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    origins: tuple[tuple[int, int], ...]
    padded_hw: tuple[int, int]
    mode: str
    native_hw: tuple[int, int] | None = None

    @property
    def output_hw(self) -> tuple[int, int]:
        """The size of the stitched score map: the camera frame's."""
        return self.native_hw or self.frame_hw

    @property
    def n_tiles(self) -> int:
        return len(self.origins)


@dataclass(frozen=True)
class Prepared:
    """One frame, ready for the model.

    batch: float32 NCHW, C-contiguous: exactly what the ONNX model takes.
    reference: float32 N x H x W (gray) or N x H x W x C (bgr), pixel / divide clipped to [0, 1].
    batch and reference may share memory (gray, mean 0, std 1, divide >= 255): treat both as read-only.
    """

    batch: np.ndarray
    reference: np.ndarray
    layout: TileLayout


def axis_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile start positions along one axis of `length` (>= tile) pixels; the last tile ends at `length`."""
    if length <= tile:
        return (0,)
    stride = tile - overlap
    n = -(-(length - tile) // stride) + 1  # ceil((length - tile) / stride) + 1
    return tuple(min(i * stride, length - tile) for i in range(n))


def axis_segments(starts: tuple[int, ...], tile: int, length: int) -> tuple[tuple[int, int], ...]:
    """For each tile along one axis, the [lo, hi) range of frame pixels whose nearest tile centre is that tile's.

    Pixel p (centre p + 0.5) is nearer to tile i (centre s_i + tile/2) than to tile i+1, or tied, iff
    2p + 1 <= s_i + s_(i+1) + tile, so the cut between them is (s_i + s_(i+1) + tile + 1) // 2.
    Ranges are clipped to `length` (the unpadded frame), so padding never reaches the output.
    """
    cuts = [0]
    cuts += [(a + b + tile + 1) // 2 for a, b in itertools.pairwise(starts)]
    cuts.append(length)
    return tuple((min(lo, length), min(hi, length)) for lo, hi in itertools.pairwise(cuts))


@functools.lru_cache(maxsize=_LAYOUT_CACHE_SIZE)
def _stitch_plan(layout: TileLayout) -> tuple[tuple[int, slice, slice, slice, slice], ...]:
    """(tile index, dst rows, dst cols, src rows, src cols) for every tile that contributes to the frame."""
    (th, tw), (fh, fw) = layout.tile_hw, layout.frame_hw
    ys = tuple(sorted({y for y, _ in layout.origins}))
    xs = tuple(sorted({x for _, x in layout.origins}))
    index = {origin: k for k, origin in enumerate(layout.origins)}
    plan = []
    for y0, (ylo, yhi) in zip(ys, axis_segments(ys, th, fh), strict=False):
        for x0, (xlo, xhi) in zip(xs, axis_segments(xs, tw, fw), strict=False):
            if yhi <= ylo or xhi <= xlo:
                continue
            k = index.get((y0, x0))
            if k is None:
                msg = f"tile layout has no tile at (y={y0}, x={x0}): origins must form a full grid"
                raise ValueError(msg)
            plan.append((k, slice(ylo, yhi), slice(xlo, xhi), slice(ylo - y0, yhi - y0), slice(xlo - x0, xhi - x0)))
    return tuple(plan)


def scaled_hw(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """The size a frame of size hw is resized to by preprocess.scale (rounded, at least 1 pixel)."""
    return max(1, int(round(hw[0] * scale))), max(1, int(round(hw[1] * scale)))


def normalize_exposure(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 frame -> the frame with its median grey level scaled to spec.normalize_to (normalize = "median"; all
    channels share one gain); unchanged for normalize = "none". The median is the lower median of all values."""
    if spec.normalize == "none":
        return image
    counts = np.bincount(image.ravel(), minlength=256)
    median = int(np.searchsorted(np.cumsum(counts), (image.size + 1) // 2))
    return cv2.convertScaleAbs(image, alpha=float(spec.normalize_to) / max(median, 1))


def _pad_axis(image: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Pad `image` at the far end of `axis` (0 rows, 1 columns) by reflection up to `size` pixels."""
    extra = size - image.shape[axis]
    if extra <= 0:
        return image
    # REFLECT_101 (dcb|abcd|cba) needs two pixels to mirror; a 1-pixel dimension is simply repeated
    border = cv2.BORDER_REFLECT_101 if image.shape[axis] >= 2 else cv2.BORDER_REFLECT
    bottom, right = (extra, 0) if axis == 0 else (0, extra)
    return cv2.copyMakeBorder(image, 0, bottom, 0, right, border)


class Preprocessor:
    """Applies one model's PreprocessSpec to frames; built once per loaded model, reused for every frame."""

    def __init__(self, spec: PreprocessSpec, input_spec: TensorSpec) -> None:
        self.spec = spec
        self.input_spec = input_spec
        self.channels = 1 if spec.color == "gray" else 3
        if input_spec.channels != self.channels:
            msg = (
                f"model input {input_spec.name!r} has {input_spec.channels} channels but preprocess.color is "
                f"{spec.color!r} (expected {self.channels} channel(s))"
            )
            raise ValueError(msg)
        self.tile_hw: tuple[int, int] = input_spec.hw
        if spec.mode == "tile" and spec.tile_overlap >= min(self.tile_hw):
            msg = f"tile_overlap {spec.tile_overlap} must be smaller than the tile {self.tile_hw}"
            raise ValueError(msg)
        self._interpolation = _INTERPOLATION[spec.interpolation]
        self._divide = np.float32(spec.divide)
        self._mean = np.float32(spec.mean)
        self._std = np.float32(spec.std)
        self._identity_norm = spec.mean == 0.0 and spec.std == 1.0
        self._needs_clip = spec.divide < 255.0  # u = pixel / divide exceeds 1 only then (u >= 0 always)
        self._layouts: dict[tuple[int, int], TileLayout] = {}

    # --- frame -> batch --------------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> Prepared:
        """uint8 HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA) frame -> model batch, SSIM reference and tile layout."""
        img = normalize_exposure(self._convert_color(image), self.spec)
        layout = self.layout_for(img.shape[:2])
        if layout.native_hw is not None:
            img = cv2.resize(img, layout.frame_hw[::-1], interpolation=cv2.INTER_AREA)
        th, tw = self.tile_hw
        if layout.mode == "resize":
            if img.shape[:2] != (th, tw):
                img = cv2.resize(img, (tw, th), interpolation=self._interpolation)
            img = img[None]  # 1 x h x w (x C)
            planar = img[:, None] if self.channels == 1 else np.ascontiguousarray(img.transpose(0, 3, 1, 2))
        else:
            img = _pad_axis(_pad_axis(img, 0, th), 1, tw)
            img, planar = self._gather(img, layout)
        batch, reference = self._scale(planar, img)
        return Prepared(batch=batch, reference=reference, layout=layout)

    def _gather(self, img: np.ndarray, layout: TileLayout) -> tuple[np.ndarray, np.ndarray]:
        """Cut the (padded) frame into tiles: (N x th x tw [x C] interleaved, N x C x th x tw planar), uint8.

        Tiles are copied slice by slice (contiguous rows); for BGR the planar copy comes from cv2.split planes,
        so no strided channel transpose is needed.
        """
        th, tw = self.tile_hw
        n = layout.n_tiles
        if self.channels == 1:
            planar = np.empty((n, 1, th, tw), dtype=np.uint8)
            for k, (y, x) in enumerate(layout.origins):
                planar[k, 0] = img[y : y + th, x : x + tw]
            return planar[:, 0], planar
        tiles = np.empty((n, th, tw, self.channels), dtype=np.uint8)
        planar = np.empty((n, self.channels, th, tw), dtype=np.uint8)
        planes = cv2.split(img)
        for k, (y, x) in enumerate(layout.origins):
            tiles[k] = img[y : y + th, x : x + tw]
            for c, plane in enumerate(planes):
                planar[k, c] = plane[y : y + th, x : x + tw]
        return tiles, planar

    def layout_for(self, frame_hw: tuple[int, int]) -> TileLayout:
        """The (cached) layout for frames of this size."""
        key = (int(frame_hw[0]), int(frame_hw[1]))
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._make_layout(key)
            if len(self._layouts) >= _LAYOUT_CACHE_SIZE:
                self._layouts.clear()
            self._layouts[key] = layout
        return layout

    def _make_layout(self, frame_hw: tuple[int, int]) -> TileLayout:
        th, tw = self.tile_hw
        if self.spec.mode == "resize":
            return TileLayout(frame_hw=frame_hw, tile_hw=(th, tw), origins=((0, 0),), padded_hw=frame_hw, mode="resize")
        native = None
        if self.spec.scale != 1.0:
            native, frame_hw = frame_hw, scaled_hw(frame_hw, self.spec.scale)
        ph, pw = max(frame_hw[0], th), max(frame_hw[1], tw)
        ys = axis_starts(ph, th, self.spec.tile_overlap)
        xs = axis_starts(pw, tw, self.spec.tile_overlap)
        origins = tuple((y, x) for y in ys for x in xs)
        return TileLayout(
            frame_hw=frame_hw, tile_hw=(th, tw), origins=origins, padded_hw=(ph, pw), mode="tile", native_hw=native
        )

    def _convert_color(self, image: np.ndarray) -> np.ndarray:
        expected = "expected uint8 HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA)"
        if not isinstance(image, np.ndarray):
            msg = f"frame is a {type(image).__name__}, not a numpy array; {expected}"
            raise ValueError(msg)
        if image.dtype != np.uint8:
            msg = f"frame has dtype {image.dtype}; {expected}"
            raise ValueError(msg)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            msg = f"frame has shape {image.shape}; {expected}"
            raise ValueError(msg)
        if image.shape[0] == 0 or image.shape[1] == 0:
            msg = f"frame has shape {image.shape} (zero size); {expected}, non-empty"
            raise ValueError(msg)
        image = np.ascontiguousarray(image)
        n = 1 if image.ndim == 2 else image.shape[2]
        if self.channels == 1:
            code = {1: None, 3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}[n]
        elif self.spec.color == "rgb":  # frames are BGR (OpenCV's order); an RGB model gets its channels swapped
            code = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[n]
        else:
            code = {1: cv2.COLOR_GRAY2BGR, 3: None, 4: cv2.COLOR_BGRA2BGR}[n]
        return image if code is None else cv2.cvtColor(image, code)

    def _scale(self, planar: np.ndarray, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 tiles, planar N x C x h x w and interleaved N x h x w (x C) -> (batch, reference).

        Both results are float32 and C-contiguous."""
        u = planar.astype(np.float32, order="C")
        np.divide(u, self._divide, out=u)
        if self.channels == 1:  # reference is u itself (N x h x w view); batch is u, or a normalised copy
            batch = u
            if not self._identity_norm:
                batch = np.subtract(u, self._mean, dtype=np.float32)
                np.divide(batch, self._std, out=batch)
                if self._needs_clip:
                    np.clip(u, 0.0, 1.0, out=u)
                ref = u
            else:
                ref = np.clip(u, 0.0, 1.0) if self._needs_clip else u
            return batch, ref[:, 0]
        ref = tiles.astype(np.float32, order="C")
        np.divide(ref, self._divide, out=ref)
        if self._needs_clip:
            np.clip(ref, 0.0, 1.0, out=ref)
        if not self._identity_norm:
            np.subtract(u, self._mean, out=u)
            np.divide(u, self._std, out=u)
        return u, ref

    # --- model output -> frame -------------------------------------------------------------------------------

    def to_unit(self, output: np.ndarray) -> np.ndarray:
        """Model output NCHW -> the layout of `reference` (N x H x W or N x H x W x C): x*std + mean, clipped to [0, 1].

        Always returns a new float32 array; the caller's buffer is never modified."""
        output = np.asarray(output)
        if output.ndim != 4 or output.shape[1] != self.channels:
            msg = f"model output has shape {output.shape}, expected N x {self.channels} x H x W (NCHW)"
            raise ValueError(msg)
        if self.channels == 1:
            x = output[:, 0].astype(np.float32, order="C")  # always a copy: the caller's buffer stays untouched
        else:  # NCHW -> NHWC, tile by tile with cv2.merge (much faster than a strided numpy transpose)
            planes = np.ascontiguousarray(output, dtype=np.float32)
            x = np.empty((planes.shape[0], *planes.shape[2:], self.channels), dtype=np.float32)
            for k in range(planes.shape[0]):
                x[k] = cv2.merge(list(planes[k]))
        if not self._identity_norm:
            np.multiply(x, self._std, out=x)
            np.add(x, self._mean, out=x)
        np.clip(x, 0.0, 1.0, out=x)
        return x

    def stitch(self, maps: np.ndarray, layout: TileLayout) -> np.ndarray:
        """N x h x w per-tile score maps -> float32 frame_h x frame_w map (see the module docstring for the rule)."""
        maps = np.asarray(maps)
        n = layout.n_tiles
        fh, fw = layout.frame_hw
        if maps.ndim != 3 or maps.shape[0] != n:
            msg = f"score maps have shape {maps.shape}, expected {n} x h x w (one map per tile of the layout)"
            raise ValueError(msg)
        if layout.mode == "resize":
            one = maps[0].astype(np.float32, copy=False)
            if one.shape == (fh, fw):
                return one.copy()
            return cv2.resize(np.ascontiguousarray(one), (fw, fh), interpolation=cv2.INTER_LINEAR)
        if maps.shape[1:] != tuple(layout.tile_hw):
            msg = f"score maps have shape {maps.shape}, expected {n} x {layout.tile_hw[0]} x {layout.tile_hw[1]}"
            raise ValueError(msg)
        out = np.empty((fh, fw), dtype=np.float32)
        for k, dy, dx, sy, sx in _stitch_plan(layout):
            out[dy, dx] = maps[k, sy, sx]
        if layout.native_hw is not None:  # preprocess.scale: back to the camera frame's pixels
            return np.asarray(cv2.resize(out, layout.native_hw[::-1], interpolation=cv2.INTER_LINEAR), np.float32)
        return out
