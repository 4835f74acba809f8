"""The collector's ROUTER loop: receive, validate, store (fsync), then acknowledge.

Every message is checked before anything is written: frame count, protocol tag, meta JSON against the record
schema (inspectd/feedback/protocol.py: strict JSON, finite numbers, nested at most 32 deep), image size in bytes,
the PNG header (size, 8-bit gray or RGB as the meta says, pixel count) before a single pixel is decoded, then a full
decode with OpenCV. With CURVE, a record must name the line whose key it came with. A record whose id is stored
already is acknowledged again (a resend) if it carries the same mark, and refused if it carries the other one.
A message that fails is refused: a nack `[b"inspectd.nack.v1", id, reason]` goes back (the sender moves that record
aside instead of resending it forever), a warning is logged, and the loop goes on. ZeroMQ itself disconnects a peer
that sends a frame beyond `max_image_bytes` + 1 MiB (ZMQ_MAXMSGSIZE), so
no such frame is ever held in memory.

Messages are handled in batches (whatever has arrived, up to 256): the new records of a batch are stored with one
metadata append and one fsync per directory, then all their acks go out. A duplicate (an id already stored, a
resend after a lost ack) is acknowledged again and not written twice. When storing fails (disk full), no ack is
sent, the failure is logged, and the senders resend later.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import structlog
import zmq

from inspectd.collector.dataset import Dataset
from inspectd.feedback.protocol import (
    ACK_TAG,
    MAX_META_BYTES,
    NACK_TAG,
    RecordMeta,
    Refused,
    check_png,
    parse_record,
    png_header,
)

log = structlog.get_logger("inspectd.collect")

BATCH = 256


class Collector:
    def __init__(
        self,
        bind: str,
        dataset: Dataset,
        *,
        max_image_bytes: int = 64 * 1024 * 1024,
        max_pixels: int = 100_000_000,
        context: zmq.Context | None = None,
        curve_keypair: tuple[bytes, bytes] | None = None,
        line_keys: dict[str, str] | None = None,
    ) -> None:
        self.dataset = dataset
        self.line_keys = line_keys  # CURVE: client public key (z85) -> the only line name it may send records for
        self.max_image_bytes = max_image_bytes
        self.max_pixels = max_pixels
        self.stored = self.duplicates = self.refused = self.store_failures = 0
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_image_bytes + MAX_META_BYTES + 1024 * 1024)
        self.sock.setsockopt(zmq.RCVHWM, 512)
        self.sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self.sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        if curve_keypair is not None:  # CURVE: encrypted, and only clients the authenticator allows get through
            self.sock.curve_publickey, self.sock.curve_secretkey = curve_keypair
            self.sock.curve_server = True
        self.sock.bind(bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        self.sock.close()

    def serve(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not stop.is_set():
            if not poller.poll(200):
                continue
            batch, senders = [], []
            for _ in range(BATCH):
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                batch.append([f.bytes for f in frames])
                senders.append(_user_id(frames[-1]))
            if batch:
                self.handle(batch, senders)

    # --- one batch ----------------------------------------------------------------------------------------

    def handle(self, messages: list[list[bytes]], senders: list[str | None] | None = None) -> None:
        """One batch of messages; senders[i] is message i's CURVE client key (z85), None without CURVE."""
        replies: list[list[bytes]] = []
        new: dict[str, tuple[RecordMeta, bytes]] = {}
        acks: list[tuple[bytes, str]] = []
        for i, frames in enumerate(messages):
            peer, body = frames[0], frames[1:]
            try:
                meta, image = self._check(body)
                self._check_sender(meta, senders[i] if senders else None)
                stored = self.dataset.mark_of(meta.id) or (new[meta.id][0].mark if meta.id in new else None)
                if stored is not None and stored != meta.mark:
                    raise Refused(
                        f"record {meta.id} was stored as {stored}; a conflicting {meta.mark} mark is refused "
                        "(the line PC refuses it too; correct the collected data by hand)",
                        meta.id,
                    )
            except Refused as exc:
                self._refuse(peer, exc, replies)
                continue
            if stored is not None:
                self.duplicates += 1
                log.info("duplicate", id=meta.id, detail="already stored; acknowledged again")
            else:
                new[meta.id] = (meta, image)
            acks.append((peer, meta.id))
        try:
            self.dataset.store(list(new.values()))
        except OSError as exc:
            self.store_failures += 1
            log.error(
                "store_failed",
                error=str(exc),
                records=len(new),
                detail="no acks sent; the line PCs keep the records and resend them",
            )
            acks = []
            time.sleep(min(0.2 * self.store_failures, 2.0))  # do not spin on a full disk
        else:
            if new:
                self.store_failures = 0
            for meta, _ in new.values():
                self.stored += 1
                log.info(
                    "stored",
                    id=meta.id,
                    mark=meta.mark,
                    line=meta.line,
                    seq=meta.seq,
                    item_id=meta.item_id,
                    score=meta.score,
                    file=str(self.dataset.relpath(meta)),
                )
        replies += [[peer, ACK_TAG, rid.encode()] for peer, rid in acks]
        for reply in replies:
            try:
                self.sock.send_multipart(reply, zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # peer gone or its queue full: it will resend
                log.warning("reply_not_sent", error=str(exc))

    def _check_sender(self, meta: RecordMeta, sender: str | None) -> None:
        """With CURVE, a line PC's key speaks for its own line only (its file in --curve-allowed-clients is
        <line>.key): a record naming another line is refused."""
        if self.line_keys is None:
            return
        line = self.line_keys.get(sender or "")
        if line != meta.line:
            raise Refused(
                f"record says line {meta.line!r} but was sent with the key of line {line!r} (a line PC may only "
                f"send its own records; its key file in the allowed-clients directory must be {meta.line}.key)",
                meta.id,
            )

    def _check(self, body: list[bytes]) -> tuple[RecordMeta, bytes]:
        meta, image = parse_record(body, max_image_bytes=self.max_image_bytes)
        check_png(png_header(image), meta, max_pixels=self.max_pixels)  # before a single pixel is decoded
        decoded = cv2.imdecode(np.frombuffer(image, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise Refused("image does not decode as a PNG (corrupt data)", meta.id)
        channels = 1 if decoded.ndim == 2 else decoded.shape[2]
        if decoded.shape[:2] != (meta.height, meta.width) or channels != meta.channels:
            raise Refused(
                f"decoded image is {decoded.shape} but meta says {meta.height}x{meta.width}x{meta.channels}", meta.id
            )
        return meta, image

    def _refuse(self, peer: bytes, exc: Refused, replies: list) -> None:
        self.refused += 1
        if self.refused <= 20 or self.refused % 100 == 0:
            log.warning("refused", reason=exc.reason, id=exc.record_id or None, refused=self.refused)
        replies.append([peer, NACK_TAG, exc.record_id.encode(), exc.reason.encode()[:1000]])

    def stats(self) -> dict:
        return {
            "records": len(self.dataset),
            "stored": self.stored,
            "duplicates": self.duplicates,
            "refused": self.refused,
            "store_failures": self.store_failures,
        }


def _user_id(frame: zmq.Frame) -> str | None:
    """The ZAP user id of a message (the client's CURVE public key, z85), None without CURVE."""
    try:
        value = frame.get("User-Id")
    except (zmq.ZMQError, KeyError, ValueError):
        return None
    return value if isinstance(value, str) else None
