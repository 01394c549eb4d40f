"""``lora-ens-rs convert``: an HF checkpoint (safetensors + config + tokenizer) to a GGUF file
the engine serves, written with gguf-py's writer.

    lora-ens-rs convert Qwen3-0.6B/ qwen3-0.6b-q8_0.gguf --type q8_0

    from lora_ens_rs.convert import convert
    convert("Qwen3-0.6B", "qwen3-0.6b-q8_0.gguf", "q8_0")

Architectures: ``llama`` (LLaMA-2/3.x, Mistral; llama3 and linear RoPE scaling), ``qwen2``,
``qwen3``. The file holds what llama.cpp's ``convert_hf_to_gguf.py`` writes for the same
checkpoint (tests/test_convert.py compares them): the same tensor names and types (1-D
tensors and norms F32, the other matrices of the requested type; a row that is not a whole
number of blocks F16), LLaMA's Q/K rows permuted to llama.cpp's RoPE layout, llama3 RoPE
scaling as the ``rope_freqs.weight`` factors, the same model and tokenizer metadata (gguf-py's
``SpecialVocab`` and ``Metadata``). Types: ``f32``, ``f16``, ``bf16``, ``q8_0``, ``q4_0``,
``q4_1``, ``q5_0``, ``q5_1`` (gguf-py's quantizers, as llama.cpp's converter), ``q4_k``,
``q6_k`` and ``q4_k_m`` (:mod:`lora_ens_rs.quantize`; llama.cpp's Q4_K_M recipe, simplified).

The file also records its source: ``lora_ens_rs.source.sha256`` is the checkpoint's content
hash (:func:`lora_ens_rs.checkpoint.checkpoint_sha256`), so the engine accepts on it an
ensemble trained on the checkpoint. The file is written to a temporary file beside the target
and renamed into place; tensors are converted and written one at a time.

A BPE tokenizer's pre-tokenizer name (``tokenizer.ggml.pre``) is recognized from
``tokenizer.json``'s pre-tokenizer (:func:`pre_tokenizer_name`), where llama.cpp hashes the
ids of a fixed text (which needs the full vocabulary).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lora_ens_rs.checkpoint import Checkpoint
from lora_ens_rs.errors import InputError, LoraEnsIOError, ModelLoadError, TokenizerError

#: GGUF metadata key holding the source checkpoint's content hash.
SOURCE_KEY = "lora_ens_rs.source.sha256"

#: The ``--type`` names.
OUT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k", "q4_k_m")

#: HF pre-tokenizer regexes (``Split`` before a regex-free ``ByteLevel``) -> llama.cpp's name.
_SPLIT_NAMES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def _file_type(out_type: str):
    import gguf

    ft = gguf.LlamaFileType
    return {
        "f32": ft.ALL_F32,
        "f16": ft.MOSTLY_F16,
        "bf16": ft.MOSTLY_BF16,
        "q8_0": ft.MOSTLY_Q8_0,
        "q4_0": ft.MOSTLY_Q4_0,
        "q4_1": ft.MOSTLY_Q4_1,
        "q5_0": ft.MOSTLY_Q5_0,
        "q5_1": ft.MOSTLY_Q5_1,
        "q4_k": ft.MOSTLY_Q4_K_S,
        "q6_k": ft.MOSTLY_Q6_K,
        "q4_k_m": ft.MOSTLY_Q4_K_M,
    }[out_type]


@dataclass
class _Planned:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order
    qtype: Any
    load: Callable[[], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Architecture facts


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings of an HF config: transformers 5's ``rope_parameters`` or the older
    top-level ``rope_theta`` with ``rope_scaling``, merged (``rope_type`` from ``type``)."""
    params: dict[str, Any] = {}
    if config.get("rope_theta") is not None:
        params["rope_theta"] = config["rope_theta"]
    params.update(config.get("rope_scaling") or {})
    nested = config.get("rope_parameters") or {}
    params.update(nested.get("full_attention", nested))
    if "rope_type" not in params and "type" in params:
        params["rope_type"] = params["type"]
    return params


