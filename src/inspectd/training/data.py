"""Training samples: good images -> augmentation -> model input -> synthetic defect.

Sources: an MVTec-layout folder (`DIR/train/good/*`) or a plain folder of images, or the synthetic camera's good
frames. Each sample is drawn from one good frame: a small random rotation and translation (on the frame, borders
reflected), then the frame is brought to the model input exactly as the daemon will (`resize` with INTER_AREA, or a
random model-size crop at native resolution in `tile` mode), then an illumination gain/offset, then, with probability
`defect_prob`, one synthetic defect. The input is the (possibly corrupted) image, the target the clean one, and the
per-pixel loss weight is `defect_weight` inside the defect and 1 elsewhere.

Hard defects (optional): real defect images with pixel masks join the set; a sample is one of them with
probability `hard_prob`, augmented like the good frames (the mask moved with the image; in tile mode the crop holds
defect pixels), and its target is the image with the masked pixels set to 0, weighted like a synthetic defect.

Images are uint8 until the very end, so the model trains on the same quantised values the daemon feeds it. With
exposure normalisation (InputGeometry.normalize, the manifest's preprocess.normalize) every whole frame is
normalised first, by the daemon's own function.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from inspectd.collector.dataset import META_FILE, read_records
from inspectd.core import mvtec
from inspectd.core.manifest import PreprocessSpec, sha256_file
from inspectd.daemon.cameras.synthetic import SurfaceGenerator, SyntheticCameraConfig
from inspectd.inspection.preprocess import normalize_exposure, scaled_hw
from inspectd.training.defects import DefectConfig, add_defect

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")
_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes applied to every good frame before it becomes a training sample."""

    max_shift: float = 0.03  # translation, as a fraction of the frame's width / height
    max_rotation_deg: float = 4.0
    gain: tuple[float, float] = (0.9, 1.1)  # illumination: pixel * gain + offset
    offset: tuple[float, float] = (-10.0, 10.0)  # grey levels
    enabled: bool = True

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(enabled=False)


