"""F32, F16 and BF16: one value per "block", multiplied by quant.kernels.gemm_float."""

import numpy as np

from quant.formats.base import Block, Format, QType


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    # as ggml_compute_fp32_to_bf16: quiet NaNs, round to nearest even.
    n = x.view(np.uint32).astype(np.uint64)
    nan = (n & 0x7FFFFFFF) > 0x7F800000
    rounded = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    quiet = ((n & 0xFFFF0000) | (64 << 16)) >> 16
    return np.where(nan, quiet, rounded).astype(np.uint16)


def _bf16(raw: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(raw).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


F32 = Format(QType.F32, Block(1, 4), float_kernel=0,
             dequantize=lambda raw: np.ascontiguousarray(raw).view(np.float32),
             quantize=lambda x: x.view(np.uint8))
F16 = Format(QType.F16, Block(1, 2), float_kernel=1,
             dequantize=lambda raw: np.ascontiguousarray(raw).view(np.float16).astype(np.float32),
             quantize=lambda x: x.astype(np.float16).view(np.uint8))
BF16 = Format(QType.BF16, Block(1, 2), float_kernel=2, dequantize=_bf16,
              quantize=lambda x: _bf16_bits(x).view(np.uint8))
