"""This process's memory as Linux reports it (/proc/self/status). A module of its own, with
no imports beyond the standard library, so that the bench's llama.cpp worker can read its
memory without loading edgert's kernels into its own footprint."""

from __future__ import annotations

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
