"""Tokenizer parity with the `tokenizers` library on a Gemma-style byte-fallback BPE
tokenizer.json, through what the converter stored in the GGUF file."""

import pytest

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
