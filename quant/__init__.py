"""Block formats and matrix products over them. Knows nothing about Gemma.

`formats` defines each block layout and its byte size once; `ref` holds the
numpy quantizers and dequantizers that are the source of truth; `QTensor`
is a weight as it lies in the file (raw blocks plus its logical shape)."""

from quant.formats import BLOCKS, QType, row_bytes
from quant.ref import dequantize, quantize
from quant.tensor import MATMUL_TYPES, QTensor, has_kernel, matmul, matmuls

__all__ = ["BLOCKS", "QType", "row_bytes", "quantize", "dequantize", "QTensor", "matmul", "matmuls", "MATMUL_TYPES", "has_kernel"]
