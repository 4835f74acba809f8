"""Replays a video file frame by frame through OpenCV (FFmpeg), once or in a loop."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from inspectd.core.errors import CameraError, EndOfStream
from inspectd.core.types import Capture
from inspectd.daemon.cameras.base import CameraConfigBase, ConfigPath, register

_EXPECTED = "expected a video file OpenCV's FFmpeg backend can read, e.g. .mp4/.avi/.mkv"


class VideoCameraConfig(CameraConfigBase):
    """Replays a video file through OpenCV, optionally looping."""

    type: Literal["video"] = "video"
    path: ConfigPath = Field(..., description="video file to replay (anything OpenCV's FFmpeg backend reads)")
    loop: bool = Field(False, description="rewind to the first frame at the end (else the stream ends)")


@register(VideoCameraConfig)
class VideoCamera:
    """A replay source: every frame of the file in order (none skipped), so `live` is False."""

    live = False

    def __init__(self, cfg: VideoCameraConfig) -> None:
        self.cfg = cfg
        self._cap: cv2.VideoCapture | None = None
        self._index = 0  # index in the file of the next frame
        self._info: dict = {}
        # a read that failed mid-file (CameraError, then the pipeline reopens): where to resume, so that the frames
        # already inspected are not replayed; a second failure at the same frame ends the stream there
        self._failed_at: int | None = None
        self._retry_at: int | None = None

    def open(self) -> None:
        self.close()
        path = self.cfg.path
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            msg = f"video {path} {what} ({_EXPECTED})"
            raise CameraError(msg)
        self._cap = self._open_capture()
        cap = self._cap
        if self._failed_at is not None:  # resume after a mid-file failure: skip what was inspected already
            k, self._failed_at = self._failed_at, None
            while self._index < k and cap.grab():
                self._index += 1
            self._retry_at = self._index
        self._info = {
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "fps": round(float(cap.get(cv2.CAP_PROP_FPS)), 3),
            "size": f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}",
        }

    def _open_capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.cfg.path))
        if not cap.isOpened():
            cap.release()
            msg = f"OpenCV cannot open {self.cfg.path} as a video ({_EXPECTED})"
            raise CameraError(msg)
        self._index = 0
        return cap

    def read(self, timeout_s: float) -> Capture:
        if self._cap is None:
            msg = f"video {self.cfg.path} is not open (expected open() before read())"
            raise CameraError(msg)
        ok, frame = self._read()
        if not ok:
            self._at_end()  # raises EndOfStream or CameraError unless it rewound
            ok, frame = self._read()
            if not ok:
                msg = f"video {self.cfg.path} has no frame to loop over (rewound to the start and read nothing)"
                raise CameraError(msg)
        if frame is None:  # cv2 said ok without a frame
            msg = f"video {self.cfg.path}: frame {self._index} decoded to nothing"
            raise CameraError(msg)
        index = self._index
        self._index += 1
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        return Capture(image=np.ascontiguousarray(frame), source=f"{self.cfg.path}#{index}")

    def _read(self) -> tuple[bool, np.ndarray | None]:
        if self._cap is None:
            msg = f"video {self.cfg.path} is not open"
            raise CameraError(msg)
        try:
            ok, frame = self._cap.read()
        except cv2.error as e:
            msg = f"reading frame {self._index} of {self.cfg.path} failed: {e}"
            raise CameraError(msg) from e
        return bool(ok) and frame is not None, frame

    def _at_end(self) -> None:
        """After a failed read: rewind when looping at the real end; EndOfStream; or CameraError mid-file."""
        count = self._info.get("frames", 0)
        if self._retry_at is not None and self._index <= self._retry_at:  # failed again where it failed before
            self._retry_at = None
            count = 0  # the readable part of the file ends here: treat it as the end
            if not self.cfg.loop:
                msg = (
                    f"end of video {self.cfg.path}: unreadable from frame {self._index} on "
                    f"(truncated or corrupt; {self._info.get('frames', 0)} frames announced)"
                )
                raise EndOfStream(msg)
        # FFmpeg's frame count is an estimate for some containers: allow a little slack before calling it a failure
        if count > 0 and count - self._index > max(2, count // 100):
            msg = (
                f"reading frame {self._index} of {self.cfg.path} failed with {count - self._index} of {count} frames "
                "left (expected the file to be readable to its end: truncated or corrupt?)"
            )
            self._failed_at = self._index
            raise CameraError(msg)
        if not self.cfg.loop:
            msg = f"end of video {self.cfg.path} after {self._index} frames"
            raise EndOfStream(msg)
        # reopening rewinds reliably for every container; seeking to frame 0 does not always
        if self._cap is not None:
            self._cap.release()
        self._cap = None
        self._cap = self._open_capture()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> dict:
        return {"type": "video", "path": str(self.cfg.path), "loop": self.cfg.loop, **self._info}
