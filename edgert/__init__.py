"""edgert: run Gemma 4 E2B/E4B on a CPU, from a GGUF file.

    import edgert
    model = edgert.load("e2b.gguf")
    for piece in model.generate("Why is the sky blue?", max_new_tokens=64):
        print(piece, end="", flush=True)
"""

from edgert.errors import (
    ArchitectureError,
    CheckpointError,
    ContextOverflowError,
    EdgeRTError,
    ModelFileError,
    UnsupportedTypeError,
)

__all__ = [
    "load", "convert", "Model", "EdgeRTError", "ModelFileError", "ArchitectureError",
    "UnsupportedTypeError", "ContextOverflowError", "CheckpointError",
]


def __getattr__(name):
    # keep `import edgert` cheap: the model and converter load on first use
    if name in ("load", "Model"):
        from edgert import model

        return getattr(model, name)
    if name == "convert":
        from edgert.files.convert import convert

        return convert
    raise AttributeError(name)
