"""Reference quantizers: plain numpy, bit-exact with ggml's quantize_row_*_ref
(and so with the `gguf` package). The fast kernels are tested against these. Each format's
own reference lives with it in quant.formats; these take whole rows."""

import numpy as np

from quant.formats import ACTIVATIONS, BLOCKS, FORMATS, Activations, QType, row_bytes


def quantize(x: np.ndarray, qtype: QType) -> np.ndarray:
    """(rows, n) float32 -> (rows, row_bytes) uint8 blocks."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.reshape(-1, x.shape[-1]).shape if x.ndim else (1, 1)
    qtype = QType(qtype)
    if FORMATS[qtype].quantize is None:
        raise ValueError(f"no quantizer for {qtype.name}")
    row_bytes(qtype, n)  # raises when n does not fill whole blocks
    return FORMATS[qtype].quantize(x.reshape(-1, BLOCKS[qtype].values)).reshape(rows, -1)


def dequantize(raw: np.ndarray, qtype: QType, n: int) -> np.ndarray:
    """(rows, row_bytes) raw blocks (or their typed view) -> (rows, n) float32."""
    qtype = QType(qtype)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, row_bytes(qtype, n))  # a view where it can be
    return FORMATS[qtype].dequantize(raw.reshape(-1, BLOCKS[qtype].nbytes)).reshape(raw.shape[0], n)


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
