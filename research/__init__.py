"""Experiment probes and measurements, not installed with the package (run them from a checkout)."""
