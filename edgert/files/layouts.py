"""The cache of kernel-ready weight layouts: a model's matrices in quant.layout's x8 layout,
built once from the GGUF's blocks and memory-mapped on every later start.

The GGUF stays untouched (llama.cpp still reads it); the cache is a file of its own under
`$XDG_CACHE_HOME/edgert/layouts` (default ~/.cache), named after the model file and keyed
by its path, size and modification time and by the layout's version, so that a changed
model or a new layout builds a new one. A build first deletes the caches that can never be
read again: of a model file that is gone or has changed, or of another layout version. Its pages take the place of the original matrices'
pages: the kernels read only the cache, the file's copies of those matrices are never
touched after the build (the pages the build read are dropped), and the few rows that an
embedding lookup reads of a tied table are all the file adds.

    page 0  b"EDGERTX8", u32 layout version, u32 n, u64 at: the index is n bytes at `at`
    data    each tensor's tiles, from page 1, each at a page-aligned offset
    index   JSON: {"model": {path, size, mtime_ns}, "tensors": {name: [offset, groups, group bytes]}}
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgert.files.gguf_file import advise
from quant import QTensor, layout

MAGIC = b"EDGERTX8"
_HEAD = struct.Struct("<8sIIQ")
PAGE = 4096
Progress = Callable[[int, int, str], None]  # (done, total, what), as the converter's


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgert" / "layouts"


def _identity(model: Path) -> dict:
    st = model.stat()
    return {"path": str(model.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_path(model: Path) -> Path:
    """Where the layout cache of `model` lives: one file per model file, layout version and content stamp."""
    key = json.dumps({**_identity(model), "layout": layout.VERSION}, sort_keys=True)
    return cache_dir() / f"{model.stem}-x8v{layout.VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.bin"


def packable(tensors: dict[str, QTensor], skip: Iterable[str] = ()) -> list[str]:
    """The matrices that have an x8 layout, in file order, but those in `skip`."""
    skip = set(skip)
    return [name for name, t in tensors.items() if name not in skip and layout.packable(t.qtype, t.shape)]


def with_layouts(model: Path, tensors: dict[str, QTensor], names: list[str], data: np.memmap | None = None,
                 progress: Progress | None = None) -> tuple[dict[str, QTensor], Path | None]:
    """`tensors` with the x8 layout attached to each of `names`, read from the cache (built
    first when missing or stale). Returns the tensors and the cache file; when the cache
    cannot be written (a read-only home), the layouts are built in memory instead and None
    is returned. `data` is the model file's map: the pages the build read are dropped from it."""
    if not names:
        return tensors, None
    path = cache_path(model)
    index = _read_index(path, model)
    if index is None or set(index) != set(names):
        try:
            index = _build(path, model, tensors, names, data, progress)
        except OSError:
            return {**tensors, **{n: tensors[n].with_layout() for n in names}}, None
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    out = dict(tensors)
    for name in names:
        offset, groups, group_bytes = index[name]
        tiles = mapped[offset:offset + groups * group_bytes].reshape(groups, group_bytes)
        out[name] = replace(tensors[name], packed=tiles)
        if data is not None:  # the file's rows are now read a row at a time, if at all (the token table)
            advise(data, tensors[name].raw, "MADV_RANDOM")
    return out, path


def _read_index(path: Path, model: Path | None) -> dict[str, list[int]] | None:
    """The cache's tensor index, or None if the cache is missing, of another model or layout, or
    damaged. With `model` None, any model's cache whose file still is as it was when built."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEAD.size)
            if len(head) < _HEAD.size or head[:8] != MAGIC:
                return None
            _, version, n, at = _HEAD.unpack(head)
            if version != layout.VERSION or at + n > size:
                return None
            f.seek(at)
            meta = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    try:
        if meta.get("model") != _identity(Path(meta["model"]["path"]) if model is None else model):
            return None
    except (OSError, KeyError, TypeError):  # the model file is gone, or the index is not ours
        return None
    tensors = meta.get("tensors", {})
    if any(offset + groups * group_bytes > at for offset, groups, group_bytes in tensors.values()):
        return None
    return tensors


def prune(directory: Path) -> list[Path]:
    """Delete the caches in `directory` that no model file can use again (their file is gone or
    changed, or their layout version is another), and temporary files of builds whose process
    is gone. Returns what was deleted. A process that has one mapped keeps reading it."""
    gone = []
    for path in directory.glob("*.bin"):
        if _read_index(path, None) is None:
            gone.append(path)
    for tmp in directory.glob(".*.tmp"):  # .NAME.PID.tmp
        pid = tmp.suffixes[-2][1:] if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and Path("/proc/self").exists():
            gone.append(tmp)
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def _build(path: Path, model: Path, tensors: dict[str, QTensor], names: list[str], data: np.memmap | None,
           progress: Progress | None) -> dict[str, list[int]]:
    """Write the cache to a temporary file beside it, then rename it into place: a build that
    is cut off leaves no cache that looks whole. Stale caches are pruned first. Returns the
    index it wrote."""
    index, offset = {}, PAGE
    for name in names:
        t = tensors[name]
        groups, group_bytes = t.shape[0] // layout.ROWS, t.raw.shape[1] * layout.ROWS
        index[name] = [offset, groups, group_bytes]
        offset += -(-groups * group_bytes // PAGE) * PAGE
    blob = json.dumps({"model": _identity(model), "tensors": index}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    prune(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for done, name in enumerate(names):
                t = tensors[name]
                if progress:
                    progress(done, len(names), name)
                f.seek(index[name][0])
                f.write(layout.pack(t.raw, t.qtype).data)
                if data is not None:
                    advise(data, t.raw, "MADV_DONTNEED")
            f.seek(offset)
            f.write(blob)
            f.seek(0)
            f.write(_HEAD.pack(MAGIC, layout.VERSION, len(blob), offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if progress:
        progress(len(names), len(names), "done")
    return index
