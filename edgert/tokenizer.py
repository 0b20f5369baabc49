"""Gemma 4's tokenizer from what the converter stored in the model file.

Byte-fallback BPE over raw UTF-8 (tokenizer model "gemma4"): spaces become "▁",
there is no pre-splitting, merges apply lowest rank first (leftmost on ties), a
character with no token falls back to <0xXX> byte tokens. Special (control and
user-defined) tokens are matched literally before BPE. This is what the `tokenizers`
library does with Gemma's tokenizer.json; the tests check it id for id.
"""

from __future__ import annotations

import codecs
import heapq
import re
from dataclasses import dataclass

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # ▁


@dataclass(frozen=True)
class TokenizerData:
    """The tokenizer as the model file stores it (llama.cpp's tokenizer.ggml.* keys)."""

    model: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos: int | None
    eos: int | None
    eot: int | None
    pad: int | None
    unk: int | None
    add_bos: bool
    chat_template: str | None


class Tokenizer:
    def __init__(self, data: TokenizerData):
        self.tokens = data.tokens
        self.types = data.types or [NORMAL] * len(data.tokens)
        self.bos, self.eos, self.eot, self.pad = data.bos, data.eos, data.eot, data.pad
        self.add_bos = data.add_bos
        self.ids = {t: i for i, t in enumerate(self.tokens) if self.types[i] != UNUSED}
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(data.merges):
            a, _, b = merge.partition(" ")
            self.ranks.setdefault((a, b), rank)
        self.byte_ids = [self.ids.get(f"<0x{b:02X}>") for b in range(256)]
        specials = sorted((t for i, t in enumerate(self.tokens) if self.types[i] in (CONTROL, USER_DEFINED) and t),
                          key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
        self.unk = data.unk if data.unk is not None else next(
            (i for i, t in enumerate(self.types) if t == UNKNOWN), self.ids.get("<unk>"))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for (made on demand: a table of 262144 would cost 12 MB)."""
        text = self.tokens[i]
        if self.types[i] == BYTE:
            return bytes([int(text[3:5], 16)])
        return text.replace(SPACE, " ").encode("utf-8")

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        """Text -> ids. `parse_special`: control tokens written in the text become their ids."""
        ids = [self.bos] if add_bos and self.bos is not None else []
        start = 0
        if parse_special and self._special_re is not None:
            for m in self._special_re.finditer(text):
                ids += self._bpe(text[start:m.start()])
                ids.append(self.ids[m.group()])
                start = m.end()
        ids += self._bpe(text[start:])
        return ids

    def _bpe(self, text: str) -> list[int]:
        if not text:
            return []
        syms: list[str | None] = list(text.replace(" ", SPACE))
        n = len(syms)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = self.ranks.get((syms[i], syms[i + 1]))
            if r is not None:
                heap.append((r, i, syms[i], syms[i + 1]))
        heapq.heapify(heap)
        while heap:
            r, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            if syms[i] != a or j < 0 or syms[j] != b:
                continue  # stale: one side was merged since
            syms[i], syms[j] = a + b, None
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            for left, right in ((prv[i], i), (i, nxt[i])):
                if left >= 0 and right >= 0:
                    r2 = self.ranks.get((syms[left], syms[right]))
                    if r2 is not None:
                        heapq.heappush(heap, (r2, left, syms[left], syms[right]))
        out = []
        for s in syms:
            if s is None:
                continue
            i = self.ids.get(s)
            if i is not None:
                out.append(i)
            elif all(self.byte_ids[b] is not None for b in s.encode("utf-8")):
                out.extend(self.byte_ids[b] for b in s.encode("utf-8"))
            elif self.unk is not None:
                out.append(self.unk)
        return out

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids into text pieces that are always whole UTF-8 characters: the bytes of
    byte-fallback tokens wait here until their character completes."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)
