"""The tokenizers that Gemma model files carry, from their tokenizer.ggml.* keys.

Two models, one class:

- "gemma4" (what `edgert convert` writes): byte-fallback BPE over raw UTF-8. Spaces
  become "▁", there is no pre-splitting, merges apply lowest rank first (leftmost on
  ties), a character with no token falls back to <0xXX> byte tokens. Special (control
  and user-defined) tokens are matched literally before BPE, leftmost-longest. This is
  what the `tokenizers` library does with Gemma's tokenizer.json; tests check it id for id.
- "llama" (llama.cpp's SentencePiece vocabulary with scores, as in its Gemma 3 files):
  encoded exactly as llama.cpp's SPM tokenizer does. Special tokens are cut out first,
  longest token text first (user-defined ones always, control ones when parsing
  specials); each remaining fragment has its spaces turned into "▁" and its characters
  merged pairwise, always the adjacent pair whose merged text is the token with the
  highest score (leftmost on ties); characters that never form a token become bytes.
  Tests check it against ids that llama.cpp produced.
"""

from __future__ import annotations

import codecs
import heapq
import re
from dataclasses import dataclass
from typing import Sequence

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
    scores: Sequence[float] | None = None  # SentencePiece piece scores ("llama" model)
    add_space_prefix: bool = False  # "llama": a fragment after a special token gets a leading space


class Tokenizer:
    def __init__(self, data: TokenizerData):
        self.tokens = data.tokens
        self.types = data.types or [NORMAL] * len(data.tokens)
        self.bos, self.eos, self.eot, self.pad = data.bos, data.eos, data.eot, data.pad
        self.add_bos = data.add_bos
        self.spm = data.model == "llama"
        if self.spm:
            self._init_spm(data)
            return
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
        if self.spm:
            return ids + self._encode_spm(text, parse_special)
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

    # --- llama.cpp's SentencePiece ("llama") model --------------------------------------------

    def _init_spm(self, data: TokenizerData) -> None:
        if data.scores is None or len(data.scores) != len(self.tokens):
            raise ValueError("a SentencePiece ('llama') vocabulary needs one score per token")
        self.scores = [float(x) for x in data.scores]
        self.add_space_prefix = data.add_space_prefix
        self.ids = {t: i for i, t in enumerate(self.tokens)}  # as llama.cpp: every type, the last id wins
        self.byte_ids = [self.ids.get(f"<0x{b:02X}>", self.ids.get(chr(b))) for b in range(256)]
        self.unk = data.unk
        # llama.cpp's special-token cache: control, user-defined and unknown tokens, longest first
        order = sorted((i for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED, UNKNOWN) and self.tokens[i]),
                       key=lambda i: -len(self.tokens[i].encode("utf-8")))
        self._specials = [(self.tokens[i], i, self.types[i] == USER_DEFINED) for i in order]

    def _encode_spm(self, text: str, parse_special: bool) -> list[int]:
        # cut out special tokens: each in turn, longest first, at every leftmost occurrence
        fragments: list[str | int] = [text] if text else []
        for piece, i, user_defined in self._specials:
            if not (parse_special or user_defined) or piece not in text:
                continue
            cut: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int):
                    cut.append(frag)
                    continue
                start = 0
                while (hit := frag.find(piece, start)) >= 0:
                    if hit > start:
                        cut.append(frag[start:hit])
                    cut.append(i)
                    start = hit + len(piece)
                if start < len(frag):
                    cut.append(frag[start:])
            fragments = cut
        out: list[int] = []
        prev_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
            else:
                prefix = " " if self.add_space_prefix and prev_special else ""
                out += self._spm((prefix + frag).replace(" ", SPACE))
                prev_special = False
        return out

    def _spm(self, text: str) -> list[int]:
        """llama.cpp's llm_tokenizer_spm_session over one fragment (spaces already "▁")."""
        syms: list[str] = list(text)  # one symbol per character; "" once merged away
        n = len(syms)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int]] = []  # (-score, left, merged length): best score, then leftmost

        def add(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                i = self.ids.get(syms[left] + syms[right])
                if i is not None:
                    heapq.heappush(heap, (-self.scores[i], left, len(syms[left]) + len(syms[right])))

        for i in range(n - 1):
            add(i, i + 1)
        while heap:
            _, left, size = heapq.heappop(heap)
            right = nxt[left]
            if right < 0 or not syms[left] or len(syms[left]) + len(syms[right]) != size:
                continue  # stale: one side has changed since
            syms[left], syms[right] = syms[left] + syms[right], ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            add(prv[left], left)
            add(left, nxt[left])
        out = []
        # every merged symbol is a token; a single character may not be, and becomes bytes
        # (llama.cpp's rev_merge re-segmentation never applies for that reason)
        for sym in syms:
            if not sym:
                continue
            i = self.ids.get(sym)
            if i is not None:
                out.append(i)
            else:
                out.extend(self.byte_ids[b] if self.byte_ids[b] is not None else self.unk for b in sym.encode("utf-8"))
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
