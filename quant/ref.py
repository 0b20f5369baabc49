"""Reference quantizers: plain numpy, bit-exact with ggml's quantize_row_*_ref
(and so with the `gguf` package). The fast kernels are tested against these."""

import numpy as np

from quant.formats import BLOCKS, QType, row_bytes


def _round_half_away(x: np.ndarray) -> np.ndarray:
    # C's roundf(): halves go away from zero (np.round goes to even).
    a = np.abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(2 * (a - floored)))


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    # as ggml_compute_fp32_to_bf16: quiet NaNs, round to nearest even.
    n = x.view(np.uint32).astype(np.uint64)
    nan = (n & 0x7FFFFFFF) > 0x7F800000
    rounded = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    quiet = ((n & 0xFFFF0000) | (64 << 16)) >> 16
    return np.where(nan, quiet, rounded).astype(np.uint16)


def quantize(x: np.ndarray, qtype: QType) -> np.ndarray:
    """(rows, n) float32 -> (rows, row_bytes) uint8 blocks."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.reshape(-1, x.shape[-1]).shape if x.ndim else (1, 1)
    x = x.reshape(rows, n)
    qtype = QType(qtype)
    if qtype == QType.F32:
        return x.view(np.uint8)
    if qtype == QType.F16:
        return x.astype(np.float16).view(np.uint8)
    if qtype == QType.BF16:
        return _bf16_bits(x).view(np.uint8)
    size = BLOCKS[qtype].values
    row_bytes(qtype, n)  # raises when n does not fill whole blocks
    blocks = x.reshape(-1, size)
    if qtype == QType.Q8_0:
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, 0, 1 / d)
        qs = _round_half_away(blocks * inv).astype(np.int8).view(np.uint8)
    elif qtype == QType.Q4_0:
        imax = np.abs(blocks).argmax(axis=1)[:, None]
        d = np.take_along_axis(blocks, imax, axis=1) / -8
        # a tiny d overflows 1/d to inf, as in ggml's C; the bytes still match it exactly
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            inv = np.where(d == 0, 0, 1 / d)
            q = np.trunc(blocks * inv + np.float32(8.5)).astype(np.uint8).clip(0, 15)
        qs = q[:, :16] | (q[:, 16:] << np.uint8(4))
    else:
        raise ValueError(f"no quantizer for {qtype.name}")
    out = np.concatenate([d.astype(np.float16).view(np.uint8), qs], axis=1)
    return out.reshape(rows, -1)


def dequantize(raw: np.ndarray, qtype: QType, n: int) -> np.ndarray:
    """(rows, row_bytes) raw blocks (or their typed view) -> (rows, n) float32."""
    qtype = QType(qtype)
    if qtype == QType.F32:
        return np.asarray(raw).view(np.float32).reshape(-1, n)
    if qtype == QType.F16:
        return np.asarray(raw).view(np.float16).reshape(-1, n).astype(np.float32)
    if qtype == QType.BF16:
        bits = np.asarray(raw).view(np.uint16).reshape(-1, n).astype(np.uint32) << 16
        return bits.view(np.float32)
    raw = np.asarray(raw).view(np.uint8).reshape(-1, row_bytes(qtype, n))
    rows = raw.shape[0]
    blocks = raw.reshape(-1, BLOCKS[qtype].nbytes)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if qtype == QType.Q8_0:
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
    elif qtype == QType.Q4_0:
        qs = blocks[:, 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8
    else:
        raise ValueError(f"no dequantizer for {qtype.name}")
    return (d * q).reshape(rows, n)
