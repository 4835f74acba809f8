"""An image file's size, channels and bit depth from its header, without decoding a pixel.

A 389 KB PNG can declare 20000 × 20000 pixels (4.6 GB once decoded by OpenCV), a 777 KB one 10000 × 10000 RGBA at
16 bits: whoever decodes bytes from outside reads the header first, checks it against their bounds, and only then
decodes. PNG, JPEG, BMP and TIFF (the formats the folder camera replays and the collector stores) are read here;
`header()` raises ValueError for anything it cannot read, so an unrecognised format is refused, never decoded blind.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels (0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


@dataclass(frozen=True)
class ImageHeader:
    format: str  # png, jpeg, bmp, tiff
    width: int
    height: int
    channels: int  # as stored (PNG: 1 gray, 2 gray+alpha, 3 RGB or palette, 4 RGBA)
    bit_depth: int  # bits per sample

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """What a full decode of every channel at its depth takes (at least one byte per sample)."""
        return self.pixels * self.channels * max(1, (self.bit_depth + 7) // 8)

    def describe(self) -> str:
        return f"{self.width}x{self.height} {self.format.upper()}, {self.channels} channel(s), {self.bit_depth}-bit"


def header(data: bytes | memoryview) -> ImageHeader:
    """The header of a PNG, JPEG, BMP or TIFF file; ValueError when it is none of them or the header is damaged."""
    head = bytes(data[:8])
    if head.startswith(PNG_MAGIC):
        return _png(data)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(data)
    if head.startswith(b"BM"):
        return _bmp(data)
    if head[:4] in (b"II*\0", b"MM\0*"):
        return _tiff(data)
    msg = "unrecognised file format (expected PNG/JPEG/BMP/TIFF)"
    raise ValueError(msg)


def _png(data) -> ImageHeader:
    if len(data) < 33 or bytes(data[12:16]) != b"IHDR":
        msg = "damaged PNG header (no IHDR chunk)"
        raise ValueError(msg)
    width, height, depth, colour = struct.unpack(">IIBB", bytes(data[16:26]))
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        msg = f"damaged PNG header (colour type {colour}, bit depth {depth})"
        raise ValueError(msg)
    return _checked(ImageHeader("png", width, height, _PNG_CHANNELS[colour], depth))


def _jpeg(data) -> ImageHeader:
    raw = bytes(data)
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            msg = f"damaged JPEG header (no marker at byte {i})"
            raise ValueError(msg)
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", raw[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 10 > len(raw) or length < 8:
                break
            depth, height, width, channels = struct.unpack(">BHHB", raw[i + 4 : i + 10])
            return _checked(ImageHeader("jpeg", width, height, channels, depth))
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            break
        i += 2 + length
    msg = "damaged JPEG header (no frame header before the image data)"
    raise ValueError(msg)


def _bmp(data) -> ImageHeader:
    if len(data) < 26:
        msg = "damaged BMP header (too short)"
        raise ValueError(msg)
    (dib,) = struct.unpack("<I", bytes(data[14:18]))
    if dib == 12:  # BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack("<HHHH", bytes(data[18:26]))
    elif dib >= 40 and len(data) >= 30:
        width, height, _, bpp = struct.unpack("<iiHH", bytes(data[18:30]))
        height = abs(height)  # negative: rows stored top-down
    else:
        msg = f"damaged BMP header (info header of {dib} bytes)"
        raise ValueError(msg)
    channels = 4 if bpp == 32 else 3 if bpp in (16, 24) or bpp <= 8 else 0
    if width <= 0 or channels == 0:
        msg = f"damaged BMP header (width {width}, {bpp} bits per pixel)"
        raise ValueError(msg)
    return _checked(ImageHeader("bmp", width, height, channels, 8))


def _tiff(data) -> ImageHeader:
    raw = bytes(data)
    end = "<" if raw[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(end + "I", raw[4:8])
        (count,) = struct.unpack(end + "H", raw[ifd : ifd + 2])
        tags: dict[int, int] = {}
        for k in range(min(count, 512)):
            at = ifd + 2 + 12 * k
            tag, kind, n = struct.unpack(end + "HHI", raw[at : at + 8])
            if tag in (256, 257, 258, 277) and n >= 1:
                if kind == 3:  # SHORT: in the entry itself, or (more than two) at the offset the entry holds
                    where = at + 8 if n <= 2 else struct.unpack(end + "I", raw[at + 8 : at + 12])[0]
                    (tags[tag],) = struct.unpack(end + "H", raw[where : where + 2])
                elif kind == 4 and tag != 258:  # LONG
                    (tags[tag],) = struct.unpack(end + "I", raw[at + 8 : at + 12])
    except struct.error:
        msg = "damaged TIFF header (the first directory is cut off)"
        raise ValueError(msg) from None
    if 256 not in tags or 257 not in tags:
        msg = "damaged TIFF header (no image width or length)"
        raise ValueError(msg)
    depth = tags.get(258, 8) if 0 < tags.get(258, 8) <= 64 else 8
    return _checked(ImageHeader("tiff", tags[256], tags[257], max(1, tags.get(277, 1)), depth))


def _checked(h: ImageHeader) -> ImageHeader:
    if h.width < 1 or h.height < 1 or h.channels < 1:
        msg = f"damaged {h.format.upper()} header ({h.width}x{h.height}, {h.channels} channels)"
        raise ValueError(msg)
    return h
