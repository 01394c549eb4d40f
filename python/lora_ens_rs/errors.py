"""The exception hierarchy of lora_ens_rs.

Every error the engine raises is a :class:`LoraEnsError`; each class also subclasses the
built-in a caller would naturally catch (``FileNotFoundError``, ``ValueError``, ...). The
Rust bindings pick the class for each engine error in one place (``rust/lora-ens-py/src/error.rs``).
"""

from __future__ import annotations


class LoraEnsError(Exception):
    """Base class of every error raised by lora_ens_rs."""


class LoraEnsIOError(LoraEnsError, OSError):
    """A file could not be read or written."""


class MissingFileError(LoraEnsIOError, FileNotFoundError):
    """A model, adapter or data file does not exist."""


class ModelLoadError(LoraEnsError, ValueError):
    """A model file is not a valid GGUF, names an unsupported architecture or lacks a tensor."""


class TokenizerError(LoraEnsError, ValueError):
    """The tokenizer could not be built or could not encode its input."""


class LabelError(TokenizerError):
    """A label or answer choice cannot be scored with this tokenizer."""


class AdapterError(LoraEnsError, ValueError):
    """A LoRA adapter or ensemble manifest cannot be loaded or is refused."""


class InputError(LoraEnsError, ValueError):
    """An argument or input record is malformed or out of range."""


class DataError(InputError):
    """A dataset file has a record that cannot be read (the message names file and line)."""


class NumericalError(LoraEnsError, ArithmeticError):
    """A computation produced a non-finite value (NaN or infinite logits), with where."""


class ModelFetchError(LoraEnsError, RuntimeError):
    """The default model could not be downloaded or did not verify."""


class DeviceError(LoraEnsError, RuntimeError):
    """The requested device is not available in this build or on this machine."""


class EngineError(LoraEnsError, RuntimeError):
    """An internal engine failure (a bug: please report it with the message)."""
