"""Model load + warm-up: the one definition that start-up and hot reload share.

A model directory is opened (manifest, sha256, graph names and shapes checked by the Detector), wrapped in an
Inspector at the configured threshold overrides (an ensemble opens its members here with the same providers), its
SSIM kernels compiled and one warm-up inference run with finite output. Anything wrong raises ModelError (or what
onnxruntime/Numba raise): the caller decides whether that stops the start or keeps the running model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from inspectd.inspection import ssim
from inspectd.inspection.detector import Detector
from inspectd.inspection.inspector import Inspector


class ModelSettings(Protocol):
    """What is loaded: the daemon config's `model:` section satisfies it."""

    @property
    def path(self) -> Path: ...
    @property
    def providers(self) -> tuple[str, ...]: ...
    @property
    def require_gpu(self) -> bool: ...
    @property
    def pixel_threshold(self) -> float | None: ...
    @property
    def min_region_area(self) -> int | None: ...


@dataclass(frozen=True)
class LoadedModel:
    inspector: Inspector
    jit_s: float  # compiling (or loading from Numba's cache) the SSIM kernels
    warm_s: float  # the warm-up inference


def load_inspector(settings: ModelSettings, *, intra_op_threads: int) -> LoadedModel:
    """Open, check and warm up the model directory at `settings.path`; ready to inspect frames when it returns."""
    detector = Detector(
        settings.path,
        providers=settings.providers,
        require_gpu=settings.require_gpu,
        intra_op_threads=intra_op_threads,
    )
    inspector = Inspector(detector, pixel_threshold=settings.pixel_threshold, min_region_area=settings.min_region_area)
    # an anomalib model's map comes from its graph: no SSIM kernel to compile
    jit_s = 0.0 if inspector.anomalib else ssim.warmup([inspector.ssim], channels=inspector.preprocessor.channels)
    warm_s = inspector.warmup()  # raises ModelError on a wrong output shape or non-finite output
    return LoadedModel(inspector, jit_s, warm_s)
