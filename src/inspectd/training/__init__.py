"""Offline tools: PyTorch autoencoder, synthetic defects, training, ONNX export, fine-tuning.

torch's OpenMP worker threads spin-wait between parallel regions by default; on a small shared machine (the 2-core
training PC, colleagues' jobs beside it) that makes 2 threads 10-20x slower than 1. Passive waiting costs nothing
measurable on an idle machine, so it is the default here (set before torch is first imported; an explicit
OMP_WAIT_POLICY wins).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
