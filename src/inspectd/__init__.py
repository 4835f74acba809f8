"""inspectd's runtime: camera -> ONNX autoencoder -> Gaussian-SSIM map -> verdict -> PLC. Never imports torch."""

__version__ = "0.1.0"
