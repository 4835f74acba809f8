"""Verdicts leave the pipeline here: in sequence order, exactly once each, to every sink, counted.

Verdicts are made by two threads (the acquisition thread makes ERROR verdicts for overruns and camera faults, the
worker makes the rest), so they can arrive out of order. The dispatcher holds a verdict until every lower seq has
been sent, so the PLC and the logs see items in the order the camera saw them (a PLC tracking items in a FIFO along
the conveyor relies on that). A duplicate seq is a bug: it is logged and dropped, never sent twice.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import structlog

from inspectd.core.types import Code, Sink, Verdict

log = structlog.get_logger("inspectd.dispatch")


@dataclass
class Counters:
    frames: int = 0
    passed: int = 0
    rejected: int = 0
    errors: int = 0
    # truth-known frames (synthetic camera, MVTec folders): [truth][code]
    good_pass: int = 0
    good_reject: int = 0
    defect_pass: int = 0
    defect_reject: int = 0
    truth_error: int = 0


class Dispatcher:
    def __init__(self, sinks: list[Sink], *, latency_window: int = 10_000) -> None:
        self.sinks = list(sinks)
        self.counters = Counters()
        self._lock = threading.Lock()
        self._next_seq = 1
        self._pending: dict[int, Verdict] = {}
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._sink_failures: dict[str, int] = {}

    def emit(self, verdict: Verdict) -> None:
        with self._lock:
            if verdict.seq < self._next_seq or verdict.seq in self._pending:
                log.error("duplicate_verdict_dropped", seq=verdict.seq, code=verdict.code.name.lower())
                return
            self._pending[verdict.seq] = verdict
            while self._next_seq in self._pending:
                self._send(self._pending.pop(self._next_seq))
                self._next_seq += 1

    def flush(self) -> int:
        """Send whatever is still held back (a gap means a seq never got a verdict: logged). Returns gaps."""
        with self._lock:
            gaps = 0
            for seq in sorted(self._pending):
                if seq != self._next_seq:
                    gaps += seq - self._next_seq
                    log.error("verdict_gap", missing_from=self._next_seq, missing_to=seq - 1)
                self._send(self._pending.pop(seq))
                self._next_seq = seq + 1
            return gaps

    @property
    def emitted(self) -> int:
        return self.counters.frames

    def _send(self, verdict: Verdict) -> None:
        now = time.monotonic()
        self._first_t = self._first_t or now
        self._last_t = now
        c = self.counters
        c.frames += 1
        if verdict.code is Code.PASS:
            c.passed += 1
        elif verdict.code is Code.REJECT:
            c.rejected += 1
        else:
            c.errors += 1
        if verdict.truth is not None:
            if verdict.code is Code.ERROR:
                c.truth_error += 1
            elif verdict.truth:
                c.defect_reject += verdict.code is Code.REJECT
                c.defect_pass += verdict.code is Code.PASS
            else:
                c.good_reject += verdict.code is Code.REJECT
                c.good_pass += verdict.code is Code.PASS
        if verdict.code is not Code.ERROR:
            self._latencies.append(verdict.latency_ms)
        for sink in self.sinks:  # time-critical sinks (Modbus) come first in the list
            try:
                sink.emit(verdict)
            except Exception as exc:  # a failing sink must never stop inspection
                n = self._sink_failures.get(sink.name, 0) + 1
                self._sink_failures[sink.name] = n
                if n <= 3 or n % 1000 == 0:
                    log.error("sink_failed", sink=sink.name, seq=verdict.seq, error=repr(exc), failures=n)

    def _hook(self, hook: str, *args) -> None:
        for sink in self.sinks:
            fn = getattr(sink, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as exc:  # a failing sink must never stop inspection
                n = self._sink_failures.get(sink.name, 0) + 1
                self._sink_failures[sink.name] = n
                if n <= 3 or n % 1000 == 0:
                    log.error("sink_failed", sink=sink.name, hook=hook, error=repr(exc), failures=n)

    def broadcast_state(self, state: int) -> None:
        """Tell every sink that has an on_state hook (the PLC link) that the pipeline state changed."""
        self._hook("on_state", state)

    def heartbeat(self) -> None:
        """Called from the inspection worker's loop: proof of life for sinks that publish a heartbeat."""
        self._hook("heartbeat")

    def attach(self, controls) -> None:
        self._hook("attach", controls)

    def summary(self) -> dict:
        with self._lock:
            c = self.counters
            lat = np.asarray(self._latencies, dtype=np.float64)
            span = (self._last_t - self._first_t) if self._first_t is not None and self._last_t is not None else 0.0
            fps = (c.frames - 1) / span if span > 0 and c.frames > 1 else 0.0
            out = {
                "event": "summary",
                "frames": c.frames,
                "pass": c.passed,
                "reject": c.rejected,
                "error": c.errors,
                "fps": round(fps, 2),
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            }
            if c.good_pass + c.good_reject + c.defect_pass + c.defect_reject + c.truth_error:
                out["truth"] = {
                    "good_pass": c.good_pass,
                    "good_reject": c.good_reject,
                    "defect_reject": c.defect_reject,
                    "defect_pass": c.defect_pass,
                    "error": c.truth_error,
                }
            return out

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("sink_close_failed", sink=sink.name, error=repr(exc))
