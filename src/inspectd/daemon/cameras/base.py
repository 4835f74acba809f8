"""What every camera config shares, and the registry keyed by the config's `type:`.

A camera module defines `XxxCameraConfig(CameraConfigBase)` with `type: Literal["xxx"]` and a class that
implements inspectd.core.types.Camera, joined by `@register(XxxCameraConfig)`. Config models do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from inspectd.core.schema import BackoffConfig, ConfigPath, StrictModel
from inspectd.core.types import Camera

__all__ = [
    "CAMERA_TYPES",
    "CameraConfigBase",
    "ConfigPath",
    "FrameSizeConfig",
    "ReconnectConfig",
    "StrictModel",
    "build_camera",
    "register",
]


class ReconnectConfig(BackoffConfig):
    initial_s: float = Field(0.5, gt=0, le=60, description="first wait before reopening a lost source")
    max_s: float = Field(10.0, gt=0, le=600, description="longest wait between reopen attempts (doubling backoff)")


class FrameSizeConfig(StrictModel):
    """The frame sizes this line takes. A frame outside them is that item's error verdict (a reject): a 1x1 frame
    tells nothing about an item, and a 20000x20000 one costs gigabytes. Image files are checked on their header,
    before they are decoded."""

    min_width: int = Field(16, ge=1, le=65535, description="narrowest frame inspected (pixels)")
    min_height: int = Field(16, ge=1, le=65535, description="lowest frame inspected (pixels)")
    max_width: int = Field(16384, ge=1, le=65535, description="widest frame inspected (pixels)")
    max_height: int = Field(16384, ge=1, le=65535, description="highest frame inspected (pixels)")
    max_megapixels: float = Field(64.0, gt=0, le=4096, description="largest frame inspected (width × height / 10⁶)")

    @model_validator(mode="after")
    def _order(self) -> FrameSizeConfig:
        if self.min_width > self.max_width or self.min_height > self.max_height:
            msg = (
                f"min_width x min_height ({self.min_width}x{self.min_height}) must not exceed max_width x max_height "
                f"({self.max_width}x{self.max_height})"
            )
            raise ValueError(msg)
        return self

    def refusal(self, width: int, height: int) -> str | None:
        """Why a frame of this size is not inspected, or None when it is within the bounds."""
        if (
            self.min_width <= width <= self.max_width
            and self.min_height <= height <= self.max_height
            and width * height <= self.max_megapixels * 1e6
        ):
            return None
        return (
            f"frame {width}x{height} is outside camera.frame_size ({self.min_width}x{self.min_height} to "
            f"{self.max_width}x{self.max_height}, at most {self.max_megapixels:g} megapixels)"
        )


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
    timeout_s: float = Field(
        2.0, gt=0, le=60, description="a read that takes longer is that item's error verdict and a camera fault"
    )
    open_timeout_s: float = Field(
        10.0, gt=0, le=300, description="opening the source that takes longer is a camera fault (retried)"
    )
    frame_size: FrameSizeConfig = Field(
        default_factory=FrameSizeConfig, description="frame sizes inspected; others are error verdicts"
    )
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
