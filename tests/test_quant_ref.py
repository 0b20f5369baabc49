"""The numpy reference quantizers are bit-exact with the gguf package's (ggml's)."""

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quant import QType, dequantize, quantize, row_bytes
from quant.formats import BLOCKS

pytestmark = pytest.mark.aarch64

TYPES = [QType.F16, QType.BF16, QType.Q8_0, QType.Q4_0, QType.Q5_0]

rows_of_blocks = st.integers(1, 4).flatmap(
    lambda r: st.integers(1, 5).flatmap(
        lambda b: arrays(np.float32, (r, 32 * b),
                         elements=st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_subnormal=False))))


@settings(max_examples=200, deadline=None)
@given(x=rows_of_blocks, qtype=st.sampled_from(TYPES))
def test_quantize_bit_exact_with_gguf(x, qtype):
    ours = quantize(x, qtype)
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qtype)))
    np.testing.assert_array_equal(ours, ref.view(np.uint8).reshape(ours.shape))


@settings(max_examples=200, deadline=None)
@given(x=rows_of_blocks, qtype=st.sampled_from(TYPES))
def test_dequantize_bit_exact_with_gguf(x, qtype):
    raw = quantize(x, qtype)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qtype)))
    np.testing.assert_array_equal(dequantize(raw, qtype, x.shape[1]), ref.reshape(x.shape))


@pytest.mark.parametrize("qtype", TYPES)
def test_zeros_and_extremes(qtype):
    x = np.zeros((3, 64), np.float32)
    x[1, :] = 65000.0
    x[2, ::2], x[2, 1::2] = -1e-3, 7.0
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qtype)))
    np.testing.assert_array_equal(quantize(x, qtype), ref.view(np.uint8).reshape(3, -1))
    assert np.all(dequantize(quantize(x, qtype), qtype, 64)[0] == 0)


def test_block_sizes():
    assert row_bytes(QType.Q8_0, 64) == 68 and row_bytes(QType.Q4_0, 64) == 36
    for q in BLOCKS:
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(q))] == (BLOCKS[q].values, BLOCKS[q].nbytes)
    with pytest.raises(ValueError, match="whole Q4_0 blocks"):
        row_bytes(QType.Q4_0, 33)


# Every block type: blocks of random bytes (so every scale, nibble and bit pattern occurs,
# NaN and infinite scales included) read as gguf.quants reads them, bit for bit.
BLOCK_TYPES = [q for q in BLOCKS if BLOCKS[q].values > 1]


@settings(max_examples=300, deadline=None)
@given(qtype=st.sampled_from(BLOCK_TYPES), rows=st.integers(1, 3), blocks=st.integers(1, 3), data=st.data())
def test_dequantize_random_blocks_bit_exact_with_gguf(qtype, rows, blocks, data):
    block = BLOCKS[qtype]
    raw = np.frombuffer(data.draw(st.binary(min_size=rows * blocks * block.nbytes, max_size=rows * blocks * block.nbytes)),
                        dtype=np.uint8).reshape(rows, -1)
    with np.errstate(all="ignore"):
        ours = dequantize(raw, qtype, blocks * block.values)
        ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qtype))).reshape(ours.shape)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(ours[~nan].view(np.uint32), ref[~nan].astype(np.float32).view(np.uint32))
