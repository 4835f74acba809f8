"""Model hot reload (SIGHUP, the control socket's `reload` op, `inspectd reload`): validate first, then swap.

The config file is read again and its `model:` section taken (path, providers, threshold overrides; the other
sections need a restart, which is logged when they differ): a new `model.path`, or thresholds recalibrated in the
model's manifest.json in place, are what a reload is for. The model directory is loaded into a new Inspector in a
thread of its own, off the frame path, and checked exactly as at start: the manifest, the sha256 of model.onnx,
the graph's names and shapes against the manifest, the SSIM kernels compiled and a warm-up inference with finite
output. It counts as changed when its path, its identity (sha256) or its effective thresholds (pixel threshold,
minimum region area) differ from the running model's; an unchanged one is not swapped. Only a model that passes
all of it is swapped in, at a frame boundary (`Pipeline.swap_inspector`): frames already past preprocessing
finish with the old model, every later frame uses the new one, no frame is lost or inspected twice. Anything that
fails leaves the running model in place (`model_reload_failed` with the reason); `model_reloaded` names the old
and the new sha256.

One reload at a time: a request while one is running waits for it (the control socket) or is merged into it
(SIGHUP).
"""

from __future__ import annotations

import threading
import time

import structlog

from inspectd.core.errors import ConfigError
from inspectd.daemon.config import load_config
from inspectd.inspection.loading import load_inspector

log = structlog.get_logger("inspectd.reload")


class ModelReloader:
    def __init__(self, cfg, pipeline, *, intra_op_threads: int, on_swapped=None, config_path=None) -> None:
        self.cfg = cfg
        self.config_path = config_path  # re-read at each reload (None: the running config's model section)
        self.model = cfg.model  # the model settings in use
        self.pipeline = pipeline
        self.intra_op_threads = intra_op_threads
        self.on_swapped = on_swapped  # called with the new Inspector after a swap (records name the new model)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.failures = 0

    @property
    def current_sha256(self) -> str:
        return self.pipeline.inspector.manifest.identity  # onnx.sha256 unless an ensemble

    def request(self, reason: str = "SIGHUP") -> None:
        """Start a reload in the background (from a signal handler: returns at once)."""
        if self._thread is not None and self._thread.is_alive():
            log.info("model_reload_pending", reason=reason, detail="a reload is already running")
            return
        self._thread = threading.Thread(target=self.reload, args=(reason,), name="model-reload", daemon=True)
        self._thread.start()

    def handle(self, request: dict) -> dict:
        """The control socket's `{"op": "reload"}`: reload now and answer what happened."""
        return self.reload("control socket")

    def reload(self, reason: str) -> dict:
        with self._lock:
            return self._reload(reason)

    def _settings(self):
        """The model section to load: the config file's as it is now."""
        if self.config_path is None:
            return self.cfg.model
        cfg = load_config(self.config_path)  # ConfigError: refused, the running model stays
        ignored = sorted(
            k for k in type(cfg).model_fields if k != "model" and getattr(cfg, k) != getattr(self.cfg, k, None)
        )
        if ignored:
            log.warning(
                "config_changes_need_restart",
                sections=ignored,
                detail="a reload applies the model: section only; restart the daemon for the others",
            )
        return cfg.model

    def _fingerprint(self, settings, inspector) -> tuple:
        return (
            str(settings.path),
            inspector.manifest.identity,
            float(inspector.pixel_threshold),
            int(inspector.min_region_area),
        )

    def _reload(self, reason: str) -> dict:
        old = self.current_sha256
        log.info("model_reload_started", reason=reason, path=str(self.model.path), sha256=old)
        t0 = time.monotonic()
        try:
            settings = self._settings()
        except ConfigError as exc:
            self.failures += 1
            log.error("model_reload_failed", reason=reason, error=str(exc), kept_sha256=old)
            return {
                "ok": False,
                "error": f"model not reloaded, the running model ({old[:12]}) stays: {exc}",
                "kind": "refused",
                "sha256": old,
            }
        path = settings.path
        try:
            new = load_inspector(settings, intra_op_threads=self.intra_op_threads).inspector
        except Exception as exc:  # ModelError, onnxruntime, numba, a half-copied directory: keep the running model
            self.failures += 1
            log.error(
                "model_reload_failed",
                reason=reason,
                path=str(path),
                error=str(exc) or repr(exc),
                kept_sha256=old,
                detail="the running model stays in use",
            )
            return {
                "ok": False,
                "error": f"model not reloaded, the running model ({old[:12]}) stays: {exc}",
                "kind": "refused",
                "sha256": old,
            }
        m = new.manifest
        running = self._fingerprint(self.model, self.pipeline.inspector)
        fresh = self._fingerprint(settings, new)
        if fresh == running:
            log.info("model_reload_unchanged", path=str(path), sha256=old)
            return {"ok": True, "changed": False, "sha256": old, "name": m.name}
        what = [
            k
            for k, a, b in zip(("path", "sha256", "pixel_threshold", "min_region_area"), running, fresh, strict=True)
            if a != b
        ]
        self.pipeline.swap_inspector(new)
        self.model = settings
        self.reloads += 1
        if self.on_swapped is not None:
            try:
                self.on_swapped(new)
            except Exception as exc:  # bookkeeping only: the swap has happened
                log.error("model_reload_bookkeeping_failed", error=repr(exc))
        log.info(
            "model_reloaded",
            reason=reason,
            path=str(path),
            name=m.name,
            sha256=m.identity,
            previous_sha256=old,
            changed=what,
            input=list(m.input.shape),
            pixel_threshold=new.pixel_threshold,
            min_region_area=new.min_region_area,
            seconds=round(time.monotonic() - t0, 3),
        )
        return {
            "ok": True,
            "changed": True,
            "what": what,
            "sha256": m.identity,
            "previous_sha256": old,
            "name": m.name,
            "path": str(path),
            "pixel_threshold": new.pixel_threshold,
            "min_region_area": new.min_region_area,
        }
