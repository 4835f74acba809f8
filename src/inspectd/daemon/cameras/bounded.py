"""Every camera call bounded in time: open, read and close run in a thread of their own, and the acquisition thread
waits for each at most its bound (`camera.open_timeout_s`, `camera.timeout_s`).

A source can block forever where no timeout of its own reaches: a FIFO where an image file should be, a hung
network mount, a driver that stops answering. Waiting on such a call would keep the acquisition thread (and the
PLC's `ready`, `state` and heartbeat) looking healthy while no item is inspected, and make SIGTERM wait too. With
the bound, a call that does not return in time is a CameraError (that item's error verdict, then camera fault:
ready 0, state 2); while the stuck call has not returned, every further call fails at once with a CameraError
saying so, and the pipeline keeps answering triggers with error verdicts. When the stuck call finally returns, its
result is dropped and the camera is closed, so the next open starts clean.

All calls into the camera happen in that one thread, in order (drivers that care which thread calls them do).
The hand-off costs about 55 µs per read on the 2-core development machine (1.4 µs called directly), a fraction of a
percent of a frame.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from inspectd.core.errors import CameraError
from inspectd.core.types import Camera, Capture

log = structlog.get_logger("inspectd.camera")

_CLOSE_TIMEOUT_S = 2.0


@dataclass
class _Call:
    op: str
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False
    started: float = 0.0


class BoundedCamera:
    """Wraps a Camera; implements the same protocol with every call bounded."""

    def __init__(self, inner: Camera, *, read_timeout_s: float, open_timeout_s: float) -> None:
        self.inner = inner
        self.live = inner.live
        self.read_timeout_s = float(read_timeout_s)
        self.open_timeout_s = float(open_timeout_s)
        self._lock = threading.Lock()
        self._busy: _Call | None = None
        self._calls: queue.Queue[_Call | None] = queue.Queue()
        self._shut = False
        self._thread = threading.Thread(target=self._run, name="camera-io", daemon=True)
        self._thread.start()

    @property
    def longest_call_s(self) -> float:
        return max(self.read_timeout_s, self.open_timeout_s, _CLOSE_TIMEOUT_S)

    def open(self) -> None:
        self._call("open", self.inner.open, self.open_timeout_s)

    def read(self, timeout_s: float) -> Capture:
        # the source gets the timeout first (a camera that honours it says why); the bound is a little longer
        return self._call("read", lambda: self.inner.read(timeout_s), timeout_s + 0.25)

    def close(self) -> None:
        with self._lock:
            stuck = self._busy
        if stuck is not None:  # it is closed when the stuck call returns
            log.warning(
                "camera_close_deferred", blocked_in=stuck.op, since_s=round(time.monotonic() - stuck.started, 1)
            )
            return
        try:
            self._call("close", self.inner.close, _CLOSE_TIMEOUT_S)
        except CameraError as exc:
            log.warning("camera_close_failed", error=str(exc))

    def describe(self) -> dict:
        return self.inner.describe()

    def shutdown(self) -> None:
        """End the camera thread (after the last close); a call still stuck keeps it until that call returns."""
        with self._lock:
            self._shut = True
        self._calls.put(None)

    # --- the camera thread --------------------------------------------------------------------------------

    def _call(self, op: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        with self._lock:
            if self._shut:
                msg = f"camera {op}() after the camera was shut down"
                raise CameraError(msg)
            stuck = self._busy
            if stuck is None:
                call = _Call(op, fn, started=time.monotonic())
                self._busy = call
        if stuck is not None:
            msg = (
                f"the camera is still blocked in {stuck.op}() since {time.monotonic() - stuck.started:.1f} s "
                "(a source that does not answer: a FIFO, a hung network mount or driver?)"
            )
            raise CameraError(msg)
        self._calls.put(call)
        if not call.done.wait(timeout_s):
            with self._lock:
                call.abandoned = not call.done.is_set()
            if call.abandoned:
                what = "camera.timeout_s" if op == "read" else "camera.open_timeout_s" if op == "open" else "the bound"
                msg = (
                    f"camera {op}() did not return within {timeout_s:g} s ({what}): the source does not answer "
                    "(a FIFO, a hung network mount or driver?)"
                )
                raise CameraError(msg)
        if call.error is not None:
            raise call.error
        return call.result

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            try:
                call.result = call.fn()
            except BaseException as exc:  # handed to the waiting caller, or logged if it gave up waiting
                call.error = exc
            with self._lock:
                self._busy = None
                call.done.set()
                late = call.abandoned
            if late:
                log.warning(
                    "camera_call_returned_late",
                    op=call.op,
                    after_s=round(time.monotonic() - call.started, 2),
                    error=None if call.error is None else str(call.error),
                )
                try:
                    self.inner.close()  # whatever the late call left open; the pipeline reopens it
                except Exception as exc:
                    log.debug("camera_close_failed", error=repr(exc))
