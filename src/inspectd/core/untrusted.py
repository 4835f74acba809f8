"""Parsing bytes that come from outside the process: a peer on the network, a client of the control socket, a file
another program may have written. The one rule: whatever the input, the only exception is ValueError, with a reason.

`json.loads` alone breaks that rule: 5 KB of `[` raise RecursionError (not a ValueError), and `NaN`, `Infinity` or
`1e999` are accepted although they are not JSON (RFC 8259) and would be written back as invalid JSON. `loads()`
turns the RecursionError into a ValueError, bounds the depth of what it returns (so that nothing downstream recurses
that deep), refuses non-finite numbers, and bounds the size.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # every message of this project nests 3 levels at most


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        msg = f"number {text[:40]} is out of range for a float (expected a finite number)"
        raise ValueError(msg)
    return value


def _constant(name: str) -> float:
    msg = f"{name} is not valid JSON (expected a finite number)"
    raise ValueError(msg)


def nesting_depth(value: Any) -> int:
    """How deeply lists and dicts nest in a parsed JSON value (0 for a scalar), counted without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return deepest


def loads(data: bytes | bytearray | memoryview | str, *, max_bytes: int = 1 << 20, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON from untrusted input. ValueError (a message naming what was wrong) for anything else: more than
    `max_bytes`, not UTF-8, nested deeper than `max_depth`, NaN/Infinity or a number beyond a float, bad syntax."""
    if len(data) > max_bytes:
        msg = f"{len(data)} bytes of JSON (limit {max_bytes})"
        raise ValueError(msg)
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            msg = f"not UTF-8: {exc}"
            raise ValueError(msg) from None
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_constant)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit (about 1000 levels)
        msg = f"JSON nested deeper than {max_depth} levels"
        raise ValueError(msg) from None
    if nesting_depth(value) > max_depth:  # so that nothing downstream (json.dumps, pydantic) recurses that deep
        msg = f"JSON nested deeper than {max_depth} levels"
        raise ValueError(msg)
    return value


def dumps(value: Any) -> str:
    """Strict JSON out: ValueError rather than writing NaN or Infinity (which no JSON reader accepts)."""
    return json.dumps(value, allow_nan=False)