def head_dim(config: dict[str, Any]) -> int:
    """Width of one attention head (``head_dim``, else hidden / heads)."""
    hd = config.get("head_dim")
    return int(hd) if hd is not None else config["hidden_size"] // config["num_attention_heads"]


def llama3_rope_factors(config: dict[str, Any]) -> np.ndarray:
    """The per-frequency divisors of llama3 RoPE scaling (``rope_freqs.weight``): 1 for
    wavelengths under ``original_max_position_embeddings / high_freq_factor``, ``factor`` above
    ``... / low_freq_factor``, and between them ``1 / ((1 - s) / factor + s)`` with
    ``s = (original / wavelength - low) / (high - low)``; float32 arithmetic, frequency by
    frequency."""
    import torch

    p = rope_parameters(config)
    base = p.get("rope_theta", 10000.0)
    dim = head_dim(config)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = p.get("factor", 8.0)
    low = p.get("low_freq_factor", 1.0)
    high = p.get("high_freq_factor", 4.0)
    original = p.get("original_max_position_embeddings", 8192)
    low_wavelength, high_wavelength = original / low, original / high
    out = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < high_wavelength:
            out.append(1)
        elif wavelength > low_wavelength:
            out.append(factor)
        else:
            s = (original / wavelength - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return torch.tensor(out, dtype=torch.float32).numpy()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Q/K rows from HF's rotate-half layout to llama.cpp's interleaved pairs, per head."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tensor_type(out_type: str, name: str, shape: tuple[int, ...], n_layer: int, tied: bool):
    """The GGUF type of tensor ``name`` (numpy ``shape``) in an ``out_type`` file."""
    import gguf

    from lora_ens_rs import quantize

    qt = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return qt.F32
    if out_type == "q4_k_m":
        return quantize.q4_k_m_type(name, shape, n_layer, has_output=not tied)
    qtype = {
        "f32": qt.F32,
        "f16": qt.F16,
        "bf16": qt.BF16,
        "q8_0": qt.Q8_0,
        "q4_0": qt.Q4_0,
        "q4_1": qt.Q4_1,
        "q5_0": qt.Q5_0,
        "q5_1": qt.Q5_1,
        "q4_k": qt.Q4_K,
        "q6_k": qt.Q6_K,
    }[out_type]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        qtype = quantize.FALLBACK.get(qtype, qt.F16)
        if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = qt.F16
    return qtype


def _encode(data: np.ndarray, qtype) -> np.ndarray:
    import gguf

    from lora_ens_rs import quantize

    if qtype in quantize.K_TYPES:
        return quantize.quantize(data.astype(np.float32), qtype)
    return gguf.quants.quantize(data, qtype)


def _plan(ckpt: Checkpoint, out_type: str) -> list[_Planned]:
    import gguf

    cfg = ckpt.config
    n_layer = int(cfg["num_hidden_layers"])
    n_head = int(cfg["num_attention_heads"])
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}.get(
        ckpt.arch, gguf.MODEL_ARCH.QWEN3
    )
    names = gguf.get_tensor_name_map(arch, n_layer)
    tied = "lm_head.weight" not in ckpt.names()
    planned: list[_Planned] = []

    rope = rope_parameters(cfg)
    rope_type = str(rope.get("rope_type") or "default").lower()
    if ckpt.arch == "llama" and rope_type == "llama3":
        factors = llama3_rope_factors(cfg)
        planned.append(_Planned("rope_freqs.weight", factors.shape, None, lambda f=factors: f))

    for hf_name in ckpt.names():
        if hf_name.endswith((".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelLoadError(
                f"{ckpt.path}: tensor {hf_name!r} has no GGUF name for architecture {ckpt.arch}"
            )

        def load(hf_name: str = hf_name) -> np.ndarray:
            data = ckpt.tensor(hf_name)
            if ckpt.arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, n_head)
            elif ckpt.arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, n_head_kv)
            return data

        shape = ckpt.shape(hf_name)
        planned.append(_Planned(gguf_name, shape, None, load))
    for p in planned:
        p.qtype = _tensor_type(out_type, p.name, p.shape, n_layer, tied)
    return planned


