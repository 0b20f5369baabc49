"""What edgert keeps resident (Linux: mincore, /proc/self/status and smaps): a global layer's
KV cache costs memory as the context fills, the model file's header leaves the resident set
once the tokenizer has read it, freed prompt buffers go back to the system, the vocabulary
stays in the file's map instead of becoming Python strings, and a KV cache is made in its
stored type."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgert.files.gguf_file import StringArray
from edgert.kv_cache import KVCache
from edgert.rss import memory, release_free_heap
from edgert.text.tokenizer import NORMAL, UNUSED, Tokenizer, TokenizerData

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's page tables")

PAGE = 4096


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "f32"])
def test_a_new_kv_cache_is_made_as_stored(kv_type):
    """Empty entries are zero bits (0.0 in every type), allocated in the stored type: no float32
    copy of the whole cache is made on the way (it was 16 MB for E2B's at 4K)."""
    import tracemalloc

    tracemalloc.start()
    cache = KVCache(4096, 2, 256, ring=False, kv_type=kv_type)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak <= cache.nbytes + 64 * 1024
    assert not cache.k.any() and not cache.v.any() and (cache.pos == -1).all()


def resident(a: np.ndarray) -> int:
    """Bytes of `a` (one contiguous span of anonymous memory) in resident pages (mincore)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    start = a.ctypes.data - a.ctypes.data % PAGE
    length = a.ctypes.data + a.nbytes - start
    vec = (ctypes.c_ubyte * -(-length // PAGE))()
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) == 0
    return int((np.frombuffer(vec, dtype=np.uint8) & 1).sum()) * PAGE


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "f32"])
def test_an_append_caches_pages_become_resident_as_the_context_fills(kv_type):
    cache = KVCache(4096, 2, 256, ring=False, kv_type=kv_type)
    assert resident(cache.k) == 0 and resident(cache.v) == 0
    n = 512
    k, v = np.random.default_rng(0).standard_normal((2, n, 2, 256), dtype=np.float32)
    cache.update(k, v, np.arange(n))
    row = cache.k.nbytes // 4096
    assert resident(cache.k) == pytest.approx(n * row, abs=PAGE)
    assert resident(cache.v) == pytest.approx(n * row, abs=PAGE)


def test_release_free_heap_hands_back_freed_buffers():
    blocks = [np.ones(1 << 20, dtype=np.uint8) for _ in range(48)]  # 48 MB in heap-sized pieces
    held = memory().anon
    del blocks
    release_free_heap()
    assert memory().anon < held - 32 * 2**20


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    """A tiny random Gemma 4 with a vocabulary of 20000 tokens (a real one's header, scaled down)."""
    from tests.reference import text_config
    from tools.synth import write_synthetic

    cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
           "text_config": {"model_type": "gemma4_text", **text_config("e2b", vocab_size=20000)}}
    return write_synthetic("e2b", tmp_path_factory.mktemp("vocab") / "vocab.gguf", "q4_0", hf_config=cfg)


def mapped(a: np.ndarray) -> int:
    """Resident bytes of the mapping that holds `a`, as this process counts them (smaps Rss);
    for a file, mincore would tell the page cache's state instead."""
    address = a.ctypes.data
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds the array")


def test_model_file_header_leaves_the_resident_set(big_vocab):
    import edgert

    model = edgert.load(big_vocab, n_ctx=64, layout="rows")
    gguf = model.file.gguf
    assert gguf.header_end > 64 * PAGE  # a vocabulary's worth
    assert mapped(gguf.data) < gguf.header_end // 4  # the whole file's mapping, tensors read so far included
    text = "Hello world, <|turn>user ab"
    assert model.tokenizer.decode(model.tokenizer.encode(text)) == text  # what it still reads maps back


def test_the_vocabulary_stays_in_the_files_map(big_vocab):
    from edgert.files.loader import open_model

    file = open_model(big_vocab)
    tok = Tokenizer(file.tokenizer)
    assert isinstance(tok.tokens, StringArray) and tok.tokens.buf is file.gguf.data
    assert [tok.tokens[i] for i in (1, 2, 106)] == ["<eos>", "<bos>", "<turn|>"]


def test_token_lookup_is_a_dict_built_in_order():
    tokens = ["<unk>", "a", "b", "ab", "[u]", "a", "é", "", "b"]
    types = [NORMAL] * len(tokens)
    types[4] = UNUSED
    data = TokenizerData(model="gemma4", tokens=tokens, types=types, merges=["a b"], bos=None, eos=None,
                         eot=None, pad=None, unk=0, add_bos=False, chat_template=None)
    tok = Tokenizer(data)
    reference = {t: i for i, t in enumerate(tokens) if types[i] != UNUSED}  # the last spelling wins
    for text in set(tokens) | {"ba", "abc", "e"}:
        assert tok.token_id(text) == reference.get(text), text
    assert tok.encode("ab a é") == [reference["ab"], 0, reference["a"], 0, reference["é"]]
    assert StringArray.of(tokens)[6] == "é" and list(StringArray.of(tokens)) == tokens
