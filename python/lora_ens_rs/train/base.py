"""The frozen base model for training: the same weights the engine serves, in torch (fp32
unless asked otherwise).

    from lora_ens_rs.train.base import load_base
    base = load_base("model.gguf")        # or an HF checkpoint directory, or None (default)
    base.model, base.tokenizer, base.sha256, base.checkpoint_sha256, base.n_layer

Architectures: those the engine runs (``llama``: LLaMA-2/3.x, Mistral; ``qwen2``; ``qwen3``).

- An HF checkpoint directory (``config.json``, safetensors in fp32/bf16/fp16, a tokenizer) is
  loaded by transformers. Its identity is the checkpoint's content hash
  (:func:`lora_ens_rs.checkpoint.checkpoint_sha256`), which ``lora-ens-rs convert`` records in
  every GGUF it writes from it, so the engine accepts the members on those files.
- A GGUF file is dequantized by transformers' GGUF loader with a config rebuilt here from the
  file's own metadata (:func:`hf_config_from_gguf`; transformers' GGUF config gets Qwen3's
  ``head_dim`` wrong and drops llama3 RoPE scaling, which llama.cpp stores only as the
  ``rope_freqs.weight`` factors). The llama3 parameters are recovered when the factors equal,
  bit for bit, those of the published LLaMA-3.x setting (``low_freq_factor`` 1,
  ``high_freq_factor`` 4, ``original_max_position_embeddings`` 8192, ``factor`` = the largest
  factor); other factors are refused with a :class:`ModelLoadError` that says to train on the
  HF checkpoint instead. The result is cached as a transformers model directory under
  ``<cache_dir>/train-base/<sha256 of the GGUF>``, written into a temporary directory and
  renamed into place, so the next run loads it in seconds.

Text is always tokenized with the engine's tokenizer (:class:`lora_ens_rs.Tokenizer`), read
from the GGUF, or for a checkpoint from the tokenizer metadata ``lora-ens-rs convert`` writes
(a vocabulary-only GGUF cached under ``<cache_dir>/train-vocab/``, keyed by the sha256 of
the tokenizer files), so training and the engine's scorer build the same token ids, BOS
included.
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
#: Subdirectory of the cache holding checkpoints' vocabulary-only GGUFs.
VOCAB_SUBDIR = "train-vocab"
#: Marks a cached config rebuilt from GGUF metadata (older cached copies are rebuilt).
CONFIG_MARK = "lora_ens_rs_config_from_gguf"
#: ``--dtype`` names -> torch dtypes.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: transformers' model type and class of each GGUF architecture.
HF_ARCH = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}
#: The llama3 RoPE setting of the published LLaMA-3.x models (``factor`` aside).
LLAMA3_ROPE = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass
class BaseModel:
    """A frozen causal LM (transformers) with the engine's tokenizer.

    Attributes:
        model: the transformers model, in eval mode, every parameter frozen.
        tokenizer: the engine tokenizer of the same model.
        path: the GGUF file or model directory it was loaded from (absolute).
        gguf: the GGUF file the engine serves (``None`` for a model directory).
        sha256: sha256 of the GGUF file (``None`` for a model directory).
        checkpoint_sha256: the HF checkpoint's content hash (``None`` for a GGUF).
    """

    model: nn.Module
    tokenizer: _core.Tokenizer
    path: str
    gguf: str | None
    sha256: str | None
    checkpoint_sha256: str | None = None

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


def _freeze(model: nn.Module, source: Path) -> nn.Module:
    """Eval mode, every parameter frozen; a non-finite weight is refused, naming it (it would
    otherwise surface as a NaN loss, or as torch's "probs must be finite" far from its cause).
    """
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_(False)
        bad = ~torch.isfinite(p)
        if bool(bad.any()):
            index = int(bad.flatten().nonzero()[0])
            value = float(p.flatten()[index])
            raise ModelLoadError(
                f"base model {str(source)!r}: weight {name!r} holds a non-finite value "
                f"({value} at flat index {index})"
            )
    return model


def _from_pretrained(
    directory: str | Path, dtype: torch.dtype = torch.float32, **kwargs: object
) -> nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, attn_implementation="sdpa", **kwargs
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


def hf_config_from_gguf(path: str | os.PathLike[str]) -> dict[str, object]:
    """The transformers config of a GGUF model, from the file's own metadata.

    Raises:
        ModelLoadError: an architecture the engine does not run, missing metadata, or llama3
            RoPE factors that match no known setting (train on the HF checkpoint instead).
    """
    import gguf
    import numpy as np

    from lora_ens_rs.convert import llama3_rope_factors

    reader = gguf.GGUFReader(path)

    def value(key: str, default: object = None) -> object:
        field = reader.get_field(key)
        return default if field is None else field.contents()

    arch = value("general.architecture")
    if arch not in HF_ARCH:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported (supported: {', '.join(HF_ARCH)})"
        )
    model_type, cls = HF_ARCH[arch]

    def need(key: str) -> object:
        got = value(f"{arch}.{key}")
        if got is None:
            raise ModelLoadError(f"{path}: metadata `{arch}.{key}` is missing")
        return got

    tensors = {t.name: t for t in reader.tensors}
    n_head = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    config: dict[str, object] = {
        "model_type": model_type,
        "architectures": [cls],
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(value(f"{arch}.attention.head_count_kv", n_head)),
        "head_dim": int(value(f"{arch}.attention.key_length", hidden // n_head)),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(need("context_length")),
        "rope_theta": float(value(f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": len(value("tokenizer.ggml.tokens", [])) or int(need("vocab_size")),
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": value("tokenizer.ggml.bos_token_id"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    scaling = value(f"{arch}.rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {
            "rope_type": "linear",
            "factor": float(need("rope.scaling.factor")),
        }
    elif scaling not in (None, "none"):
        raise ModelLoadError(
            f"{path}: RoPE scaling {scaling!r} is not supported for training (train on the "
            "HF checkpoint)"
        )
    if "rope_freqs.weight" in tensors:
        stored = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float32).reshape(-1)
        rope = {"rope_type": "llama3", "factor": float(stored.max()), **LLAMA3_ROPE}
        recovered = llama3_rope_factors({**config, "rope_scaling": rope})
        if arch != "llama" or not np.array_equal(recovered, stored):
            raise ModelLoadError(
                f"{path}: its llama3 RoPE scaling is stored only as the `rope_freqs.weight` "
                "factors, and they match no known llama3 setting, so the RoPE parameters "
                "cannot be recovered for training. Train on the Hugging Face checkpoint "
                "instead (`lora-ens-rs train --model HF_DIR`); `lora-ens-rs convert HF_DIR "
                "OUT.gguf` then writes GGUFs the ensemble loads on."
            )
        config["rope_scaling"] = rope
    return config


#: The files a checkpoint's tokenizer metadata is read from (the vocabulary cache's key).
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def _vocab_gguf(directory: Path, cache_root: Path | None) -> Path:
    """The checkpoint's vocabulary-only GGUF, cached by the sha256 of its tokenizer files."""
    import hashlib

    from lora_ens_rs.convert import write_vocab_gguf

    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = directory / name
        data = f.read_bytes() if f.is_file() else b""
        h.update(f"{name}\t{len(data) if f.is_file() else -1}\n".encode() + data)
    root = cache_root if cache_root is not None else Path(_core.cache_dir())
    target = root / VOCAB_SUBDIR / f"{h.hexdigest()}.gguf"
    if not target.is_file():
        try:
            write_vocab_gguf(directory, target)
        except OSError as e:
            raise LoraEnsIOError(f"cannot write the tokenizer cache {str(target)!r}: {e}") from e
    return target


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``--dtype`` name.

    Raises:
        InputError: not one of :data:`DTYPES`.
    """
    if name not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_base(
    path: str | os.PathLike[str] | None = None,
    *,
    cache: bool = True,
    cache_root: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
) -> BaseModel:
    """Load the frozen base model from a GGUF file or an HF checkpoint directory.

    Args:
        path: a ``.gguf`` file, a model directory (``config.json``, ``*.safetensors``,
            ``tokenizer.model`` or ``tokenizer.json``), or ``None`` for the default model.
        cache: reuse / write the dequantized copy of a GGUF under ``cache_root``.
        cache_root: cache directory (default :func:`lora_ens_rs.cache_dir`).
        dtype: the weights' torch dtype: ``float32`` (default), ``bfloat16`` or ``float16``.

    Returns:
        The :class:`BaseModel`, frozen, in eval mode.

    Raises:
        MissingFileError: ``path`` does not exist.
        ModelLoadError: transformers cannot load it, or the engine does not run it.
        LoraEnsIOError: the cache cannot be written.

    Example:
        >>> base = load_base(tiny_gguf)  # the tiny test model
        >>> base.n_layer, base.tokenizer.encode(" A")
        (2, [330])
    """
    torch_type = torch_dtype(dtype)
    if path is None:
        path = _core.default_model_path()
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise MissingFileError(f"base model {str(path)!r} does not exist")
    root = Path(cache_root) if cache_root is not None else None
    if p.is_dir():
        from lora_ens_rs.checkpoint import Checkpoint

        checkpoint = Checkpoint.open(p)
        checkpoint_sha = checkpoint.sha256()
        tokenizer = _core.Tokenizer.from_gguf(_vocab_gguf(p, root))
        try:
            model = _from_pretrained(p, torch_type)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load model directory {str(p)!r}: {e}") from e
        return BaseModel(_freeze(model, p), tokenizer, str(p), None, None, checkpoint_sha)
    if p.suffix.lower() != ".gguf":
        raise InputError(f"base model {str(p)!r} must be a .gguf file or a model directory")
    tokenizer = _core.Tokenizer.from_gguf(p)
    sha = _core.sha256_file(str(p))
    cached = base_cache_path(sha, cache_root)
    model = None
    if cache and (cached / "config.json").is_file():
        try:
            if json.loads((cached / "config.json").read_text()).get(CONFIG_MARK):
                model = _from_pretrained(cached)
        except (OSError, ValueError):
            model = None
        if model is None:
            shutil.rmtree(cached, ignore_errors=True)  # damaged or stale: rebuild it
    if model is None:
        from transformers import AutoConfig

        config = hf_config_from_gguf(p)
        try:
            hf_config = AutoConfig.for_model(**config)
            model = _from_pretrained(p.parent, gguf_file=p.name, config=hf_config)
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"transformers cannot load GGUF {str(p)!r}: {e}") from e
        model.config.update({CONFIG_MARK: True})
        if cache:
            try:
                _write_cache(model, cached)
            except OSError as e:
                raise LoraEnsIOError(
                    f"cannot write the base model cache {str(cached)!r}: {e}"
                ) from e
    if torch_type != torch.float32:
        model = model.to(torch_type)
    return BaseModel(_freeze(model, p), tokenizer, str(p), str(p), sha)
