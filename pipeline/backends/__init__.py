"""Backends: tensorrt, pytorch, reference."""
