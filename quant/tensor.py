"""A weight as it lies in the file, and the reference matrix product over it."""

import contextlib
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from quant import kernels, layout, packed, simd  # compiled, or loaded from the on-disk cache, on first call
from quant.formats import ACTIVATIONS, BLOCKS, FORMATS, QType
from quant.ref import dequantize, matmul_q8


@dataclass(frozen=True)
class QTensor:
    """A matrix of `shape` = (rows, cols) stored row by row in `qtype` blocks.

    `raw` is usually a view into the memory-mapped model file: (rows, row_bytes)
    uint8 for block types, or the typed (rows, cols) array for float types.
    `packed`, when given, is the same matrix in the x8 layout (quant.layout), usually a
    view into a mapped layout cache: the matrix products then read it and never `raw`."""

    raw: np.ndarray
    qtype: QType
    shape: tuple[int, ...]
    packed: np.ndarray | None = None

    def with_layout(self, packed: np.ndarray | None = None) -> "QTensor":
        """This tensor with its x8 layout: `packed` as given, or built here in memory."""
        if packed is None:
            packed = layout.pack(self.raw, self.qtype)
            # Read-only, as a mapped layout cache is: one compiled specialization of the kernels
            # serves both (numba types a read-only array apart from a writable one).
            packed.setflags(write=False)
        return QTensor(self.raw, self.qtype, self.shape, packed)

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    @cached_property
    def kernel_args(self) -> tuple:
        """What the kernels take for this matrix, made once: (kind, format id, values per block,
        data), kind being quant.kernels.PACKED (the x8 layout), BLOCKS (the file's rows) or
        FLOAT (float bits; the id is gemm_float's). A format with no row walker
        (quant.simd.FORMATS) is packed here, in memory, if it was not."""
        if self.packed is None and self.qtype not in _FLOAT_KERNEL and self.qtype not in simd.FORMATS:
            if not has_kernel(self.qtype, self.shape):
                raise ValueError(f"a {self.qtype.name} matrix of shape {self.shape} has no kernel: its rows must "
                                 f"come in groups of {layout.ROWS} (or store it as {', '.join(q.name for q in simd.FORMATS)})")
            return self.with_layout().kernel_args
        if self.packed is not None:
            return kernels.PACKED, int(self.qtype), BLOCKS[self.qtype].values, self.packed
        raw = np.ascontiguousarray(self.raw)
        rows, cols = self.shape
        if self.qtype in _FLOAT_KERNEL:
            bits = raw.view(np.uint32 if BLOCKS[self.qtype].nbytes == 4 else np.uint16).reshape(rows, cols)
            return kernels.FLOAT, _FLOAT_KERNEL[self.qtype], 0, bits
        return kernels.BLOCKS, int(self.qtype), BLOCKS[self.qtype].values, raw.view(np.uint8).reshape(rows, -1)

    def rows(self, index) -> np.ndarray:
        """Rows `index` (ints or an int array) as float32: (len(index), cols). With an x8 layout
        they are read from it (the LM head's tiles, resident anyway, rather than the file's
        copy of the token table, whose pages a prompt of many distinct tokens would map)."""
        if self.packed is not None:
            index = np.asarray(index, dtype=np.int64).reshape(-1)
            raw = layout.unpack_rows(self.packed, self.qtype, index, self.raw.shape[1])
            return dequantize(raw, self.qtype, self.shape[-1])
        return dequantize(self.raw[index], self.qtype, self.shape[-1])

    def dequantize(self) -> np.ndarray:
        """The whole tensor as float32 of its logical shape."""
        return dequantize(self.raw, self.qtype, self.shape[-1]).reshape(self.shape)


_mode = threading.local()


@contextlib.contextmanager
def exact_rows():
    """Within it, each row of a product is computed as a one-row product computes it, bit for
    bit (several rows still read the weights once): a verification pass over a draft then
    sees the logits that decoding one token at a time would have seen."""
    before = getattr(_mode, "exact", False)
    _mode.exact = True
    try:
        yield
    finally:
        _mode.exact = before


def _exact() -> bool:
    return getattr(_mode, "exact", False)


def matmul(x: np.ndarray, w: QTensor) -> np.ndarray:
    """x (n, cols) @ w.T -> (n, rows) float32, through the Numba kernels, reading w in place."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"matmul: activations {x.shape} do not fit a weight of {w.shape}")
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    kind, fmt, values_per_block, data = w.kernel_args
    if kind == kernels.PACKED:
        _packed(x, [w.kernel_args], [out])
    elif kind == kernels.FLOAT:
        kernels.gemm_float(fmt, data, x, out)
    else:
        kernels.matmul_blocks(fmt, values_per_block, data, x, out, _exact())
    return out


def matmuls(x: np.ndarray, ws: Sequence[QTensor]) -> list[np.ndarray]:
    """[matmul(x, w) for w in ws], for matrices that share their input (q/k/v, gate/up): when
    all have the x8 layout and take the same activations, one kernel call quantizes x once
    and runs all the products in one parallel region."""
    kinds = [w.kernel_args for w in ws]
    if (not 2 <= len(ws) <= kernels.SLOTS or any(kind != kernels.PACKED for kind, _, _, _ in kinds)
            or len({ACTIVATIONS[QType(fmt)] for _, fmt, _, _ in kinds}) > 1):
        return [matmul(x, w) for w in ws]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or any(x.shape[1] != w.shape[1] for w in ws):
        raise ValueError(f"matmuls: activations {x.shape} do not fit weights of {[w.shape for w in ws]}")
    outs = [np.empty((x.shape[0], w.shape[0]), dtype=np.float32) for w in ws]
    _packed(x, kinds, outs)
    return outs


def _packed(x: np.ndarray, kinds: list[tuple], outs: list[np.ndarray]) -> None:
    """One call of kernels.matmul_packed for up to SLOTS x8 matrices (their kernel_args) that
    read x: the unused slots repeat the first matrix, and the count leaves them out."""
    pad = kernels.SLOTS - len(kinds)
    fmts, data = [fmt for _, fmt, _, _ in kinds], [d for _, _, _, d in kinds]
    kernels.matmul_packed(tuple(fmts + fmts[:1] * pad), tuple(data + data[:1] * pad), len(kinds), x,
                          tuple(outs + outs[:1] * pad), _exact())


_FLOAT_KERNEL = {q: f.float_kernel for q, f in FORMATS.items() if f.float_kernel is not None}  # gemm_float's ids
# every type a matrix product reads: float types, and block types with x8 tiles (quant.packed);
# the rest are read by `dequantize` only
MATMUL_TYPES = frozenset(_FLOAT_KERNEL) | frozenset(packed.TILED)


def has_kernel(qtype: QType, shape: tuple[int, ...]) -> bool:
    """Whether `matmul` takes a matrix of this type and shape: float types and the formats with
    a row walker (quant.simd.FORMATS) in any shape; the others through their x8 tiles, which
    take the rows eight at a time."""
    qtype = QType(qtype)
    return qtype in _FLOAT_KERNEL or qtype in simd.FORMATS or (qtype in packed.TILED and layout.packable(qtype, shape))


def matmul_ref(x: np.ndarray, w: QTensor) -> np.ndarray:
    """The numpy twin of `matmul`: float weights used as they are; block weights
    dequantized and multiplied with activations quantized as the kernels do."""
    x = np.asarray(x, dtype=np.float32)
    if w.qtype in _FLOAT_KERNEL:
        return (x.astype(np.float64) @ w.dequantize().astype(np.float64).T).astype(np.float32)
    return matmul_q8(x, w.raw, w.qtype, w.shape[-1])
