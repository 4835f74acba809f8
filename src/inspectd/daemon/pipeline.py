"""Threads and bounded queues: acquisition -> prepare -> inference -> scoring -> dispatcher.

Four threads, joined by bounded queues, so that a frame's preprocessing and the previous frame's SSIM map and
decision run while the model works on the current one (onnxruntime and the Numba kernels release the GIL):

    acquisition --frames--> prepare --(1)--> inference --(1)--> scoring --> dispatcher (in seq order) --> sinks
    camera read,            Inspector        Inspector          Inspector.finish: SSIM map, stitch,
    pacing, triggers        .prepare         .infer (ORT)       decide; the verdict; watchdog + heartbeat

`frames` (pipeline.queue_size) is where the overrun policy applies; the hand-offs between the stages hold one
frame each and block, so back-pressure reaches `frames` (at most queue_size + 5 frames are in flight). An
inspector that only has `inspect()` (a test double) runs whole in the inference thread.

Every frame that is admitted (gets a seq) gets exactly one verdict:
- a queue overrun (live camera, pipeline too slow), a camera read failure/timeout, an unreadable image, or a
  trigger that could not be served yields an ERROR verdict, counted and logged, never a silent drop;
- a failure in any stage (preprocessing, inference, SSIM, decide) yields an ERROR verdict for that frame: the
  frame travels on to the scoring thread, which emits it, and the stages go on with the next frame.
A lost camera is closed and reopened with doubling backoff; the state is reported (log event, `state`).
Stopping (SIGTERM/SIGINT, --max-frames, end of a finite source): acquisition stops taking frames and sends an
end marker down the stages; each stage finishes the frames ahead of it, so every admitted frame is answered; the
sinks are flushed by the caller.

Liveness: the scoring thread's loop calls ``notifier.watchdog()`` and ``dispatcher.heartbeat()`` (systemd's
watchdog and the PLC's heartbeat register), but only while no stage has been stuck on one frame for longer than
`stall_s`: a hung inference stops the pings just as a hung scoring step does. Acquisition is covered too: every
camera call is bounded (BoundedCamera: `camera.timeout_s` for a read, `camera.open_timeout_s` for an open), so a
source that blocks (a FIFO, a hung mount) is an error verdict and a camera fault (ready 0, state 2) within its
bound, SIGTERM is not held up by it, and the acquisition thread stuck in a call beyond its bound stops the pings.
A frame outside `camera.frame_size` is that item's error verdict.

Threads: the scoring thread sets its own Numba thread count (`numba_threads`; Numba's count is per calling
thread); onnxruntime's comes from its session options. :func:`thread_budget` is the rule that splits the cores.
"""

from __future__ import annotations

import enum
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from inspectd.core.errors import CameraError, ConfigError, EndOfStream
from inspectd.core.systemd import Notifier
from inspectd.core.types import Camera, Capture, Code, Frame, Verdict
from inspectd.daemon.cameras.base import CameraConfigBase
from inspectd.daemon.cameras.bounded import BoundedCamera
from inspectd.daemon.dispatch import Dispatcher
from inspectd.inspection.inspector import Inspector
from inspectd.inspection.ssim import set_num_threads

# when the queue is full: "error" gives the new frame an ERROR verdict, "block" makes acquisition wait, "auto"
# chooses by source (the config's pipeline.overrun documents the rule)
Overrun = Literal["auto", "error", "block"]

log = structlog.get_logger("inspectd.pipeline")

_STOP = object()  # end-of-work marker, passed down from stage to stage
_HANDOFF = 1  # frames waiting between two processing stages (each stage also holds the one it works on)


