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
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgert.files.gguf_file import StringArray
from quant.cpu import kernel

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # ▁


@dataclass(frozen=True)
class TokenizerData:
    """The tokenizer as the model file stores it (llama.cpp's tokenizer.ggml.* keys)."""

    model: str
    tokens: Sequence[str]
    types: Sequence[int]
    merges: Sequence[str]
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
    """Text <-> ids. The vocabulary stays a StringArray (in the model file's map when read
    from one), found through a hash index; the merge loops run compiled over token ids, so
    a 262144-token vocabulary costs a few MB rather than a dict of Python strings."""

    def __init__(self, data: TokenizerData):
        self.tokens = StringArray.of(data.tokens)
        n = len(self.tokens)
        self.types = np.asarray(data.types, dtype=np.int32) if len(data.types) else np.full(n, NORMAL, np.int32)
        self.bos, self.eos, self.eot, self.pad = data.bos, data.eos, data.eot, data.pad
        self.add_bos = data.add_bos
        self.spm = data.model == "llama"
        if self.spm:
            self._init_spm(data)
            return
        self._index = _build_index(self.tokens, self.types != UNUSED)
        self._pairs = _pair_table(self.tokens, self._index, StringArray.of(data.merges))
        self._priority_of_id = np.zeros(0, dtype=np.int64)
        self._byte_ids = np.array([_or(self.token_id(f"<0x{b:02X}>"), -1) for b in range(256)], dtype=np.int64)
        self._special_scan = _SpecialScan(self.tokens, np.isin(self.types, (CONTROL, USER_DEFINED)))
        unknown = np.flatnonzero(self.types == UNKNOWN)
        self.unk = data.unk if data.unk is not None else (
            int(unknown[0]) if len(unknown) else self.token_id("<unk>"))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text`, or None."""
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        i = _find(self._index, self.tokens.buf, self.tokens.starts, self.tokens.lengths, raw, 0, len(raw))
        return None if i < 0 else int(i)

    def token_bytes(self, i: int, special: bool = True) -> bytes:
        """The bytes token `i` stands for; special=False: none for a control token (<eos>,
        <turn|>, <eoa>...), as llama.cpp's token_to_piece without `special`."""
        if not special and self.types[i] == CONTROL:
            return b""
        raw = self.tokens.raw(i)
        if self.types[i] == BYTE:
            return bytes([int(raw[3:5], 16)])
        return raw.replace(_SPACE_UTF8, b" ")

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        """Text -> ids. `parse_special`: control tokens written in the text become their ids."""
        ids = [self.bos] if add_bos and self.bos is not None else []
        return ids + self.encode_split(text, None, parse_special)[0]

    def encode_split(self, text: str, at: int | None,
                     parse_special: bool = True) -> tuple[list[int], int | None]:
        """encode(text), and how many of its ids are those of text[:at]: where the text's
        special tokens begin one at character `at`, nothing is merged across it, so the ids
        are encode(text[:at]) and then encode(text[at:]) (a prompt and its history, encoded
        once). None where no special token begins at `at`."""
        ids: list[int] = []
        split = None
        for begins_at, piece in self._pieces(text, parse_special, at):
            if isinstance(piece, str):
                ids += self._merge(piece)
                continue
            if begins_at:
                split = len(ids)
            ids.append(piece)
        return ids, split

    def _pieces(self, text: str, parse_special: bool, at: int | None):
        """The text as the merges take it: (whether it begins at character `at`, a special
        token's id) or (False, a fragment of text to merge), in order."""
        if self.spm:
            yield from self._pieces_spm(text, parse_special, at)
            return
        if not parse_special:
            yield False, text
            return
        raw = text.encode("utf-8")
        mark = -1 if at is None else len(text[:at].encode("utf-8"))
        start = 0
        for s, e in self._special_scan.spans(raw):
            yield False, raw[start:s].decode("utf-8")
            yield s == mark, self.token_id(raw[s:e].decode("utf-8"))
            start = e
        yield False, raw[start:].decode("utf-8")

    def _merge(self, text: str) -> list[int]:
        """One fragment through the merge loop: BPE by merge rank ("gemma4"), or SentencePiece
        by piece score ("llama"); spaces become "▁" first."""
        if not text:
            return []
        raw = np.frombuffer(text.replace(" ", SPACE).encode("utf-8"), dtype=np.uint8)
        t = self.tokens
        return _merge_loop(raw, self._index, t.buf, t.starts, t.lengths, self._pairs[0], self._pairs[1],
                           self._priority_of_id, self._byte_ids, _or(self.unk, -1), self.spm).tolist()

    # --- llama.cpp's SentencePiece ("llama") model --------------------------------------------

    def _init_spm(self, data: TokenizerData) -> None:
        if data.scores is None or len(data.scores) != len(self.tokens):
            raise ValueError("a SentencePiece ('llama') vocabulary needs one score per token")
        self.add_space_prefix = data.add_space_prefix
        self._index = _build_index(self.tokens, np.ones(len(self.tokens), dtype=bool))  # as llama.cpp: the last id wins
        self._pairs = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        # merges go best score first: a token's priority is its place among the distinct scores, best first
        scores = np.asarray(data.scores, dtype=np.float32)
        distinct = np.unique(scores)[::-1]
        self._priority_of_id = np.searchsorted(-distinct, -scores).astype(np.int64)
        self._byte_ids = np.array([_or(self.token_id(f"<0x{b:02X}>"), _or(self.token_id(chr(b)), -1))
                                   for b in range(256)], dtype=np.int64)
        self.unk = data.unk
        # llama.cpp's special-token cache: control, user-defined and unknown tokens, longest first
        special = np.flatnonzero(np.isin(self.types, (CONTROL, USER_DEFINED, UNKNOWN)) & (self.tokens.lengths > 0))
        order = sorted(special.tolist(), key=lambda i: -int(self.tokens.lengths[i]))
        self._specials = [(self.tokens[i], i, self.types[i] == USER_DEFINED) for i in order]
        self._special_scan = _SpecialScan(self.tokens, np.isin(self.types, (CONTROL, USER_DEFINED, UNKNOWN)))

    def _pieces_spm(self, text: str, parse_special: bool, at: int | None):
        # cut out special tokens: each in turn, longest first, at every leftmost occurrence;
        # a fragment is (its character offset, its text or a special token's id)
        fragments: list[tuple[int, str | int]] = [(0, text)] if text else []
        present = self._special_scan.present(text.encode("utf-8"))  # of thousands, the few in the text
        for piece, i, user_defined in self._specials:
            if not (parse_special or user_defined) or piece not in present:
                continue
            cut: list[tuple[int, str | int]] = []
            for offset, frag in fragments:
                if isinstance(frag, int):
                    cut.append((offset, frag))
                    continue
                start = 0
                while (hit := frag.find(piece, start)) >= 0:
                    if hit > start:
                        cut.append((offset + start, frag[start:hit]))
                    cut.append((offset + hit, i))
                    start = hit + len(piece)
                if start < len(frag):
                    cut.append((offset + start, frag[start:]))
            fragments = cut
        prev_special = True
        for offset, frag in fragments:
            if isinstance(frag, int):
                yield offset == at, frag
                prev_special = True
            else:
                prefix = " " if self.add_space_prefix and prev_special else ""
                yield False, prefix + frag
                prev_special = False

    def decode(self, ids, special: bool = True) -> str:
        """Ids -> text; special=False leaves control tokens out."""
        return b"".join(self.token_bytes(i, special) for i in ids).decode("utf-8", errors="replace")

    def stream(self, special: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, special)


class StreamDecoder:
    """Turns ids into text pieces that are always whole UTF-8 characters: the bytes of
    byte-fallback tokens wait here until their character completes."""

    def __init__(self, tokenizer: Tokenizer, special: bool = True):
        self.tokenizer, self.special = tokenizer, special
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(self.tokenizer.token_bytes(token_id, self.special))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


_SPACE_UTF8 = SPACE.encode("utf-8")


class _SpecialScan:
    """Where a vocabulary's special tokens occur in a text, found in one compiled pass over
    its UTF-8 bytes: from each byte, the text's hash grows a byte at a time while it is the
    hash of some special token's beginning (a table of those hashes), and a hash index over
    the special tokens alone is probed at each length that one of them has. Thousands of
    special tokens (Gemma 3's vocabulary holds 6,414, most of them runs of whitespace) then
    cost one pass, where a search for each of them, or a regular expression of them all,
    took 10-17 us a token, two to four times the merges."""

    def __init__(self, tokens: StringArray, special: np.ndarray):
        self.tokens = tokens
        self.keep = special & (tokens.lengths > 0)
        self.index = _build_index(tokens, self.keep)
        lengths = tokens.lengths[self.keep]
        self.is_length = np.zeros(int(lengths.max(initial=0)) + 1, dtype=np.bool_)
        self.is_length[lengths] = True
        self.beginnings = _beginnings(tokens.buf, tokens.starts, tokens.lengths, self.keep,
                                      np.zeros(len(self.index) * 16, dtype=np.bool_))

    def spans(self, raw: bytes) -> np.ndarray:
        """(start, end) byte offsets of the special tokens in raw, leftmost first and at each
        place the longest, none overlapping: what a regular expression of them all, longest
        first, finds (re.finditer)."""
        return self._scan(raw, every=False)[0]

    def present(self, raw: bytes) -> set[str]:
        """Every special token that occurs in raw, overlapping ones included."""
        return {self.tokens[i] for i in np.flatnonzero(self._scan(raw, every=True)[1])}

    def _scan(self, raw: bytes, every: bool):
        t = self.tokens
        return _special_spans(np.frombuffer(raw, dtype=np.uint8), self.index, t.buf, t.starts, t.lengths,
                              self.is_length, self.beginnings, every)


def _or(value, default):
    return default if value is None else value


# --- compiled parts: a hash index over the vocabulary, the pair table, the merge loop ----------

def _build_index(tokens: StringArray, keep: np.ndarray) -> np.ndarray:
    """An open-addressing table (int32 ids, -1 empty) of the tokens where `keep`, at most half full."""
    bits = max(4, int(np.ceil(np.log2(max(int(np.count_nonzero(keep)), 1) * 2))))
    return _index_fill(np.full(1 << bits, -1, dtype=np.int32), tokens.buf, tokens.starts, tokens.lengths, keep)


def _pair_table(tokens: StringArray, index: np.ndarray, merges: StringArray) -> tuple[np.ndarray, np.ndarray]:
    """The merges as (sorted keys id_a << 32 | id_b, their ranks); the first of repeated pairs wins."""
    keys, ranks = _merge_pairs(index, tokens.buf, tokens.starts, tokens.lengths, merges.buf, merges.starts,
                               merges.lengths)
    order = np.lexsort((ranks, keys))
    keys, ranks = keys[order], ranks[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], ranks[first]


_HASH_START = np.uint64(0xCBF29CE484222325)  # FNV-1a's offset basis: the hash of no bytes


@kernel
def _hash_step(h, byte):
    """FNV-1a's hash h of some bytes -> the hash of them and then `byte`."""
    return (h ^ np.uint64(byte)) * np.uint64(0x100000001B3)


@kernel
def _hash(text, start, end):
    """FNV-1a over text[start:end]."""
    h = _HASH_START
    for p in range(start, end):
        h = _hash_step(h, text[p])
    return h


@kernel
def _same(buf, start, length, text, s, e):
    if e - s != length:
        return False
    for p in range(length):
        if buf[start + p] != text[s + p]:
            return False
    return True


@kernel
def _index_fill(table, buf, starts, lengths, keep):
    mask = np.uint64(len(table) - 1)
    for i in range(len(starts)):
        if not keep[i]:
            continue
        s, n = starts[i], lengths[i]
        h = _hash(buf, s, s + n) & mask
        while True:
            j = table[h]
            if j < 0 or _same(buf, starts[j], lengths[j], buf, s, s + n):
                table[h] = i  # a repeated spelling: the last id wins, as in a dict built in order
                break
            h = (h + np.uint64(1)) & mask
    return table


@kernel
def _find(table, buf, starts, lengths, text, s, e):
    """The id spelled text[s:e], or -1."""
    return _probe(table, buf, starts, lengths, text, s, e, _hash(text, s, e))


@kernel
def _probe(table, buf, starts, lengths, text, s, e, h):
    """_find, given text[s:e]'s hash."""
    mask = np.uint64(len(table) - 1)
    h &= mask
    while True:
        j = table[h]
        if j < 0 or _same(buf, starts[j], lengths[j], text, s, e):
            return j
        h = (h + np.uint64(1)) & mask


@kernel
def _beginnings(buf, starts, lengths, keep, table):
    """table (a power of two long) with True at the hash (_hash, modulo its length) of every
    beginning of the tokens where `keep`, the whole token included."""
    mask = np.uint64(len(table) - 1)
    for i in range(len(starts)):
        if keep[i]:
            h = _HASH_START
            for p in range(starts[i], starts[i] + lengths[i]):
                h = _hash_step(h, buf[p])
                table[h & mask] = True
    return table


@kernel
def _special_spans(text, table, buf, starts, lengths, is_length, beginnings, every):
    """The tokens in `table` found in text, as (start, end) pairs: at each place the longest,
    the search going on after it. With `every`, rather the ids of all that occur anywhere,
    overlapping ones too, as a mask over the vocabulary. is_length[n]: whether some token in
    the table is n bytes long; beginnings: _beginnings' table of them (a text that does not
    begin one ends the search from its first byte)."""
    n = len(text)
    spans = np.empty((0 if every else n, 2), dtype=np.int64)
    seen = np.zeros(len(starts) if every else 0, dtype=np.bool_)
    found = 0
    s = 0
    while s < n:
        h = _HASH_START  # _hash of text[s:e], grown a byte at a time
        end = -1
        for e in range(s + 1, min(n, s + len(is_length) - 1) + 1):
            h = _hash_step(h, text[e - 1])
            if not beginnings[h & np.uint64(len(beginnings) - 1)]:
                break
            if is_length[e - s]:
                j = _probe(table, buf, starts, lengths, text, s, e, h)
                if j >= 0:
                    end = e
                    if every:
                        seen[j] = True
        if end >= 0 and not every:
            spans[found, 0], spans[found, 1] = s, end
            found += 1
            s = end
        else:
            s += 1
    return spans[:found], seen


@kernel
def _merge_pairs(table, buf, starts, lengths, mbuf, mstarts, mlengths):
    """Each merge "a b" as the key id_a << 32 | id_b and its rank; merges of unknown parts dropped."""
    keys = np.empty(len(mstarts), dtype=np.int64)
    ranks = np.empty(len(mstarts), dtype=np.int64)
    n = 0
    for r in range(len(mstarts)):
        s, e = mstarts[r], mstarts[r] + mlengths[r]
        space = s
        while space < e and mbuf[space] != 32:
            space += 1
        if space >= e:
            continue
        a = _find(table, buf, starts, lengths, mbuf, s, space)
        b = _find(table, buf, starts, lengths, mbuf, space + 1, e)
        if a >= 0 and b >= 0:
            keys[n] = (np.int64(a) << 32) | b
            ranks[n] = r
            n += 1
    return keys[:n], ranks[:n]


@kernel
def _heap_push(heap, size, value):
    i = size
    heap[i] = value
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= heap[i]:
            break
        heap[parent], heap[i] = heap[i], heap[parent]
        i = parent
    return size + 1


@kernel
def _heap_pop(heap, size):
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[i] <= heap[child]:
            break
        heap[i], heap[child] = heap[child], heap[i]
        i = child
    return top, size


@kernel
def _priority(left, right, sid, lo, hi, text, table, buf, starts, lengths, pair_keys, pair_ranks, priority_of_id,
              spm):
    """When the pair of symbols left, right merges (lower first), or -1 if never: BPE, the
    merge's rank; SentencePiece, the merged piece's score order."""
    if left < 0 or right < 0:
        return -1
    if spm:
        merged = _find(table, buf, starts, lengths, text, lo[left], hi[right])
        return -1 if merged < 0 else priority_of_id[merged]
    if sid[left] < 0 or sid[right] < 0:
        return -1
    key = (np.int64(sid[left]) << 32) | sid[right]
    k = np.searchsorted(pair_keys, key)
    return pair_ranks[k] if k < len(pair_keys) and pair_keys[k] == key else -1


@kernel
def _merge_loop(text, table, buf, starts, lengths, pair_keys, pair_ranks, priority_of_id, byte_ids, unk, spm):
    """The UTF-8 `text` (spaces already "▁") split into characters, adjacent symbols merged
    best pair first (ties: leftmost), then each symbol as its token, or as byte tokens.

    BPE ("gemma4", as the tokenizers library): pairs by merge rank; a symbol that is no token
    becomes its bytes if every byte has a token, else unk. SentencePiece ("llama", as llama.cpp's
    llm_tokenizer_spm_session): pairs whose text is a token, best score first; a symbol that
    is no token becomes byte tokens, unk for a byte without one."""
    n = 0
    lo = np.empty(len(text), dtype=np.int64)  # symbol i is text[lo[i]:hi[i]]
    for p in range(len(text)):
        if text[p] & 0xC0 != 0x80:  # a UTF-8 lead byte starts a character
            lo[n] = p
            n += 1
    lo = lo[:n]
    hi = np.empty(n, dtype=np.int64)
    hi[:n - 1] = lo[1:]
    hi[n - 1] = len(text)
    sid = np.empty(n, dtype=np.int64)  # the symbol's token id, -1 none, -2 merged away
    for i in range(n):
        sid[i] = _find(table, buf, starts, lengths, text, lo[i], hi[i])
    nxt = np.arange(1, n + 1)
    nxt[n - 1] = -1
    prv = np.arange(-1, n - 1)

    # heap entries: priority << 32 | left; an entry is live while its pair still has that priority
    heap = np.empty(3 * n + 1, dtype=np.int64)
    size = 0
    for i in range(n - 1):
        r = _priority(i, i + 1, sid, lo, hi, text, table, buf, starts, lengths, pair_keys, pair_ranks,
                      priority_of_id, spm)
        if r >= 0:
            size = _heap_push(heap, size, (r << 32) | i)
    while size > 0:
        top, size = _heap_pop(heap, size)
        left, r = top & 0xFFFFFFFF, top >> 32
        if sid[left] == -2:
            continue
        right = nxt[left]
        if _priority(left, right, sid, lo, hi, text, table, buf, starts, lengths, pair_keys, pair_ranks,
                     priority_of_id, spm) != r:
            continue  # stale: one side has changed since
        hi[left] = hi[right]
        sid[left] = _find(table, buf, starts, lengths, text, lo[left], hi[left])
        sid[right] = -2
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        r2 = _priority(prv[left], left, sid, lo, hi, text, table, buf, starts, lengths, pair_keys, pair_ranks,
                       priority_of_id, spm)
        if r2 >= 0:
            size = _heap_push(heap, size, (r2 << 32) | prv[left])
        r2 = _priority(left, nxt[left], sid, lo, hi, text, table, buf, starts, lengths, pair_keys, pair_ranks,
                       priority_of_id, spm)
        if r2 >= 0:
            size = _heap_push(heap, size, (r2 << 32) | left)

    out = np.empty(len(text), dtype=np.int64)
    m = 0
    i = 0 if n else -1
    while i >= 0:
        if sid[i] >= 0:
            out[m] = sid[i]
            m += 1
        elif spm:  # every byte a byte token, or unk
            for p in range(lo[i], hi[i]):
                t = byte_ids[text[p]] if byte_ids[text[p]] >= 0 else unk
                if t >= 0:
                    out[m] = t
                    m += 1
        else:
            whole = True
            for p in range(lo[i], hi[i]):
                whole = whole and byte_ids[text[p]] >= 0
            if whole:
                for p in range(lo[i], hi[i]):
                    out[m] = byte_ids[text[p]]
                    m += 1
            elif unk >= 0:
                out[m] = unk
                m += 1
        i = nxt[i]
    return out[:m]
