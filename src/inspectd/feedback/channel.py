"""The false-reject channel of one daemon, wired from the config (docs/feedback-loop.md):

    verdicts ─► reject store (sink) ◄─ marking ◄─ PLC register 21 (good) / control socket (`inspectd mark`)
                                          │
                                          ▼
                                  spool (fsynced files) ─► sender thread ─► DEALER ══► collector (ROUTER)

Each part is optional: `rejects:` alone keeps rejects on disk; `feedback:` (needs `rejects:`) adds the spool and
the sender, and makes marking possible; `control:` adds the socket for `inspectd mark`.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from inspectd.core.errors import ConfigError
from inspectd.feedback.config import FeedbackSettings
from inspectd.feedback.control import ControlServer
from inspectd.feedback.journal import MarkJournal
from inspectd.feedback.marking import Marker, MarkResult, refused
from inspectd.feedback.rejects import MIB, RejectStore
from inspectd.feedback.sender import Sender
from inspectd.feedback.spool import Spool

log = structlog.get_logger("inspectd.feedback")


def camera_name(description: dict) -> str:
    """A short camera name for records: its type and, where it has one, its device/source/path."""
    where = description.get("source") or description.get("path")
    name = (
        f"{description.get('type', 'camera')}:{where}"
        if where not in (None, "")
        else str(description.get("type", "camera"))
    )
    return name[:200]  # a GStreamer pipeline can be long; the record schema allows 256


class Feedback:
    def __init__(
        self,
        store: RejectStore | None = None,
        spool: Spool | None = None,
        sender: Sender | None = None,
        control_path=None,
        journal: MarkJournal | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.sender = sender
        self.marker = None
        if store is not None and spool is not None:
            self.marker = Marker(store, spool, journal or MarkJournal(spool.dir))
            self.marker.recover()
        self.control = ControlServer(control_path, self.handle) if control_path is not None else None
        # more control-socket ops, e.g. "reload" (inspectd/daemon/reload.py)
        self.ops: dict[str, Callable[[dict], dict]] = {}
        # more fields for {"op": "status"}: the daemon's state, fps, queue depth, PLC link (inspectd/daemon/app.py)
        self.status_extra: Callable[[], dict] | None = None

    @classmethod
    def open(
        cls, cfg: FeedbackSettings, *, camera: str, model_sha256: str, model_name: str = "", pixel_threshold: float
    ) -> Feedback:
        """Build the parts the config asks for; ConfigError (exit 2) when a directory or the socket cannot be had."""
        rejects, feedback, control = (getattr(cfg, k, None) for k in ("rejects", "feedback", "control"))
        if feedback is not None and rejects is None:
            msg = "feedback: needs a rejects: section (marks are made on stored rejects)"
            raise ConfigError(msg)
        store = spool = None
        try:
            if rejects is not None:
                store = RejectStore(
                    rejects,
                    line=cfg.line,
                    camera=camera,
                    model_sha256=model_sha256,
                    model_name=model_name,
                    pixel_threshold=pixel_threshold,
                )
            if feedback is not None:
                if feedback.insecure:
                    log.error(
                        "feedback_insecure",
                        collector=feedback.collector,
                        detail="feedback.insecure: records go to the collector unencrypted and unauthenticated",
                    )
                spool = Spool(
                    feedback.spool_dir,
                    max_records=feedback.spool_max_records,
                    max_bytes=int(feedback.spool_max_mb * MIB),
                )
            sender = Sender(spool, feedback) if spool is not None and feedback is not None else None
            return cls(store, spool, sender, control.socket if control is not None else None)
        except OSError as exc:
            if store is not None:
                store.close()
            msg = f"false-reject channel: {exc}"
            raise ConfigError(msg) from exc

    @property
    def sinks(self) -> list:
        return [self.store] if self.store is not None else []

    @property
    def mark_good(self) -> Callable[..., None] | None:
        """For DaemonControls: the PLC's register 21 (16-bit seq) -> a good mark, queued (never blocks);
        `on_done(outcome)` once it is durable or refused."""
        marker = self.marker
        if marker is None:
            return None

        def submit(plc_seq: int, source: str, on_done: Callable[[str], None] | None = None) -> None:
            marker.submit(plc_seq, source=source, on_done=None if on_done is None else lambda r: on_done(r.outcome))

        return submit

    def mark(
        self, *, mark: str, source: str, seq: int | None = None, plc: int | None = None, reject_id: str | None = None
    ) -> MarkResult:
        """The marking API for every front end (control socket, a recheck-station page): a MarkResult, ok or a
        refusal with its reason (inspectd/feedback/marking.py); `unavailable` when marking is not configured."""
        if self.marker is None:
            missing = "rejects: and feedback: sections" if self.store is None else "feedback: section"
            return refused("unavailable", f"marking is not configured: the daemon's config has no {missing}")
        return self.marker.mark(mark=mark, source=source, seq=seq, plc=plc, reject_id=reject_id)

    def start(self) -> None:
        if self.marker is not None:
            self.marker.start()
        if self.sender is not None:
            self.sender.start()
        if self.control is not None:
            self.control.start()

    def close(self) -> None:
        """Stop taking marks, finish the queued ones, flush the sender (bounded); safe to call twice."""
        if self.control is not None:
            self.control.close()
        if self.marker is not None:
            self.marker.close()
        if self.store is not None:
            self.store.close()
        if self.sender is not None:
            self.sender.close()

    # --- control socket requests --------------------------------------------------------------------------

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        if isinstance(op, str) and op in self.ops:
            return self.ops[op](request)
        if op != "mark":
            known = ", ".join(["mark", "status", *self.ops])
            return {"ok": False, "error": f"unknown op {op!r} (expected one of: {known})", "kind": "invalid"}
        seq, rid, mark = request.get("seq"), request.get("reject_id"), request.get("mark")
        if (seq is None) == (rid is None) or not isinstance(seq if rid is None else rid, int if rid is None else str):
            return {"ok": False, "error": "give an integer seq or a string reject_id", "kind": "invalid"}
        if isinstance(seq, bool) or not isinstance(mark, str):
            return {"ok": False, "error": "give an integer seq and a mark 'good' or 'bad'", "kind": "invalid"}
        return self.mark(mark=mark, source="cli", seq=seq, reject_id=rid).as_dict()

    def set_model(self, *, model_sha256: str, model_name: str, pixel_threshold: float) -> None:
        """After a model hot reload: rejects stored from now on name the new model and its threshold."""
        if self.store is not None:
            self.store.set_model(model_sha256=model_sha256, model_name=model_name, pixel_threshold=pixel_threshold)

    def status(self) -> dict:
        out: dict = {}
        if self.status_extra is not None:
            out.update(self.status_extra())
        if self.store is not None:
            out["rejects"] = self.store.stats()
        if self.spool is not None:
            out["spool"] = {
                "depth": self.spool.depth,
                "bytes": self.spool.nbytes,
                "evicted": self.spool.evicted,
                "oldest_age_s": self.spool.oldest_age_s(),
            }
        if self.sender is not None:
            s = self.sender.stats
            out["sender"] = {
                "in_flight": self.sender.in_flight,
                "sent": s.sent,
                "resent": s.resent,
                "acked": s.acked,
                "refused": s.refused,
            }
        return out
