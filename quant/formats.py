"""The block layouts, defined once. Type ids are ggml's (GGMLQuantizationType)."""

from dataclasses import dataclass
from enum import IntEnum


class QType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q5_0 = 6
    Q8_0 = 8
    Q4_K = 12
    Q6_K = 14
    BF16 = 30


@dataclass(frozen=True)
class Block:
    """`values` weights stored in `nbytes` bytes."""

    values: int
    nbytes: int


BLOCKS: dict[QType, Block] = {
    QType.F32: Block(1, 4),
    QType.F16: Block(1, 2),
    QType.BF16: Block(1, 2),
    # d (f16) + 32 x int8
    QType.Q8_0: Block(32, 2 + 32),
    # d (f16) + 32 x 4-bit, value j in the low nibble of byte j, value j+16 in the high nibble
    QType.Q4_0: Block(32, 2 + 16),
    # d (f16) + qh (32 fifth bits, bit j for value j) + 32 x 4-bit laid out as in Q4_0; value = d * (q - 16)
    QType.Q5_0: Block(32, 2 + 4 + 16),
    # d, dmin (f16) + 12 bytes of eight 6-bit (scale, min) + 256 x 4-bit; value = d*scale*q - dmin*min
    QType.Q4_K: Block(256, 2 + 2 + 12 + 128),
    # 256 x 6-bit as ql[128] (low 4 bits) + qh[64] (high 2 bits), 16 x int8 scales, d (f16)
    QType.Q6_K: Block(256, 128 + 64 + 16 + 2),
}

assert [BLOCKS[t].nbytes for t in (QType.Q8_0, QType.Q4_0, QType.Q5_0, QType.Q4_K, QType.Q6_K)] == [34, 18, 22, 144, 210]


def row_bytes(qtype: QType, n: int) -> int:
    """Bytes that a row of `n` values takes in `qtype`; n must fill whole blocks."""
    block = BLOCKS[QType(qtype)]
    if n % block.values:
        raise ValueError(f"a row of {n} values does not fill whole {QType(qtype).name} blocks of {block.values}")
    return n // block.values * block.nbytes
