"""Image sources, one module per `type:`. Importing this package registers them all."""

# each import registers its type (keep in alphabetical order)
from inspectd.daemon.cameras import folder, genicam, opencv, synthetic, video  # noqa: F401
from inspectd.daemon.cameras.base import CAMERA_TYPES, CameraConfigBase, build_camera, register

__all__ = [
    "CAMERA_TYPES",
    "CameraConfigBase",
    "build_camera",
    "folder",
    "opencv",
    "register",
    "synthetic",
    "video",
]