# ---------------------------------------------------------------------------------------------
# Metadata


def _add_model_metadata(writer, ckpt: Checkpoint, out_type: str) -> None:
    import gguf

    cfg = ckpt.config
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    for key, add in (
        ("max_position_embeddings", writer.add_context_length),
        ("hidden_size", writer.add_embedding_length),
        ("intermediate_size", writer.add_feed_forward_length),
        ("num_attention_heads", writer.add_head_count),
        ("num_key_value_heads", writer.add_head_count_kv),
    ):
        if cfg.get(key) is not None:
            add(cfg[key])
    rope = rope_parameters(cfg)
    rope_type = rope.get("rope_type")
    if rope_type is not None and str(rope_type).lower() not in ("default", "llama3"):
        if rope_type == "linear" and rope.get("factor") is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
        else:
            raise ModelLoadError(
                f"{ckpt.path / 'config.json'}: RoPE scaling {rope_type!r} is not supported "
                "(supported: llama3, linear)"
            )
    if str(rope_type).lower() == "llama3" and ckpt.arch != "llama":
        raise ModelLoadError(f"{ckpt.path / 'config.json'}: llama3 RoPE on {ckpt.arch}")
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(rope["rope_theta"])
    if cfg.get("rms_norm_eps") is not None:
        writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg.get("head_dim") is not None:
        writer.add_key_length(cfg["head_dim"])
        writer.add_value_length(cfg["head_dim"])
    writer.add_file_type(_file_type(out_type))
    if ckpt.arch == "llama":
        writer.add_vocab_size(cfg["vocab_size"])
        writer.add_rope_dimension_count(head_dim(cfg))


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for an HF ``tokenizer.json``'s pre-tokenizer.

    Recognized: GPT-2's ``ByteLevel(use_regex=true)`` (``gpt2``), SmolLM's individual digits
    before it (``smollm``), LLaMA-3's and Qwen2's regex ``Split`` (``llama-bpe``, ``qwen2``).

    Raises:
        TokenizerError: another pre-tokenizer (the engine would split text differently).
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_NAMES:
            return _SPLIT_NAMES[regex]
    raise TokenizerError(
        f"tokenizer.json: pre-tokenizer {json.dumps(pre)[:200]} is not one this engine knows "
        "(GPT-2, SmolLM, LLaMA-3, Qwen2)"
    )


def _looks_special(token: str) -> bool:
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))  # noqa: RUF001
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _spm_vocab(directory: Path, config: dict[str, Any]):
    """Tokens, scores and types of a SentencePiece ``tokenizer.model`` (llama.cpp's types),
    padded to the config's vocabulary size, with added tokens from ``added_tokens.json`` and
    ``tokenizer_config.json``."""
    from gguf import TokenType
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(directory / "tokenizer.model"))
    n = config.get("vocab_size") or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [TokenType.UNUSED] * n
    for i in range(min(sp.vocab_size(), n)):
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode(), sp.GetScore(i), kind
    added_file = directory / "added_tokens.json"
    if added_file.is_file():
        for text, i in json.loads(added_file.read_text(encoding="utf-8")).items():
            if i < n:
                tokens[i], scores[i], types[i] = text.encode(), -1000.0, TokenType.USER_DEFINED
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        decoder = json.loads(config_file.read_text(encoding="utf-8")).get(
            "added_tokens_decoder", {}
        )
        for key, data in decoder.items():
            i, text = int(key), data["content"]
            if i >= n:
                continue
            if data.get("special") or _looks_special(text):
                types[i] = TokenType.CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[i] = TokenType.USER_DEFINED
            tokens[i], scores[i] = text.encode(), -1000.0
    return tokens, scores, types


