"""The CPU reference backend: runtime and Triton python model."""
