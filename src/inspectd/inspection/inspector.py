"""One image in, one difference map and decision out: preprocess -> ONNX -> SSIM map -> decide.

This is the daemon's whole per-frame computation, and the one code path that calibration and evaluation use too,
so thresholds are chosen on exactly the numbers the daemon will see.

Two ways to call it:

- ``inspect(image)`` (and ``score_map(image)``): the whole computation in one call (calibration, evaluation, tests);
- the three stages ``prepare(image) -> Pending``, ``infer(pending)``, ``finish(pending) -> Inspection``, which the
  pipeline runs in three threads so that preprocessing of frame n+1 and SSIM/decide of frame n-1 overlap the
  inference of frame n. ``inspect`` is exactly ``finish(infer(prepare(image)))``.

A model of kind ``features`` outputs an anomaly map, one of kind ``classifier`` (a supervised segmentation model) its
defect-probability map: either is stitched to the frame as it is (no reconstruction, no SSIM; ``TILE_MAPS``).

An ensemble model directory (manifest ``ensemble``, docs/model-directory.md) holds more models, of any of these
kinds: the Inspector then runs one member Inspector per model in the same three stages (each its own preprocessing,
session and SSIM kernel), divides every model's frame-sized map by that model's divisor (its scale) and combines the
maps (max or mean) before the one decision, at the ensemble's thresholds; each region records which models' divided
maps found it (``Region.found_by``). Everything else (reconstruction, timings) is this directory's own model's.

An anomalib model (manifest kind ``anomalib``, made by ``inspectd import-anomalib``) has no reconstruction: its
graph outputs the anomaly map itself (normalised, in [0, 1]) and an image score. The map replaces the SSIM map
(stitched to frame size and decided by the same region rule) and the model's score is the image score, which
rejects by itself above the manifest's image threshold (thresholds.image).

Thread safety: each stage may run in its own thread, but a stage must not run in two threads at once (``finish``
owns the SSIM kernel's scratch buffers; ``infer`` one onnxruntime session, which is itself thread-safe). A
``Pending`` belongs to one frame and is handed from stage to stage, never shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspectd.core.errors import ModelError
from inspectd.core.manifest import load_members
from inspectd.core.types import Decision
from inspectd.inspection.decide import Decider, reduce_map, smooth_map
from inspectd.inspection.detector import DEFAULT_PROVIDERS, Detector
from inspectd.inspection.preprocess import Prepared, Preprocessor
from inspectd.inspection.ssim import SsimKernel


@dataclass
class Inspection:
    score_map: np.ndarray  # float32, frame-sized: 1 - SSIM(input, reconstruction), larger = more different
    decision: Decision
    timings_ms: dict[str, float] = field(default_factory=dict)
    reconstruction: np.ndarray | None = None  # per-tile reconstructions in [0, 1] (only when asked for)
    # an ensemble, with finish(model_scores=True): each model's image score (the manifest's reduction of its
    # divided map), primary first
    parts: list[float] | None = None


@dataclass
class Pending:
    """One frame part-way through inspection: prepared by `prepare`, reconstructed by `infer`."""

    prepared: Prepared
    output: np.ndarray | None = None  # the model's raw output (NCHW), set by infer()
    score: np.ndarray | None = None  # an anomalib model's image score per batch item, set by infer()
    timings_ms: dict[str, float] = field(default_factory=dict)
    members: list[Pending] = field(default_factory=list)  # an ensemble's other models, in manifest order


class Inspector:
    def __init__(
        self,
        detector: Detector,
        *,
        pixel_threshold: float | None = None,
        min_region_area: int | None = None,
    ) -> None:
        self.detector = detector
        m = detector.manifest
        self.manifest = m
        if m.kind not in TILE_MAPS:
            msg = (
                f"{detector.model_dir}: a {m.kind!r} model makes no anomaly map; the daemon runs {', '.join(TILE_MAPS)}"
            )
            raise ModelError(msg)
        self.preprocessor = Preprocessor(m.preprocess, m.input)
        self.ssim = SsimKernel(window=m.ssim.window, size=m.ssim.size, sigma=m.ssim.sigma, k1=m.ssim.k1, k2=m.ssim.k2)
        # the name each map goes by in Region.found_by: this model's own (an ensemble's manifest is named after
        # the ensemble; the first model's name is in its training facts)
        models = ((m.training or {}).get("ensemble") or {}).get("models") or [{}]
        self.map_name = str(models[0].get("name") or m.name) if m.ensemble is not None else m.name
        self.pixel_threshold = m.thresholds.pixel if pixel_threshold is None else float(pixel_threshold)
        self.min_region_area = m.thresholds.min_region_area if min_region_area is None else int(min_region_area)
        self.decider = Decider(
            self.pixel_threshold, self.min_region_area, m.score.reduction, image_threshold=m.thresholds.image
        )
        self.anomalib = m.kind == "anomalib"  # the model's map and score, no reconstruction
        self.members: list[tuple[Inspector, float]] = []  # (member, divide_by) of an ensemble
        if m.ensemble is not None:
            self.members = self._open_members()

    def _open_members(self) -> list[tuple[Inspector, float]]:
        """One Inspector per other model of the ensemble, with sessions of the same kind as this one's."""

        ens = self.manifest.ensemble
        assert ens is not None  # called only for an ensemble manifest
        out = []
        # where each member is, and that it still is one (cheap: its Detector below hashes its model.onnx)
        members = load_members(self.detector.model_dir, self.manifest, verify_hash=False)
        for (path, _), spec in zip(members, ens.members, strict=False):
            member = Inspector(Detector(path, **self.detector.options))
            if member.manifest.onnx.sha256 != spec.sha256:  # replaced between the check and the session
                msg = f"ensemble member {path} changed while loading (sha256 {member.manifest.onnx.sha256[:12]}…)"
                raise ModelError(msg)
            out.append((member, spec.divide_by))
        return out

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        require_gpu: bool = False,
        intra_op_threads: int = 0,
        pixel_threshold: float | None = None,
        min_region_area: int | None = None,
    ) -> Inspector:
        det = Detector(
            model_dir, providers=tuple(providers), require_gpu=require_gpu, intra_op_threads=intra_op_threads
        )
        return cls(det, pixel_threshold=pixel_threshold, min_region_area=min_region_area)

    # --- the three pipeline stages ----------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> Pending:
        """Stage 1: frame -> model batch and SSIM reference (resize or tiles), as the manifest says."""
        t0 = time.perf_counter()
        prepared = self.preprocessor.prepare(image)
        members = [member.prepare(image) for member, _ in self.members]
        return Pending(prepared, timings_ms={"preprocess": (time.perf_counter() - t0) * 1e3}, members=members)

    def infer(self, pending: Pending) -> Pending:
        """Stage 2: run the model on the prepared batch (onnxruntime releases the GIL meanwhile)."""
        t0 = time.perf_counter()
        if self.anomalib:
            pending.output, pending.score = self.detector.run_all(pending.prepared.batch)
        else:
            pending.output = self.detector.run(pending.prepared.batch)
        for (member, _), part in zip(self.members, pending.members, strict=False):
            member.infer(part)
        pending.timings_ms["inference"] = (time.perf_counter() - t0) * 1e3
        return pending

    def finish(self, pending: Pending, *, keep_reconstruction: bool = False, model_scores: bool = False) -> Inspection:
        """Stage 3: SSIM difference map of input vs reconstruction, stitched to frame size, then the decision."""
        if pending.output is None:
            msg = "finish() needs a Pending that went through infer() first"
            raise ValueError(msg)
        timings = pending.timings_ms
        t0 = time.perf_counter()
        score_map, recon, parts, maps = self._map(pending, model_scores=model_scores)
        t1 = time.perf_counter()
        image_score = None
        if self.anomalib and pending.score is not None:  # tiles: the most anomalous tile's score
            image_score = float(np.max(pending.score))
        decision = self.decider.decide(score_map, maps, image_score)
        timings["ssim"] = (t1 - t0) * 1e3
        timings["decide"] = (time.perf_counter() - t1) * 1e3
        return Inspection(score_map, decision, timings, recon if keep_reconstruction else None, parts)

    def _map(
        self, pending: Pending, *, model_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, list[float] | None, list[tuple[str, np.ndarray]]]:
        """(the map the decision reads, this model's reconstructions (None for a classifier), each model's image
        score when asked for and an ensemble, else None, and (name, divided map) of each model of an ensemble, else
        []): this model's map, or for an ensemble the combination of every model's map divided by its divisor
        (manifest ensemble.divide_by)."""
        if pending.output is None:
            msg = "finish() needs a Pending that infer() has run"
            raise ValueError(msg)
        score_map, recon = self._score(pending.prepared, pending.output)
        ens = self.manifest.ensemble
        if ens is None:
            return score_map, recon, None, []
        if len(pending.members) != len(self.members) or any(p.output is None for p in pending.members):
            msg = "finish() needs a Pending prepared and inferred by this Inspector (its ensemble members are missing)"
            raise ValueError(msg)
        own = score_map / np.float32(ens.divide_by)
        maps = [(self.map_name, own)]
        combined = own.copy()
        reduction = self.manifest.score.reduction
        parts = [reduce_map(combined, reduction)] if model_scores else None
        for (member, divide_by), part in zip(self.members, pending.members, strict=False):
            assert part.output is not None  # checked above
            other = member._score(part.prepared, part.output)[0]
            if other.shape != combined.shape:
                msg = f"ensemble member {member.manifest.name!r} made a {other.shape} map for a {combined.shape} frame"
                raise ValueError(msg)
            other /= np.float32(divide_by)
            maps.append((member.map_name, other))
            if parts is not None:
                parts.append(reduce_map(other, reduction))
            if ens.combine == "max":
                np.maximum(combined, other, out=combined)
            else:
                combined += other
        if ens.combine == "mean":
            combined /= np.float32(len(self.members) + 1)
        return combined, recon, parts, maps

    def _score(self, prepared: Prepared, output: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(frame-sized difference map, per-tile reconstructions in [0, 1] or None for a kind that has none); the
        map is post-processed as the manifest's score.smooth_sigma says (decide.smooth_map)."""
        maps, recon = TILE_MAPS[self.manifest.kind](self, prepared, output)
        layout = prepared.layout
        if maps.shape[0] == 1 and layout.native_hw is None and layout.frame_hw == maps.shape[1:3]:  # one tile = frame
            return smooth_map(maps[0], self.manifest.score.smooth_sigma), recon
        return smooth_map(self.preprocessor.stitch(maps, prepared.layout), self.manifest.score.smooth_sigma), recon

    # --- one call ----------------------------------------------------------------------------------------------

    def score_map(self, image: np.ndarray) -> np.ndarray:
        """The frame-sized difference map of one uint8 image (HxW gray or HxWx3 BGR)."""
        return self._map(self.infer(self.prepare(image)))[0]

    def inspect(self, image: np.ndarray, *, keep_reconstruction: bool = False) -> Inspection:
        """All three stages in one call: finish(infer(prepare(image)))."""
        return self.finish(self.infer(self.prepare(image)), keep_reconstruction=keep_reconstruction)

    def warmup(self) -> float:
        """First inference and every JIT kernel, on a frame of the model's own size; returns seconds."""
        t0 = time.perf_counter()
        for insp in (self, *(member for member, _ in self.members)):
            insp.detector.warmup()
            if insp.manifest.kind == "autoencoder":  # the only kind with an SSIM map
                insp.ssim.warmup(insp.preprocessor.channels)  # compiled, or loaded from the Numba cache
        c, h, w = self.manifest.input.shape[1:]
        frame = np.full((h, w) if c == 1 else (h, w, 3), 128, dtype=np.uint8)
        self.inspect(frame)
        return time.perf_counter() - t0


# --- one function per model kind: (prepared tiles, model output) -> per-tile maps [N, H, W], reconstructions ------


def _ssim_maps(inspector: Inspector, prepared: Prepared, output: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """autoencoder: the Gaussian-SSIM difference of every tile and its reconstruction (1 - SSIM, in [0, 2])."""
    recon = inspector.preprocessor.to_unit(output)
    ref = prepared.reference
    maps = np.empty(ref.shape[:3], dtype=np.float32)
    for i in range(ref.shape[0]):
        inspector.ssim.difference(ref[i], recon[i], out=maps[i])
    return maps, recon


def _feature_maps(_inspector: Inspector, _prepared: Prepared, output: np.ndarray) -> tuple[np.ndarray, None]:
    """features (in [0, 1)) and anomalib: the graph's output already is the anomaly map of every tile
    ([N, 1, h, w]; one per tile, or the one resized frame)."""
    return np.ascontiguousarray(np.asarray(output, dtype=np.float32)[:, 0]), None


def _probability_maps(insp: Inspector, prepared: Prepared, output: np.ndarray) -> tuple[np.ndarray, None]:
    """A classifier's output is its defect probability, one channel per tile (clipped to [0, 1])."""
    out = np.asarray(output)
    if out.ndim != 4 or out.shape[1] != 1:
        msg = f"classifier output has shape {out.shape}, expected N x 1 x H x W (a defect-probability map)"
        raise ValueError(msg)
    return np.clip(out[:, 0].astype(np.float32), 0.0, 1.0), None


def _anomalib_maps(_inspector: Inspector, _prepared: Prepared, output: np.ndarray) -> tuple[np.ndarray, None]:
    """anomalib: the graph's own anomaly map of every tile (or the one resized frame), N x 1 x h x w."""
    return np.ascontiguousarray(np.asarray(output, dtype=np.float32)[:, 0]), None


TILE_MAPS: dict[str, Callable[[Inspector, Prepared, np.ndarray], tuple[np.ndarray, np.ndarray | None]]] = {
    "autoencoder": _ssim_maps,
    "features": _feature_maps,
    "classifier": _probability_maps,
    "anomalib": _anomalib_maps,
}
