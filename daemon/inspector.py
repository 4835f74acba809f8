"""One image in, one difference map and decision out: preprocess -> ONNX -> SSIM map -> decide.

This is the daemon's whole per-frame computation, and the one code path that calibration and evaluation use too,
so thresholds are chosen on exactly the numbers the daemon will see. Not thread-safe: one Inspector per worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.decide import Decider
from daemon.detector import DEFAULT_PROVIDERS, Detector
from daemon.preprocess import Preprocessor
from daemon.ssim import SsimKernel
from daemon.types import Decision


@dataclass
class Inspection:
    score_map: np.ndarray  # float32, frame-sized: 1 - SSIM(input, reconstruction), larger = more different
    decision: Decision
    timings_ms: dict[str, float] = field(default_factory=dict)
    reconstruction: np.ndarray | None = None  # per-tile reconstructions in [0, 1] (only when asked for)


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
        self.preprocessor = Preprocessor(m.preprocess, m.input)
        self.ssim = SsimKernel(window=m.ssim.window, size=m.ssim.size, sigma=m.ssim.sigma, k1=m.ssim.k1, k2=m.ssim.k2)
        self.pixel_threshold = m.thresholds.pixel if pixel_threshold is None else float(pixel_threshold)
        self.min_region_area = m.thresholds.min_region_area if min_region_area is None else int(min_region_area)
        self.decider = Decider(self.pixel_threshold, self.min_region_area, m.score.reduction)

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
    ) -> "Inspector":
        det = Detector(model_dir, providers=tuple(providers), require_gpu=require_gpu, intra_op_threads=intra_op_threads)
        return cls(det, pixel_threshold=pixel_threshold, min_region_area=min_region_area)

    def _maps(self, image: np.ndarray, timings: dict[str, float], keep_recon: bool) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        prepared = self.preprocessor.prepare(image)
        t1 = time.perf_counter()
        output = self.detector.run(prepared.batch)
        t2 = time.perf_counter()
        recon = self.preprocessor.to_unit(output)
        ref = prepared.reference
        maps = np.empty(ref.shape[:3], dtype=np.float32)
        for i in range(ref.shape[0]):
            self.ssim.difference(ref[i], recon[i], out=maps[i])
        score_map = self.preprocessor.stitch(maps, prepared.layout)
        t3 = time.perf_counter()
        timings["preprocess"] = (t1 - t0) * 1e3
        timings["inference"] = (t2 - t1) * 1e3
        timings["ssim"] = (t3 - t2) * 1e3
        return score_map, (recon if keep_recon else None)

    def score_map(self, image: np.ndarray) -> np.ndarray:
        """The frame-sized difference map of one uint8 image (HxW gray or HxWx3 BGR)."""
        return self._maps(image, {}, False)[0]

    def inspect(self, image: np.ndarray, *, keep_reconstruction: bool = False) -> Inspection:
        timings: dict[str, float] = {}
        score_map, recon = self._maps(image, timings, keep_reconstruction)
        t0 = time.perf_counter()
        decision = self.decider.decide(score_map)
        timings["decide"] = (time.perf_counter() - t0) * 1e3
        return Inspection(score_map, decision, timings, recon)

    def warmup(self) -> float:
        """First inference and every JIT kernel, on a frame of the model's own size; returns seconds."""
        t0 = time.perf_counter()
        self.detector.warmup()
        c, h, w = self.manifest.input.shape[1:]
        frame = np.full((h, w) if c == 1 else (h, w, 3), 128, dtype=np.uint8)
        self.inspect(frame)
        return time.perf_counter() - t0
