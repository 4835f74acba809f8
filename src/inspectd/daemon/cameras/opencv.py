"""A live camera through cv2.VideoCapture: a device index, an RTSP/HTTP URL or a GStreamer pipeline.

cv2's read() blocks with no timeout, so a grabber thread reads continuously and keeps only the newest frame;
read(timeout_s) waits for a frame newer than the last one it returned. A live camera cannot wait for a busy
pipeline: frames that arrive while nobody reads are replaced by newer ones (the pipeline counts what it misses
through the frame numbers in `source`). The grabber thread owns the capture once started and releases it when it
ends, so close() never releases a capture that a blocked read() is still using.
"""

from __future__ import annotations

import re
import threading
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from inspectd.core.errors import CameraError
from inspectd.core.types import Capture
from inspectd.daemon.cameras.base import CameraConfigBase, register

_BACKENDS = {"any": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER, "ffmpeg": cv2.CAP_FFMPEG}
_OPEN_TIMEOUT_MS = 10_000  # network streams: give up connecting after this (FFmpeg backend)
_JOIN_S = 2.0  # close(): how long to wait for the grabber thread

_USERINFO = re.compile(r"(://[^/@\s:]*):[^/@\s]*@")
_PASSWORD_PROP = re.compile(r"((?:user-pw|passwd|password)\s*=\s*)(\"[^\"]*\"|\S+)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Hide passwords in URLs (rtsp://user:***@host) and GStreamer properties (user-pw=***)."""
    return _PASSWORD_PROP.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


class OpenCVCameraConfig(CameraConfigBase):
    """A live camera through `cv2.VideoCapture`: device index, device path, RTSP/HTTP URL or GStreamer pipeline."""

    type: Literal["opencv"] = "opencv"
    source: Annotated[int, Field(ge=0, le=1023)] | Annotated[str, Field(min_length=1)] = Field(
        ..., description="device index (0 = /dev/video0), device path, RTSP/HTTP URL, or a GStreamer pipeline"
    )
    backend: Literal["any", "v4l2", "gstreamer", "ffmpeg"] = Field(
        "any", description="OpenCV capture backend; 'any' lets OpenCV choose"
    )
    width: int | None = Field(None, ge=16, le=16384, description="requested frame width; unset = the camera's own")
    height: int | None = Field(None, ge=16, le=16384, description="requested frame height; unset = the camera's own")
    fps: float | None = Field(None, gt=0, le=1000, description="requested frame rate; unset = the camera's own")
    buffer_size: int = Field(
        1, ge=1, le=64, description="frames the driver may queue (1 = always the newest; not every backend obeys)"
    )

    @field_validator("source")
    @classmethod
    def _digits_are_a_device(cls, v: int | str) -> int | str:
        return int(v) if isinstance(v, str) and v.strip().isdigit() else v


@register(OpenCVCameraConfig)
class OpenCVCamera:
    """A live source: the newest frame wins, so `live` is True."""

    live = True

    def __init__(self, cfg: OpenCVCameraConfig) -> None:
        self.cfg = cfg
        self.name = mask_secrets(str(cfg.source))
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._count = 0  # frames grabbed since open()
        self._returned = 0  # the count of the frame read() returned last
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info: dict = {}

    def open(self) -> None:
        self.close()
        cap = self._open_capture()
        with self._cond:
            self._frame, self._count, self._returned, self._error = None, 0, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._grab, args=(cap, self._stop), name=f"grab-{self.name}"[:40], daemon=True
        )
        self._thread.start()

    def _open_capture(self) -> cv2.VideoCapture:
        src, api = self.cfg.source, _BACKENDS[self.cfg.backend]
        network = isinstance(src, str) and "://" in src and self.cfg.backend in ("any", "ffmpeg")
        try:
            if network:
                cap = cv2.VideoCapture(src, api, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _OPEN_TIMEOUT_MS])
            else:
                cap = cv2.VideoCapture(src, api)
        except cv2.error as e:
            msg = f"OpenCV cannot open camera {self.name} (backend {self.cfg.backend}): {e}"
            raise CameraError(msg) from e
        if not cap.isOpened():
            cap.release()
            msg = (
                f"OpenCV cannot open camera {self.name} with backend {self.cfg.backend} "
                "(expected a connected device index or path, a reachable RTSP/HTTP URL, or a valid GStreamer pipeline)"
            )
            raise CameraError(msg)
        for prop, value in (
            (cv2.CAP_PROP_BUFFERSIZE, self.cfg.buffer_size),
            (cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
            (cv2.CAP_PROP_FPS, self.cfg.fps),
        ):
            if value is not None:
                cap.set(prop, float(value))  # a request: drivers may pick the nearest mode or ignore it
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._info = {"size": f"{w}x{h}", "fps": round(float(cap.get(cv2.CAP_PROP_FPS)), 3)}
        return cap

    def _grab(self, cap: cv2.VideoCapture, stop: threading.Event) -> None:
        """Grabber thread: read until stopped or the source fails; keep the newest frame; release the capture."""
        try:
            while not stop.is_set():
                try:
                    ok, frame = cap.read()
                    why = "read failed (stream ended, device unplugged or connection dropped)"
                except cv2.error as e:
                    ok, frame, why = False, None, f"read failed: {e}"
                if ok and frame is not None and frame.ndim == 3 and frame.shape[2] == 1:
                    frame = frame[:, :, 0]
                with self._cond:
                    if stop.is_set():  # closed while the driver read: this thread's session is over
                        return
                    if not ok or frame is None:
                        self._error = mask_secrets(f"lost {self.name}: {why}")
                        self._cond.notify_all()
                        return
                    self._frame = np.ascontiguousarray(frame)
                    self._count += 1
                    self._cond.notify_all()
        finally:
            cap.release()

    def read(self, timeout_s: float) -> Capture:
        with self._cond:
            if self._thread is None:
                msg = f"camera {self.name} is not open (expected open() before read())"
                raise CameraError(msg)
            self._cond.wait_for(
                lambda: self._count > self._returned or self._error is not None or self._thread is None, timeout_s
            )
            if self._count > self._returned:  # a frame not yet returned wins over a later failure
                self._returned = self._count
                return Capture(image=self._frame, source=f"{self.name}#{self._count}")
            if self._error is not None:
                raise CameraError(self._error)
            if self._thread is None:
                msg = f"camera {self.name} was closed while read() waited for a frame"
                raise CameraError(msg)
            msg = f"no frame from {self.name} within {timeout_s:g} s"
            raise CameraError(msg)

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # a read() blocked in the driver cannot be interrupted; the thread releases the capture when it returns
        thread.join(_JOIN_S)

    def describe(self) -> dict:
        return {"type": "opencv", "source": self.name, "backend": self.cfg.backend, **self._info}
