"""trtbuild: recipe -> quantize -> build -> gates -> release -> publish."""

__version__ = "0.1.0"
