"""The block layouts, defined once. Type ids are ggml's (GGMLQuantizationType)."""

from dataclasses import dataclass
from enum import IntEnum


class QType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    IQ4_NL = 20
    IQ4_XS = 23
    BF16 = 30


@dataclass(frozen=True)
class Block:
    """`values` weights stored in `nbytes` bytes; `scales`: where the block keeps its f16
    scales (d, and dmin or m), the fields that turn random bytes into finite values."""

    values: int
    nbytes: int
    scales: tuple[int, ...] = ()


BLOCKS: dict[QType, Block] = {
    QType.F32: Block(1, 4),
    QType.F16: Block(1, 2),
    QType.BF16: Block(1, 2),
    # d (f16) + 32 x int8
    QType.Q8_0: Block(32, 2 + 32, (0,)),
    # d (f16) + 32 x 4-bit, value j in the low nibble of byte j, value j+16 in the high nibble
    QType.Q4_0: Block(32, 2 + 16, (0,)),
    # d (f16) + qh (32 fifth bits, bit j for value j) + 32 x 4-bit laid out as in Q4_0; value = d * (q - 16)
    QType.Q5_0: Block(32, 2 + 4 + 16, (0,)),
    # d, m (f16) + 32 x 4-bit as in Q4_0; value = d * q + m
    QType.Q4_1: Block(32, 2 + 2 + 16, (0, 2)),
    # d, m (f16) + qh + 32 x 4-bit as in Q5_0; value = d * q + m
    QType.Q5_1: Block(32, 2 + 2 + 4 + 16, (0, 2)),
    # d (f16) + 32 x 4-bit as in Q4_0, each an index into IQ4_NL_VALUES; value = d * IQ4_NL_VALUES[q]
    QType.IQ4_NL: Block(32, 2 + 16, (0,)),
    # 16 scale bytes (low nibble: scale, high: min, per 16 values) + 256 x 2-bit + d, dmin (f16)
    QType.Q2_K: Block(256, 16 + 64 + 2 + 2, (80, 82)),
    # hmask (256 third bits) + 256 x 2-bit + 12 bytes of sixteen 6-bit scales + d (f16); value = d * (s - 32) * q
    QType.Q3_K: Block(256, 32 + 64 + 12 + 2, (108,)),
    # d, dmin (f16) + 12 bytes of (scale, min) as Q4_K + qh (256 fifth bits) + 256 x 4-bit
    QType.Q5_K: Block(256, 2 + 2 + 12 + 32 + 128, (0, 2)),
    # d (f16) + scales_h (u16: 2 high bits of 8 scales) + 4 bytes of low scale nibbles + 256 x 4-bit IQ4_NL indices
    QType.IQ4_XS: Block(256, 2 + 2 + 4 + 128, (0,)),
    # d, dmin (f16) + 12 bytes of eight 6-bit (scale, min) + 256 x 4-bit; value = d*scale*q - dmin*min
    QType.Q4_K: Block(256, 2 + 2 + 12 + 128, (0, 2)),
    # 256 x 6-bit as ql[128] (low 4 bits) + qh[64] (high 2 bits), 16 x int8 scales, d (f16)
    QType.Q6_K: Block(256, 128 + 64 + 16 + 2, (208,)),
}

assert [BLOCKS[t].nbytes for t in (QType.Q8_0, QType.Q4_0, QType.Q5_0, QType.Q4_K, QType.Q6_K)] == [34, 18, 22, 144, 210]
assert [BLOCKS[t].nbytes for t in (QType.Q4_1, QType.Q5_1, QType.IQ4_NL, QType.Q2_K, QType.Q3_K, QType.Q5_K,
                                   QType.IQ4_XS)] == [20, 24, 18, 84, 110, 176, 136]


class Activations(IntEnum):
    """How the activations are quantized for a weight format's integer dots, as llama.cpp's
    vec_dot_type: Q8_0 (a scale per 32) or Q8_K (a scale per 256).

    Q4_1 and Q5_1 take Q8_0's here. llama.cpp gives them Q8_1, which is Q8_0 plus each block's
    scale x sum stored as f16 for the mins to meet: that sum overflows to inf past 65504 and
    is rounded below it, so edgert keeps its own, exact in f32."""

    Q8_0 = 0
    Q8_K = 1


ACTIVATIONS: dict[QType, Activations] = {
    **{t: Activations.Q8_0 for t in (QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q8_0, QType.IQ4_NL)},
    **{t: Activations.Q8_K for t in (QType.Q2_K, QType.Q3_K, QType.Q4_K, QType.Q5_K, QType.Q6_K, QType.IQ4_XS)},
}

# ggml's kvalues_iq4nl: the sixteen levels that IQ4_NL's and IQ4_XS's 4-bit indices stand for
IQ4_NL_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def row_bytes(qtype: QType, n: int) -> int:
    """Bytes that a row of `n` values takes in `qtype`; n must fill whole blocks."""
    block = BLOCKS[QType(qtype)]
    if n % block.values:
        raise ValueError(f"a row of {n} values does not fill whole {QType(qtype).name} blocks of {block.values}")
    return n // block.values * block.nbytes
