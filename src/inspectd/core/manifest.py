"""The model-artifact contract (docs/model-directory.md): a model is a directory with model.onnx and manifest.json.

The manifest records everything the daemon needs and nothing it must guess. export/ writes it with
`Manifest.write()`; the daemon reads it with `load_manifest()` and refuses anything inconsistent.
This module does no onnxruntime work: detector.py checks the graph against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inspectd.core.errors import ModelError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION: Literal[1] = 1
MAX_ENSEMBLE_PIXEL = 1000.0  # thresholds.pixel of an ensemble (its map is each model's map / its divisor)
MAP_KINDS = ("autoencoder", "features", "classifier")  # kinds whose output the Inspector turns into a frame map


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    # NCHW; the batch dimension may be null (dynamic). C, H, W are fixed integers.
    shape: tuple[int | None, int, int, int]
    dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _positive(self) -> TensorSpec:
        if any(d is not None and d <= 0 for d in self.shape):
            msg = f"shape {list(self.shape)} must have positive dimensions (batch may be null = dynamic)"
            raise ValueError(msg)
        return self

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def hw(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]


class PreprocessSpec(_Strict):
    # gray: frames are converted to one channel; bgr: three channels in OpenCV's BGR order; rgb: three channels in
    # RGB order (what anomalib's models take)
    color: Literal["gray", "bgr", "rgb"]
    # the model sees (pixel_uint8 / divide - mean) / std ; the SSIM map compares in [0, 1] after `/ divide`
    divide: float = Field(255.0, gt=0)
    mean: float = 0.0
    std: float = Field(1.0, gt=0)
    # resize: the whole frame is resized to the model input; tile: the frame is cut into model-size tiles
    mode: Literal["resize", "tile"] = "resize"
    tile_overlap: int = Field(32, ge=0, description="pixels shared by neighbouring tiles (tile mode)")
    # tile mode: the frame is resized by this factor (INTER_AREA) before it is cut into tiles, so one tile sees
    # 1/scale times more of the part; the score map is resized back to the frame's size (1 = native resolution)
    scale: float = Field(1.0, gt=0.05, le=1.0, description="tile mode: resize factor applied before tiling")
    interpolation: Literal["area", "linear", "nearest"] = "area"
    # exposure normalisation, first of all (preprocess.normalize_exposure): none, or scale every frame so that its
    # median grey level becomes normalize_to (one gain per frame: camera exposure and lamp drift cancel out)
    normalize: Literal["none", "median"] = "none"
    normalize_to: float = Field(100.0, gt=0, le=255)

    @model_validator(mode="after")
    def _scale_needs_tiles(self) -> PreprocessSpec:
        if self.scale != 1.0 and self.mode != "tile":
            msg = (
                f"preprocess.scale {self.scale} needs mode 'tile' (resize mode already brings frames to the input size)"
            )
            raise ValueError(msg)
        return self


class SsimSpec(_Strict):
    window: Literal["gaussian", "uniform"] = "gaussian"
    size: int = Field(11, ge=3, le=63)
    sigma: float = Field(1.5, gt=0, le=20)
    k1: float = Field(0.01, gt=0, lt=1)
    k2: float = Field(0.03, gt=0, lt=1)

    @model_validator(mode="after")
    def _odd(self) -> SsimSpec:
        if self.size % 2 != 1:
            msg = f"window size must be odd, got {self.size}"
            raise ValueError(msg)
        return self


class ScoreSpec(_Strict):
    # how one image score is made from the difference map: its maximum, or a high percentile of it
    reduction: Literal["max", "p99", "p999", "mean"] = "max"
    # post-processing of the difference map before everything else (decide.smooth_map): Gaussian blur, pixels
    smooth_sigma: float = Field(0.0, ge=0, le=32)


class Thresholds(_Strict):
    # <= 2 (the SSIM map's range) for one model; an ensemble's combined map is in multiples of its models' own
    # thresholds, so up to MAX_ENSEMBLE_PIXEL there (Manifest._consistent)
    pixel: float = Field(ge=0, description="difference-map value above which a pixel is defective")
    min_region_area: int = Field(ge=1, description="regions smaller than this (frame pixels) are ignored")
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the model.onnx these were calibrated for")
    # an image score above this rejects the image too, whatever its regions (None: the region rule alone); an
    # anomalib model's own image threshold (its pred_label), moved out of the graph by `inspectd import-anomalib`
    image: float | None = Field(None, description="image-score threshold (None: regions alone decide)")
    method: str = ""
    calibrated_at: str = ""


class OnnxSpec(_Strict):
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(ge=7)


class MemberSpec(_Strict):
    """One more model of an ensemble: a complete model directory inside this one."""

    dir: str = Field(min_length=1, description="path of the member's model directory, relative to this one")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the member's model.onnx (checked at load)")
    divide_by: float = Field(gt=0, description="the member's difference map is divided by this (its scale)")


class EnsembleSpec(_Strict):
    """Several models judge each frame together (e.g. a native-resolution autoencoder for small defects and a
    quarter-scale one for large ones, or an autoencoder's anomaly map and a classifier's supervised defect map).
    Each model's frame-sized map (difference map or defect probability) is divided by its divisor, which puts
    the maps on one scale (`inspectd ensemble` chooses it: a quantile of that model's image scores on good images
    it never trained on, or its own pixel threshold); the maps are combined pixel by pixel (max: a defect any model
    sees counts; mean) and the manifest's thresholds apply to the combination."""

    combine: Literal["max", "mean"] = "max"
    divide_by: float = Field(gt=0, description="this directory's own model.onnx map is divided by this")
    members: tuple[MemberSpec, ...] = Field(min_length=1)


