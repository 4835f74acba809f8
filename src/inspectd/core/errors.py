"""The errors inspectd raises on purpose: each message says what was wrong and what was expected."""

from __future__ import annotations


class InspectdError(Exception):
    """Base class of every error inspectd raises on purpose (the message says what was wrong and what was expected)."""


class ConfigError(InspectdError):
    """The configuration is invalid."""


class ModelError(InspectdError):
    """A model directory (model.onnx + manifest.json) is missing, corrupt or disagrees with its manifest."""


class CameraError(InspectdError):
    """The image source failed (could not open, read failed, lost connection)."""


class EndOfStream(InspectdError):
    """A finite source (a folder without loop, a video file) has no more frames."""


class PlcError(InspectdError):
    """The PLC link could not be set up (port in use, address not on this machine, ...)."""
