"""Threads and a bounded queue: acquisition -> queue -> inspection worker -> dispatcher.

Every frame that is admitted (gets a seq) gets exactly one verdict:
- a queue overrun (live camera, pipeline too slow), a camera read failure/timeout, an unreadable image, or a
  trigger that could not be served yields an ERROR verdict, counted and logged, never a silent drop;
- an inference failure yields an ERROR verdict for that frame, and the worker goes on with the next.
A lost camera is closed and reopened with doubling backoff; the state is reported (log event, `state`).
Stopping (SIGTERM/SIGINT, --max-frames, end of a finite source): acquisition stops taking frames, the worker
finishes the frames already admitted, the sinks are flushed.
"""

from __future__ import annotations

import enum
import queue
import threading
import time

from collections.abc import Callable

import structlog

from daemon.dispatch import Dispatcher
from daemon.inspector import Inspector
from daemon.service import Notifier
from daemon.types import Camera, CameraError, Capture, Code, EndOfStream, Frame, Verdict

log = structlog.get_logger("inspectd.pipeline")

_STOP = object()  # end-of-work marker on the frame queue


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
        camera_cfg,
        inspector: Inspector,
        dispatcher: Dispatcher,
        *,
        queue_size: int = 4,
        overrun: str = "auto",
        max_frames: int = 0,
        drain_timeout_s: float = 10.0,
        notifier: Notifier | None = None,
    ) -> None:
        self.camera = camera
        self.cam_cfg = camera_cfg
        self.inspector = inspector
        self.dispatcher = dispatcher
        self.notifier = notifier or Notifier({})
        self.max_frames = max_frames
        self.drain_timeout_s = drain_timeout_s
        self.block_on_full = overrun == "block" or (overrun == "auto" and not camera.live)
        self.frames: queue.Queue = queue.Queue(maxsize=queue_size)
        self.triggers: queue.Queue[tuple[int, Callable[[], None] | None]] = queue.Queue()
        self.stop_event = threading.Event()
        self.state = State.STARTING
        self.stop_reason: str | None = None
        self._seq = 0
        self._camera_open = False
        self._inference_failures = 0
        self._acq = threading.Thread(target=self._acquire_loop, name="acquisition", daemon=True)
        self._work = threading.Thread(target=self._work_loop, name="inspection", daemon=True)

    # --- control ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._acq.start()
        self._work.start()

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
        """Wait until both threads have finished; True when they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in (self._acq, self._work):
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not (self._acq.is_alive() or self._work.is_alive())

    @property
    def running(self) -> bool:
        return self._acq.is_alive() or self._work.is_alive()

    def queue_depth(self) -> int:
        return self.frames.qsize()

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
            self.camera.open()
        except Exception as exc:  # CameraError, or a driver's own exception: a fault to retry, not a crash
            exc = exc if isinstance(exc, CameraError) else CameraError(f"{type(exc).__name__}: {exc}")
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
            capture: Capture = self.camera.read(self.cam_cfg.timeout_s)
        except EndOfStream:
            if self.cam_cfg.trigger != "free_run":
                self._error(self._next_seq(), item_id, "trigger not served: end of stream")
            _acknowledge(on_taken)
            raise
        except Exception as exc:  # CameraError, or a driver's own exception: error verdict, then reopen
            exc = exc if isinstance(exc, CameraError) else CameraError(f"{type(exc).__name__}: {exc}")
            self._error(self._next_seq(), item_id, f"camera: {exc}", t0=t0)
            _acknowledge(on_taken)
            self._lose_camera(exc)
            return
        _acknowledge(on_taken)
        seq = self._next_seq()
        if capture.image is None:
            self._error(seq, item_id, f"bad frame: {capture.error or 'no image'}", capture.source, t0)
            return
        frame = Frame(seq=seq, capture=capture, t_acquired=t0, wall_time=time.time(), item_id=item_id)
        if self.block_on_full:
            self.frames.put(frame)  # the worker always drains, so this returns
            return
        try:
            self.frames.put_nowait(frame)
        except queue.Full:
            log.warning("queue_overrun", seq=seq, queue_size=self.frames.maxsize)
            self._error(seq, item_id, "queue overrun: inspection slower than the camera", capture.source, t0)

    # --- inspection worker --------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            self.notifier.watchdog()  # from the frame loop: a stuck worker stops the pings
            self.dispatcher.heartbeat()  # and so does the PLC's heartbeat register
            try:
                item = self.frames.get(timeout=0.25)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            self._inspect(item)

    def _inspect(self, frame: Frame) -> None:
        cap = frame.capture
        try:
            result = self.inspector.inspect(cap.image)
        except Exception as exc:  # any failure of preprocessing, onnxruntime, SSIM or decide: ERROR, keep going
            self._inference_failures += 1
            if self._inference_failures >= 3:
                self._set_state(State.INFERENCE_FAULT, error=repr(exc))
            log.error("inspection_failed", seq=frame.seq, source=cap.source, error=repr(exc))
            self._error(frame.seq, frame.item_id, f"inspection: {exc!r}", cap.source, frame.t_acquired)
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


def _acknowledge(on_taken: Callable[[], None] | None) -> None:
    if on_taken is None:
        return
    try:
        on_taken()
    except Exception as exc:  # the PLC link's problem, not the acquisition's
        log.error("trigger_ack_failed", error=repr(exc))
