"""A weight as it lies in the file, and the reference matrix product over it."""

from dataclasses import dataclass

import numpy as np

from quant.formats import QType
from quant.ref import dequantize


@dataclass(frozen=True)
class QTensor:
    """A matrix of `shape` = (rows, cols) stored row by row in `qtype` blocks.

    `raw` is usually a view into the memory-mapped model file: (rows, row_bytes)
    uint8 for block types, or the typed (rows, cols) array for float types."""

    raw: np.ndarray
    qtype: QType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    def rows(self, index) -> np.ndarray:
        """Rows `index` (ints or an int array) as float32: (len(index), cols)."""
        return dequantize(self.raw[index], self.qtype, self.shape[-1])

    def dequantize(self) -> np.ndarray:
        """The whole tensor as float32 of its logical shape."""
        return dequantize(self.raw, self.qtype, self.shape[-1]).reshape(self.shape)


def matmul(x: np.ndarray, w: QTensor) -> np.ndarray:
    """x (n, cols) @ w.T -> (n, rows), float32. The numpy reference path:
    float weights are used in place; block weights are dequantized per call."""
    if w.qtype == QType.F32:
        return x @ np.asarray(w.raw).reshape(w.shape).T
    return x @ w.dequantize().T
