"""The sender: a thread that moves spool records to the collector over ZeroMQ DEALER -> ROUTER
(inspectd/feedback/protocol.py).

- Up to `in_flight` records are out at once; each waits `ack_timeout_s` for its ack, then is resent after a
  backoff that doubles per attempt (`backoff_initial_s` .. `backoff_max_s`). A record is deleted from the spool
  only when its ack arrives; a nack (the collector refuses it for good) moves it to `spool/refused/`.
- The DEALER is set to ZMQ_IMMEDIATE: while the collector is unreachable nothing is queued inside ZeroMQ (a send
  would block, so the sender backs off and tries later); ZeroMQ reconnects by itself.
- It only touches the spool and its own socket: inspection never waits for it. The spool depth is logged every
  `log_interval_s` (event `spool`) and when the collector becomes reachable or unreachable.
- At shutdown it goes on sending for at most `flush_timeout_s`; what is not acknowledged by then stays in the
  spool and goes out after the next start.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog
import zmq

from inspectd.core.errors import ConfigError
from inspectd.feedback.config import CurveConfig, FeedbackConfig
from inspectd.feedback.protocol import ACK_TAG, NACK_TAG, RECORD_TAG
from inspectd.feedback.spool import Spool, SpoolError

log = structlog.get_logger("inspectd.sender")


@dataclass
class _Try:
    attempts: int = 0
    deadline: float = 0.0  # in flight: when to give up waiting for the ack
    next_at: float = 0.0  # not in flight: not before this
    in_flight: bool = False


@dataclass
class SenderStats:
    sent: int = 0
    resent: int = 0
    acked: int = 0
    refused: int = 0


class Sender:
    def __init__(self, spool: Spool, cfg: FeedbackConfig, *, context: zmq.Context | None = None) -> None:
        self.spool = spool
        self.cfg = cfg
        self.stats = SenderStats()
        self._ctx = context or zmq.Context.instance()
        self._tries: dict[str, _Try] = {}
        self._stop = threading.Event()
        self._flush_deadline: float | None = None
        self._link_backoff = cfg.backoff_initial_s
        self._link_next = 0.0
        self._reachable: bool | None = None
        self._curve = _load_curve(cfg.curve) if cfg.curve is not None else None
        self._thread = threading.Thread(target=self._run, name="feedback-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, flush_timeout_s: float | None = None) -> None:
        """Send what can be sent within the flush timeout, then stop. Unacknowledged records stay spooled."""
        if not self._thread.is_alive():
            return
        timeout = self.cfg.flush_timeout_s if flush_timeout_s is None else flush_timeout_s
        self._flush_deadline = time.monotonic() + timeout
        self._link_next = 0.0  # one more attempt right away
        self._stop.set()
        self._thread.join(timeout + 5.0)

    @property
    def in_flight(self) -> int:
        return sum(1 for t in list(self._tries.values()) if t.in_flight)

    # --- the thread ---------------------------------------------------------------------------------------

    def _socket(self) -> zmq.Socket:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing while the collector is unreachable
        s.setsockopt(zmq.LINGER, 0)  # unacknowledged records are in the spool anyway
        s.setsockopt(zmq.SNDHWM, max(2 * self.cfg.in_flight, 16))
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, int(min(self.cfg.backoff_max_s, 5.0) * 1000))
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        if self._curve is not None:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = self._curve
        s.connect(self.cfg.collector)
        return s

    def _run(self) -> None:
        sock = self._socket()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        last_log = time.monotonic()
        logged_depth = -1
        log.info("sender_started", collector=self.cfg.collector, depth=self.spool.depth)
        try:
            while True:
                now = time.monotonic()
                if self._stop.is_set() and (self.spool.depth == 0 or now >= (self._flush_deadline or 0.0)):
                    break
                for s, _ in poller.poll(50):
                    self._receive(s)
                self._expire(time.monotonic())
                self._send_due(sock, time.monotonic())
                if time.monotonic() - last_log >= self.cfg.log_interval_s:
                    last_log = time.monotonic()
                    if self.spool.depth or logged_depth:  # quiet while there is nothing to send
                        self._log_depth("spool")
                    logged_depth = self.spool.depth
        except Exception:  # the sender must never take the daemon down; records stay spooled
            log.exception("sender_crashed")
        finally:
            self._log_depth("spool_at_stop")
            sock.close(0)

    def _log_depth(self, event: str) -> None:
        log.info(
            event,
            depth=self.spool.depth,
            bytes=self.spool.nbytes,
            in_flight=self.in_flight,
            sent=self.stats.sent,
            resent=self.stats.resent,
            acked=self.stats.acked,
            refused=self.stats.refused,
            collector=self.cfg.collector,
        )

    def _receive(self, sock: zmq.Socket) -> None:
        for _ in range(10_000):  # drain what is there, bounded
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) >= 2 and frames[0] == ACK_TAG:
                rid = frames[1].decode("utf-8", "replace")
                self._tries.pop(rid, None)
                if self.spool.remove(rid):
                    self.stats.acked += 1
                self._set_reachable(True)
            elif len(frames) >= 3 and frames[0] == NACK_TAG:
                rid = frames[1].decode("utf-8", "replace")
                reason = frames[2].decode("utf-8", "replace")
                self._set_reachable(True)
                if rid and rid in self.spool:
                    self._tries.pop(rid, None)
                    self.spool.refuse(rid, reason)
                    self.stats.refused += 1
                    log.error("record_refused_by_collector", id=rid, reason=reason, moved_to="spool/refused")
                else:
                    log.warning("nack_for_unknown_record", id=rid, reason=reason)
            else:
                log.warning("unexpected_reply", frames=len(frames), tag=frames[0][:40].decode("utf-8", "replace"))

    def _expire(self, now: float) -> None:
        for rid, t in self._tries.items():
            if t.in_flight and now >= t.deadline:
                t.in_flight = False
                wait = min(self.cfg.backoff_initial_s * 2 ** (t.attempts - 1), self.cfg.backoff_max_s)
                t.next_at = now + wait
                if t.attempts <= 3 or t.attempts % 10 == 0:
                    log.warning("ack_timeout", id=rid, attempts=t.attempts, resend_in_s=round(wait, 2))

    def _send_due(self, sock: zmq.Socket, now: float) -> None:
        if now < self._link_next:
            return
        busy = self.in_flight
        if busy >= self.cfg.in_flight:
            return
        waiting = self.spool.ids()
        known = set(waiting)
        for rid in [r for r in self._tries if r not in known]:  # removed meanwhile (evicted, acked)
            del self._tries[rid]
        for rid in waiting:
            if busy >= self.cfg.in_flight:
                return
            t = self._tries.setdefault(rid, _Try())
            if t.in_flight or now < t.next_at:
                continue
            try:
                meta, image = self.spool.read(rid)
            except SpoolError as exc:
                if rid in self.spool:
                    log.error("spool_record_unreadable", id=rid, error=str(exc))
                    self.spool.refuse(rid, f"unreadable: {exc}")
                self._tries.pop(rid, None)
                continue
            try:
                sock.send_multipart([RECORD_TAG, meta, image], zmq.NOBLOCK, copy=False)
            except zmq.Again:  # no connection to the collector (IMMEDIATE) or its queue is full
                self._set_reachable(False)
                self._link_next = now + self._link_backoff
                self._link_backoff = min(self._link_backoff * 2, self.cfg.backoff_max_s)
                return
            self._link_backoff = self.cfg.backoff_initial_s
            if t.attempts:
                self.stats.resent += 1
            self.stats.sent += 1
            t.attempts += 1
            t.in_flight = True
            t.deadline = now + self.cfg.ack_timeout_s
            busy += 1

    def _set_reachable(self, up: bool) -> None:
        if up != self._reachable:
            if up:
                log.info("collector_reachable", collector=self.cfg.collector, depth=self.spool.depth)
            else:
                log.warning(
                    "collector_unreachable",
                    collector=self.cfg.collector,
                    depth=self.spool.depth,
                    retry_in_s=round(self._link_backoff, 2),
                )
            self._reachable = up


def _load_curve(cfg: CurveConfig) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) from zmq.auth key files; ConfigError (exit 2) when unusable."""
    import zmq.auth

    try:
        server_public, _ = zmq.auth.load_certificate(cfg.server_public_key)
        public, secret = zmq.auth.load_certificate(cfg.client_secret_key)
    except (OSError, ValueError) as exc:
        msg = f"feedback.curve: cannot read the key files: {exc}"
        raise ConfigError(msg) from exc
    if not secret:
        msg = f"feedback.curve.client_secret_key: {cfg.client_secret_key} holds no secret key (give NAME.key_secret)"
        raise ConfigError(msg)
    return server_public, public, secret
