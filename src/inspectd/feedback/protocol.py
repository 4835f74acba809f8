"""The false-reject wire protocol between a line PC's sender (DEALER) and the collector (ROUTER), version 1.

Line PC -> collector, one multipart message per record:

    [b"inspectd.false_reject.v1", meta_json, image_png]

Collector -> line PC, for every record it has stored durably (or had already stored: a duplicate):

    [b"inspectd.ack.v1", record_id]

and for a record it will never accept (malformed; resending cannot help):

    [b"inspectd.nack.v1", record_id (empty when unknown), reason]

A record leaves the line PC's spool only on its ack; a nacked one is moved aside (`spool/refused/`). The record id
is made once, when the reject is stored, so every resend carries the same id and the collector de-duplicates on it.
`meta_json` is a UTF-8 JSON object checked by `RecordMeta` (strict JSON: no NaN or Infinity, nested at most 32
deep); unknown extra fields are kept (newer senders).
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inspectd.core import untrusted
from inspectd.core.imageheader import PNG_MAGIC, ImageHeader, header

RECORD_TAG = b"inspectd.false_reject.v1"
ACK_TAG = b"inspectd.ack.v1"
NACK_TAG = b"inspectd.nack.v1"

MAX_META_BYTES = 64 * 1024
# ids become file names on the collector: a strict alphabet, no path separators, no leading dot
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)

Mark = Literal["good", "bad"]


class RecordMeta(BaseModel):
    """What a false-reject (mark good) or confirmed-defect (mark bad) record says about its image."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(pattern=ID_PATTERN, description="record id, unique and stable across resends")
    mark: Mark = Field(description="good = a false reject (train/good), bad = a confirmed defect")
    line: str = Field(min_length=1, max_length=64, description="the line PC's `line` name")
    camera: str = Field(max_length=256, description="the camera that took the image")
    # an ensemble's records carry its identity (inspectd.core.manifest.Manifest.identity), a sha256 over all its models
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the model.onnx that rejected it")
    model_name: str = Field("", max_length=128)
    seq: int = Field(ge=1, description="the daemon's frame sequence number (per daemon run)")
    plc_seq: int = Field(ge=1, le=65535, description="the seq as the PLC saw it (16-bit, wraps 65535 -> 1)")
    item_id: int = Field(ge=0, le=65535, description="the PLC's item id at trigger time (0 = none)")
    score: float = Field(allow_inf_nan=False, description="the image's anomaly score (finite)")
    time: str = Field(min_length=1, max_length=64, description="when the frame was taken (ISO 8601, UTC)")
    marked_at: str = Field(min_length=1, max_length=64, description="when the operator marked it (ISO 8601, UTC)")
    marked_by: str = Field(min_length=1, max_length=32, description="plc or cli")
    width: int = Field(ge=1, le=65535)
    height: int = Field(ge=1, le=65535)
    channels: Literal[1, 3]


class Refused(ValueError):
    """A message the collector will not store. `record_id` is set when the meta could be read that far."""

    def __init__(self, reason: str, record_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.record_id = record_id


def valid_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


_ID_FIELD = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9._-]{0,127})"')


def _salvage_id(raw: bytes) -> str:
    """The record id of a meta that is not valid JSON (NaN, nested too deep), when it plainly says one."""
    m = _ID_FIELD.search(raw[:MAX_META_BYTES])
    return m.group(1).decode() if m else ""


def encode_record(meta: dict, image_png: bytes) -> list[bytes]:
    return [RECORD_TAG, json.dumps(meta, separators=(",", ":"), sort_keys=True).encode(), image_png]


def png_header(data: bytes) -> ImageHeader:
    """A PNG's IHDR (size, channels, bit depth), without decoding; Refused when it is not a PNG."""
    if not bytes(data[:8]).startswith(PNG_MAGIC):
        raise Refused("image is not a PNG (bad signature or header)")
    try:
        return header(data)
    except ValueError as exc:
        raise Refused(f"image is not a PNG ({exc})") from None


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding; Refused when it is not a PNG."""
    h = png_header(data)
    return h.width, h.height


def check_png(h: ImageHeader, meta: RecordMeta, *, max_pixels: int) -> None:
    """What a record's image must be before anyone decodes it: the size and channels its meta says, 8-bit gray or
    RGB (as the line PC writes it), at most `max_pixels`. Refused otherwise."""
    if h.pixels > max_pixels:
        raise Refused(f"image is {h.width}x{h.height} pixels (limit {max_pixels})", meta.id)
    if (h.width, h.height) != (meta.width, meta.height):
        raise Refused(f"image is {h.width}x{h.height} but meta says {meta.width}x{meta.height}", meta.id)
    if h.bit_depth != 8 or h.channels != meta.channels:
        raise Refused(
            f"image is {h.describe()}; expected 8-bit with {meta.channels} channel(s) as its meta says", meta.id
        )


def parse_record(frames: list[bytes], *, max_image_bytes: int) -> tuple[RecordMeta, bytes]:
    """Check a record message's shape, tag, meta and image size (not the pixels: see the collector).
    Returns (meta, image_png) or raises Refused with a reason a person can act on."""
    if len(frames) != 3:
        raise Refused(f"expected 3 frames [tag, meta_json, image_png], got {len(frames)}")
    tag, raw_meta, image = frames
    if tag != RECORD_TAG:
        raise Refused(f"unknown protocol tag {bytes(tag[:64])!r} (expected {RECORD_TAG!r})")
    if len(raw_meta) > MAX_META_BYTES:
        raise Refused(f"meta_json is {len(raw_meta)} bytes (limit {MAX_META_BYTES})")
    try:
        data = untrusted.loads(raw_meta, max_bytes=MAX_META_BYTES)
    except ValueError as exc:  # the id, if it can be found, so that the sender moves the record aside
        raise Refused(f"meta_json is not valid UTF-8 JSON: {exc}", _salvage_id(bytes(raw_meta))) from exc
    if not isinstance(data, dict):
        raise Refused(f"meta_json must be a JSON object, got {type(data).__name__}")
    rid = data.get("id") if isinstance(data.get("id"), str) and valid_id(data["id"]) else ""
    try:
        meta = RecordMeta.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'meta'}: {e['msg']}" for e in exc.errors()[:5])
        raise Refused(f"meta_json does not match the record schema: {problems}", str(rid or "")) from exc
    if len(image) > max_image_bytes:
        raise Refused(f"image is {len(image)} bytes (limit {max_image_bytes})", meta.id)
    try:
        width, height = png_size(bytes(image[:33]))
    except Refused as exc:
        raise Refused(exc.reason, meta.id) from None
    if (width, height) != (meta.width, meta.height):
        raise Refused(f"image is {width}x{height} but meta says {meta.width}x{meta.height}", meta.id)
    return meta, bytes(image)
