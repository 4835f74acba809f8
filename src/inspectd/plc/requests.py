"""What the PLC asks of the daemon, handed to the Controls object (DaemonControls) without blocking the link.

- trigger(item_id, on_taken): forwarded at once (the pipeline only enqueues it); on_taken clears the PLC's trigger
  (coil or register) when the frame has been taken. Without controls the trigger is acknowledged and logged, so
  the PLC is never left waiting.
- false_reject(seq): the 16-bit seq the PLC holds (1..65535, wrapped) is queued and handed to
  controls.false_reject(seq, source="plc") in this worker's thread, because the reject store's mark-good path
  writes to disk. The reject store resolves the wrapped seq to its item; an unknown or expired seq is logged by it,
  never fatal.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("inspectd.plc")

_QUEUE = 64  # false-reject marks waiting for the reject store; an operator cannot get ahead of this


class RequestWorker:
    def __init__(self) -> None:
        self.controls = None  # set by the sink's attach(controls)
        self._queue: queue.Queue[int | None] = queue.Queue(maxsize=_QUEUE)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="plc-requests", daemon=True)
            self._thread.start()

    def trigger(self, item_id: int, on_taken: Callable[[], None]) -> None:
        controls = self.controls
        if controls is None:
            log.warning("plc_trigger_ignored", item_id=item_id, reason="the daemon is not ready for triggers yet")
            on_taken()
            return
        try:
            controls.trigger(item_id, on_taken=on_taken)
        except Exception as exc:  # Controls promise not to raise; if one does, the PLC must not hang
            log.error("plc_trigger_failed", item_id=item_id, error=repr(exc))
            on_taken()

    def false_reject(self, seq: int) -> None:
        log.info("plc_false_reject", seq=seq)
        try:
            self._queue.put_nowait(seq)
        except queue.Full:
            log.error(
                "plc_false_reject_dropped", seq=seq, reason=f"{_QUEUE} marks already waiting for the reject store"
            )

    def _run(self) -> None:
        while True:
            seq = self._queue.get()
            if seq is None:
                return
            controls = self.controls
            if controls is None:
                log.warning("plc_false_reject_ignored", seq=seq, reason="no controls attached")
                continue
            try:
                controls.false_reject(seq, source="plc")
            except Exception as exc:  # unknown or expired seq, disk trouble: logged, never fatal
                log.warning("plc_false_reject_failed", seq=seq, error=repr(exc))

    def close(self, timeout_s: float = 2.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        self._thread = None
