"""Hugging Face checkpoints as the engine and training see them: the safetensors weights read
without torch, the architecture, and the checkpoint's content hash (its identity in
``ensemble.json`` and in the GGUF files ``lora-ens-rs convert`` writes).

    from lora_ens_rs.checkpoint import Checkpoint
    ckpt = Checkpoint.open("Qwen3-0.6B/")
    ckpt.arch, ckpt.names()[:2], ckpt.sha256()

Content hash (``checkpoint_sha256``, version 1): sha256 over

1. the line ``lora-ens-rs checkpoint v1\\n``;
2. for each tensor of the safetensors files, in byte order of the tensor names (UTF-8): the
   line ``{name}\\t{dtype}\\t{shape}\\t{nbytes}\\n`` (dtype as safetensors spells it, ``F32``,
   ``BF16``, ...; shape as comma-separated decimal dimensions, empty for a scalar; nbytes in
   decimal), followed by the tensor's raw little-endian bytes as stored;
3. the line ``config.json\\n`` followed by the canonical JSON of ``config.json``
   (``json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, UTF-8).

So the hash does not depend on how the weights are split over files, on the files' metadata or
tensor order, nor on the config's whitespace and key order; it does change with any weight,
dtype or config value. Tokenizer files are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lora_ens_rs.errors import MissingFileError, ModelLoadError

#: Hash format line (change the version when the definition changes).
HASH_HEADER = b"lora-ens-rs checkpoint v1\n"

#: HF ``architectures`` entries and ``model_type`` values -> the GGUF architecture.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

#: safetensors dtypes that checkpoints may hold, with their numpy storage type.
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_CHUNK = 64 << 20


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class Checkpoint:
    """A transformers model directory with safetensors weights.

    Attributes:
        path: the directory (absolute).
        config: ``config.json``.
        arch: the GGUF architecture (``llama``, ``qwen2``, ``qwen3``).
    """

    path: Path
    config: dict[str, Any]
    arch: str
    _entries: dict[str, _Entry] = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Read the directory's ``config.json`` and the safetensors headers.

        Raises:
            MissingFileError: no directory, no ``config.json`` or no ``*.safetensors``.
            ModelLoadError: an unsupported architecture, dtype or a malformed file.
        """
        directory = Path(path).expanduser().resolve()
        if not directory.is_dir():
            raise MissingFileError(f"model directory {str(path)!r} does not exist")
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise MissingFileError(f"model directory {str(directory)!r} has no config.json")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{config_file}: cannot read the config: {e}") from e
        if not isinstance(config, dict):
            raise ModelLoadError(f"{config_file}: expected a JSON object")
        arch = architecture(config, config_file)
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise MissingFileError(
                f"model directory {str(directory)!r} has no *.safetensors weights "
                "(other weight formats are not supported: save the model with safetensors)"
            )
        entries: dict[str, _Entry] = {}
        for file in files:
            for name, entry in _read_header(file).items():
                if name in entries:
                    raise ModelLoadError(
                        f"{file}: tensor {name!r} is also in {entries[name].file.name}"
                    )
                entries[name] = entry
        return cls(directory, config, arch, entries)

    def names(self) -> list[str]:
        """Tensor names in byte order (the hash's order)."""
        return sorted(self._entries, key=lambda n: n.encode("utf-8"))

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` as stored (torch order)."""
        return self._entries[name].shape

    def dtype(self, name: str) -> str:
        """The safetensors dtype of tensor ``name``."""
        return self._entries[name].dtype

    def raw(self, name: str) -> np.ndarray:
        """Tensor ``name`` in its stored type (bf16 as uint16), memory-mapped, read-only."""
        e = self._entries[name]
        count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        data = np.memmap(e.file, dtype=_DTYPES[e.dtype], mode="r", offset=e.start, shape=(count,))
        return data.reshape(e.shape)

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32 (f16 stays float16: converters keep it, as llama.cpp's)."""
        data = self.raw(name)
        if self._entries[name].dtype == "BF16":
            return (data.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return np.array(data)

    def sha256(self) -> str:
        """The checkpoint's content hash (see the module documentation)."""
        h = hashlib.sha256(HASH_HEADER)
        for name in self.names():
            e = self._entries[name]
            shape = ",".join(str(d) for d in e.shape)
            h.update(f"{name}\t{e.dtype}\t{shape}\t{e.nbytes}\n".encode())
            with open(e.file, "rb") as f:
                f.seek(e.start)
                left = e.nbytes
                while left:
                    chunk = f.read(min(left, _CHUNK))
                    if not chunk:
                        raise ModelLoadError(f"{e.file}: tensor {name!r} is truncated")
                    h.update(chunk)
                    left -= len(chunk)
        h.update(b"config.json\n")
        h.update(canonical_json(self.config))
        return h.hexdigest()


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes the content hash uses for ``config.json``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """The content hash of the checkpoint directory ``path`` (see the module documentation)."""
    return Checkpoint.open(path).sha256()


def architecture(config: dict[str, Any], where: object = "config.json") -> str:
    """The GGUF architecture of an HF config (``architectures[0]``, else ``model_type``).

    Raises:
        ModelLoadError: an architecture this engine does not run.
    """
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    if not names and config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    shown = names[0] if names else config.get("model_type")
    raise ModelLoadError(
        f"{where}: architecture {shown!r} is not supported (supported: "
        f"{', '.join(sorted(ARCHITECTURES))})"
    )


def _read_header(file: Path) -> dict[str, _Entry]:
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ModelLoadError(f"{file}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            size = file.stat().st_size
            if n > size - 8:
                raise ModelLoadError(f"{file}: header length {n} exceeds the file")
            header = json.loads(f.read(n))
    except OSError as e:
        raise ModelLoadError(f"{file}: cannot read: {e}") from e
    except ValueError as e:
        raise ModelLoadError(f"{file}: malformed safetensors header: {e}") from e
    entries = {}
    base = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise ModelLoadError(
                f"{file}: tensor {name!r} has dtype {dtype}; supported: F32, F16, BF16"
            )
        shape = tuple(int(d) for d in info["shape"])
        start, end = (int(x) for x in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - start != count * np.dtype(_DTYPES[dtype]).itemsize or base + end > size:
            raise ModelLoadError(f"{file}: tensor {name!r} has inconsistent data offsets")
        entries[name] = _Entry(file, dtype, shape, base + start, end - start)
    return entries
