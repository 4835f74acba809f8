"""The data that flows through the pipeline, and the small Protocols its parts implement.

One way through: Camera -> Frame -> (preprocess, Detector, SSIM, decide) -> Verdict -> Sink.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class Code(enum.IntEnum):
    """Verdict codes; the values are the ones written to the PLC (holding register last_code)."""

    PASS = 1
    REJECT = 2
    ERROR = 3  # the PLC treats it as reject: an item is bad until it has a positive OK


def plc_seq(seq: int) -> int:
    """The daemon's unbounded seq as the PLC sees it (holding register last_seq, the result ring, register 21):
    1..65535, then 1 again; 0 means 'no result yet'. The one definition: a mark from register 21 finds its reject
    only because the PLC link and the reject store agree on it."""
    return (seq - 1) % 65535 + 1 if seq > 0 else 0


@dataclass(frozen=True, slots=True)
class Capture:
    """One image as a camera delivers it, before the pipeline gives it a sequence number.

    image: HxW (gray) or HxWx3 (BGR) uint8, C-contiguous; None when the item exists but its image is
      unusable (a corrupt file): then `error` says why and the item gets an ERROR verdict.
    source: where it came from (file path, device, 'synthetic#42'), for logs and records.
    truth: ground truth where the source knows it (True = defective), else None.
    truth_mask: HxW uint8 mask (0/255) of the true defect pixels, where the source knows it.
    """

    image: np.ndarray | None
    source: str
    truth: bool | None = None
    truth_mask: np.ndarray | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """A capture admitted to the pipeline: it will get exactly one Verdict with the same seq."""

    seq: int  # 1, 2, 3 ... per daemon run, never wraps here (the Modbus sink wraps it for the PLC)
    capture: Capture
    t_acquired: float  # time.monotonic() at acquisition
    wall_time: float  # time.time() at acquisition
    item_id: int = 0  # the PLC's item id at trigger time (0 = none)


@dataclass(frozen=True, slots=True)
class Region:
    """A connected region of the difference map above the pixel threshold, in frame pixel coordinates.

    found_by: for an ensemble, the models (manifest names) whose own divided map is above the threshold somewhere
    in the region, which map found it; empty for a single model, or where only the combination (mean) found it."""

    x: int
    y: int
    w: int
    h: int
    area: int
    peak: float
    found_by: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        out: dict = {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "area": self.area, "peak": round(self.peak, 4)}
        if self.found_by:
            out["found_by"] = list(self.found_by)
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What decide() makes of one difference map."""

    code: Code
    score: float
    regions: tuple[Region, ...]
    defect_area: int


@dataclass(slots=True)
class Verdict:
    """Exactly one per Frame. code ERROR carries the reason in `error`."""

    seq: int
    item_id: int
    wall_time: float
    code: Code
    score: float = 0.0
    regions: tuple[Region, ...] = ()
    defect_area: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    source: str = ""
    error: str | None = None
    truth: bool | None = None
    # heavy payloads for sinks that keep images (reject store); never logged
    image: np.ndarray | None = field(default=None, repr=False)
    score_map: np.ndarray | None = field(default=None, repr=False)

    def as_log(self) -> dict:
        """A small JSON-friendly dict for the per-verdict log event (no arrays)."""
        out = {
            "seq": self.seq,
            "item_id": self.item_id,
            "code": self.code.name.lower(),
            "score": round(self.score, 4),
            "defect_area": self.defect_area,
            "regions": [r.as_dict() for r in self.regions[:8]],
            "latency_ms": round(self.latency_ms, 2),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "source": self.source,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.truth is not None:
            out["truth"] = "defect" if self.truth else "good"
        return out


@runtime_checkable
class Camera(Protocol):
    """An image source. The pipeline's acquisition thread owns pacing, triggering and reconnecting.

    open(): connect/open the source; raises CameraError with a clear message on failure.
    read(timeout_s): the next image; raises CameraError on failure or timeout, EndOfStream when a finite
      source is exhausted.
    close(): release the source; must be safe to call twice and after a failed open().
    live: True for sources that produce frames in real time (a camera that cannot wait), False for replay
      sources (folder, video file) that can simply wait when the pipeline is busy.
    """

    live: bool

    def open(self) -> None: ...

    def read(self, timeout_s: float) -> Capture: ...

    def close(self) -> None: ...

    def describe(self) -> dict: ...


@runtime_checkable
class Sink(Protocol):
    """Receives every verdict, in the order they are emitted. emit() must return quickly (no blocking I/O).

    A sink may also implement these optional hooks (the dispatcher calls them when present):
      on_state(state: int)  -- the pipeline state changed (values of inspectd.daemon.pipeline.State)
      heartbeat()           -- called from the inspection worker's loop (several times a second while alive)
      attach(controls)      -- receives a Controls object to send triggers / false-reject marks upstream
    """

    name: str

    def emit(self, verdict: Verdict) -> None: ...

    def close(self) -> None: ...


class Controls(Protocol):
    """What a sink (the PLC link) may ask of the daemon. Both calls return at once and never raise."""

    def trigger(self, item_id: int, on_taken: Callable[[], None] | None = None) -> None:
        """Acquire exactly one frame for this item; on_taken() is called when the frame has been taken."""

    def false_reject(self, seq: int, *, source: str) -> None:
        """An operator found rejected item `seq` good (docs/feedback-loop.md); unknown or expired seqs are logged."""
