"""Every weight type edgert reads, one entry each (base.Format): its ggml id, block layout
and byte size, numpy reference, tile in the x8 layout, and kernels, together in the format's
own module here. Everything else reads them from FORMATS: ref's dequantize, layout's
pack, packed's and simd's dispatch, the loader's checks.

Adding a format: write its module (a Format, as q2_k.py), and list it below."""

from quant.formats import floats, iq4, q2_k, q3_k, q4_0, q4_k, q5_0, q6_k, q8_0
from quant.formats.base import IQ4_NL_LEVELS, Activations, Block, Format, QType, SuperTileFormat, TileFormat

FORMATS: dict[QType, Format] = {f.qtype: f for f in (
    floats.F32, floats.F16, floats.BF16,
    q4_0.Q4_0, q4_0.Q4_1, q5_0.Q5_0, q5_0.Q5_1, q8_0.Q8_0, iq4.IQ4_NL,
    q2_k.Q2_K, q3_k.Q3_K, q4_k.Q4_K, q4_k.Q5_K, q6_k.Q6_K, iq4.IQ4_XS,
)}
assert set(FORMATS) == set(QType), set(QType) - set(FORMATS)

BLOCKS: dict[QType, Block] = {q: f.block for q, f in FORMATS.items()}
ACTIVATIONS: dict[QType, Activations] = {q: f.activations for q, f in FORMATS.items() if f.activations is not None}

# the byte sizes, as ggml's (tests/test_quant_ref.py checks them all against the gguf package)
assert [BLOCKS[t].nbytes for t in (QType.Q8_0, QType.Q4_0, QType.Q5_0, QType.Q4_K, QType.Q6_K)] == [34, 18, 22, 144, 210]
assert [BLOCKS[t].nbytes for t in (QType.Q4_1, QType.Q5_1, QType.IQ4_NL, QType.Q2_K, QType.Q3_K, QType.Q5_K,
                                   QType.IQ4_XS)] == [20, 24, 18, 84, 110, 176, 136]


__all__ = ["FORMATS", "BLOCKS", "ACTIVATIONS", "row_bytes", "QType", "Block", "Activations", "Format",
           "TileFormat", "SuperTileFormat", "IQ4_NL_LEVELS"]


def row_bytes(qtype: QType, n: int) -> int:
    """Bytes that a row of `n` values takes in `qtype`; n must fill whole blocks."""
    block = BLOCKS[QType(qtype)]
    if n % block.values:
        raise ValueError(f"a row of {n} values does not fill whole {QType(qtype).name} blocks of {block.values}")
    return n // block.values * block.nbytes
