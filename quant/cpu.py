"""The host CPU, read once, and every Numba setting in one place.

The kernels come in three SIMD flavors, chosen here and nowhere else from what LLVM
says the host has (`llvmlite.binding.get_host_cpu_features()`):

- "avx512": x86 with AVX512-VNNI (Zen 4 and 5, Ice Lake and later Xeons): the x8 layout's
  dot products are vpdpbusd; the row layout runs as in "avx2".
- "avx2": x86 with AVX2 (and F16C). The 8-bit dot products call vpmaddubsw and
  vpmaddwd directly, as llama.cpp's AVX2 path does; the x8 layout's take the VEX form of
  vpdpbusd where the CPU has AVX-VNNI (Alder Lake, Zen 5).
- "generic": plain LLVM vector IR (widen, multiply, reduce) that any target
  compiles. On an ARMv8.2 core with the dot-product extension (the Raspberry
  Pi 5's Cortex-A76) LLVM turns that reduction into `sdot`; tests check it does.

EDGERT_SIMD=generic forces the portable flavor (for testing it on an x86 host).
Compiled kernels are cached on disk per flavor and source version, so a second start does not
recompile; NUMBA_CACHE_DIR, when set, is honoured instead.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import llvmlite.binding as llvm
import numba

FLAVORS = ("avx512", "avx2", "generic")
AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512vnni"})
# cores (LLVM's names) whose one-token products from memory run faster a group at a time than in pairs
# (quant.packed.GEMV_PAIRS): AMD's, the Zen 4 that splits 512-bit vectors and the Zen 5 that does not
GEMV_UNPAIRED_CORES = ("znver4", "znver5")


def host_features() -> frozenset[str]:
    """The features LLVM enables for this CPU, without the '+': {'avx2', 'f16c', 'dotprod', ...}."""
    flat = llvm.get_host_cpu_features().flatten()
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))


def pick_flavor(features: frozenset[str]) -> str:
    if not {"avx2", "f16c", "fma"} <= features:
        return "generic"
    return "avx512" if AVX512 <= features else "avx2"


def describe() -> str:
    """One line for logs and benchmarks: CPU name, flavor, and the SIMD features that matter."""
    wanted = ("avx2", "avxvnni", "avx512vnni", "neon", "dotprod", "i8mm")
    present = [f for f in wanted if f in FEATURES]
    return f"{llvm.get_host_cpu_name()} ({platform.machine()}), kernels: {FLAVOR} [{' '.join(present)}]"


def physical_cores() -> int:
    """Distinct (package, core) pairs in sysfs; os.cpu_count() where sysfs says nothing."""
    cores = set()
    for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            continue
    return len(cores) or os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """Threads the kernels use from now on (None: the physical cores). Returns the count."""
    n = physical_cores() if n is None else int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, got {n}")
    numba.set_num_threads(n)
    return n


FEATURES = host_features()
PAIRS_IN_GEMV = llvm.get_host_cpu_name() not in GEMV_UNPAIRED_CORES
FLAVOR = os.environ.get("EDGERT_SIMD") or pick_flavor(FEATURES)
if FLAVOR not in FLAVORS:
    raise ValueError(f"EDGERT_SIMD must be one of {', '.join(FLAVORS)}, got {FLAVOR!r}")


def _sources_digest() -> str:
    """Numba invalidates a cached kernel when its own file changes, not when an intrinsic
    it inlines (quant/simd.py, a format's decoder in quant/formats/) does: the cache
    directory is named after all kernel sources."""
    root = Path(__file__).resolve().parent.parent
    files = sorted((root / "quant").rglob("*.py")) + [root / "edgert" / "kernels.py"]
    digest = hashlib.sha256()
    for f in files:
        if f.exists():
            digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


if not os.environ.get("NUMBA_CACHE_DIR"):
    _base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    numba.config.CACHE_DIR = str(_base / "edgert" / "numba" / f"{FLAVOR}-{_sources_digest()}")

# Every kernel is compiled with these flags, cached on disk, and releases the GIL.
# reassoc lets LLVM vectorize float reductions; results then differ from the numpy
# references by rounding only, which the tests bound.
kernel = functools.partial(numba.njit, cache=True, nogil=True, boundscheck=False, error_model="numpy",
                           fastmath={"reassoc", "contract", "nsz"})
