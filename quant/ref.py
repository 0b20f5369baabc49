"""Reference quantizers: plain numpy, bit-exact with ggml's quantize_row_*_ref
(and so with the `gguf` package). The fast kernels are tested against these."""

import numpy as np

from quant.formats import ACTIVATIONS, BLOCKS, IQ4_NL_LEVELS, Activations, QType, row_bytes


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
    elif qtype in (QType.Q4_0, QType.Q5_0):
        half = 8 if qtype == QType.Q4_0 else 16  # the offset: values are q - half
        imax = np.abs(blocks).argmax(axis=1)[:, None]
        d = np.take_along_axis(blocks, imax, axis=1) / -half
        # a tiny d overflows 1/d to inf, as in ggml's C; the bytes still match it exactly
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            inv = np.where(d == 0, 0, 1 / d)
            q = np.trunc(blocks * inv + np.float32(half + 0.5)).astype(np.uint8).clip(0, 2 * half - 1)
        qs = (q[:, :16] & np.uint8(0x0F)) | ((q[:, 16:] & np.uint8(0x0F)) << np.uint8(4))
        if qtype == QType.Q5_0:  # the fifth bits, bit j of a little-endian uint32 for value j
            qs = np.concatenate([np.packbits(q >> np.uint8(4), axis=1, bitorder="little"), qs], axis=1)
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
    if qtype in _SUPER_DEQUANTIZERS:
        return _SUPER_DEQUANTIZERS[qtype](blocks).reshape(rows, n)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if qtype == QType.Q8_0:
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
    elif qtype == QType.Q4_0:
        q = _nibble_values(blocks[:, 2:]).astype(np.float32) - 8
    elif qtype == QType.Q5_0:
        q = _fifth_bit_values(blocks[:, 2:6], blocks[:, 6:]).astype(np.float32) - 16
    elif qtype == QType.IQ4_NL:
        q = IQ4_NL_VALUES[_nibble_values(blocks[:, 2:])]
    elif qtype == QType.Q4_1:  # d * q + m, as ggml's dequantize_row_q4_1
        return (d * _nibble_values(blocks[:, 4:]).astype(np.float32) + _f16(blocks[:, 2:4])).reshape(rows, n)
    elif qtype == QType.Q5_1:
        q = _fifth_bit_values(blocks[:, 4:8], blocks[:, 8:]).astype(np.float32)
        return (d * q + _f16(blocks[:, 2:4])).reshape(rows, n)
    else:
        raise ValueError(f"no dequantizer for {qtype.name}")
    return (d * q).reshape(rows, n)


IQ4_NL_VALUES = np.array(IQ4_NL_LEVELS, dtype=np.float32)


