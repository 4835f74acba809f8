"""The daemon's answers to requests from outside the frame flow: triggers and false-reject marks.

Sinks that talk to the PLC receive this object through `attach(controls)`; the control socket will use it too.
It only enqueues: nothing here blocks or raises into the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

log = structlog.get_logger("inspectd.controls")


class DaemonControls:
    def __init__(self, pipeline, *, mark_good: Callable[..., None] | None = None) -> None:
        self._pipeline = pipeline
        self._mark_good = mark_good  # the reject store's mark-good path, where one is configured

    def trigger(self, item_id: int, on_taken: Callable[[], None] | None = None) -> None:
        if self._pipeline.cam_cfg.trigger == "free_run":
            log.warning("trigger_ignored", item_id=item_id, reason="camera.trigger is free_run")
            if on_taken is not None:
                on_taken()
            return
        self._pipeline.trigger(item_id, on_taken)

    def false_reject(self, seq: int, *, source: str, on_done: Callable[[str], None] | None = None) -> None:
        """The PLC's register 21: mark the reject with this 16-bit seq good; on_done(outcome) once it is decided."""
        if self._mark_good is None:
            log.warning("false_reject_not_stored", seq=seq, source=source, reason="no reject store configured")
            if on_done is not None:
                on_done("unavailable")
            return
        try:
            self._mark_good(seq, source, on_done)
        except Exception as exc:  # marking promises not to raise; the PLC must still get an answer
            log.error("false_reject_failed", seq=seq, source=source, error=repr(exc))
            if on_done is not None:
                on_done("failed")
