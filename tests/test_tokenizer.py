"""Tokenizer parity with the `tokenizers` library on a Gemma-style byte-fallback BPE
tokenizer.json, through what the converter stored in the GGUF file."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgert.files.loader import open_model
from edgert.text.tokenizer import Tokenizer

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Café, naïve, résumé — Zürich, São Paulo, Øresund, ÅÄÖ åäö",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Emoji: 🙂 🚀 👍🏽 ❤️ 🇫🇷 👩‍👩‍👧",
    "def forward(self, x):\n    return self.proj(x) + x  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "   leading, trailing   ",
    "runs     of      spaces\t\ttabs\n\n\n\nnewlines\r\n",
    "<bos><|turn>user\nWhy is the sky blue?<turn|>\n<|turn>model\n",
    "text with <|channel>thought\nhidden<channel|> and <boa><|audio|><eoa>",
    "<turn|><turn|><|turn>",
    "almost special: <|turn <turn| <bos",
    "Ωμέγα αλφα βήτα; кириллица; עברית; العربية",
    "\u0000\u0001 control chars \u007f",
    "x" * 300,
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def tokenizers_pair(checkpoints):
    from tokenizers import Tokenizer as HFTokenizer

    _, directory = checkpoints.hf("e2b")
    ours = Tokenizer(open_model(checkpoints.gguf("e2b", "q8_0")).tokenizer)
    return ours, HFTokenizer.from_file(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_tokenizers(tokenizers_pair, text):
    ours, ref = tokenizers_pair
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", CORPUS)
def test_decode_matches_tokenizers(tokenizers_pair, text):
    ours, ref = tokenizers_pair
    ids = ref.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)


def test_special_tokens_map_to_their_ids(tokenizers_pair):
    ours, ref = tokenizers_pair
    for t in ["<bos>", "<eos>", "<|turn>", "<turn|>", "<boa>", "<eoa>", "<|audio|>", "<|channel>"]:
        assert ours.encode(t) == [ref.token_to_id(t)]
    assert ours.bos == 2 and ours.eos == 1 and ours.token_id("<turn|>") == 106


@pytest.mark.parametrize("text", CORPUS[9:13])
def test_parse_special_off_matches_encode_special_tokens(tokenizers_pair, text):
    """With special-token parsing off, text that looks like a control token goes through BPE,
    as `tokenizers` does with encode_special_tokens=True."""
    ours, ref = tokenizers_pair
    ref.encode_special_tokens = True
    try:
        assert ours.encode(text, parse_special=False) == ref.encode(text, add_special_tokens=False).ids
    finally:
        ref.encode_special_tokens = False


def test_stream_decoder_yields_whole_characters(tokenizers_pair):
    ours, _ = tokenizers_pair
    text = "日本語 😀 ∑ℵ Zürich"  # some of these are not in the test vocabulary
    ids = ours.encode(text)
    assert any(ours.types[i] == 6 for i in ids)  # some characters fall back to byte tokens
    stream = ours.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def _specials(tok: Tokenizer) -> list[str]:
    """The tokens the tokenizer cuts out before merging, longest first."""
    return sorted((tok.tokens[i] for i in np.flatnonzero(tok._special_scan.keep)), key=len, reverse=True)


def _pieces(specials: list[str]):
    """Text made of special tokens, parts of them, whitespace runs and other text."""
    part = st.sampled_from(specials).flatmap(
        lambda s: st.sampled_from([s, s[:-1], s[1:], s[: len(s) // 2]]))
    other = st.text(alphabet=st.sampled_from(list("ab <|>\n\t é日🙂")), max_size=6)
    return st.lists(st.one_of(part, other), max_size=12).map("".join)


@pytest.fixture(scope="module", params=["gemma4", "gemma3"])
def scanned(request, tokenizers_pair):
    """A tokenizer and its special tokens: the test vocabulary's few, or the ~6,400 of Gemma 3's
    real one (runs of whitespace among them, one inside the next)."""
    if request.param == "gemma4":
        tok = tokenizers_pair[0]
    else:
        from edgert.demo import demo_model
        tok = Tokenizer(open_model(demo_model()).tokenizer)
    return tok, _specials(tok)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_special_tokens_are_found_where_a_regex_of_them_finds_them(scanned, data):
    """The compiled scan over the special tokens against Python's re (the alternation of them
    all, longest first: leftmost, then longest, never overlapping), and, for every special
    token that occurs at all, against `in`."""
    tok, specials = scanned
    text = data.draw(_pieces(specials))
    raw = text.encode("utf-8")
    reference = [(len(text[:m.start()].encode()), len(text[:m.end()].encode()))
                 for m in re.finditer("|".join(map(re.escape, specials)), text)]
    assert [tuple(span) for span in tok._special_scan.spans(raw)] == reference
    assert tok._special_scan.present(raw) == {s for s in specials if s in text}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_text_split_at_a_special_token_is_its_two_parts_encoded_apart(scanned, data):
    """encode_split: where it says the ids split at character `at`, they are the two sides'
    own ids; the text before `at` is not always ASCII, so characters and bytes must not mix."""
    tok, specials = scanned
    a, b = data.draw(_pieces(specials)), data.draw(_pieces(specials))
    text = a + data.draw(st.sampled_from(specials)) + b
    ids, split = tok.encode_split(text, len(a))
    assert ids == tok.encode(text)
    if split is not None:
        assert (ids[:split], ids[split:]) == (tok.encode(a), tok.encode(text[len(a):]))
    words = st.text(alphabet=st.sampled_from(list("abcé日")), max_size=8)  # no special token in them
    a, b = data.draw(words), data.draw(words)
    text = a + data.draw(st.sampled_from(specials)) + b
    ids, split = tok.encode_split(text, len(a))
    assert split is not None and (ids[:split], ids[split:]) == (tok.encode(a), tok.encode(text[len(a):]))
