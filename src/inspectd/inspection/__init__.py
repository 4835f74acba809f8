"""Frame -> verdict: preprocess (resize/tile), onnxruntime session, SSIM kernels (Numba), the region rule, the
Inspector. Never imports torch."""
