"""What every camera config shares, and the registry keyed by the config's `type:`.

A camera module defines `XxxCameraConfig(CameraConfigBase)` with `type: Literal["xxx"]` and a class that
implements inspectd.core.types.Camera, joined by `@register(XxxCameraConfig)`. Config models do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from inspectd.core.schema import BackoffConfig, ConfigPath, StrictModel
from inspectd.core.types import Camera

__all__ = [
    "CAMERA_TYPES",
    "CameraConfigBase",
    "ConfigPath",
    "ReconnectConfig",
    "StrictModel",
    "build_camera",
    "register",
]


class ReconnectConfig(BackoffConfig):
    initial_s: float = Field(0.5, gt=0, le=60, description="first wait before reopening a lost source")
    max_s: float = Field(10.0, gt=0, le=600, description="longest wait between reopen attempts (doubling backoff)")


class CameraConfigBase(StrictModel):
    type: str
    rate_hz: float = Field(
        10.0, ge=0, le=1000, description="free-run acquisition rate; 0 = as fast as the pipeline takes frames"
    )
    trigger: Literal["free_run", "software", "plc"] = Field(
        "free_run",
        description=(
            "free_run: acquire at rate_hz; software: one frame per line on standard input; "
            "plc: one frame per PLC trigger (needs a `plc:` section)"
        ),
    )
    timeout_s: float = Field(2.0, gt=0, le=60, description="a read that takes longer is a camera fault")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)


CameraFactory = Callable[[CameraConfigBase], Camera]

# type name -> (config model, factory)
CAMERA_TYPES: dict[str, tuple[type[CameraConfigBase], CameraFactory]] = {}


def register(config_cls: type[CameraConfigBase]):
    """Class decorator: register a camera implementation under its config's `type` literal."""
    type_name = config_cls.model_fields["type"].default
    if not isinstance(type_name, str):
        msg = f"{config_cls.__name__}.type needs a string default equal to its Literal"
        raise TypeError(msg)

    def deco(cls):
        CAMERA_TYPES[type_name] = (config_cls, cls)
        return cls

    return deco


def build_camera(cfg: CameraConfigBase) -> Camera:
    _, factory = CAMERA_TYPES[cfg.type]
    return factory(cfg)
