"""This process's memory as Linux reports it (/proc/self/status), and the one call that hands
the C heap's free pages back. A module of its own, with no imports beyond the standard
library, so that the bench's llama.cpp worker can read its memory without loading edgert's
kernels into its own footprint."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import NamedTuple


class Memory(NamedTuple):
    anon: int  # bytes of anonymous resident memory now
    file: int  # bytes of file-backed (and shared) resident memory now
    peak: int  # the peak resident set so far (VmHWM)


def memory() -> Memory:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
    return Memory(fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0),
                  fields.get("VmHWM", 0))


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back this way
        return None


_malloc_trim = _glibc()


def release_free_heap() -> None:
    """Return the heap's free pages to the system. glibc keeps freed buffers of a few MB
    (a prompt step's activations) mapped for reuse, so they stay in the resident set while
    the rest of the weights are mapped in; called where those buffers have just died."""
    if _malloc_trim is not None:
        _malloc_trim(0)