@dataclass(frozen=True)
class InputGeometry:
    """What the model sees: its input size and colour, and how frames are brought to it (as the manifest says)."""

    height: int = 128
    width: int = 128
    color: Literal["gray", "bgr"] = "gray"
    mode: Literal["resize", "tile"] = "resize"
    interpolation: Literal["area", "linear", "nearest"] = "area"
    normalize: Literal["none", "median"] = "none"  # exposure normalisation of whole frames (the daemon's)
    normalize_to: float = 100.0
    scale: float = (
        1.0  # tile mode: whole frames resized by this factor before cropping (the manifest's preprocess.scale)
    )

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def normalized(self, image: np.ndarray) -> np.ndarray:
        """A whole frame in the model's colour -> exposure-normalised and (tile mode) resized by `scale`, exactly
        as inspectd.inspection.preprocess does it before cutting tiles."""
        if self.normalize != "none":
            spec = PreprocessSpec(color=self.color, normalize=self.normalize, normalize_to=self.normalize_to)
            image = normalize_exposure(image, spec)
        if self.mode == "tile" and self.scale != 1.0:
            h, w = scaled_hw(image.shape[:2], self.scale)
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return image

    def scaled_mask(self, mask: np.ndarray) -> np.ndarray:
        """A 0/1 mask of a whole frame -> the size `normalized` gives the frame (a pixel is defective when at
        least half of what it covers is)."""
        if self.mode != "tile" or self.scale == 1.0:
            return mask

        h, w = scaled_hw(mask.shape[:2], self.scale)
        area = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        return (area >= 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Batch:
    inputs: np.ndarray  # float32 N x C x H x W in [0, 1]: what the model gets
    targets: np.ndarray  # float32 N x C x H x W in [0, 1]: the clean image
    weights: np.ndarray  # float32 N x 1 x H x W: loss weight per pixel
    masks: np.ndarray  # uint8 N x H x W: 1 where a synthetic defect was painted


# --- sources -----------------------------------------------------------------------------------------------------


def to_color(image: np.ndarray, color: str) -> np.ndarray:
    """uint8 gray / BGR / BGRA image -> the model's colour (gray: HxW, bgr: HxWx3), converted as the daemon does."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    n = 1 if image.ndim == 2 else image.shape[2]
    if color == "gray":
        code = {1: None, 3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}[n]
    else:
        code = {1: cv2.COLOR_GRAY2BGR, 3: None, 4: cv2.COLOR_BGRA2BGR}[n]
    return np.ascontiguousarray(image if code is None else cv2.cvtColor(image, code))


def image_files(path: str | Path) -> list[Path]:
    """The training images of a data directory: `path/train/good/*` (MVTec layout) or the images in `path` itself."""
    root = Path(path)
    folder = root / "train" / "good"
    if not folder.is_dir():
        folder = root
    if not folder.is_dir():
        msg = f"training data directory {root} does not exist (expected DIR/train/good/* or a folder of images)"
        raise FileNotFoundError(msg)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        msg = f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} (expected DIR/train/good/* or a folder of images)"
        raise FileNotFoundError(msg)
    return files


def read_image(path: str | Path, color: str) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # 8-bit BGR for every format; gray files replicate exactly
    if image is None:
        msg = f"cannot read image {path} (corrupt or unsupported format)"
        raise ValueError(msg)
    return to_color(image, color)


def load_folder(path: str | Path, color: str = "gray", limit: int | None = None) -> list[np.ndarray]:
    """Read the good training images of a data directory (see image_files) in the model's colour."""
    files = image_files(path)[:limit]
    return [read_image(p, color) for p in files]


@dataclass(frozen=True)
class HardDefect:
    """A real, labelled defect image (the hard-defect set): its target is the image with the mask set to 0."""

    image: np.ndarray  # uint8 in the model's colour
    mask: np.ndarray  # uint8 0/1 of the image's size
    source: str = ""  # "<class>/<name>"
    sha256: str = ""  # of the image file


def hard_defect_files(path: str | Path, fraction: float = 1.0) -> list[tuple[Path, Path, str]]:
    """(image, mask, "<class>/<name>") of the defect images with masks in MVTec layout: DIR/test/<class>/* (every
    class but good) with DIR/ground_truth/<class>/<stem>_mask.png. `fraction` < 1 keeps that share of each class
    (rounded, at least one): the images whose sha256 of "<class>/<name>" sorts first, so the choice depends on
    nothing but the names (not the listing order, not a seed) and a larger fraction keeps a superset."""

    if not 0.0 < fraction <= 1.0:
        msg = f"hard-defect fraction must be within (0, 1], got {fraction}"
        raise ValueError(msg)
    root = Path(path)
    test = root / "test"
    if not test.is_dir():
        msg = (
            f"hard-defect directory {root} has no test/ folder (expected DIR/test/<class>/* and "
            f"DIR/ground_truth/<class>/<stem>_mask.png)"
        )
        raise FileNotFoundError(msg)
    out = []
    for sub in sorted(p for p in test.iterdir() if p.is_dir() and p.name != "good"):
        found = []
        for f in sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            mask = mvtec.mask_path(root, sub.name, f.stem)
            if mask.is_file():
                found.append((f, mask, f"{sub.name}/{f.name}"))
        if fraction < 1.0 and found:
            found.sort(key=lambda t: hashlib.sha256(t[2].encode()).hexdigest())
            found = sorted(found[: max(1, round(len(found) * fraction))], key=lambda t: t[2])
        out.extend(found)
    return out


def load_hard_defects(path: str | Path, color: str = "gray", fraction: float = 1.0) -> list[HardDefect]:
    """Defect images with pixel masks in MVTec layout (see hard_defect_files), as `inspectd collect`
    (confirmed_defect) and `inspectd label check --accepted` write them. Images without a usable mask are skipped.
    Each HardDefect's `source` is "<class>/<name>", its `sha256` the file's: the manifest records both, so that
    `inspectd evaluate` can leave the images a model was trained on out of its numbers."""
    out = []
    for f, mask_file, source in hard_defect_files(path, fraction):
        mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
        image = read_image(f, color)
        if mask is None or mask.shape != image.shape[:2] or not mask.any():
            continue
        out.append(HardDefect(image=image, mask=(mask > 0).astype(np.uint8), source=source, sha256=sha256_file(f)))
    if not out:
        msg = (
            f"no defect images with masks under {Path(path) / 'test'}/<class>/ (masks: "
            f"{path}/ground_truth/<class>/<stem>_mask.png)"
        )
        raise FileNotFoundError(msg)
    return out


def synthetic_frames(
    n: int, *, width: int = 256, height: int = 256, seed: int = 0, color: str = "gray"
) -> list[np.ndarray]:
    """n good frames from the synthetic camera (inspectd.daemon.cameras.synthetic), defect rate 0."""

    gen = SurfaceGenerator(SyntheticCameraConfig(width=width, height=height, seed=seed, defect_rate=0.0))
    frames = [gen.render_good(i).image for i in range(n)]
    return [to_color(f, color) for f in frames if f is not None]


def synthetic_description(width: int, height: int, seed: int) -> str:
    return (
        f"synthetic camera good frames (inspectd.daemon.cameras.synthetic, {width}x{height}, seed {seed}, "
        f"defect_rate 0)"
    )


# --- samples -----------------------------------------------------------------------------------------------------


def random_affine(rng: np.random.Generator, hw: tuple[int, int], cfg: AugmentConfig) -> np.ndarray | None:
    """A small random rotation + translation (2x3 matrix) for a frame of size hw; None when switched off."""
    if not cfg.enabled or (cfg.max_rotation_deg <= 0 and cfg.max_shift <= 0):
        return None
    h, w = hw
    angle = float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    dx = float(rng.uniform(-cfg.max_shift, cfg.max_shift)) * w
    dy = float(rng.uniform(-cfg.max_shift, cfg.max_shift)) * h
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    m[:, 2] += np.array((dx, dy))
    return m


def augment_frame(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Small random rotation + translation of a whole frame (reflected borders)."""
    m = random_affine(rng, image.shape[:2], cfg)
    if m is None:
        return image
    h, w = image.shape[:2]
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def illuminate(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    if not cfg.enabled:
        return image
    gain = float(rng.uniform(*cfg.gain))
    offset = float(rng.uniform(*cfg.offset))
    out = image.astype(np.float32) * gain + offset
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_model_input(
    image: np.ndarray, geom: InputGeometry, rng: np.random.Generator | None = None, edge_prob: float = 0.0
) -> np.ndarray:
    """A frame -> model-size uint8 image: resized (as the daemon's `resize` mode) or, in `tile` mode, a crop at
    native resolution (random where rng is given, else the top-left tile); frames smaller than a tile are padded by
    reflection at their far end, as the daemon pads them."""
    h, w = image.shape[:2]
    if geom.mode == "resize":
        if (h, w) == (geom.height, geom.width):
            return image
        return cv2.resize(image, (geom.width, geom.height), interpolation=_INTERPOLATION[geom.interpolation])
    image = pad_to_tile(image, geom)
    y, x = crop_origin(image.shape[:2], geom, rng, edge_prob=edge_prob)
    return np.ascontiguousarray(image[y : y + geom.height, x : x + geom.width])


def pad_to_tile(image: np.ndarray, geom: InputGeometry, border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    h, w = image.shape[:2]
    pad_h, pad_w = max(0, geom.height - h), max(0, geom.width - w)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, border)
    return image


def crop_origin(
    hw: tuple[int, int],
    geom: InputGeometry,
    rng: np.random.Generator | None,
    focus: np.ndarray | None = None,
    edge_prob: float = 0.0,
) -> tuple[int, int]:
    """(y, x) of a model-size crop of a (padded) frame of size hw: uniform over all positions; with probability
    `edge_prob` flush with one of the four frame edges (as the daemon's edge tiles always are), the other
    coordinate uniform; or, with `focus` (a mask of the frame), a crop that contains a random nonzero pixel of it.
    The top-left tile without rng."""
    h, w = hw
    if rng is None:
        return 0, 0
    if edge_prob > 0 and focus is None and rng.random() < edge_prob:
        y, x = int(rng.integers(0, h - geom.height + 1)), int(rng.integers(0, w - geom.width + 1))
        side = int(rng.integers(4))
        if side < 2:
            y = 0 if side == 0 else h - geom.height
        else:
            x = 0 if side == 2 else w - geom.width
        return y, x
    if focus is not None and focus.any():
        ys, xs = np.nonzero(focus)
        k = int(rng.integers(ys.size))
        y_lo, x_lo = max(0, int(ys[k]) - geom.height + 1), max(0, int(xs[k]) - geom.width + 1)
        y_hi, x_hi = min(int(ys[k]), h - geom.height), min(int(xs[k]), w - geom.width)
        return int(rng.integers(y_lo, y_hi + 1)), int(rng.integers(x_lo, x_hi + 1))
    return int(rng.integers(0, h - geom.height + 1)), int(rng.integers(0, w - geom.width + 1))


def to_nchw(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 HxW or HxWxC images -> float32 NCHW in [0, 1]."""
    arr = np.stack(images).astype(np.float32) / np.float32(255.0)
    return arr[:, None] if arr.ndim == 3 else np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


class TrainingSet:
    """Good frames plus the recipe that turns them into training batches."""

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        geometry: InputGeometry,
        *,
        augment: AugmentConfig = AugmentConfig(),
        defects: DefectConfig = DefectConfig(),
        defect_prob: float = 0.5,
        defect_weight: float = 5.0,
        description: str = "",
        hard: Sequence[HardDefect] = (),
        hard_prob: float = 0.0,
        hard_value: int = 0,
        edge_prob: float = 0.0,
    ) -> None:
        if not frames:
            msg = "a training set needs at least one good image"
            raise ValueError(msg)
        if not 0.0 <= defect_prob <= 1.0:
            msg = f"defect_prob must be within [0, 1], got {defect_prob}"
            raise ValueError(msg)
        if defect_weight < 1.0 or not math.isfinite(defect_weight):
            msg = f"defect_weight must be a finite number >= 1, got {defect_weight}"
            raise ValueError(msg)
        if not 0.0 <= hard_prob <= 1.0 or (hard_prob > 0 and not hard):
            msg = (
                f"hard_prob must be within [0, 1] and needs a hard-defect set, got {hard_prob} with {len(hard)} images"
            )
            raise ValueError(msg)
        self.hard = [
            HardDefect(
                geometry.normalized(to_color(h.image, geometry.color)), geometry.scaled_mask(h.mask), h.source, h.sha256
            )
            for h in hard
        ]
        self.hard = [h for h in self.hard if h.mask.any()]  # a defect smaller than half a scaled pixel is gone
        self.hard_prob = float(hard_prob) if self.hard else 0.0
        self.hard_value = int(hard_value)
        if not 0.0 <= edge_prob <= 1.0:
            msg = f"edge_prob must be within [0, 1], got {edge_prob}"
            raise ValueError(msg)
        self.edge_prob = float(edge_prob) if geometry.mode == "tile" else 0.0
        self.frames = [geometry.normalized(to_color(f, geometry.color)) for f in frames]
        self.geometry = geometry
        self.augment = augment
        self.defects = defects
        self.defect_prob = float(defect_prob)
        self.defect_weight = float(defect_weight)
        self.description = description

    def __len__(self) -> int:
        return len(self.frames)

    def sample_one(
        self, rng: np.random.Generator, index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input uint8, target uint8, defect mask 0/1) at model size: a good frame with, at defect_prob, a
        synthetic defect (target: the clean frame); or, at hard_prob, a hard-defect image (target: 0 in its mask)."""
        if self.hard_prob and rng.random() < self.hard_prob:
            return self.sample_hard(rng)
        frame = self.frames[int(rng.integers(len(self.frames))) if index is None else index]
        frame = augment_frame(frame, rng, self.augment)
        clean = illuminate(to_model_input(frame, self.geometry, rng, self.edge_prob), rng, self.augment)
        if rng.random() < self.defect_prob:
            corrupted, mask, _ = add_defect(clean, rng, self.defects)
        else:
            corrupted, mask = clean, np.zeros(clean.shape[:2], dtype=np.uint8)
        return corrupted, clean, mask

    def sample_hard(
        self, rng: np.random.Generator, index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A hard-defect sample: the same rotation/shift for image and mask, in tile mode a crop that contains
        defect pixels, illumination on the input; the target is the input with the defect pixels set to
        hard_value (0 by default), so such defects reconstruct dark and stand out."""
        item = self.hard[int(rng.integers(len(self.hard))) if index is None else index]
        image, mask = item.image, item.mask
        m = random_affine(rng, image.shape[:2], self.augment)
        if m is not None:
            h, w = image.shape[:2]
            image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        g = self.geometry
        if g.mode == "resize":
            image = to_model_input(image, g)
            mask = cv2.resize(mask, (g.width, g.height), interpolation=cv2.INTER_NEAREST)
        else:
            image, mask = pad_to_tile(image, g), pad_to_tile(mask, g)
            y, x = crop_origin(image.shape[:2], g, rng, focus=mask)
            image = np.ascontiguousarray(image[y : y + g.height, x : x + g.width])
            mask = np.ascontiguousarray(mask[y : y + g.height, x : x + g.width])
        inp = illuminate(image, rng, self.augment)
        target = inp.copy()
        target[mask.astype(bool)] = self.hard_value
        return inp, target, mask

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        items = [self.sample_one(rng) for _ in range(batch_size)]
        masks = np.stack([m for _, _, m in items])
        weights = 1.0 + (self.defect_weight - 1.0) * masks[:, None].astype(np.float32)
        return Batch(
            inputs=to_nchw([i for i, _, _ in items]),
            targets=to_nchw([t for _, t, _ in items]),
            weights=weights.astype(np.float32),
            masks=masks,
        )

    def plain_inputs(self, n: int) -> np.ndarray:
        """The first n frames at model size, no augmentation and no defects (float32 NCHW)."""
        return to_nchw([to_model_input(f, self.geometry) for f in self.frames[:n]])


# --- what a model was trained and calibrated on -------------------------------------------------------------------


def holdout_order(n: int, seed: int) -> list[int]:
    """The order in which `inspectd train` (inspectd.training.workflow._split) deals n good images (image_files
    order): the
    first held_out_count are held out for calibration, the rest trained on. `inspectd ensemble` recomputes a
    member's held-out images from its manifest's training.seed and held_out_count."""
    return [int(i) for i in np.random.default_rng([seed, 99]).permutation(n)]


def data_facts(files: list[Path], root: Path) -> dict:
    """What the training data was: file count, a digest of names and contents, and what the collector recorded."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(root) if f.is_relative_to(root) else f.name).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    facts: dict = {"files": len(files), "sha256": h.hexdigest()}
    if (root / META_FILE).is_file():  # a collector's output (`inspectd collect`), perhaps still being written
        rows = read_records(root)
        facts["collected"] = {
            "records": len(rows),
            "good": sum(r.get("mark") == "good" for r in rows),
            "bad": sum(r.get("mark") == "bad" for r in rows),
            "lines": sorted({r.get("line", "") for r in rows}),
            "rejected_by_models": sorted({r.get("model_sha256", "") for r in rows}),
        }
    return facts


def load_mvtec_test(
    root: Path, color: str, exclude: frozenset[str] = frozenset()
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """DIR/test/good/* (goods) and DIR/test/<defect>/* with DIR/ground_truth/<defect>/<stem>_mask.png, without the
    files whose sha256 is in `exclude` (the hard-defect images the model was trained on)."""
    goods, defects, masks = [], [], []
    test = root / "test"
    if not test.is_dir():
        msg = f"{test} does not exist (expected the MVTec layout: DIR/test/<defect>/*, DIR/ground_truth/...)"
        raise FileNotFoundError(msg)
    for sub in sorted(p for p in test.iterdir() if p.is_dir()):
        for f in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if exclude and sha256_file(f) in exclude:
                continue
            img = read_image(f, color)
            if sub.name == "good":
                goods.append(img)
                continue
            mpath = mvtec.mask_path(root, sub.name, f.stem)
            mask = _read_mask(mpath, img.shape[:2])
            defects.append(img)
            masks.append(mask)
    return goods, defects, masks


@dataclass
class CalibrationImages:
    """The images thresholds are chosen on, and the sentence that says which they are (written to the manifest)."""

    goods: list[np.ndarray]
    defects: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    description: str = ""

    def with_test_set(self, root: Path, color: str, exclude: frozenset[str], excluded: str) -> CalibrationImages:
        """Plus DIR/test (goods, and defects with their masks) less the files in `exclude` (`excluded` says what
        they are: the images the model trained on)."""
        t_goods, defects, masks = load_mvtec_test(root, color, exclude=exclude)
        desc = f"{self.description} + {root}/test ({len(t_goods)} good, {len(defects)} defective with masks" + (
            f", without the {len(exclude)} {excluded})" if exclude else ")"
        )
        return CalibrationImages(self.goods + t_goods, self.defects + defects, self.masks + masks, desc)


def _read_mask(path: Path, hw: tuple[int, int]) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        msg = f"missing or unreadable mask {path} (expected a 0/255 PNG of the image's size)"
        raise FileNotFoundError(msg)
    if mask.shape != hw:
        mask = cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return (mask > 0).astype(np.uint8)
