"""Image sources, one module per `type:`. Importing this package registers them all."""

from daemon.cameras.base import CAMERA_TYPES, CameraConfigBase, build_camera, register

# each import registers its type (keep in alphabetical order)
from daemon.cameras import folder, opencv, synthetic, video  # noqa: E402,F401

__all__ = ["CAMERA_TYPES", "CameraConfigBase", "build_camera", "register"]
