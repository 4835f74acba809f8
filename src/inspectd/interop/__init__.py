"""Bringing models made elsewhere into inspectd model directories (offline tools; need the `onnx` package)."""