def _nibble_values(qs: np.ndarray) -> np.ndarray:
    """(blocks, 16) bytes -> (blocks, 32) 4-bit values: value j in byte j's low nibble, j + 16 in its high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _fifth_bit_values(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """(blocks, 4) fifth bits (bit j of a little-endian u32 for value j) and (blocks, 16) nibbles -> 5-bit values."""
    return _nibble_values(qs) | (np.unpackbits(qh, axis=1, bitorder="little") << 4)


def _f16(b: np.ndarray) -> np.ndarray:
    """(blocks, 2) bytes -> (blocks, 1) float32."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def q4_k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blocks, 12) packed bytes -> (blocks, 8) scales and mins, as ggml's get_scale_min_k4:
    sub-blocks 0-3 take 6 bits of bytes 0-3 and 4-7; 4-7 take a nibble of bytes 8-11
    plus the top 2 bits of bytes 0-3 (scale) and 4-7 (min)."""
    s = scales.astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    # ggml's dequantize_row_q4_K
    return _scaled_less_mins(blocks, _sub_block_nibbles(blocks[:, 16:]))


def _sub_block_nibbles(qs: np.ndarray) -> np.ndarray:
    """(blocks, 128) bytes -> (blocks, 8, 32) 4-bit values by sub-block: per 64 values, 32
    bytes, their low nibbles sub-block 2p and their high nibbles sub-block 2p + 1 (Q4_K, Q5_K)."""
    qs = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)


def _scaled_less_mins(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
    """d * scale * q - dmin * min per sub-block of 32, from the d, dmin and 12 packed scale
    bytes that open a Q4_K or Q5_K block; q: (blocks, 8, 32) unsigned values."""
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = q4_k_scale_min(blocks[:, 4:16])
    scale = (d * sc.astype(np.float32))[:, :, None]
    offset = (dmin * m.astype(np.float32))[:, :, None]
    return (scale * q.astype(np.float32) - offset).reshape(-1, 256)


def _dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    # ggml's dequantize_row_q6_K: per 128 values, ql 64 bytes, qh 32 bytes, 8 scales;
    # value l + 32g takes ql's low (g 0, 1) or high (g 2, 3) nibble and qh's bits 2g..2g+1
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # (blocks, half, which 32 bytes, l)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 2, 4, 2)  # (.., g, l >= 16)
    d = _f16(blocks[:, 208:210]).reshape(-1, 1, 1, 1)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # g = 0..3
    high = (qh >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).astype(np.float32) - 32  # (blocks, half, g, 32)
    scale = np.repeat(scales, 16, axis=3)  # (blocks, half, g, 32)
    return (d * scale * q).reshape(-1, 256)


def quantize_q8(x: np.ndarray, kind: Activations = Activations.Q8_0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations (n, K) float32 -> int8 values (n, K), block scales (n, K/32) and
    scale * sum of each block (n, K/32): the twin of quant.kernels.quantize_q8.

    As llama.cpp: per 32, d = max|x| / 127 rounded to float16 and q = round(x * 127 / max|x|)
    (its Q8_0); for Q8_K, one scale per 256 from the value m of largest magnitude,
    q = min(127, round(x * (-127 / m))) and d = 1 / (-127 / m)."""
    x = np.asarray(x, dtype=np.float32)
    n, k = x.shape
    f32 = np.float32
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == Activations.Q8_K:
            sb = x.reshape(n, k // 256, 256)
            m = np.take_along_axis(sb, np.abs(sb).argmax(axis=2)[:, :, None], axis=2)[:, :, 0]  # first of ties
            iscale = np.where(m == 0, f32(0), f32(-127) / m).astype(f32)
            q = np.minimum(127, np.rint(sb * iscale[:, :, None])).astype(np.int8).reshape(n, k // 32, 32)
            d = np.repeat(np.where(m == 0, f32(0), f32(1) / iscale).astype(f32), 8, axis=1)
        else:
            blocks = x.reshape(n, k // 32, 32)
            amax = np.abs(blocks).max(axis=2)
            d = (amax / f32(127)).astype(np.float16).astype(f32)
            inv = np.where(amax == 0, f32(0), f32(127) / amax).astype(f32)
            q = np.rint(blocks * inv[:, :, None]).astype(np.int8)
    return q.reshape(n, k), d, (d * q.sum(axis=2, dtype=np.int32)).astype(np.float32)


def matmul_q8(x: np.ndarray, raw: np.ndarray, qtype: QType, k: int) -> np.ndarray:
    """x (n, K) @ w.T with x first quantized to 8-bit blocks, in float64: the twin of
    quant.kernels.gemm_blocks, which must agree to float32 rounding."""
    xq, xd, _ = quantize_q8(x, ACTIVATIONS[QType(qtype)])
    xr = (xq.reshape(len(xq), -1, 32).astype(np.float64) * xd[:, :, None]).reshape(len(xq), k)
    return (xr @ dequantize(raw, qtype, k).astype(np.float64).T).astype(np.float32)


def _dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    # ggml's dequantize_row_q5_K: Q4_K's values plus a fifth bit, bit s of qh[l] for value l of sub-block s
    fifth = (blocks[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    return _scaled_less_mins(blocks, _sub_block_nibbles(blocks[:, 48:]) | (fifth << 4))


def _two_bit_values(qs: np.ndarray) -> np.ndarray:
    """(blocks, 64) bytes of 2-bit values -> (blocks, 16, 16) by sub-block of 16: sub-block
    8n + 2j + h, value l sits at bits 2j of byte 32n + 16h + l (Q2_K and Q3_K alike)."""
    q = qs.reshape(-1, 2, 1, 2, 16) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1, 1)
    return (q & 3).reshape(-1, 16, 16)


def _dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    # ggml's dequantize_row_q2_K: per sub-block of 16, d * scale * q - dmin * min
    scales, d, dmin = blocks[:, 0:16], _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
    dl = (d * (scales & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
    return (dl * _two_bit_values(blocks[:, 16:80]).astype(np.float32) - ml).reshape(-1, 256)


def _dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    # ggml's dequantize_row_q3_K: q is 2 bits less 4 where the hmask bit (bit 4n + j of
    # hmask[16h + l], for sub-block 8n + 2j + h) is clear; the sixteen 6-bit scales take
    # a nibble of byte i % 8 (high nibble for i >= 8) and 2 bits of byte 8 + i % 4
    hmask, s, d = blocks[:, 0:32], blocks[:, 96:108].astype(np.int32), _f16(blocks[:, 108:110])
    i = np.arange(16)
    scales = ((s[:, i % 8] >> (4 * (i // 8))) & 0x0F) | (((s[:, 8 + i % 4] >> (2 * (i // 4))) & 3) << 4)
    bit = hmask.reshape(-1, 1, 1, 2, 16) >> np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1, 1)  # (.., n, j, h, l)
    q = _two_bit_values(blocks[:, 32:96]).astype(np.int8) - 4 * (1 - (bit & 1).reshape(-1, 16, 16)).astype(np.int8)
    return ((d * (scales - 32).astype(np.float32))[:, :, None] * q.astype(np.float32)).reshape(-1, 256)


def _dequantize_iq4_xs(blocks: np.ndarray) -> np.ndarray:
    # ggml's dequantize_row_iq4_xs: per 32 values, d * (scale - 32) * IQ4_NL_VALUES[q]; scale ib
    # has the nibble ib % 2 of scales_l[ib / 2] and bits 2ib, 2ib + 1 of scales_h
    d = _f16(blocks[:, 0:2])
    high = np.ascontiguousarray(blocks[:, 2:4]).view(np.uint16).astype(np.int32)  # (blocks, 1)
    ib = np.arange(8)
    low = (blocks[:, 4 + ib // 2].astype(np.int32) >> (4 * (ib % 2))) & 0x0F
    scales = low | (((high >> (2 * ib)) & 3) << 4)
    q = IQ4_NL_VALUES[_nibble_values(blocks[:, 8:].reshape(-1, 16)).reshape(-1, 8, 32)]
    return ((d * (scales - 32).astype(np.float32))[:, :, None] * q).reshape(-1, 256)


_SUPER_DEQUANTIZERS = {QType.Q4_K: _dequantize_q4_k, QType.Q6_K: _dequantize_q6_k, QType.Q5_K: _dequantize_q5_k,
                       QType.Q2_K: _dequantize_q2_k, QType.Q3_K: _dequantize_q3_k, QType.IQ4_XS: _dequantize_iq4_xs}