class AnomalibSpec(_Strict):
    """A model exported by anomalib (>= 2.0, `engine.export(export_type="onnx")`) and wrapped by
    `inspectd import-anomalib`: its pre-processing (resize, ImageNet normalisation) and its post-processing (min-max
    normalisation around its threshold: 0.5 = anomalib's threshold, values in [0, 1]) stay inside the graph; the
    graph's input is RGB in [0, 1]; its thresholded outputs (pred_label, pred_mask) were removed and their thresholds
    moved to `thresholds` (image, pixel), where inspectd's calibration can change them."""

    score_output: str = Field(min_length=1, description="the graph output with the image score (pred_score)")
    graph_image_threshold: float = Field(description="the threshold the graph applied to the score (pred_label)")
    graph_pixel_threshold: float = Field(description="the threshold the graph applied to the map (pred_mask)")
    removed_outputs: tuple[str, ...] = ()
    source: str = Field("", description="the anomalib export this directory was made from")
    source_sha256: str = ""
    anomalib_version: str = Field("", description="as stated at import (the ONNX file does not record it)")


MAX_ANOMALIB_PIXEL = 1.0  # anomalib's normalised maps lie in [0, 1]


class Manifest(_Strict):
    format_version: Literal[1] = FORMAT_VERSION
    name: str
    # autoencoder: the output is a reconstruction, scored by the Gaussian-SSIM map; features: the output is the
    # anomaly map itself ([N, 1, H, W], in [0, 1), a memory bank's nearest-neighbour distance); classifier: a
    # supervised defect map (the label checkers); anomalib: an imported anomalib export (its own map and score).
    # MAP_KINDS are those the daemon's Inspector turns into maps.
    kind: Literal["autoencoder", "features", "classifier", "anomalib"]
    onnx: OnnxSpec
    input: TensorSpec
    output: TensorSpec
    preprocess: PreprocessSpec
    ssim: SsimSpec = Field(default_factory=SsimSpec)
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    thresholds: Thresholds
    # free-form facts about training: data, categories, good:defect ratio, sample count, final loss, command
    training: dict = Field(default_factory=dict)
    created: str = ""
    # more models judging every frame with this one (None: this model alone); thresholds are then the combination's
    ensemble: EnsembleSpec | None = None
    # kind anomalib: the export's contract (score output, the thresholds taken out of the graph)
    anomalib: AnomalibSpec | None = None

    @property
    def identity(self) -> str:
        """What names this model for reloads and records: onnx.sha256, or for an ensemble the sha256 of all its
        models' sha256s, the combination and the thresholds (a changed member or recalibration is a new model)."""
        if self.ensemble is None:
            return self.onnx.sha256
        e = self.ensemble
        parts = [
            self.onnx.sha256,
            e.combine,
            repr(e.divide_by),
            repr(self.thresholds.pixel),
            str(self.thresholds.min_region_area),
        ]
        parts += [f"{m.sha256}/{m.divide_by!r}" for m in e.members]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    @property
    def pixel_limit(self) -> float:
        """The highest thresholds.pixel this model's map allows: 2 (the SSIM map's range), 1 for a classifier's
        defect probability, an anomalib map's own range, an ensemble's more."""
        if self.kind == "anomalib":
            return MAX_ANOMALIB_PIXEL
        if self.ensemble is not None:
            return MAX_ENSEMBLE_PIXEL
        return 1.0 if self.kind == "classifier" else 2.0

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.thresholds.model_sha256 != self.onnx.sha256:
            msg = (
                f"thresholds.model_sha256 ({self.thresholds.model_sha256[:12]}…) is not onnx.sha256 "
                f"({self.onnx.sha256[:12]}…): the thresholds were calibrated for another model; recalibrate"
            )
            raise ValueError(msg)
        expected_c = 1 if self.preprocess.color == "gray" else 3  # bgr, rgb
        if self.input.channels != expected_c:
            msg = f"input has {self.input.channels} channels but preprocess.color is {self.preprocess.color!r}"
            raise ValueError(msg)
        if self.kind == "autoencoder" and self.output.shape[1:] != self.input.shape[1:]:
            msg = (
                f"an autoencoder's output shape {list(self.output.shape)} must equal its input shape "
                f"{list(self.input.shape)}"
            )
            raise ValueError(msg)
        if self.kind == "features" and self.output.shape[1:] != (1, *self.input.hw):
            msg = (
                f"a features model's output shape {list(self.output.shape)} must be one map of the input's size "
                f"[N, 1, {self.input.hw[0]}, {self.input.hw[1]}]"
            )
            raise ValueError(msg)
        if self.thresholds.pixel > self.pixel_limit:
            what = "the difference map's range" if self.ensemble is None else "an ensemble's limit"
            msg = f"thresholds.pixel {self.thresholds.pixel} is above {self.pixel_limit:g} ({what})"
            raise ValueError(msg)
        if (self.kind == "anomalib") != (self.anomalib is not None):
            msg = "kind 'anomalib' and the manifest's anomalib section go together (one without the other)"
            raise ValueError(msg)
        if self.kind == "anomalib" and (self.output.shape[1] != 1 or self.preprocess.color != "rgb"):
            msg = (
                f"an anomalib model's map output must have one channel (got {list(self.output.shape)}) and its "
                f"input RGB (preprocess.color {self.preprocess.color!r})"
            )
            raise ValueError(msg)
        if self.kind == "classifier" and self.output.shape[1:] != (1, *self.input.hw):
            msg = (
                f"a classifier's output {list(self.output.shape)} must be one defect-probability map of its input's "
                f"size [N, 1, {self.input.hw[0]}, {self.input.hw[1]}]"
            )
            raise ValueError(msg)
        if self.ensemble is not None and self.kind not in MAP_KINDS:
            msg = f"an ensemble combines difference maps ({', '.join(MAP_KINDS)}); this model's kind is {self.kind!r}"
            raise ValueError(msg)
        if self.preprocess.mode == "tile" and self.preprocess.tile_overlap >= min(self.input.hw):
            msg = f"tile_overlap {self.preprocess.tile_overlap} must be smaller than the tile {self.input.hw}"
            raise ValueError(msg)
        return self

    def write(self, model_dir: str | Path) -> Path:
        """Write manifest.json atomically (temp file, fsync, rename)."""
        path = Path(model_dir) / MANIFEST_NAME
        text = json.dumps(self.model_dump(mode="json"), indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; the daemon may run as another user than the trainer
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(model_dir: str | Path, *, verify_hash: bool = True) -> Manifest:
    """Read and validate manifest.json of a model directory; check model.onnx's sha256 against it."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        msg = f"model directory {model_dir} does not exist (expected a directory with model.onnx and {MANIFEST_NAME})"
        raise ModelError(msg)
    mpath = model_dir / MANIFEST_NAME
    if not mpath.is_file():
        msg = (
            f"{mpath} is missing: a model directory needs model.onnx and {MANIFEST_NAME} (written by `inspectd train`)"
        )
        raise ModelError(msg)
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{mpath} is not readable JSON ({exc}); expected the manifest written by `inspectd train`"
        raise ModelError(msg) from exc
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
        msg = f"{mpath} is not a valid inspectd manifest: {problems}"
        raise ModelError(msg) from exc
    onnx_path = model_dir / manifest.onnx.file
    if not onnx_path.is_file():
        msg = f"{onnx_path} is missing (named by {mpath} onnx.file)"
        raise ModelError(msg)
    if verify_hash:
        actual = sha256_file(onnx_path)
        if actual != manifest.onnx.sha256:
            msg = (
                f"{onnx_path} has sha256 {actual} but {mpath} expects {manifest.onnx.sha256}: "
                "the file was changed or corrupted; re-export the model or restore the matching file"
            )
            raise ModelError(msg)
    if manifest.ensemble is not None:
        load_members(model_dir, manifest, verify_hash=verify_hash)
    return manifest


def load_members(model_dir: str | Path, manifest: Manifest, *, verify_hash: bool = True) -> list[tuple[Path, Manifest]]:
    """[(directory, manifest)] of an ensemble's other models, each checked as a model directory of its own, bound to
    the sha256 the ensemble was calibrated with, and not an ensemble itself."""
    if manifest.ensemble is None:
        return []
    root = Path(model_dir).resolve()
    out = []
    for i, member in enumerate(manifest.ensemble.members):
        where = f"{Path(model_dir) / MANIFEST_NAME} ensemble.members[{i}]"
        path = (root / member.dir).resolve()
        if root not in path.parents:
            msg = f"{where}: dir {member.dir!r} leaves the model directory; a member must be a folder inside it"
            raise ModelError(msg)
        try:
            m = load_manifest(path, verify_hash=verify_hash)
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        if m.ensemble is not None:
            msg = f"{where}: {path} is itself an ensemble; members must be single models"
            raise ModelError(msg)
        if m.onnx.sha256 != member.sha256:
            msg = (
                f"{where}: {path}/{m.onnx.file} is sha256 {m.onnx.sha256[:12]}… but the ensemble was calibrated with "
                f"{member.sha256[:12]}…: a member was replaced; rebuild the ensemble (`inspectd ensemble`)"
            )
            raise ModelError(msg)
        out.append((path, m))
    return out
