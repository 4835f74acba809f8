"""`inspectd train` arguments for models that train in seconds: the one place tests say what "tiny" is."""

from __future__ import annotations

# a 2-level autoencoder 8 -> 16 channels wide with an 8-channel latent
TINY_NET = ("--base-width", "8", "--max-width", "16", "--latent-channels", "8", "--depth", "2")
# small batches on one thread, no progress lines
QUIET = ("--batch-size", "4", "--threads", "1", "--log-every", "0")
