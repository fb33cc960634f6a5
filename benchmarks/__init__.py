"""Benchmarks: figures, not assertions (``python -m benchmarks``)."""
