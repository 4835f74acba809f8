"""An industrial camera through its vendor's GenTL producer (`.cti`): GigE Vision, USB3 Vision, CoaXPress.

harvesters (the GenTL consumer) loads the producer, lists its devices and streams buffers; genicam's GenApi
gives the device's node map, where pixel format, exposure, gain, frame rate and triggers are set (`nodes:`, checked
against the node map at open: an unknown, read-only or out-of-range node is a ConfigError, which stops the daemon
with exit 2 naming the node, since reopening cannot fix it). The extra: `pip install 'inspectd[genicam]'`.

How the trigger modes map onto the device (`camera.trigger`, `trigger_source`):

- free_run: TriggerMode Off; the device streams at `rate_hz` (AcquisitionFrameRate, where writable) and read()
  returns the newest frame (harvesters holds one filled buffer and requeues older ones), as the opencv camera does.
- software / plc with trigger_source Software: TriggerMode On, TriggerSource Software; each trigger drains what is
  queued and executes TriggerSoftware, so each trigger gets the one frame it asked for. A device without
  TriggerSoftware (viky.cti, some simple cameras) streams and each trigger takes the first frame delivered after
  it (`trigger: emulated` in the camera event).
- software / plc with a line (trigger_source Line1, ...): the hardware trigger. TriggerMode On on that line; the PLC
  pulses the line and sets the trigger coil; each trigger takes, in order, the next frame the line triggered
  (every filled buffer is kept). A jump in the frame ids (frames lost in transport) breaks that pairing, so it is a
  camera error, then a reopen.

Every buffer goes back to the producer as soon as its pixels are copied (harvesters' `with fetch()`), also when the
conversion fails. A lost device (fetch fails, no frame within timeout_s) is a CameraError: the pipeline gives the
item an error verdict, closes the camera and reopens it with backoff (the producer is reloaded, so a device that
comes back is found again).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from inspectd.core.errors import CameraError, ConfigError
from inspectd.core.types import Capture
from inspectd.daemon.cameras import genapi
from inspectd.daemon.cameras.base import CameraConfigBase, ConfigPath, register
from inspectd.daemon.cameras.folder import convert

NodeValue = bool | int | float | str
_EXTRA = "pip install 'inspectd[genicam]' (harvesters and genicam)"


class GenICamCameraConfig(CameraConfigBase):
    """An industrial camera through a GenTL producer (.cti) with harvesters; nodes set from the config."""

    type: Literal["genicam"] = "genicam"
    cti: ConfigPath = Field(..., description="the GenTL producer file (.cti) of the camera vendor's SDK")
    serial_number: str | None = Field(None, description="select the device with this serial number")
    user_defined_name: str | None = Field(None, description="select the device with this user-defined name")
    model: str | None = Field(None, description="select the device of this model name")
    pixel_format: str | None = Field(
        None, description="PixelFormat to set, e.g. Mono8, Mono12, BayerRG8, RGB8; unset = the device's own"
    )
    nodes: dict[str, NodeValue] = Field(
        default_factory=dict,
        description="GenICam nodes to set at open, in order, e.g. {ExposureTime: 5000, Gain: 2.0}; checked against "
        "the device's node map (unknown, read-only or out of range: exit 2 naming the node)",
    )
    trigger_source: str = Field(
        "Software",
        min_length=1,
        description="with trigger software or plc: Software (inspectd triggers the device) or the device's input "
        "line, e.g. Line1 (hardware trigger from the PLC)",
    )
    trigger_activation: str | None = Field(None, description="TriggerActivation for a line trigger, e.g. RisingEdge")
    num_buffers: int = Field(8, ge=2, le=256, description="buffers announced to the producer")
    color: Literal["keep", "gray", "bgr"] = Field(
        "keep", description="keep: as the pixel format gives (Mono: gray, colour/Bayer: BGR); gray or bgr: convert"
    )

    @model_validator(mode="after")
    def _line_needs_triggers(self) -> GenICamCameraConfig:
        if self.trigger == "free_run" and self.trigger_source != "Software":
            msg = (
                f"trigger_source {self.trigger_source!r} is a hardware trigger: set camera.trigger to plc (the PLC "
                "sets the trigger coil and pulses the line) or software; free_run streams untriggered"
            )
            raise ValueError(msg)
        return self


def _harvester_class():
    try:
        from harvesters.core import Harvester
    except ImportError as exc:
        msg = f"camera.type genicam needs the genicam extra: {_EXTRA} ({exc})"
        raise ConfigError(msg) from exc
    logging.getLogger("harvesters").setLevel(logging.CRITICAL)  # inspectd reports what fails, as JSON events
    return Harvester


def _timeout_class():
    from genicam.gentl import TimeoutException

    return TimeoutException


@register(GenICamCameraConfig)
class GenICamCamera:
    """A live source: a free-running device cannot wait for a busy pipeline, so `live` is True."""

    live = True

    def __init__(self, cfg: GenICamCameraConfig) -> None:
        self.cfg = cfg
        self._h = None
        self._ia = None
        self._mode = "free_run"  # free_run | software | emulated | line
        self._last_id: int | None = None
        self._info: dict = {}
        self.frames = 0

    # --- open -------------------------------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        harvester = _harvester_class()
        cti = self.cfg.cti
        if not cti.is_file():
            what = "is not a file" if cti.exists() else "does not exist"
            msg = f"camera.cti: GenTL producer {cti} {what} (expected the .cti file of the camera vendor's SDK)"
            raise ConfigError(msg)
        h = harvester()
        self._h = h
        try:
            h.add_file(str(cti))
            h.update()
            index, info = self._select(h.device_info_list)
            try:
                ia = h.create(index)
            except Exception as exc:  # busy (another process has it), access denied, gone again
                msg = f"cannot open GenICam device {_name(info)}: {exc}"
                raise CameraError(msg) from exc
            self._ia = ia
            self._configure(ia.remote_device.node_map, info)
            ia.num_buffers = self.cfg.num_buffers
            ia.num_filled_buffers_to_hold = self.cfg.num_buffers if self._mode == "line" else 1
            ia.start()
        except (CameraError, ConfigError):
            self.close()
            raise
        except Exception as exc:  # the producer's own exceptions: a camera fault to retry
            self.close()
            msg = f"GenTL producer {cti.name}: {type(exc).__name__}: {exc}"
            raise CameraError(msg) from exc
        self._last_id = None

    def _select(self, devices) -> tuple[int, dict]:
        wanted = {
            k: v
            for k, v in (
                ("serial_number", self.cfg.serial_number),
                ("user_defined_name", self.cfg.user_defined_name),
                ("model", self.cfg.model),
            )
            if v is not None
        }
        props = [_props(d) for d in devices]
        found = [(i, p) for i, p in enumerate(props) if all(str(p.get(k)) == v for k, v in wanted.items())]
        listed = "; ".join(_name(p) for p in props) or "none"
        if not found:
            asked = ", ".join(f"{k} {v!r}" for k, v in wanted.items()) or "any device"
            msg = f"no GenICam device matches {asked} on {self.cfg.cti.name} (devices found: {listed})"
            raise CameraError(msg)  # not plugged in yet: retried with backoff
        if len(found) > 1:
            msg = (
                f"{len(found)} GenICam devices match on {self.cfg.cti.name} ({listed}); select one with "
                "camera.serial_number, camera.user_defined_name or camera.model"
            )
            raise ConfigError(msg)
        return found[0]

    def _configure(self, nm, info) -> None:
        cfg = self.cfg
        if cfg.pixel_format is not None:
            genapi.write_node(nm, "PixelFormat", cfg.pixel_format, key="camera.pixel_format")
        fmt = str(genapi.read_value(nm, "PixelFormat"))
        if fmt not in genapi.SUPPORTED_PIXEL_FORMATS:
            msg = (
                f"camera.pixel_format: the device delivers {fmt!r}, which inspectd cannot convert "
                f"(expected one of {', '.join(genapi.SUPPORTED_PIXEL_FORMATS)})"
            )
            raise ConfigError(msg)
        self._mode = self._configure_trigger(nm)
        if cfg.trigger == "free_run" and cfg.rate_hz > 0 and "AcquisitionFrameRate" not in cfg.nodes:
            if genapi.has_writable(nm, "AcquisitionFrameRateEnable"):
                genapi.write_node(nm, "AcquisitionFrameRateEnable", True, key="camera.rate_hz")
            if genapi.has_writable(nm, "AcquisitionFrameRate"):
                genapi.write_node(nm, "AcquisitionFrameRate", cfg.rate_hz, key="camera.rate_hz")
        applied = genapi.apply_nodes(nm, cfg.nodes)
        rate = genapi.read_value(nm, "AcquisitionFrameRate")
        self._info = {
            "device": _name(info),
            "id": "/".join(str(info.get(k)) for k in ("model", "serial_number") if info.get(k)) or "device",
            "pixel_format": fmt,
            "size": f"{genapi.read_value(nm, 'Width')}x{genapi.read_value(nm, 'Height')}",
            "device_frame_rate": None if rate is None else round(float(rate), 3),
            "trigger_mode": self._mode,
            "nodes": applied,
        }

    def _configure_trigger(self, nm) -> str:
        cfg = self.cfg
        has_trigger = nm.has_node("TriggerMode")
        selector = has_trigger and genapi.has_writable(nm, "TriggerSelector")
        if selector and "FrameStart" in nm.get_node("TriggerSelector").symbolics:
            genapi.write_node(nm, "TriggerSelector", "FrameStart", key="camera.trigger")
        if cfg.trigger == "free_run":
            if has_trigger and genapi.has_writable(nm, "TriggerMode"):
                genapi.write_node(nm, "TriggerMode", "Off", key="camera.trigger")
            return "free_run"
        software = cfg.trigger_source == "Software"
        if not has_trigger:
            if software:
                return "emulated"
            msg = f"camera.trigger_source: {cfg.trigger_source!r} needs the device's TriggerMode node, which it lacks"
            raise ConfigError(msg)
        genapi.write_node(nm, "TriggerMode", "On", key="camera.trigger")
        genapi.write_node(nm, "TriggerSource", cfg.trigger_source, key="camera.trigger_source")
        if cfg.trigger_activation is not None:
            genapi.write_node(nm, "TriggerActivation", cfg.trigger_activation, key="camera.trigger_activation")
        if software and not nm.has_node("TriggerSoftware"):
            msg = "camera.trigger_source: Software needs the device's TriggerSoftware command, which it lacks"
            raise ConfigError(msg)
        return "software" if software else "line"

    # --- read -------------------------------------------------------------------------------------------------

    def read(self, timeout_s: float) -> Capture:
        ia = self._ia
        if ia is None:
            msg = f"GenICam camera on {self.cfg.cti.name} is not open (expected open() before read())"
            raise CameraError(msg)
        try:
            if self._mode in ("software", "emulated"):
                self._drain(ia)
                if self._mode == "software":
                    ia.remote_device.node_map.get_node("TriggerSoftware").execute()
            with ia.fetch(timeout=timeout_s) as buffer:  # the buffer is requeued when this block ends, always
                frame_id, image, error = self._copy(buffer)
        except _timeout_class() as exc:
            msg = f"no frame from {self._info.get('device', 'the device')} within {timeout_s:g} s"
            raise CameraError(msg) from exc
        except Exception as exc:  # the device or its connection is gone
            msg = f"lost {self._info.get('device', 'the device')}: {type(exc).__name__}: {exc}"
            raise CameraError(msg) from exc
        self._check_order(frame_id)
        self.frames += 1
        source = f"genicam:{self._info.get('id', '?')}#{frame_id}"
        if image is None:
            return Capture(image=None, source=source, error=error)
        return Capture(image=convert(image, self.cfg.color), source=source)

    @staticmethod
    def _drain(ia) -> None:
        """Give back every buffer already filled: the next one is the frame taken after this call."""
        while True:
            buffer = ia.try_fetch(timeout=1e-4)
            if buffer is None:
                return
            buffer.queue()

    @staticmethod
    def _copy(buffer) -> tuple[int, np.ndarray | None, str | None]:
        """(frame id, converted image or None, why not) of a fetched buffer; never keeps its memory."""
        frame_id = int(buffer.module.frame_id)
        component = buffer.payload.components[0]
        fmt = str(component.data_format)
        try:
            image = genapi.to_image(fmt, component.data, int(component.height), int(component.width))
        except ValueError as exc:
            return frame_id, None, f"frame {frame_id}: {exc} (expected the pixel format checked at open)"
        return frame_id, image, None

    def _check_order(self, frame_id: int) -> None:
        last, self._last_id = self._last_id, frame_id
        if self._mode == "line" and last is not None and frame_id != last + 1:
            msg = (
                f"frame ids jumped from {last} to {frame_id}: {frame_id - last - 1} triggered frames were lost, so "
                "frames can no longer be paired with triggers (expected consecutive ids); reopening"
            )
            raise CameraError(msg)

    # --- close ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        ia, self._ia = self._ia, None
        h, self._h = self._h, None
        for step in (ia, h):
            if step is None:
                continue
            try:
                step.destroy() if step is ia else step.reset()
            except Exception as exc:  # a device that is already gone cannot be closed cleanly
                logging.getLogger("inspectd.genicam").debug("close failed: %r", exc)

    def describe(self) -> dict:
        return {"type": "genicam", "cti": str(self.cfg.cti), "trigger_source": self.cfg.trigger_source, **self._info}


def _props(info) -> dict:
    """A device's identity (harvesters' DeviceInfo.property_dict: None for what the producer does not report)."""
    try:
        return dict(info.property_dict)
    except Exception:  # an older harvesters: read the attributes one by one
        out = {}
        for key in ("vendor", "model", "serial_number", "user_defined_name", "id_"):
            try:
                out[key] = getattr(info, key)
            except Exception:
                out[key] = None
        return out


def _name(info: dict) -> str:
    parts = [info.get("vendor"), info.get("model")]
    serial = info.get("serial_number")
    user = info.get("user_defined_name")
    text = " ".join(str(p) for p in parts if p) or "device"
    text += f" serial {serial}" if serial else ""
    return text + (f" ({user})" if user else "")
