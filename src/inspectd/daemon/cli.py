"""The daemon's subcommands: `run` and `check-config`.

Exit codes: 0 = clean stop; 2 = bad configuration or model (restarting will not help: the systemd unit does not
restart on 2); 1 = a runtime failure where a restart is the right answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the inspection daemon")
    p.add_argument("--config", default="config.yaml", help="YAML config file (default: ./config.yaml)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N verdicts (0 = run until stopped)")
    p.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and the model it names; exit 0 or 2")
    c.add_argument("--config", default="config.yaml", help="YAML config file (default: ./config.yaml)")
    c.set_defaults(func=cmd_check_config)

    from inspectd.feedback.control import register as register_mark

    register_mark(sub)  # `inspectd mark SEQ --good|--bad`: talks to the running daemon's control socket


def cmd_check_config(args: argparse.Namespace) -> int:
    from inspectd.core.errors import ConfigError
    from inspectd.daemon.config import check_runtime, load_config

    try:
        cfg = load_config(args.config)
        check_runtime(cfg)
    except ConfigError as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: OK (camera {cfg.camera.type}, model {cfg.model.path})")
    return EXIT_OK


def _stdin_triggers(pipeline) -> None:
    """Software trigger from standard input: each line is one trigger, optionally carrying an item id."""
    import structlog

    log = structlog.get_logger("inspectd.trigger")
    for line in sys.stdin:
        text = line.strip()
        try:
            item_id = int(text) if text else 0
        except ValueError:
            log.warning("bad_trigger_line", line=text[:80], expected="an empty line or an integer item id")
            continue
        if not 0 <= item_id <= 65535:
            log.warning("bad_trigger_line", line=text[:80], expected="item id 0..65535")
            continue
        pipeline.trigger(item_id)


def cmd_run(args: argparse.Namespace) -> int:
    from inspectd.core.errors import ConfigError
    from inspectd.daemon.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.max_frames < 0:
        print("inspectd: --max-frames must be >= 0", file=sys.stderr)
        return EXIT_CONFIG

    from inspectd.core import logs

    logs.configure(cfg.logging.level, cfg.logging.format)
    return _run(cfg, Path(args.config), args.max_frames)


def _run(cfg, config_path: Path, max_frames: int) -> int:
    import structlog

    from inspectd import __version__
    from inspectd.core.errors import ModelError
    from inspectd.core.systemd import Notifier, install_signal_handlers
    from inspectd.daemon.cameras import build_camera
    from inspectd.daemon.controls import DaemonControls
    from inspectd.daemon.dispatch import Dispatcher
    from inspectd.daemon.logsink import LogSink
    from inspectd.daemon.pipeline import Pipeline, thread_budget
    from inspectd.inspection import ssim
    from inspectd.inspection._numba_env import ensure_numba_cache_dir
    from inspectd.inspection.detector import Detector
    from inspectd.inspection.inspector import Inspector

    log = structlog.get_logger("inspectd")
    log.info("starting", version=__version__, config=str(config_path.resolve()), line=cfg.line)
    cache_dir = ensure_numba_cache_dir()
    notifier = Notifier()
    threads = cfg.pipeline.threads
    budget = thread_budget(threads.onnxruntime, threads.numba)  # the rule: inspectd.daemon.pipeline.thread_budget
    (log.warning if budget.oversubscribed else log.info)(
        "threads", onnxruntime=budget.onnxruntime, numba=budget.numba, cores=budget.cores
    )

    try:
        detector = Detector(
            cfg.model.path,
            providers=cfg.model.providers,
            require_gpu=cfg.model.require_gpu,
            intra_op_threads=budget.onnxruntime,
        )
    except ModelError as exc:
        log.error("model_refused", path=str(cfg.model.path), error=str(exc))
        print(f"inspectd: model.path: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    m = detector.manifest
    info = detector.info
    log.info(
        "model_loaded",
        path=str(cfg.model.path),
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
    try:  # an ensemble opens its other models here, with the same providers
        inspector = Inspector(
            detector, pixel_threshold=cfg.model.pixel_threshold, min_region_area=cfg.model.min_region_area
        )
    except ModelError as exc:
        log.error("model_refused", path=str(cfg.model.path), error=str(exc))
        print(f"inspectd: model.path: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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
    t_jit = ssim.warmup([inspector.ssim], channels=inspector.preprocessor.channels)
    t_warm = inspector.warmup()
    log.info(
        "warmed_up",
        ssim_jit_s=round(t_jit, 3),
        model_s=round(t_warm, 3),
        numba_cache_dir=cache_dir,
        pixel_threshold=inspector.pixel_threshold,
        min_region_area=inspector.min_region_area,
    )

    camera = build_camera(cfg.camera)
    plc = None
    if cfg.plc is not None:  # the PLC link: started before the pipeline, the first (time-critical) sink
        import atexit

        from inspectd.plc import PlcError, build_plc_sink

        plc = build_plc_sink(cfg.plc)
        try:
            plc.start()
        except PlcError as exc:
            log.error("plc_start_failed", error=str(exc))
            print(f"inspectd: plc: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        atexit.register(plc.close)  # every exit path; the normal one closes it in dispatcher.close() (idempotent)
    import atexit

    from inspectd.core.errors import ConfigError
    from inspectd.feedback.channel import Feedback, camera_name

    try:  # the false-reject channel: reject store, spool + sender, control socket (each where configured)
        feedback = Feedback.open(
            cfg,
            camera=camera_name(camera.describe()),
            model_sha256=m.identity,
            model_name=m.name,
            pixel_threshold=inspector.pixel_threshold,
        )
    except ConfigError as exc:
        log.error("feedback_refused", error=str(exc))
        print(f"inspectd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    atexit.register(feedback.close)  # every exit path; the normal one closes it below (idempotent)
    from inspectd.daemon.metrics import Metrics

    metrics = Metrics() if cfg.http is not None else None
    # the PLC first (time-critical), the metrics histograms last
    dispatcher = Dispatcher(
        [
            *([plc] if plc is not None else []),
            LogSink(cfg.logging.verdicts),
            *feedback.sinks,
            *([metrics.sink] if metrics is not None else []),
        ]
    )
    pipeline = Pipeline(
        camera,
        cfg.camera,
        inspector,
        dispatcher,
        queue_size=cfg.pipeline.queue_size,
        overrun=cfg.pipeline.overrun,
        max_frames=max_frames,
        drain_timeout_s=cfg.pipeline.drain_timeout_s,
        notifier=notifier,
        numba_threads=budget.numba,
    )
    dispatcher.attach(DaemonControls(pipeline, mark_good=feedback.mark_good))
    daemon_status = _daemon_status(cfg, pipeline, dispatcher, camera, plc, feedback, inspector, budget)
    feedback.ops["status"] = daemon_status.control_op  # the control socket's status: the same picture as /metrics
    feedback.start()
    from inspectd.daemon.reload import ModelReloader

    reloader = ModelReloader(
        cfg,
        pipeline,
        intra_op_threads=budget.onnxruntime,
        on_swapped=lambda new: _model_swapped(new, feedback, daemon_status),
    )
    feedback.ops["reload"] = reloader.handle
    install_signal_handlers(lambda name: pipeline.stop(f"signal {name}"), on_reload=reloader.request)
    http = None
    if cfg.http is not None and metrics is not None:  # /metrics, /healthz, /readyz, the station
        from inspectd.daemon.web import serve
        from inspectd.daemon.web.server import HttpError

        metrics.watch(daemon_status)
        try:
            http = serve(cfg.http, status=daemon_status, metrics=metrics, feedback=feedback, line=cfg.line)
        except ConfigError as exc:
            log.error("http_refused", error=str(exc))
            print(f"inspectd: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except HttpError as exc:
            log.error("http_start_failed", error=str(exc))
            print(f"inspectd: http: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        atexit.register(http.close)
    log.info("camera", trigger=cfg.camera.trigger, rate_hz=cfg.camera.rate_hz, **camera.describe())
    pipeline.start()
    if cfg.camera.trigger == "software":
        threading.Thread(target=_stdin_triggers, args=(pipeline,), name="stdin-trigger", daemon=True).start()
    notifier.ready(f"running, model {m.name}")
    log.info("ready", max_frames=max_frames or None)

    last_status = time.monotonic()
    last_frames = 0
    while not pipeline.stop_event.wait(0.2) and pipeline.running:
        daemon_status.tick()
        now = time.monotonic()
        if now - last_status >= cfg.service.status_interval_s:
            frames = dispatcher.emitted
            fps = (frames - last_frames) / (now - last_status)
            last_status, last_frames = now, frames
            status = f"{fps:.1f} fps, {frames} frames, state {pipeline.state.name.lower()}"
            notifier.status(status)
            link = {"plc_link": plc.link_state} if plc is not None else {}
            log.info(
                "status",
                fps=round(fps, 2),
                frames=frames,
                queue=pipeline.queue_depth(),
                state=pipeline.state.name.lower(),
                **link,
            )

    notifier.stopping()
    log.info("stopping", reason=pipeline.stop_reason)
    drained = pipeline.wait(cfg.pipeline.drain_timeout_s)
    gaps = dispatcher.flush()
    dispatcher.close()
    if http is not None:
        http.close()  # before the marker closes: no station mark arrives after it
    feedback.close()  # control socket, queued marks, then the sender's bounded flush
    summary = dispatcher.summary()
    if not drained:
        log.error("drain_timeout", detail="frames still in inspection when the drain timeout ran out")
    print(json.dumps(summary), flush=True)
    notifier.close()
    crashed = pipeline.stop_reason == "acquisition crashed"
    return EXIT_FAILURE if (crashed or gaps or not drained) else EXIT_OK


def _model_swapped(new, feedback, daemon_status) -> None:
    """After a hot reload: rejects stored from now on, and the status, name the new model."""
    m = new.manifest
    feedback.set_model(model_sha256=m.identity, model_name=m.name, pixel_threshold=new.pixel_threshold)
    daemon_status.set_model(name=m.name, sha256=m.identity)


def _daemon_status(cfg, pipeline, dispatcher, camera, plc, feedback, inspector, budget):
    """The one picture of the daemon that the control socket, /metrics, /healthz and /readyz report."""
    import numba
    import onnxruntime

    from inspectd.daemon.status import DaemonStatus

    m, info = inspector.manifest, inspector.detector.info
    return DaemonStatus(
        pipeline=pipeline,
        dispatcher=dispatcher,
        camera=camera.describe(),
        plc=plc,
        plc_mode=cfg.plc.mode if cfg.plc is not None else "server",
        feedback=feedback,
        info={
            "model": {"name": m.name, "sha256": m.identity, "kind": m.kind, "preprocess": m.preprocess.mode},
            "runtime": {
                "onnxruntime": onnxruntime.__version__,
                "providers": ",".join(info.obtained),
                "on_gpu": info.on_gpu,
                "onnxruntime_threads": budget.onnxruntime,
                "numba": numba.__version__,
                "numba_threads": budget.numba,
            },
        },
        frame_age_limit_s=cfg.http.frame_age_limit_s if cfg.http is not None else None,
    )