def _bpe_vocab(directory: Path, config: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Tokens and types of a byte-level BPE tokenizer (transformers' view of it): added
    special tokens CONTROL, other added tokens USER_DEFINED, gaps ``[PAD{i}]`` UNUSED."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    vocab = tok.get_vocab()
    n = config.get("vocab_size", len(vocab))
    if max(vocab.values()) >= n:
        raise TokenizerError(
            f"{directory}: the tokenizer has id {max(vocab.values())}, the config's vocab_size "
            f"is {n}"
        )
    by_id = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        token = by_id[i]
        if token in added:
            if not decoder[i].normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False))
            if decoder[i].special or _looks_special(token):
                types.append(TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def add_tokenizer(writer, directory: str | os.PathLike[str], config: dict[str, Any], arch: str):
    """Write the checkpoint's tokenizer metadata (``tokenizer.ggml.*``, chat template) into
    the GGUF ``writer``: SentencePiece (``tokenizer.model``) as llama.cpp's ``llama`` model,
    else (LLaMA only) a SentencePiece-style ``tokenizer.json`` through gguf-py's
    ``LlamaHfVocab``, else byte-level BPE as ``gpt2``; special ids, add-BOS/EOS flags, merges
    and the chat template from gguf-py's ``SpecialVocab``.

    Raises:
        TokenizerError: no tokenizer, or a pre-tokenizer this engine does not know.
    """
    import gguf

    directory = Path(directory)
    tok_config = directory / "tokenizer_config.json"
    if arch == "llama" and tok_config.is_file():
        prefix = json.loads(tok_config.read_text(encoding="utf-8")).get("add_prefix_space")
        if prefix is not None:
            writer.add_add_space_prefix(prefix)
    if (directory / "tokenizer.model").is_file():
        tokens, scores, types = _spm_vocab(directory, config)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        gguf.SpecialVocab(directory, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        return
    tok_json = directory / "tokenizer.json"
    if not tok_json.is_file():
        raise TokenizerError(f"{directory}: no tokenizer.model or tokenizer.json")
    if arch == "llama":
        try:
            vocab = gguf.LlamaHfVocab(directory)
        except (FileNotFoundError, TypeError):
            vocab = None
        if vocab is not None:
            tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(list(tokens))
            writer.add_token_scores(list(scores))
            writer.add_token_types(list(types))
            gguf.SpecialVocab(directory, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
            return
    pre = pre_tokenizer_name(json.loads(tok_json.read_text(encoding="utf-8")))
    tokens, types = _bpe_vocab(directory, config)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(directory, load_merges=True).add_to_gguf(writer, quiet=True)


# ---------------------------------------------------------------------------------------------
# Writing


def _quiet_gguf_logs():
    import contextlib
    import logging

    @contextlib.contextmanager
    def quiet():
        loggers = [logging.getLogger(n) for n in ("gguf", "gguf.vocab", "gguf.metadata")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)

    return quiet()


def _atomic_gguf(out: Path, arch: str, fill: Callable[[Any], Callable[[Any], None]]) -> Path:
    """Write a GGUF to ``out`` through a temporary file beside it: ``fill(writer)`` adds the
    metadata and tensor infos and returns the function that writes the tensor data."""
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        write_data = fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        write_data(writer)
        writer.close()
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LoraEnsIOError(f"cannot write {str(out)!r}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def convert(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    out_type: str = "f16",
    *,
    progress: bool = False,
    overwrite: bool = True,
) -> Path:
    """Convert the HF checkpoint ``model_dir`` to the GGUF file ``out``.

    Args:
        model_dir: a transformers model directory (``config.json``, ``*.safetensors`` in
            F32/F16/BF16, ``tokenizer.model`` or ``tokenizer.json``).
        out: the GGUF file to write.
        out_type: one of :data:`OUT_TYPES`.
        progress: a progress bar on stderr.
        overwrite: replace an existing ``out``.

    Returns:
        ``out``.

    Raises:
        InputError: an unknown ``out_type``, or ``out`` exists without ``overwrite``.
        MissingFileError, ModelLoadError, TokenizerError: the checkpoint cannot be converted.
        LoraEnsIOError: ``out`` cannot be written.
    """
    import gguf

    if out_type not in OUT_TYPES:
        raise InputError(f"unknown type {out_type!r}; choose one of {', '.join(OUT_TYPES)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} exists")
    if out.is_dir():
        raise InputError(f"{str(out)!r} is a directory; give the GGUF file's path")
    ckpt = Checkpoint.open(model_dir)
    planned = _plan(ckpt, out_type)
    source = ckpt.sha256()

    def fill(writer):
        for p in planned:
            block, size = gguf.GGML_QUANT_SIZES[p.qtype]
            rows = int(np.prod(p.shape[:-1], dtype=np.int64)) if len(p.shape) > 1 else 1
            nbytes = rows * (p.shape[-1] // block) * size
            writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32), nbytes, raw_dtype=p.qtype)
        writer.add_type(gguf.GGUFType.MODEL)
        total = writer.get_total_parameter_count()
        with _quiet_gguf_logs():
            meta = gguf.Metadata.load(None, ckpt.path, None, total[0])
            if meta.name is None:
                meta.name = ckpt.path.name
            if meta.size_label is None and total[0] > 0:
                meta.size_label = gguf.size_label(*total)
            meta.set_gguf_meta_model(writer)
            _add_model_metadata(writer, ckpt, out_type)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            add_tokenizer(writer, ckpt.path, ckpt.config, ckpt.arch)
        writer.add_string(SOURCE_KEY, source)

        def write_data(writer) -> None:
            from tqdm import tqdm

            bar = tqdm(
                planned,
                desc=f"convert {out.name}",
                unit="tensor",
                disable=not progress,
                file=sys.stderr,
            )
            for p in bar:
                writer.write_tensor_data(np.ascontiguousarray(_encode(p.load(), p.qtype)))

        return write_data

    return _atomic_gguf(out, ckpt.arch, fill)


def write_vocab_gguf(model_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """A vocabulary-only GGUF of the checkpoint (its tokenizer metadata as :func:`convert`
    writes it, no tensors): what training reads the engine's tokenizer from, so training and
    the converted file encode text alike."""
    ckpt = Checkpoint.open(model_dir)

    def fill(writer):
        with _quiet_gguf_logs():
            add_tokenizer(writer, ckpt.path, ckpt.config, ckpt.arch)
        return lambda writer: None

    return _atomic_gguf(Path(out), ckpt.arch, fill)


# ---------------------------------------------------------------------------------------------
# Command line


def parser():
    """The argument parser of ``lora-ens-rs convert``."""
    import argparse

    from lora_ens_rs.cli import subcommand_about

    ap = argparse.ArgumentParser(
        prog="lora-ens-rs convert", description=subcommand_about("convert")
    )
    ap.add_argument("model_dir", metavar="HF_DIR", help="the Hugging Face model directory")
    ap.add_argument("out", metavar="OUT.gguf", help="the GGUF file to write")
    ap.add_argument(
        "--type",
        dest="out_type",
        choices=OUT_TYPES,
        default="f16",
        help="tensor type (default: f16)",
    )
    ap.add_argument(
        "--no-overwrite", action="store_true", help="refuse to replace an existing OUT.gguf"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str]) -> int:
    """Run ``lora-ens-rs convert`` with ``argv`` (without the ``convert``); the exit code.

    Example:
        >>> hf_dir = str(Path(tiny_tokenizer_json).parent)  # the tiny model's checkpoint
        >>> main([hf_dir, "tiny-q8_0.gguf", "--type", "q8_0", "--quiet"])
        tiny-q8_0.gguf
        0
    """
    from lora_ens_rs.cli import EXIT_OK, run_subcommand

    def run(args) -> int:
        out = convert(
            args.model_dir,
            args.out,
            args.out_type,
            progress=not args.quiet,
            overwrite=not args.no_overwrite,
        )
        print(out)
        return EXIT_OK

    return run_subcommand(parser(), run, argv)
