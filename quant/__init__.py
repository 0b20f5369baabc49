"""Block formats and matrix products over them. Knows nothing about Gemma.

`formats` holds one entry per weight type (its block layout and byte size, numpy
reference, tile and kernels, in the type's own module); `ref` applies the references
to whole rows, the source of truth the kernels are tested against; `QTensor` is a weight
as it lies in the file (raw blocks plus its logical shape)."""

from quant.formats import BLOCKS, QType, row_bytes
from quant.ref import dequantize, quantize
from quant.tensor import MATMUL_TYPES, QTensor, has_kernel, matmul, matmuls

__all__ = ["BLOCKS", "QType", "row_bytes", "quantize", "dequantize", "QTensor", "matmul", "matmuls", "MATMUL_TYPES", "has_kernel"]
