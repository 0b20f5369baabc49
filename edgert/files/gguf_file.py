"""A GGUF reader made for start-up time: header, metadata and tensor table parsed
from a memory map, tensors left where they lie.

gguf.GGUFReader builds a numpy view per array element; on Gemma's 262144-token
vocabulary that takes over ten seconds. Here numeric arrays are single views and
string arrays are walked by one compiled loop. Layout: ggml/docs/gguf.md
(magic, version, tensor count, metadata count, metadata, tensor infos, padding
to general.alignment, tensor data).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

from quant.cpu import kernel

# metadata value types
_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
            12: "<f8"}
_BOOL, _STRING, _ARRAY = 7, 8, 9
PAGE = mmap.PAGESIZE


class GGUFFormatError(ValueError):
    """The bytes do not follow the GGUF layout (truncated or corrupt)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: outermost first (GGUF lists dims innermost first)
    ggml_type: int
    offset: int  # absolute, in the file
    nbytes: int


@kernel
def _string_table(buf, start, count):
    """Offsets and lengths of `count` strings (u64 length, bytes) from `start`; returns where they end."""
    starts = np.empty(count, dtype=np.int64)
    lengths = np.empty(count, dtype=np.int64)
    p = start
    for i in range(count):
        if p + 8 > buf.shape[0]:
            return starts, lengths, -1
        n = 0
        for b in range(8):
            n |= np.int64(buf[p + b]) << (8 * b)
        if n < 0 or p + 8 + n > buf.shape[0]:
            return starts, lengths, -1
        starts[i] = p + 8
        lengths[i] = n
        p += 8 + n
    return starts, lengths, p


class StringArray(Sequence[str]):
    """Strings kept as UTF-8 bytes in one buffer: entry i is buf[starts[i]:starts[i] + lengths[i]].
    A vocabulary of 262144 tokens read from the map this way costs 3 MB of offsets, where a
    list of Python strings costs 30 MB; entries are decoded when asked for."""

    def __init__(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.buf, self.starts, self.lengths = buf, starts, lengths

    @classmethod
    def of(cls, strings) -> "StringArray":
        """A StringArray of any sequence of str (one passes through unchanged)."""
        if isinstance(strings, StringArray):
            return strings
        encoded = [t.encode("utf-8") for t in strings]
        lengths = np.array([len(b) for b in encoded], dtype=np.int32)
        starts = np.zeros(len(encoded), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), starts, lengths)

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, i: int) -> bytes:
        start = int(self.starts[i])
        return bytes(self.buf[start:start + int(self.lengths[i])])

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"string {i} of {len(self)}")
        return self.raw(i).decode("utf-8", errors="replace")

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class GGUFFile:
    """metadata: {key: value}; tensors: {name: TensorInfo}; data: the file as a read-only uint8 map."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._p = 0
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError, MemoryError) as e:
            raise GGUFFormatError(f"the header ends early or is damaged near byte {self._p} ({e})") from None

    def release_header(self) -> None:
        """Take the header's pages (metadata, vocabulary) out of the resident set once what reads
        it in bulk (the tokenizer's index) is built; a later lookup maps back just its page."""
        advise(self.data, self.data[:self.header_end], "MADV_DONTNEED")

    def array(self, info: TensorInfo) -> np.ndarray:
        """The tensor's stored bytes, as a view of the map."""
        return self.data[info.offset:info.offset + info.nbytes]

    # --- parsing ------------------------------------------------------------------------------

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._p + n > len(self.data):
            raise GGUFFormatError(f"the file ends inside its header (needs {n} bytes at byte {self._p})")
        view = memoryview(self.data[self._p:self._p + n])
        self._p += n
        return view

    def _unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self._take(size))[0]

    def _string(self) -> str:
        return bytes(self._take(self._unpack("<Q"))).decode("utf-8")

    def _value(self, vtype: int):
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype, count = self._unpack("<I"), self._unpack("<Q")
            if etype == _STRING:
                return self._strings(count)
            if etype not in _SCALARS:
                return [self._value(etype) for _ in range(count)]
            dt = np.dtype(_SCALARS[etype])
            values = np.frombuffer(self._take(count * dt.itemsize), dtype=dt)
            if count > 4096:  # a vocabulary's scores or types: an array, not a quarter-million Python objects
                return values
            return values.astype(bool).tolist() if etype == _BOOL else values.tolist()
        if vtype not in _SCALARS:
            raise GGUFFormatError(f"unknown metadata value type {vtype}")
        value = np.frombuffer(self._take(np.dtype(_SCALARS[vtype]).itemsize), dtype=_SCALARS[vtype])[0]
        return bool(value) if vtype == _BOOL else value.item()

    def _strings(self, count: int) -> list[str] | StringArray:
        starts, lengths, end = _string_table(self.data, self._p, count)
        if end < 0:
            raise GGUFFormatError(f"a string array of {count} entries runs past the end of the file")
        if count > 4096:  # a vocabulary or its merges: left in the map
            self._p = end
            return StringArray(self.data, starts, lengths.astype(np.int32))
        first = self._p
        blob = bytes(self.data[first:end])
        self._p = end
        return [blob[s - first:s - first + n].decode("utf-8") for s, n in zip(starts.tolist(), lengths.tolist())]

    def _parse(self) -> None:
        if bytes(self._take(4)) != b"GGUF":
            raise GGUFFormatError("it does not start with the GGUF magic bytes")
        version = self._unpack("<I")
        if version not in (2, 3):
            raise GGUFFormatError(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        self.metadata: dict = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._unpack("<Q") for _ in range(self._unpack("<I"))]
            infos.append((name, tuple(reversed(dims)), self._unpack("<I"), self._unpack("<Q")))
        align = int(self.metadata.get("general.alignment", 32))
        start = (self._p + align - 1) // align * align
        self.header_end = start
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, offset in infos:
            self.tensors[name] = TensorInfo(name, shape, ggml_type, start + offset, _nbytes(shape, ggml_type))


def advise(data: np.memmap, view: np.ndarray, advice: str) -> None:
    """madvise the whole pages of `view` (a view of `data`). MADV_DONTNEED: this process is
    done with them, they leave its resident set (and stay in the page cache, clean, for
    whoever reads them); MADV_RANDOM: no readahead around a page read (a lookup of one
    embedding row would otherwise map 128 KB about it)."""
    mm = getattr(data, "_mmap", None)
    if mm is None or not hasattr(mmap, advice):
        return
    base = data.ctypes.data
    start = view.ctypes.data - base
    first, last = -(-start // PAGE) * PAGE, (start + view.nbytes) // PAGE * PAGE
    if last > first:
        mm.madvise(getattr(mmap, advice), first, last - first)


def _nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    sizes = gguf.GGML_QUANT_SIZES.get(gguf.GGMLQuantizationType(ggml_type)) if ggml_type in _KNOWN_TYPES else None
    if sizes is None:
        raise GGUFFormatError(f"tensor type {ggml_type} is unknown to ggml")
    block, nbytes = sizes
    return int(np.prod(shape, dtype=np.int64)) // block * nbytes


_KNOWN_TYPES = {int(t) for t in gguf.GGMLQuantizationType}
