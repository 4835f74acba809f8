"""GenICam helpers for the genicam camera: writing nodes of a device's node map, and pixel formats -> images.

Nothing here opens a device: `apply_nodes` works on a node map (genicam.genapi.NodeMap, as harvesters hands it
out) and `to_image` on the array of one buffer's image component, so both are the code paths of the camera itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import cv2
import numpy as np

from inspectd.core.errors import ConfigError

# GenApi's EAccessMode values
_ACCESS = {0: "not implemented", 1: "not available", 2: "write-only", 3: "read-only", 4: "read-write"}
_WRITABLE = (2, 4)
_READABLE = (3, 4)

# GenICam PFNC name -> (what the camera delivers, OpenCV conversion to BGR or None for gray/BGR as is)
_BAYER = {  # OpenCV names a Bayer pattern by its second row: GenICam BayerRG (R at the top left) is OpenCV's BG
    "BayerRG": cv2.COLOR_BayerBG2BGR,
    "BayerGR": cv2.COLOR_BayerGB2BGR,
    "BayerGB": cv2.COLOR_BayerGR2BGR,
    "BayerBG": cv2.COLOR_BayerRG2BGR,
}
_COLOUR = {
    "RGB8": (3, cv2.COLOR_RGB2BGR),
    "BGR8": (3, None),
    "RGBa8": (4, cv2.COLOR_RGBA2BGR),
    "BGRa8": (4, cv2.COLOR_BGRA2BGR),
}
_MONO_BITS = {
    "Mono8": 8,
    "Mono10": 10,
    "Mono10Packed": 10,
    "Mono12": 12,
    "Mono12Packed": 12,
    "Mono14": 14,
    "Mono16": 16,
}
_BAYER_BITS = (8, 10, 12, 16)

SUPPORTED_PIXEL_FORMATS = (
    *_MONO_BITS,
    *_COLOUR,
    *(f"{p}{b}" for p in _BAYER for b in _BAYER_BITS),
)


def to_image(pixel_format: str, data: np.ndarray, height: int, width: int) -> np.ndarray:
    """One buffer's pixels (harvesters' `component.data`, unpacked) -> uint8 HxW gray or HxWx3 BGR, a new array
    that does not share the producer's buffer. Raises ValueError for a format it does not know or a size mismatch."""
    arr = np.asarray(data)
    if pixel_format in _MONO_BITS:
        return _to_8bit(_shaped(arr, height, width, 1, pixel_format), _MONO_BITS[pixel_format])
    if pixel_format in _COLOUR:
        channels, code = _COLOUR[pixel_format]
        img = _shaped(arr, height, width, channels, pixel_format)
        return img.copy() if code is None else cv2.cvtColor(img, code)
    pattern, bits = pixel_format[:7], pixel_format[7:]
    if pattern in _BAYER and bits.isdigit() and int(bits) in _BAYER_BITS:
        raw = _to_8bit(_shaped(arr, height, width, 1, pixel_format), int(bits))
        return cv2.cvtColor(raw, _BAYER[pattern])
    msg = f"pixel format {pixel_format!r} is not supported (expected one of {', '.join(SUPPORTED_PIXEL_FORMATS)})"
    raise ValueError(msg)


def _shaped(arr: np.ndarray, height: int, width: int, channels: int, fmt: str) -> np.ndarray:
    want = height * width * channels
    if arr.size != want:
        msg = f"a {fmt} buffer of {width}x{height} needs {want} values, got {arr.size}"
        raise ValueError(msg)
    return arr.reshape((height, width) if channels == 1 else (height, width, channels))


def _to_8bit(img: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8 and img.dtype == np.uint8:
        return img.copy()
    return (img.astype(np.uint16) >> (bits - 8)).astype(np.uint8)


# --- nodes --------------------------------------------------------------------------------------------------------


def node_names(node_map) -> list[str]:
    return sorted(n.node.name for n in node_map.nodes)


def _access(node) -> int:
    return int(node.node.get_access_mode())


def has_writable(node_map, name: str) -> bool:
    return bool(node_map.has_node(name)) and _access(node_map.get_node(name)) in _WRITABLE


def read_value(node_map, name: str):
    """The node's value when it exists and is readable, else None."""
    if not node_map.has_node(name):
        return None
    node = node_map.get_node(name)
    if _access(node) not in _READABLE or not hasattr(node, "value"):
        return None
    try:
        return node.value
    except Exception:  # a value that cannot be read in the device's present state
        return None


def write_node(node_map, name: str, value, *, key: str) -> None:
    """Set one node, or raise ConfigError naming `key` (the config path) and what the device expects."""
    if not node_map.has_node(name):
        close = difflib.get_close_matches(name, node_names(node_map), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        msg = f"{key}: the device has no node {name!r}{hint}; expected a feature of its node map"
        raise ConfigError(msg)
    node = node_map.get_node(name)
    kind = type(node).__name__
    access = _access(node)
    if access not in _WRITABLE:
        msg = f"{key}: node {name!r} is {_ACCESS.get(access, str(access))} on this device, not writable"
        raise ConfigError(msg)
    if kind == "ICommand":
        msg = f"{key}: node {name!r} is a command, not a value to set"
        raise ConfigError(msg)
    if kind == "IEnumeration" and str(value) not in node.symbolics:
        msg = f"{key}: {value!r} is not a value of {name!r} (expected one of {list(node.symbolics)})"
        raise ConfigError(msg)
    try:
        if kind == "IEnumeration":
            node.value = str(value)
        elif kind == "IBoolean":
            node.value = bool(value)
        elif kind == "IInteger":
            node.value = int(value)
        elif kind == "IFloat":
            node.value = float(value)
        else:
            node.value = value
    except Exception as exc:  # genicam's OutOfRange/InvalidArgument/Access exceptions say what was wrong
        limits = ""
        if kind in ("IInteger", "IFloat"):
            limits = f" (the device allows {node.min}..{node.max})"
        first = str(exc).split(" : ")[0]
        msg = f"{key}: cannot set {name!r} to {value!r}{limits}: {first}"
        raise ConfigError(msg) from exc


def apply_nodes(node_map, nodes: Mapping[str, object], *, prefix: str = "camera.nodes") -> dict[str, object]:
    """Write every configured node in order; returns what the device reads back for each."""
    applied: dict[str, object] = {}
    for name, value in nodes.items():
        write_node(node_map, name, value, key=f"{prefix}.{name}")
        applied[name] = read_value(node_map, name)
    return applied
