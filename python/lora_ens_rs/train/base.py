"""The frozen base model for training: the same weights the engine serves, in fp32 torch.

    from lora_ens_rs.train.base import load_base
    base = load_base("model.gguf")        # or a transformers model directory, or None (default)
    base.model, base.tokenizer, base.sha256, base.n_layer

A GGUF file is dequantized by transformers (``from_pretrained(dir, gguf_file=name)``, about
20 s for SmolLM2-135M); the result is cached as a transformers model directory (config and
``model.safetensors``) under ``<cache_dir>/train-base/<sha256 of the GGUF>``, written into a
temporary directory and renamed into place, so the next run loads it in seconds. Text is
always tokenized with the engine's tokenizer (:class:`lora_ens_rs.Tokenizer`), which follows
the GGUF's pre-tokenizer where transformers' GGUF tokenizer does not.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lora_ens_rs import _core
from lora_ens_rs.atomic import atomic_directory
from lora_ens_rs.errors import InputError, LoraEnsIOError, MissingFileError, ModelLoadError

#: Subdirectory of the cache holding dequantized base models.
CACHE_SUBDIR = "train-base"


@dataclass
class BaseModel:
    """A frozen fp32 causal LM (transformers' LLaMA) with the engine's tokenizer.

    Attributes:
        model: the transformers model, in eval mode, every parameter frozen.
        tokenizer: the engine tokenizer of the same model.
        path: the GGUF file or model directory it was loaded from (absolute).
        gguf: the GGUF file the engine serves (``None`` for a model directory).
        sha256: sha256 of the GGUF file (``None`` for a model directory).
    """

    model: nn.Module
    tokenizer: _core.Tokenizer
    path: str
    gguf: str | None
    sha256: str | None

    @property
    def n_layer(self) -> int:
        """Number of decoder layers."""
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        return int(self.model.config.hidden_size)

    @property
    def decoder(self) -> nn.Module:
        """The decoder stack (``model.model``: embeddings, layers, final norm, rotary)."""
        return self.model.model

    @property
    def lm_head(self) -> nn.Linear:
        """The output layer (tied to the embeddings in SmolLM2)."""
        return self.model.lm_head


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _from_pretrained(directory: str | Path, **kwargs: object) -> nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(
                directory, dtype=torch.float32, attn_implementation="sdpa", **kwargs
            )
    finally:
        hf_logging.set_verbosity(verbosity)


def base_cache_path(sha256: str, cache_root: str | os.PathLike[str] | None = None) -> Path:
    """Directory of the cached dequantized model of the GGUF with this sha256.

    Args:
        sha256: the GGUF file's sha256.
        cache_root: the cache directory (default :func:`lora_ens_rs.cache_dir`).

    Returns:
        ``<cache_root>/train-base/<sha256>``.
    """
    root = Path(cache_root) if cache_root is not None else Path(_core.cache_dir())
    return root / CACHE_SUBDIR / sha256


def _write_cache(model: nn.Module, target: Path) -> None:
    """Save ``model`` as a model directory at ``target``, atomically (temp dir + rename);
    a copy another process wrote there meanwhile is kept.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF, so the config is
    written without its ``quantization_config`` and the weights with safetensors (tied
    tensors once).
    """
    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    try:
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    except FileExistsError:
        if not (target / "config.json").is_file():  # not a concurrent writer's copy
            raise


def load_base(
    path: str | os.PathLike[str] | None = None,
    *,
    cache: bool = True,
    cache_root: str | os.PathLike[str] | None = None,
) -> BaseModel:
    """Load the frozen base model from a GGUF file or a transformers model directory.

    Args:
        path: a ``.gguf`` file, a model directory (``config.json`` + weights +
            ``tokenizer.json``), or ``None`` for the default model.
        cache: reuse / write the dequantized copy of a GGUF under ``cache_root``.
        cache_root: cache directory (default :func:`lora_ens_rs.cache_dir`).

    Returns:
        The :class:`BaseModel`, frozen, in eval mode.

    Raises:
        MissingFileError: ``path`` does not exist.
        ModelLoadError: transformers cannot load it.
        LoraEnsIOError: the cache cannot be written.

    Example:
        >>> base = load_base(tiny_gguf)  # the tiny test model
        >>> base.n_layer, base.tokenizer.encode(" A")
        (2, [330])
    """
    if path is None:
        path = _core.default_model_path()
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise MissingFileError(f"base model {str(path)!r} does not exist")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model directory {str(p)!r} has no config.json")
        tok_file = p / "tokenizer.json"
        if not tok_file.is_file():
            raise MissingFileError(f"model directory {str(p)!r} has no tokenizer.json")
        try:
            model = _from_pretrained(p)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load model directory {str(p)!r}: {e}") from e
        return BaseModel(_freeze(model), _core.Tokenizer.from_file(tok_file), str(p), None, None)
    if p.suffix.lower() != ".gguf":
        raise InputError(f"base model {str(p)!r} must be a .gguf file or a model directory")
    tokenizer = _core.Tokenizer.from_gguf(p)
    sha = _core.sha256_file(str(p))
    cached = base_cache_path(sha, cache_root)
    model = None
    if cache and (cached / "config.json").is_file():
        try:
            model = _from_pretrained(cached)
        except (OSError, ValueError):
            shutil.rmtree(cached, ignore_errors=True)  # a damaged copy: rebuild it
            model = None
    if model is None:
        try:
            model = _from_pretrained(p.parent, gguf_file=p.name)
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"transformers cannot load GGUF {str(p)!r}: {e}") from e
        if cache:
            try:
                _write_cache(model, cached)
            except OSError as e:
                raise LoraEnsIOError(
                    f"cannot write the base model cache {str(cached)!r}: {e}"
                ) from e
    return BaseModel(_freeze(model), tokenizer, str(p), str(p), sha)
