"""What the PLC asks of the daemon, handed to the Controls object (DaemonControls) without blocking the link.

- trigger(item_id, on_taken): forwarded at once (the pipeline only enqueues it); on_taken clears the PLC's trigger
  (coil or register) when the frame has been taken. Without controls the trigger is acknowledged and logged, so
  the PLC is never left waiting.
- false_reject(seq, on_done): the 16-bit seq the PLC holds (1..65535, wrapped) is queued and handed to
  controls.false_reject(seq, source="plc", on_done=...) in this worker's thread (marking writes to disk). on_done
  receives the outcome (a MarkResult outcome: "marked", "already", "unknown", "conflict", "failed", "busy",
  "unavailable", ...) once the mark is durable or refused: only then does the PLC link clear its register and
  publish the result (book.FALSE_REJECT_RESULTS), so a mark is never dropped without the PLC seeing it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("inspectd.plc")

_QUEUE = 64  # false-reject marks waiting for the reject store; an operator cannot get ahead of this


def _answer(on_done: Callable[[str], None], outcome: str) -> None:
    try:
        on_done(outcome)
    except Exception as exc:
        log.error("plc_false_reject_answer_failed", error=repr(exc))


class RequestWorker:
    def __init__(self) -> None:
        self.controls = None  # set by the sink's attach(controls)
        self._queue: queue.Queue[tuple[int, Callable[[str], None]] | None] = queue.Queue(maxsize=_QUEUE)
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

    def false_reject(self, seq: int, on_done: Callable[[str], None]) -> None:
        log.info("plc_false_reject", seq=seq)
        try:
            self._queue.put_nowait((seq, on_done))
        except queue.Full:
            log.error(
                "plc_false_reject_refused", seq=seq, reason=f"{_QUEUE} marks already waiting for the reject store"
            )
            _answer(on_done, "busy")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            seq, on_done = item
            controls = self.controls
            if controls is None:
                log.warning("plc_false_reject_ignored", seq=seq, reason="no controls attached")
                _answer(on_done, "unavailable")
                continue
            try:
                controls.false_reject(seq, source="plc", on_done=on_done)
            except Exception as exc:  # Controls promise not to raise; if one does, the PLC must still get an answer
                log.error("plc_false_reject_failed", seq=seq, error=repr(exc))
                _answer(on_done, "failed")

    def close(self, timeout_s: float = 2.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        self._thread = None
