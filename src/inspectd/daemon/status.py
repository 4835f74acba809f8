"""One picture of the running daemon, read by everything that reports it: the control socket's `{"op": "status"}`,
`/metrics`, `/healthz` and `/readyz` (inspectd/daemon/web/). Nothing here is on the frame path: a snapshot reads
counters and flags the pipeline keeps anyway, so asking costs the frame loop nothing.

The control socket's status is `daemon()` merged by Feedback.status (its `status_extra`) with the reject store,
spool and sender counters; `snapshot()` is that whole answer, which /metrics reads.

The two rules (docs/metrics.md, "Health and readiness"):

- **ready** (`/readyz`) is the PLC's ready coil: the pipeline is running with its model loaded and warmed up and
  the camera open (state `running`). Starting, stopping, a camera fault or an inference fault is not ready.
- **healthy** (`/healthz`) is ready, and alive, and the camera really delivers: the pipeline's threads are alive,
  no stage has been stuck on one frame for longer than its stall limit, the camera's newest read gave an image,
  and, in free run, the newest image is at most `frame_age_limit_s` old (automatic: 5 frame periods, at least
  2 s). Triggered cameras take frames only when triggered, so there no age limit applies.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from inspectd.daemon.pipeline import State


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str  # "ok", or what is wrong, for a person


class DaemonStatus:
    def __init__(
        self,
        *,
        pipeline,
        dispatcher,
        camera: dict,
        plc=None,
        plc_mode: str = "server",
        feedback=None,
        info: dict | None = None,
        frame_age_limit_s: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.dispatcher = dispatcher
        self.camera = dict(camera)
        self.plc = plc
        self.plc_mode = plc_mode
        self.feedback = feedback
        self.model = dict((info or {}).get("model", {}))  # name, sha256, kind, preprocess
        self.runtime = dict((info or {}).get("runtime", {}))  # onnxruntime providers, Numba threads
        self.started_at = time.time()
        self._t0 = time.monotonic()
        cam = pipeline.cam_cfg
        self.free_run = cam.trigger == "free_run"
        if frame_age_limit_s is None:
            rate = float(getattr(cam, "rate_hz", 0) or 0)
            frame_age_limit_s = max(2.0, 5.0 / rate) if rate > 0 else 2.0
        self.frame_age_limit_s = float(frame_age_limit_s)
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)

    # --- called by the daemon -------------------------------------------------------------------------------

    def tick(self) -> None:
        """From the daemon's main loop (every 0.2 s): a (time, frames) sample for the frame rate."""
        self._samples.append((time.monotonic(), self.dispatcher.counters.frames))

    def set_model(self, **model) -> None:
        """After a model hot reload."""
        self.model = {**self.model, **model}

    @property
    def fps(self) -> float:
        """Verdicts per second over the last ~5 s."""
        samples = list(self._samples)
        if len(samples) < 2:
            return 0.0
        t1, f1 = samples[-1]
        t0, f0 = next(((t, f) for t, f in samples if t1 - t <= 5.0), samples[0])
        return (f1 - f0) / (t1 - t0) if t1 > t0 else 0.0

    # --- the two rules --------------------------------------------------------------------------------------

    def readiness(self) -> Check:
        p = self.pipeline
        if not p.running:
            return Check(False, f"pipeline stopped ({p.stop_reason or 'not started'})")
        if p.state is State.RUNNING:
            return Check(True, "ok")
        detail = {
            State.STARTING: "starting (camera not open yet)",
            State.CAMERA_FAULT: f"camera fault: {p.last_camera_error or 'the camera is not open'}",
            State.INFERENCE_FAULT: "inference fault: repeated inspection failures",
            State.STOPPING: f"stopping ({p.stop_reason})",
        }
        return Check(False, detail.get(p.state, p.state.name.lower()))

    def health(self) -> Check:
        ready = self.readiness()
        if not ready.ok:
            return ready
        p = self.pipeline
        stage = p.stalled()
        if stage is not None:
            return Check(False, f"the {stage} stage has been on one frame for more than {p.stall_s:g} s")
        if p.last_camera_error is not None:
            return Check(False, f"the camera's newest read failed: {p.last_camera_error}")
        if self.free_run:
            age = self._frame_age()
            if age is None and time.monotonic() - self._t0 > self.frame_age_limit_s:
                return Check(False, f"no image from the camera yet after {time.monotonic() - self._t0:.1f} s")
            if age is not None and age > self.frame_age_limit_s:
                return Check(
                    False, f"no image from the camera for {age:.1f} s (limit {self.frame_age_limit_s:g} s, free run)"
                )
        return Check(True, "ok")

    def _frame_age(self) -> float | None:
        t = self.pipeline.last_image_at
        return None if t is None else max(0.0, time.monotonic() - t)

    # --- the snapshot ---------------------------------------------------------------------------------------

    def daemon(self) -> dict:
        """The daemon's own part, as plain JSON values: the control socket's `{"op": "status"}` (Feedback merges the
        reject store, spool and sender counters into it)."""
        p, c = self.pipeline, self.dispatcher.counters
        health, ready = self.health(), self.readiness()
        age = self._frame_age()
        out: dict = {
            "state": p.state.name.lower(),
            "ready": ready.ok,
            "healthy": health.ok,
            "health": health.reason,
            "uptime_s": round(time.monotonic() - self._t0, 1),
            "started_at": self.started_at,
            "fps": round(self.fps, 2),
            "frames": c.frames,
            "verdicts": {"pass": c.passed, "reject": c.rejected, "error": c.errors},
            "queue": p.queue_depth(),
            "queue_size": p.frames.maxsize,
            "camera": {
                **self.camera,
                "trigger": p.cam_cfg.trigger,
                "open": p.camera_open,
                "last_image_age_s": None if age is None else round(age, 3),
                "last_error": p.last_camera_error,
            },
            "model": self.model,
            "runtime": self.runtime,
        }
        if self.plc is not None:
            out["plc_link"] = self.plc.link_state
            out["plc"] = {
                "mode": self.plc_mode,
                "link": self.plc.link_state,
                "clients": getattr(self.plc, "clients", None),
            }
        return out

    def snapshot(self) -> dict:
        """Everything /metrics reads: the control socket's status answer, without "ok"."""
        return self.feedback.status() if self.feedback is not None else self.daemon()
