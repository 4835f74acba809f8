"""The composition root: builds the daemon's parts from a validated Config, runs them, closes them in order.

    camera ─► Pipeline (preprocess, model, SSIM map, decide) ─► Dispatcher ─► PLC sink (first: time-critical),
                                                                              log sink, reject store, metrics
    PLC requests / control socket ─► DaemonControls ─► pipeline triggers, marking (feedback)
    DaemonStatus ─► control socket status, HTTP endpoint (/metrics, /healthz, /readyz, recheck station)

Every part that is started is registered on one ExitStack, so every exit path (a refused part at start, a crash,
SIGTERM) closes what was opened, newest first; each close is idempotent.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path

import numba
import onnxruntime
import structlog

from inspectd import __version__
from inspectd.core.errors import ConfigError, ModelError
from inspectd.core.systemd import Notifier, install_signal_handlers
from inspectd.daemon.cameras import build_camera
from inspectd.daemon.config import Config
from inspectd.daemon.controls import DaemonControls
from inspectd.daemon.dispatch import Dispatcher
from inspectd.daemon.logsink import LogSink
from inspectd.daemon.metrics import Metrics
from inspectd.daemon.pipeline import Pipeline, thread_budget
from inspectd.daemon.reload import ModelReloader
from inspectd.daemon.status import DaemonStatus
from inspectd.feedback.channel import Feedback, camera_name
from inspectd.inspection._numba_env import ensure_numba_cache_dir
from inspectd.inspection.inspector import Inspector
from inspectd.inspection.loading import load_inspector
from inspectd.plc import PlcError, build_plc_sink

log = structlog.get_logger("inspectd")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


class StartupError(Exception):
    """A part refused to start; `exit_code` says whether a restart can help (1) or the config must change (2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run(cfg: Config, config_path: Path, max_frames: int) -> int:
    """Build, run until stopped (signal, --max-frames, a finite source's end), close; the process exit code."""
    with contextlib.ExitStack() as stack:
        try:
            app = App(cfg, config_path, max_frames, stack)
        except StartupError as exc:
            print(f"inspectd: {exc}", file=sys.stderr)
            return exc.exit_code
        return app.serve()


class App:
    def __init__(self, cfg: Config, config_path: Path, max_frames: int, stack: contextlib.ExitStack) -> None:
        self.cfg = cfg
        self.max_frames = max_frames
        log.info("starting", version=__version__, config=str(config_path.resolve()), line=cfg.line)
        self.notifier = Notifier()
        stack.callback(self.notifier.close)
        threads = cfg.pipeline.threads
        self.budget = thread_budget(threads.onnxruntime, threads.numba)  # the rule: daemon.pipeline.thread_budget
        (log.warning if self.budget.oversubscribed else log.info)(
            "threads", onnxruntime=self.budget.onnxruntime, numba=self.budget.numba, cores=self.budget.cores
        )
        inspector = self._load_model()
        self.camera = build_camera(cfg.camera)
        self.plc = None
        if cfg.plc is not None:  # the PLC link: started before the pipeline, the first (time-critical) sink
            self.plc = build_plc_sink(cfg.plc)
            try:
                self.plc.start()
            except PlcError as exc:
                log.error("plc_start_failed", error=str(exc))
                raise StartupError(f"plc: {exc}", EXIT_FAILURE) from exc
            stack.callback(self.plc.close)  # the normal path closes it in dispatcher.close() (idempotent)
        m = inspector.manifest
        try:  # the false-reject channel: reject store, spool + sender, control socket (each where configured)
            self.feedback = Feedback.open(
                cfg,
                camera=camera_name(self.camera.describe()),
                model_sha256=m.identity,
                model_name=m.name,
                pixel_threshold=inspector.pixel_threshold,
            )
        except ConfigError as exc:
            log.error("feedback_refused", error=str(exc))
            raise StartupError(str(exc), EXIT_CONFIG) from exc
        stack.callback(self.feedback.close)  # control socket, queued marks, then the sender's bounded flush
        plc_sinks = [self.plc] if self.plc is not None else []
        self.metrics = Metrics() if cfg.http is not None else None
        metrics_sinks = [self.metrics.sink] if self.metrics is not None else []  # last: after the PLC, log, store
        self.dispatcher = Dispatcher([*plc_sinks, LogSink(cfg.logging.verdicts), *self.feedback.sinks, *metrics_sinks])
        self.pipeline = Pipeline(
            self.camera,
            cfg.camera,
            inspector,
            self.dispatcher,
            queue_size=cfg.pipeline.queue_size,
            overrun=cfg.pipeline.overrun,
            max_frames=max_frames,
            drain_timeout_s=cfg.pipeline.drain_timeout_s,
            notifier=self.notifier,
            numba_threads=self.budget.numba,
        )
        self.dispatcher.attach(DaemonControls(self.pipeline, mark_good=self.feedback.mark_good))
        self.daemon_status = self._daemon_status(inspector)
        # the control socket's status: the same picture /metrics and /healthz read
        self.feedback.status_extra = self.daemon_status.daemon
        self.feedback.start()
        self.reloader = ModelReloader(
            cfg,
            self.pipeline,
            config_path=config_path,
            intra_op_threads=self.budget.onnxruntime,
            on_swapped=self._model_swapped,
        )
        self.feedback.ops["reload"] = self.reloader.handle
        install_signal_handlers(lambda name: self.pipeline.stop(f"signal {name}"), on_reload=self.reloader.request)
        self.http = self._serve_http(stack)

    def _daemon_status(self, inspector: Inspector) -> DaemonStatus:
        """The one picture of the daemon that the control socket, /metrics, /healthz and /readyz report."""
        m, info, cfg = inspector.manifest, inspector.detector.info, self.cfg
        return DaemonStatus(
            pipeline=self.pipeline,
            dispatcher=self.dispatcher,
            camera=self.camera.describe(),
            plc=self.plc,
            plc_mode=cfg.plc.mode if cfg.plc is not None else "server",
            feedback=self.feedback,
            info={
                "model": {
                    "name": m.name,
                    "sha256": m.identity,
                    "kind": m.kind,
                    "preprocess": m.preprocess.mode,
                    "pixel_threshold": inspector.pixel_threshold,
                },
                "runtime": {
                    "onnxruntime": onnxruntime.__version__,
                    "providers": ",".join(info.obtained),
                    "on_gpu": info.on_gpu,
                    "onnxruntime_threads": self.budget.onnxruntime,
                    "numba": numba.__version__,
                    "numba_threads": self.budget.numba,
                },
            },
            frame_age_limit_s=cfg.http.frame_age_limit_s if cfg.http is not None else None,
        )

    def _model_swapped(self, new: Inspector) -> None:
        """After a hot reload: rejects stored from now on, and the status, name the new model."""
        m = new.manifest
        self.feedback.set_model(model_sha256=m.identity, model_name=m.name, pixel_threshold=new.pixel_threshold)
        self.daemon_status.set_model(name=m.name, sha256=m.identity, pixel_threshold=new.pixel_threshold)

    def _serve_http(self, stack: contextlib.ExitStack):
        """/metrics, /healthz, /readyz and the recheck station (`http:`), in a thread of this process."""
        if self.cfg.http is None or self.metrics is None:
            return None
        # imported only when configured: a line PC without `http:` never loads Starlette and uvicorn
        from inspectd.daemon.web import serve
        from inspectd.daemon.web.server import HttpError

        self.metrics.watch(self.daemon_status)
        try:
            http = serve(
                self.cfg.http,
                status=self.daemon_status,
                metrics=self.metrics,
                feedback=self.feedback,
                line=self.cfg.line,
            )
        except ConfigError as exc:
            log.error("http_refused", error=str(exc))
            raise StartupError(str(exc), EXIT_CONFIG) from exc
        except HttpError as exc:
            log.error("http_start_failed", error=str(exc))
            raise StartupError(f"http: {exc}", EXIT_FAILURE) from exc
        stack.callback(http.close)  # registered after feedback: closed before it (no station mark after the marker)
        return http

    def _load_model(self) -> Inspector:
        cache_dir = ensure_numba_cache_dir()
        path = self.cfg.model.path
        try:
            loaded = load_inspector(self.cfg.model, intra_op_threads=self.budget.onnxruntime)
        except ModelError as exc:
            log.error("model_refused", path=str(path), error=str(exc))
            raise StartupError(f"model.path: {exc}", EXIT_CONFIG) from exc
        inspector = loaded.inspector
        m, info = inspector.manifest, inspector.detector.info
        log.info(
            "model_loaded",
            path=str(path),
            name=m.name,
            sha256=m.identity,  # onnx.sha256, or an ensemble's identity (inspectd.core.manifest.Manifest.identity)
            input=list(m.input.shape),
            preprocess=m.preprocess.mode,
            providers_requested=list(info.requested),
            providers_obtained=list(info.obtained),
            on_gpu=info.on_gpu,
        )
        if not info.on_gpu and any(p != "CPUExecutionProvider" for p in info.requested):
            log.warning(
                "gpu_not_used",
                detail="onnxruntime fell back to the CPU; GPU providers were requested but could not be loaded",
                available=list(info.available),
            )
        for member, divide_by in inspector.members:
            log.info(
                "ensemble_member",
                path=str(member.detector.model_dir),
                name=member.manifest.name,
                sha256=member.manifest.onnx.sha256,
                preprocess=member.manifest.preprocess.mode,
                scale=member.manifest.preprocess.scale,
                divide_by=divide_by,
                providers_obtained=list(member.detector.info.obtained),
                on_gpu=member.detector.info.on_gpu,
            )
        log.info(
            "warmed_up",
            ssim_jit_s=round(loaded.jit_s, 3),
            model_s=round(loaded.warm_s, 3),
            numba_cache_dir=cache_dir,
            pixel_threshold=inspector.pixel_threshold,
            min_region_area=inspector.min_region_area,
        )
        return inspector

    def serve(self) -> int:
        """Start the pipeline, report status until it stops, then drain and close; the exit code."""
        cfg, pipeline = self.cfg, self.pipeline
        log.info("camera", trigger=cfg.camera.trigger, rate_hz=cfg.camera.rate_hz, **self.camera.describe())
        pipeline.start()
        if cfg.camera.trigger == "software":
            threading.Thread(target=_stdin_triggers, args=(pipeline,), name="stdin-trigger", daemon=True).start()
        self.notifier.ready(f"running, model {pipeline.inspector.manifest.name}")
        log.info("ready", max_frames=self.max_frames or None)
        self._report_status()
        self.notifier.stopping()
        log.info("stopping", reason=pipeline.stop_reason)
        drained = pipeline.wait(cfg.pipeline.drain_timeout_s)
        gaps = self.dispatcher.flush()
        self.dispatcher.close()
        if self.http is not None:
            self.http.close()  # before the marker closes: no station mark arrives after it
        self.feedback.close()
        if not drained:
            log.error("drain_timeout", detail="frames still in inspection when the drain timeout ran out")
        print(json.dumps(self.dispatcher.summary()), flush=True)
        if pipeline.config_error is not None:  # the camera refused its configuration: restarting cannot help
            print(f"inspectd: {pipeline.config_error}", file=sys.stderr)
            return EXIT_CONFIG
        crashed = pipeline.stop_reason == "acquisition crashed"
        return EXIT_FAILURE if (crashed or gaps or not drained) else EXIT_OK

    def _report_status(self) -> None:
        """The `status` log event and systemd's STATUS= line every status_interval_s, while the pipeline runs."""
        pipeline = self.pipeline
        last_status, last_frames = time.monotonic(), 0
        while not pipeline.stop_event.wait(0.2) and pipeline.running:
            self.daemon_status.tick()  # a (time, frames) sample: the fps of the status, /metrics
            now = time.monotonic()
            if now - last_status < self.cfg.service.status_interval_s:
                continue
            frames = self.dispatcher.emitted
            fps = (frames - last_frames) / (now - last_status)
            last_status, last_frames = now, frames
            state = pipeline.state.name.lower()
            self.notifier.status(f"{fps:.1f} fps, {frames} frames, state {state}")
            link = {"plc_link": self.plc.link_state} if self.plc is not None else {}
            log.info("status", fps=round(fps, 2), frames=frames, queue=pipeline.queue_depth(), state=state, **link)


def _stdin_triggers(pipeline: Pipeline) -> None:
    """Software trigger from standard input: each line is one trigger, optionally carrying an item id."""
    trigger_log = structlog.get_logger("inspectd.trigger")
    for line in sys.stdin:
        text = line.strip()
        try:
            item_id = int(text) if text else 0
        except ValueError:
            trigger_log.warning("bad_trigger_line", line=text[:80], expected="an empty line or an integer item id")
            continue
        if not 0 <= item_id <= 65535:
            trigger_log.warning("bad_trigger_line", line=text[:80], expected="item id 0..65535")
            continue
        pipeline.trigger(item_id)
