"""The engine's GGUF reader against gguf-py: on valid files (the tiny fixtures, llama.cpp's
vocabulary-only test files, the default model when cached) it reads the same metadata and
tensor directory as ``gguf.GGUFReader``; on files written by ``gguf.GGUFWriter`` and then
patched in place (through ``GGUFReader(path, "r+")``, so each patch hits exactly one field)
it refuses each malformation with ``ModelLoadError`` naming the field or tensor.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

import lora_ens_rs
from lora_ens_rs import ModelLoadError, _core
from lora_ens_rs._core import Model, Tokenizer, gguf_header

FETCH_VOCABS = Path(__file__).resolve().parent.parent / "scripts" / "fetch_llama_vocabs.py"
#: llama.cpp vocabulary-only files compared with gguf-py (all of them agree; these are quick).
VOCABS = ["llama-spm", "phi-3", "gpt-2", "deepseek-coder", "bert-bge"]


# ---------------------------------------------------------------------------------------------
# Parity with gguf-py on valid files


def gguf_py_header(path: Path) -> tuple[dict[str, object], list[tuple[str, str, list[int], int]]]:
    """What gguf-py reads: metadata (the GGUF.* pseudo-fields left out) and the directory."""
    reader = gguf.GGUFReader(path)
    metadata = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }
    tensors = sorted(
        (t.name, t.tensor_type.name, [int(d) for d in t.shape], int(t.data_offset))
        for t in reader.tensors
    )
    return metadata, tensors


def same_value(ours: object, theirs: object) -> bool:
    if isinstance(theirs, float):
        return isinstance(ours, float) and (
            ours == theirs or (math.isnan(ours) and math.isnan(theirs))
        )
    if isinstance(theirs, list):
        return (
            isinstance(ours, list)
            and len(ours) == len(theirs)
            and all(same_value(a, b) for a, b in zip(ours, theirs, strict=True))
        )
    return type(ours) is type(theirs) and ours == theirs


def assert_same_header(path: Path) -> None:
    ours_md, ours_tensors = gguf_header(path)
    theirs_md, theirs_tensors = gguf_py_header(path)
    assert set(ours_md) == set(theirs_md), set(ours_md) ^ set(theirs_md)
    for key, value in theirs_md.items():
        assert same_value(ours_md[key], value), (path.name, key)
    assert ours_tensors == theirs_tensors


def test_tiny_fixtures_read_as_gguf_py_reads_them(tiny_dir: Path) -> None:
    files = sorted(tiny_dir.glob("*.gguf"))
    assert len(files) >= 3
    for path in files:
        assert_same_header(path)


def test_vocabulary_only_files_read_as_gguf_py_reads_them() -> None:
    done = subprocess.run(
        [sys.executable, str(FETCH_VOCABS)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("llama.cpp's test vocabularies could not be fetched")
    # gguf-py takes seconds per megabyte of vocabulary: a few small files of each kind
    # (SentencePiece with float scores, byte-level BPE with merges, WordPiece).
    directory = Path(done.stdout.strip())
    for name in VOCABS:
        assert_same_header(directory / f"ggml-vocab-{name}.gguf")


def test_default_model_reads_as_gguf_py_reads_it() -> None:
    path = Path(lora_ens_rs.cache_dir()) / _core.DEFAULT_MODEL_FILE
    if not path.is_file():
        pytest.skip(f"{path} is not cached")
    assert_same_header(path)


# ---------------------------------------------------------------------------------------------
# Malformed files


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A valid small GGUF: some metadata (a string, a string array, a u32 alignment of 64) and
    three tensors `a` (F32 [2, 32]), `b` (F32 [2, 32]) and `c` (Q8_0 bytes of a [32] row)."""
    path = tmp_path / "small.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    w.add_name("small")
    w.add_token_list(["x", "y", "z"])
    w.add_tensor("a", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("b", np.ones((2, 32), dtype=np.float32))
    w.add_tensor("c", np.zeros((1, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def patch(path: Path, edit: Callable[[gguf.GGUFReader], None]) -> None:
    """Edit fields of `path` in place through gguf-py's writable memory map."""
    reader = gguf.GGUFReader(path, "r+")
    edit(reader)
    reader.data.flush()
    del reader


def tensor(reader: gguf.GGUFReader, name: str) -> gguf.ReaderField:
    """The directory entry of tensor `name`: parts = [name length, name, n_dims, dims, type,
    offset]."""
    return next(t.field for t in reader.tensors if t.name == name)


def refused(path: Path, *needles: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        gguf_header(path)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_the_small_file_is_valid(small: Path) -> None:
    assert_same_header(small)


def test_tensor_offset_that_wraps_around(small: Path) -> None:
    def edit(r: gguf.GGUFReader) -> None:
        tensor(r, "b").parts[5][0] = 2**64 - 28896

    patch(small, edit)
    refused(small, "tensor `b`")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_alignment_not_a_power_of_two(small: Path, alignment: int) -> None:
    patch(small, lambda r: r.fields["general.alignment"].parts[-1].__setitem__(0, alignment))
    refused(small, "general.alignment", "power of two")
    # Loading a model gives the same typed error (once a PanicException from candle).
    with pytest.raises(ModelLoadError, match=r"general\.alignment"):
        Model(str(small))
    with pytest.raises(ModelLoadError, match=r"general\.alignment"):
        Tokenizer.from_gguf(small)


def test_duplicate_tensor(small: Path) -> None:
    patch(small, lambda r: tensor(r, "b").parts[1].__setitem__(0, ord("a")))
    refused(small, "tensor `a`", "listed twice")


def test_huge_string_length(small: Path) -> None:
    # parts of a string entry: [key length, key, type, string length, string]
    patch(small, lambda r: r.fields["general.name"].parts[3].__setitem__(0, 2**62))
    refused(small, "`general.name`", "truncated")


def test_huge_array_count(small: Path) -> None:
    # parts of an array entry: [key length, key, type, element type, count, ...]
    patch(small, lambda r: r.fields["tokenizer.ggml.tokens"].parts[4].__setitem__(0, 2**60))
    refused(small, "`tokenizer.ggml.tokens`", "cannot fit")


def test_unknown_tensor_type(small: Path) -> None:
    patch(small, lambda r: tensor(r, "c").parts[4].__setitem__(0, 99))
    refused(small, "tensor `c`", "unknown ggml type id 99")


@pytest.mark.parametrize(
    ("qtype", "needle"),
    [
        # Blocks of 32 that fit in the Q8_0 data: the file opens, loading refuses the type.
        (gguf.GGMLQuantizationType.MXFP4, "ggml type MXFP4 (id 39) is not supported"),
        (gguf.GGMLQuantizationType.IQ4_NL, "ggml type IQ4_NL (id 20) is not supported"),
        # Blocks of 256: a row of 64 is not a whole block, refused at open.
        (gguf.GGMLQuantizationType.IQ2_XXS, "IQ2_XXS block size 256"),
        (gguf.GGMLQuantizationType.TQ1_0, "TQ1_0 block size 256"),
    ],
)
def test_unsupported_tensor_type_in_a_model(
    tiny_dir: Path, tmp_path: Path, qtype: gguf.GGMLQuantizationType, needle: str
) -> None:
    path = tmp_path / "model.gguf"
    shutil.copy(tiny_dir / "tiny-q8_0.gguf", path)
    patch(path, lambda r: tensor(r, "blk.0.attn_q.weight").parts[4].__setitem__(0, int(qtype)))
    with pytest.raises(ModelLoadError) as info:
        Model(str(path))
    assert "tensor `blk.0.attn_q.weight`" in str(info.value)
    assert needle in str(info.value)
    if "not supported" in needle:
        # The rest of the file stays readable, as gguf-py reads it.
        assert_same_header(path)
        assert Tokenizer.from_gguf(path).encode("hello")


def test_truncated_tensor_data(small: Path) -> None:
    start = next(t.data_offset for t in gguf.GGUFReader(small).tensors if t.name == "c")
    small.write_bytes(small.read_bytes()[: start + 10])
    refused(small, "tensor `c`", "truncated")


def test_five_dimensions(small: Path) -> None:
    patch(small, lambda r: tensor(r, "a").parts[2].__setitem__(0, 5))
    refused(small, "tensor `a`", "n_dims is 5")


def test_zero_dimension(small: Path) -> None:
    patch(small, lambda r: tensor(r, "b").parts[3].__setitem__(1, 0))
    refused(small, "tensor `b`", "zero")


def test_special_token_id_outside_the_vocabulary(tiny_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    shutil.copy(next(iter(sorted(tiny_dir.glob("*.gguf")))), path)

    def far_bos(reader: gguf.GGUFReader) -> None:
        field = reader.fields["tokenizer.ggml.bos_token_id"]
        field.parts[field.data[0]][0] = 10**6

    patch(path, far_bos)
    with pytest.raises(ModelLoadError) as info:
        Tokenizer.from_gguf(path)
    message = str(info.value)
    for needle in ("tokenizer.ggml.bos_token_id", "1000000", "outside the vocabulary", path.name):
        assert needle in message, message


def nan_weight(tiny_dir: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the tiny F32 model with element 7 of tensor `name` set to NaN."""
    path = tmp_path / "nan.gguf"
    shutil.copy(tiny_dir / "tiny-f32.gguf", path)

    def poison(reader: gguf.GGUFReader) -> None:
        next(t for t in reader.tensors if t.name == name).data.flat[7] = np.nan

    patch(path, poison)
    return path


@pytest.mark.parametrize("what", ["score", "generate"])
def test_non_finite_weight_is_named(
    tiny_dir: Path, tiny_ensemble: Path, tmp_path: Path, monkeypatch, what: str
) -> None:
    name = "blk.0.attn_q.weight"
    path = nan_weight(tiny_dir, tmp_path, name)
    monkeypatch.setenv("LORA_ENS_RS_ALLOW_BASE_MISMATCH", "1")  # members of tiny-q8_0.gguf
    ens = lora_ens_rs.Ensemble(path, tiny_ensemble)
    with pytest.raises(lora_ens_rs.NumericalError) as info:
        if what == "score":
            ens.score(["Ice is"], ["A", "B"])
        else:
            ens.generate("Ice is", max_new_tokens=2)
    message = str(info.value)
    for needle in (f"tensor `{name}`", "NaN at flat index 7", path.name):
        assert needle in message, message


def test_non_finite_weight_is_named_before_training(tiny_dir: Path, tmp_path: Path) -> None:
    from lora_ens_rs.train.base import load_base

    path = nan_weight(tiny_dir, tmp_path, "blk.1.ffn_down.weight")
    with pytest.raises(
        ModelLoadError, match=r"'model\.layers\.1\.mlp\.down_proj\.weight'.*non-finite"
    ):
        load_base(path, cache=False)
