"""What every format entry is made of (quant.formats): ggml's type ids, the block and tile
records, and the few byte readers every reference dequantizer uses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Callable

import numpy as np

from quant.ir import ROWS


class QType(IntEnum):
    """ggml's type ids (GGMLQuantizationType), as the GGUF file stores them."""

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


class Activations(IntEnum):
    """How the activations are quantized for a weight format's integer dots, as llama.cpp's
    vec_dot_type: Q8_0 (a scale per 32) or Q8_K (a scale per 256).

    Q4_1 and Q5_1 take Q8_0's here. llama.cpp gives them Q8_1, which is Q8_0 plus each block's
    scale x sum stored as f16 for the mins to meet: that sum overflows to inf past 65504 and
    is rounded below it, so edgert keeps its own, exact in f32."""

    Q8_0 = 0
    Q8_K = 1


@dataclass(frozen=True)
class TileFormat:
    """A 32-value format's tile in the x8 layout (quant.layout): where a block's parts lie
    (`qs`: its value bytes; `qh`: the fifth bits of Q5_0 and Q5_1; `m`: the f16 min of Q4_1
    and Q5_1) and how many 32-byte sub-vectors a tile has. A tile holds the eight rows'
    scales, then their mins, then the masks, then the values. quant.packed reads any such
    tile from these fields alone."""

    qs: int  # offset of the value bytes in the file's block
    sub_vectors: int
    qh: int | None = None
    m: int | None = None
    levels: bool = False  # IQ4_NL: each nibble indexes IQ4_NL_LEVELS
    paired: bool = False  # as SuperTileFormat's
    paired_in_decode: bool = False

    @property
    def masks(self) -> int:
        """Where the masks start in a tile."""
        return 2 * ROWS + (2 * ROWS if self.m is not None else 0)

    @property
    def header(self) -> int:
        """Bytes before the values in a tile: the scales, mins and masks."""
        return self.masks + (32 if self.qh is not None else 0)

    @property
    def tile_bytes(self) -> int:
        return self.header + 32 * self.sub_vectors


@dataclass(frozen=True)
class SuperTileFormat:
    """A 256-value format's tile: `source` maps each tile byte to a byte of the eight blocks
    laid end to end (row r's byte b at r * nbytes + b); values start at `header`. `paired`:
    a prompt's products (GEMM) take two groups' tiles at once where they can
    (quant.packed.PAIRED_FLAVORS), sixteen rows in 512-bit vectors; `paired_in_decode`: so does
    decode's GEMV, which reads the two groups as two streams from memory, on the cores where
    that pays (not quant.cpu.GEMV_UNPAIRED_CORES, AMD's). Each is set for the formats measured
    faster so (BENCHMARKS.md). `pack_values`: where a format's values are not only moved but
    rewritten bit by bit (a permutation of their bits), what does it to the bytes from `header`
    on, and `unpack_values` what undoes it."""

    header: int
    source: np.ndarray
    paired: bool = False
    paired_in_decode: bool = False
    pack_values: Callable | None = None  # (..., value bytes as `source` puts them) -> the tile's, rewritten
    unpack_values: Callable | None = None  # bit by bit (Q3_K's), and back

    @property
    def tile_bytes(self) -> int:
        return len(self.source)


@dataclass(frozen=True)
class Format:
    """One ggml type, all that edgert knows of it:

    block        its block layout and byte size
    dequantize   the reference: (blocks, nbytes) uint8 -> (blocks, values) float32, bit-exact
                 with ggml's dequantize_row_* (and so with the `gguf` package)
    quantize     (blocks, values) float32 -> (blocks, nbytes) uint8, as ggml's quantize_row_*_ref,
                 for the types edgert writes itself
    activations  how its integer dots take the activations (None: a float format)
    float_kernel quant.kernels.gemm_float's id, for the float formats
    tile         its tile in the x8 layout (quant.layout), if it has one
    decode       a SuperTileFormat's decoder for quant.packed: (tile, packed.ByteOps) -> ir.Super
    walk, unroll a walker of the file's own rows for quant.simd, and the blocks it takes per
                 iteration"""

    qtype: QType
    block: Block
    dequantize: Callable
    quantize: Callable | None = None
    activations: Activations | None = None
    float_kernel: int | None = None
    tile: TileFormat | SuperTileFormat | None = None
    decode: Callable | None = None
    walk: Callable | None = None
    unroll: int = 1


# ggml's kvalues_iq4nl: the sixteen levels that IQ4_NL's and IQ4_XS's 4-bit indices stand for
IQ4_NL_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
IQ4_NL_VALUES = np.array(IQ4_NL_LEVELS, dtype=np.float32)


def f16(b: np.ndarray) -> np.ndarray:
    """(blocks, 2) bytes -> (blocks, 1) float32."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def nibble_values(qs: np.ndarray) -> np.ndarray:
    """(blocks, 16) bytes -> (blocks, 32) 4-bit values: value j in byte j's low nibble, j + 16 in its high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf(): halves go away from zero (np.round goes to even)."""
    a = np.abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(2 * (a - floored)))


def super_source(nbytes: int, head: list, scales: range, runs: list) -> np.ndarray:
    """A SuperTileFormat's source: for each of the eight rows (block r at byte nbytes * r), the
    `head` byte pairs (f16 fields, rows side by side, field by field), the `scales` bytes
    transposed (byte k of row r at 8k + r), then each run of value bytes (start, length) as
    sub-vectors (sub-vector L: each row's bytes 4L..4L+3 side by side)."""
    at = lambda r, b: nbytes * r + b  # noqa: E731
    out = [at(r, b) for field in head for r in range(ROWS) for b in (field, field + 1)]
    out += [at(r, k) for k in scales for r in range(ROWS)]
    for start, length in runs:
        out += [at(r, start + 4 * L + j) for L in range(length // 4) for r in range(ROWS) for j in range(4)]
    return np.array(out)
