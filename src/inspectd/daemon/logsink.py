"""One structured log event per verdict (errors always; passes/rejects as configured)."""

from __future__ import annotations

import structlog

from inspectd.core.types import Code, Verdict

log = structlog.get_logger("inspectd.verdict")


class LogSink:
    name = "log"

    def __init__(self, which: str = "all") -> None:
        if which not in ("all", "rejects", "none"):
            msg = f"log sink: verdicts must be all, rejects or none, got {which!r}"
            raise ValueError(msg)
        self.which = which

    def emit(self, verdict: Verdict) -> None:
        if verdict.code is Code.ERROR:
            log.warning("verdict", **verdict.as_log())
        elif self.which == "all" or (self.which == "rejects" and verdict.code is Code.REJECT):
            log.info("verdict", **verdict.as_log())

    def close(self) -> None:
        pass