@dataclass(frozen=True)
class ThreadBudget:
    """How many threads onnxruntime (intra-op) and the Numba SSIM kernel get, out of `cores` usable CPUs."""

    onnxruntime: int
    numba: int
    cores: int

    @property
    def oversubscribed(self) -> bool:
        """More threads than cores beyond the automatic rule's planned overlap (onnxruntime on all cores)."""
        return self.onnxruntime + self.numba > self.cores + max(1, self.cores // 4)


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cgroup cpusets), else os.cpu_count()."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_budget(onnxruntime: int = 0, numba: int = 0, cores: int | None = None) -> ThreadBudget:
    """The thread split; 0 = automatic. The rule, for N usable cores:

    - onnxruntime: all N cores -- the model does nearly all the work (its threads do not spin between operators,
      inspection.detector, so they leave the cores to the other stages whenever they wait);
    - Numba (SSIM, in the scoring thread): max(1, N // 4) -- the SSIM map costs a few percent of the model, and a
      features model has none;
    so the two overlap by N // 4 threads for the short time an SSIM map is computed while the next frame's
    inference runs (2 cores: 2 + 1; 4: 4 + 1; 8: 8 + 2). The former 1 + 1 split on 2 cores left the SSIM thread
    idle most of the time and the model at half the machine (0.69x of onnxruntime on all cores). A count given
    explicitly is kept and the automatic one takes what is left (at least 1); two explicit counts are kept as they
    are, even when they oversubscribe (the daemon logs a warning then).
    """
    n = usable_cores() if cores is None else max(1, int(cores))
    nb = int(numba) if numba else (max(1, n // 4) if not onnxruntime else max(1, min(n // 4, n - int(onnxruntime))))
    ort = int(onnxruntime) if onnxruntime else (n if not numba else max(1, n - nb))
    return ThreadBudget(onnxruntime=ort, numba=nb, cores=n)


@dataclass
class _Work:
    """One admitted frame on its way through the stages: what was made of it so far, or what went wrong."""

    frame: Frame
    pending: object = None  # the stage result handed to the next stage
    error: Exception | None = None
    failed_in: str = ""
    stages: _Stages | None = None  # the inspector this frame was prepared with (model hot reload)


class _Stages:
    """The inspector's three stages; an inspector with only `inspect()` runs whole in the inference stage."""

    def __init__(self, inspector) -> None:
        if all(hasattr(inspector, name) for name in ("prepare", "infer", "finish")):
            self.prepare: Callable = inspector.prepare
            self.infer: Callable = inspector.infer
            self.finish: Callable = inspector.finish
        else:
            self.prepare = _identity
            self.infer = inspector.inspect
            self.finish = _identity


def _identity(x):
    return x


class State(enum.IntEnum):
    """The values are the ones the PLC reads (holding register `state`)."""

    STARTING = 0
    RUNNING = 1
    CAMERA_FAULT = 2
    INFERENCE_FAULT = 3
    STOPPING = 4


class Pipeline:
    def __init__(
        self,
        camera: Camera,
        camera_cfg: CameraConfigBase,
        inspector: Inspector,
        dispatcher: Dispatcher,
        *,
        queue_size: int = 4,
        overrun: Overrun = "auto",
        max_frames: int = 0,
        drain_timeout_s: float = 10.0,
        notifier: Notifier | None = None,
        numba_threads: int = 0,
        stall_s: float = 2.0,
    ) -> None:
        self.camera = BoundedCamera(
            camera,
            read_timeout_s=camera_cfg.timeout_s,
            open_timeout_s=camera_cfg.open_timeout_s,
        )
        self.cam_cfg = camera_cfg
        self._frame_size = camera_cfg.frame_size
        self.inspector = inspector
        self.dispatcher = dispatcher
        self.notifier = notifier or Notifier({})
        self.max_frames = max_frames
        self.drain_timeout_s = drain_timeout_s
        self.numba_threads = int(numba_threads)
        self.stall_s = float(stall_s)
        # auto: a live camera on a free-run clock cannot wait (overrun = error verdict); a replay source, or
        # rate_hz 0 ("as fast as the pipeline takes frames"), waits for room in the queue
        self.block_on_full = overrun == "block" or (
            overrun == "auto" and (not camera.live or getattr(camera_cfg, "rate_hz", 1) == 0)
        )
        self.frames: queue.Queue = queue.Queue(maxsize=queue_size)
        self._to_infer: queue.Queue = queue.Queue(maxsize=_HANDOFF)
        self._to_score: queue.Queue = queue.Queue(maxsize=_HANDOFF)
        self.triggers: queue.Queue[tuple[int, Callable[[], None] | None]] = queue.Queue()
        self.stop_event = threading.Event()
        self.state = State.STARTING
        self.stop_reason: str | None = None
        # the camera refused its configuration (an unknown GenICam node...): reopening cannot help; exit 2
        self.config_error: str | None = None
        self._seq = 0
        self._camera_open = False
        # the camera's last word, for health checks (inspectd/daemon/status.py): when it last delivered an image
        # (time.monotonic()) and, when its newest open or read failed, why (None after a good image)
        self.last_image_at: float | None = None
        self.last_camera_error: str | None = None
        self._inference_failures = 0
        self._stages = _Stages(inspector)
        # per processing stage: time.monotonic() when it took its current frame, None while it waits for one
        self._busy_since: dict[str, float | None] = {
            "camera": None,  # in a camera call (open/read/close), bounded by BoundedCamera
            "prepare": None,
            "inference": None,
            "scoring": None,
        }
        self._threads = [
            threading.Thread(target=self._acquire_loop, name="acquisition", daemon=True),
            threading.Thread(target=self._prepare_loop, name="prepare", daemon=True),
            threading.Thread(target=self._infer_loop, name="inference", daemon=True),
            threading.Thread(target=self._score_loop, name="scoring", daemon=True),
        ]

    # --- control ------------------------------------------------------------------------------------------

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, reason: str = "requested") -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self._set_state(State.STOPPING, reason=reason)
            self.stop_event.set()

    def trigger(self, item_id: int = 0, on_taken: Callable[[], None] | None = None) -> None:
        """Acquire exactly one frame for this item (triggered mode); on_taken() runs once the frame is taken
        (or the trigger was answered with an error verdict), e.g. to clear the PLC's trigger coil."""
        self.triggers.put((int(item_id), on_taken))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until all threads have finished; True when they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def swap_inspector(self, inspector) -> None:
        """Model hot reload: frames prepared from now on use `inspector`; frames already past the prepare stage
        finish with the inspector that prepared them (each frame is inspected wholly by one model)."""
        self._stages = _Stages(inspector)
        self.inspector = inspector

    @property
    def camera_open(self) -> bool:
        return self._camera_open

    def stalled(self) -> str | None:
        """The stage that has been working on one frame for longer than stall_s (the camera: longer than its call's
        bound plus stall_s), or None."""
        now = time.monotonic()
        for name, t in list(self._busy_since.items()):
            limit = self.stall_s + (self.camera.longest_call_s if name == "camera" else 0.0)
            if t is not None and now - t >= limit:
                return name
        return None

    def queue_depth(self) -> int:
        """Frames admitted but not yet answered that wait in a queue (not those a stage is working on)."""
        return self.frames.qsize() + self._to_infer.qsize() + self._to_score.qsize()

    def _set_state(self, state: State, **why) -> None:
        if state != self.state and self.state != State.STOPPING:
            log.info("state", state=state.name.lower(), previous=self.state.name.lower(), **why)
            self.state = state
            self.dispatcher.broadcast_state(int(state))

    # --- acquisition thread -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _error(self, seq: int, item_id: int, reason: str, source: str = "", t0: float | None = None) -> None:
        now = time.monotonic()
        v = Verdict(
            seq=seq,
            item_id=item_id,
            wall_time=time.time(),
            code=Code.ERROR,
            error=reason,
            source=source,
            latency_ms=0.0 if t0 is None else (now - t0) * 1e3,
        )
        self.dispatcher.emit(v)

    def _budget_left(self) -> bool:
        return not self.max_frames or self._seq < self.max_frames

    def _open_camera(self, backoff: float) -> float:
        """Try to open the camera; returns the next backoff (0 when open)."""
        try:
            self._camera_call(self.camera.open)
        except ConfigError as exc:
            self.config_error = str(exc)
            log.error("camera_refused", error=str(exc))
            self.stop("camera configuration refused")
            return backoff
        except Exception as exc:  # CameraError, or a driver's own exception: a fault to retry, not a crash
            exc = exc if isinstance(exc, CameraError) else CameraError(f"{type(exc).__name__}: {exc}")
            self.last_camera_error = f"camera cannot open: {exc}"
            self._set_state(State.CAMERA_FAULT, error=str(exc))
            log.warning("camera_open_failed", error=str(exc), retry_in_s=round(backoff, 2))
            self.stop_event.wait(backoff)
            return min(backoff * 2, self.cam_cfg.reconnect.max_s)
        self._camera_open = True
        log.info("camera_opened", **self.camera.describe())
        self._set_state(State.RUNNING)
        return 0.0

    def _lose_camera(self, exc: Exception) -> None:
        log.warning("camera_lost", error=str(exc))
        self._set_state(State.CAMERA_FAULT, error=str(exc))
        try:
            self.camera.close()
        except Exception as close_exc:  # closing a broken source may fail too; it is being replaced anyway
            log.debug("camera_close_failed", error=repr(close_exc))
        self._camera_open = False

    def _wait_for_slot(self, next_t: float) -> tuple[bool, int, Callable[[], None] | None, float]:
        """Free-run pacing or a trigger. Returns (go, item_id, on_taken, next_t)."""
        if self.cam_cfg.trigger != "free_run":
            try:
                item_id, on_taken = self.triggers.get(timeout=0.1)
                return True, item_id, on_taken, next_t
            except queue.Empty:
                return False, 0, None, next_t
        rate = self.cam_cfg.rate_hz
        if rate <= 0:
            return True, 0, None, next_t
        now = time.monotonic()
        if next_t > now:
            if self.stop_event.wait(next_t - now):
                return False, 0, None, next_t
            now = next_t
        period = 1.0 / rate
        # a late slot does not cause a burst of catch-up frames
        next_t = next_t + period if next_t + period > now - period else now + period
        return True, 0, None, next_t

    def _acquire_loop(self) -> None:
        backoff = self.cam_cfg.reconnect.initial_s
        next_t = time.monotonic()
        try:
            while not self.stop_event.is_set() and self._budget_left():
                if not self._camera_open:
                    backoff = self._open_camera(backoff) or self.cam_cfg.reconnect.initial_s
                    if not self._camera_open:
                        self._fail_pending_triggers("camera not available")
                        continue
                go, item_id, on_taken, next_t = self._wait_for_slot(next_t)
                if not go:
                    continue
                self._acquire_one(item_id, on_taken)
        except EndOfStream:
            log.info("camera_end_of_stream", frames=self._seq)
            self.stop("end of stream")
        except Exception:
            log.exception("acquisition_crashed")
            self.stop("acquisition crashed")
        finally:
            if not self._budget_left():
                self.stop("max frames reached")
            self._fail_pending_triggers("stopping")
            self.frames.put(_STOP)
            try:
                self.camera.close()
            except Exception as exc:
                log.debug("camera_close_failed", error=repr(exc))
            self.camera.shutdown()

    def _fail_pending_triggers(self, reason: str) -> None:
        while self._budget_left():
            try:
                item_id, on_taken = self.triggers.get_nowait()
            except queue.Empty:
                return
            self._error(self._next_seq(), item_id, f"trigger not served: {reason}")
            _acknowledge(on_taken)

    def _acquire_one(self, item_id: int, on_taken: Callable[[], None] | None = None) -> None:
        t0 = time.monotonic()
        try:
            capture: Capture = self._camera_call(lambda: self.camera.read(self.cam_cfg.timeout_s))
        except EndOfStream:
            if self.cam_cfg.trigger != "free_run":
                self._error(self._next_seq(), item_id, "trigger not served: end of stream")
            _acknowledge(on_taken)
            raise
        except Exception as exc:  # CameraError, or a driver's own exception: error verdict, then reopen
            exc = exc if isinstance(exc, CameraError) else CameraError(f"{type(exc).__name__}: {exc}")
            self.last_camera_error = f"camera: {exc}"
            self._error(self._next_seq(), item_id, f"camera: {exc}", t0=t0)
            _acknowledge(on_taken)
            self._lose_camera(exc)
            return
        _acknowledge(on_taken)
        seq = self._next_seq()
        if capture.image is None:
            self.last_camera_error = f"bad frame: {capture.error or 'no image'}"
            self._error(seq, item_id, self.last_camera_error, capture.source, t0)
            return
        why = self._size_refusal(capture.image)
        if why is not None:
            self._error(seq, item_id, f"bad frame: {why}", capture.source, t0)
            return
        self.last_image_at, self.last_camera_error = t0, None
        frame = Frame(seq=seq, capture=capture, t_acquired=t0, wall_time=time.time(), item_id=item_id)
        if self.block_on_full:
            self.frames.put(frame)  # the worker always drains, so this returns
            return
        try:
            self.frames.put_nowait(frame)
        except queue.Full:
            log.warning("queue_overrun", seq=seq, queue_size=self.frames.maxsize)
            self._error(seq, item_id, "queue overrun: inspection slower than the camera", capture.source, t0)

    def _size_refusal(self, image) -> str | None:
        shape: tuple = getattr(image, "shape", ())
        if len(shape) < 2:
            return None  # not an image array at all: preprocessing refuses it with its own message
        return self._frame_size.refusal(int(shape[1]), int(shape[0]))

    # --- processing stages --------------------------------------------------------------------------------

    def _stage_loop(self, name: str, inbox, outbox: queue.Queue, step: Callable[[_Work], None]) -> None:
        """Take frames from inbox, apply `step` unless the frame already failed upstream, pass them on; on the
        end marker (or if this loop dies) pass the marker on, so the stages after it finish too."""
        try:
            while True:
                work = inbox.get()
                if work is _STOP:
                    return
                if work.error is None:
                    self._busy_since[name] = time.monotonic()
                    try:
                        step(work)
                    except Exception as exc:  # becomes this frame's ERROR verdict in the scoring stage
                        work.error, work.failed_in = exc, name
                    finally:
                        self._busy_since[name] = None
                outbox.put(work)
        except BaseException:
            log.exception("stage_crashed", stage=name)
            self.stop(f"{name} stage crashed")
            raise
        finally:
            outbox.put(_STOP)

    def _prepare_loop(self) -> None:
        def prepare(work: _Work) -> None:
            work.stages = self._stages  # a swapped-in model takes over at this frame boundary
            work.pending = work.stages.prepare(work.frame.capture.image)

        # frames arrive as Frame; wrapped, so that every stage from here on handles a _Work
        self._stage_loop("prepare", _Wrapping(self.frames), self._to_infer, prepare)

    def _infer_loop(self) -> None:
        def infer(work: _Work) -> None:
            work.pending = (work.stages or self._stages).infer(work.pending)

        self._stage_loop("inference", self._to_infer, self._to_score, infer)

    def _healthy(self) -> bool:
        """No stage has been working on one frame for longer than stall_s, and the acquisition thread has not been
        in one camera call for longer than the call's bound plus stall_s (BoundedCamera makes that impossible
        unless acquisition itself is stuck)."""
        return self.stalled() is None

    def _camera_call(self, fn: Callable[[], Any]) -> Any:
        self._busy_since["camera"] = time.monotonic()
        try:
            return fn()
        finally:
            self._busy_since["camera"] = None

    def _score_loop(self) -> None:
        if self.numba_threads > 0:
            set_num_threads(self.numba_threads)  # Numba's thread count is per calling thread: set it here
        while True:
            if self._healthy():  # from the frame loop: a stuck stage (here or upstream) stops the pings
                self.notifier.watchdog()
                self.dispatcher.heartbeat()  # and so does the PLC's heartbeat register
            try:
                work = self._to_score.get(timeout=0.25)
            except queue.Empty:
                continue
            if work is _STOP:
                return
            self._score(work)

    def _score(self, work: _Work) -> None:
        frame = work.frame
        cap = frame.capture
        result = None
        if work.error is None:
            self._busy_since["scoring"] = time.monotonic()
            try:
                result = (work.stages or self._stages).finish(work.pending)
            except Exception as exc:  # SSIM, stitch or decide failed: this frame's ERROR verdict
                work.error, work.failed_in = exc, "scoring"
            finally:
                self._busy_since["scoring"] = None
        if work.error is not None or result is None:
            error = work.error if work.error is not None else RuntimeError("no result")
            self._inference_failures += 1
            if self._inference_failures >= 3:
                self._set_state(State.INFERENCE_FAULT, error=repr(error))
            log.error("inspection_failed", seq=frame.seq, source=cap.source, stage=work.failed_in, error=repr(error))
            self._error(frame.seq, frame.item_id, f"inspection: {error!r}", cap.source, frame.t_acquired)
            return
        if self._inference_failures:
            self._inference_failures = 0
            if self.state == State.INFERENCE_FAULT:
                self._set_state(State.RUNNING if self._camera_open else State.CAMERA_FAULT)
        d = result.decision
        self.dispatcher.emit(
            Verdict(
                seq=frame.seq,
                item_id=frame.item_id,
                wall_time=frame.wall_time,
                code=d.code,
                score=d.score,
                regions=d.regions,
                defect_area=d.defect_area,
                timings_ms=result.timings_ms,
                latency_ms=(time.monotonic() - frame.t_acquired) * 1e3,
                source=cap.source,
                truth=cap.truth,
                image=cap.image,
                score_map=result.score_map,
            )
        )


class _Wrapping:
    """The frames queue seen by the prepare stage: each Frame comes out wrapped in a _Work."""

    def __init__(self, frames: queue.Queue) -> None:
        self._frames = frames

    def get(self):
        item = self._frames.get()
        return item if item is _STOP else _Work(item)


def _acknowledge(on_taken: Callable[[], None] | None) -> None:
    if on_taken is None:
        return
    try:
        on_taken()
    except Exception as exc:  # the PLC link's problem, not the acquisition's
        log.error("trigger_ack_failed", error=repr(exc))
