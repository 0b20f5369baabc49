"""A weight type is one entry of quant.formats, written in one module: its block layout,
reference, tile and kernels. The modules that quantize, pack and multiply read that table
and name no block format themselves, so adding a format touches one place."""

import inspect
import re

import pytest

from quant import kernels, layout, packed, ref, simd, tensor
from quant.formats import FORMATS, Activations, QType, SuperTileFormat, TileFormat

DISPATCH = [ref, layout, packed, simd, kernels, tensor]


@pytest.mark.parametrize("module", DISPATCH, ids=lambda m: m.__name__)
def test_the_kernels_and_references_name_no_block_format(module):
    named = re.findall(r"QType\.(?!F32\b|F16\b|BF16\b)\w+", inspect.getsource(module))
    assert not named, f"{module.__name__} names {named}: a format's facts belong in its entry (quant.formats)"


@pytest.mark.parametrize("qtype", list(FORMATS), ids=lambda q: q.name)
def test_a_format_is_one_entry_in_one_module(qtype):
    f = FORMATS[qtype]
    assert f.qtype == qtype
    parts = [f.dequantize, f.quantize, f.decode, f.walk]
    homes = {inspect.getmodule(p).__name__ for p in parts if p is not None}
    assert len(homes) == 1 and homes.pop().startswith("quant.formats."), homes
    if f.activations is None:  # a float type: multiplied in float
        assert f.float_kernel is not None and f.block.values == 1 and f.tile is None
    if isinstance(f.tile, SuperTileFormat):  # 256 values: Q8_K activations, a decoder of its own
        assert f.block.values == 256 and f.activations == Activations.Q8_K and f.decode is not None
    if isinstance(f.tile, TileFormat):  # 32 values: read from the tile's fields alone
        assert f.block.values == 32 and f.activations == Activations.Q8_0 and f.decode is None
    if f.walk is not None:
        assert f.walk.values_per_block == f.block.values


def test_every_type_edgert_reads_has_an_entry_and_every_block_type_a_kernel():
    assert set(FORMATS) == set(QType)
    assert set(packed.TILED) == {q for q, f in FORMATS.items() if f.tile is not None}
    assert {q for q, f in FORMATS.items() if f.activations is not None} == set(packed.TILED)
