"""The daemon's answers to requests from outside the frame flow: triggers and false-reject marks.

Sinks that talk to the PLC receive this object through `attach(controls)`; the control socket will use it too.
It only enqueues: nothing here blocks or raises into the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

log = structlog.get_logger("inspectd.controls")


class DaemonControls:
    def __init__(self, pipeline, *, mark_good: Callable[[int, str], None] | None = None) -> None:
        self._pipeline = pipeline
        self._mark_good = mark_good  # the reject store's mark-good path, where one is configured

    def trigger(self, item_id: int, on_taken: Callable[[], None] | None = None) -> None:
        if self._pipeline.cam_cfg.trigger == "free_run":
            log.warning("trigger_ignored", item_id=item_id, reason="camera.trigger is free_run")
            if on_taken is not None:
                on_taken()
            return
        self._pipeline.trigger(item_id, on_taken)

    def false_reject(self, seq: int, *, source: str) -> None:
        if self._mark_good is None:
            log.warning("false_reject_not_stored", seq=seq, source=source, reason="no reject store configured")
            return
        try:
            self._mark_good(seq, source)
        except Exception as exc:  # unknown or expired seq, disk trouble: logged, never fatal
            log.warning("false_reject_failed", seq=seq, source=source, error=str(exc))
