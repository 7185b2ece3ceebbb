"""NVFP4 fake quantization on the CPU.

ModelOpt 0.47 computes NVFP4 (e2m1 values, fp8 e4m3 per-16 block scales, fp32 global scale)
fake quantization with CUDA/Triton kernels only and asserts "amax must be a CUDA tensor" on the
CPU. `cpu_nvfp4()` swaps in a pure-torch emulation of the same arithmetic for CPU tensors, so a
calibrated NVFP4 model can be evaluated here; CUDA tensors still take ModelOpt's own kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_MAX = 6.0
E4M3_MAX = 448.0


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest e2m1 value (sign kept, magnitudes clamped to 6)."""
    mag = x.abs().clamp(max=E2M1_MAX)
    mids = (E2M1_GRID[1:] + E2M1_GRID[:-1]) / 2
    idx = torch.bucketize(mag, mids.to(mag.device))
    return torch.sign(x) * E2M1_GRID.to(x.device)[idx]


def nvfp4_fake_quant(x: torch.Tensor, amax: torch.Tensor | None, block_size: int = 16) -> torch.Tensor:
    """Quantize-dequantize x along its last dimension in blocks of `block_size`."""
    shape, dtype = x.shape, x.dtype
    xf = x.float().reshape(-1, shape[-1] // block_size, block_size)
    global_amax = (amax.float().max() if amax is not None else xf.abs().max()).clamp(min=1e-12)
    scale_2 = global_amax / (E2M1_MAX * E4M3_MAX)
    block_amax = xf.abs().amax(dim=-1, keepdim=True)
    block_scale = (block_amax / E2M1_MAX / scale_2).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float() * scale_2
    safe = torch.where(block_scale == 0, torch.ones_like(block_scale), block_scale)
    q = round_e2m1(xf / safe) * block_scale
    return q.reshape(shape).to(dtype)


@contextlib.contextmanager
def cpu_nvfp4() -> Iterator[None]:
    from modelopt.torch.quantization import tensor_quant

    original = tensor_quant.dynamic_block_quantize_op

    def op(inputs: torch.Tensor, block_size: int, amax: Any, num_bits: int, exponent_bits: int,
           scale_num_bits: int, scale_exponent_bits: int) -> torch.Tensor:
        is_nvfp4 = (exponent_bits, num_bits, scale_exponent_bits, scale_num_bits) == (2, 4, 4, 8)
        if is_nvfp4 and not inputs.is_cuda:
            return nvfp4_fake_quant(inputs, amax, block_size)
        return original(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits)

    tensor_quant.dynamic_block_quantize_op = op
    try:
        yield
    finally:
        tensor_quant.dynamic_block_quantize_op = original
