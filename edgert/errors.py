"""Typed errors. Every error edgert raises on bad input derives from EdgeRTError
and says what was wrong and what to do about it."""


class EdgeRTError(Exception):
    """Base class of every error edgert raises on purpose."""


class ModelFileError(EdgeRTError):
    """The model file is missing, truncated, corrupt, or lacks a tensor."""


class ArchitectureError(EdgeRTError):
    """The file or checkpoint is not an architecture edgert runs."""


class UnsupportedTypeError(EdgeRTError):
    """A tensor type (quantization) that edgert cannot read or write."""


class ContextOverflowError(EdgeRTError):
    """The prompt plus the requested tokens do not fit in the context."""


class CheckpointError(EdgeRTError):
    """A Hugging Face checkpoint directory that cannot be converted."""


def no_audio_tower(path) -> EdgeRTError:
    """What audio given to a model without an audio tower gets."""
    return EdgeRTError(f"{path} has no audio encoder: give llama.cpp's mmproj file for it (mmproj=, --mmproj, or an "
                       "mmproj*.gguf beside the model), or convert a checkpoint with an audio tower")
