"""The GGUF tokenizer against llama.cpp's tokenizer test vocabularies.

llama.cpp's `models/ggml-vocab-*.gguf` are vocabulary-only GGUF files, each with `.inp`
(texts separated by ``\\n__ggml_vocab_test__\\n``) and `.out` (per text, the ids the model's own
HF tokenizer gives without special tokens), which its `test-tokenizer-0` checks llama.cpp
against. They are fetched at test time by `scripts/fetch_llama_vocabs.py` (the `llama_vocabs`
fixture) from the `llama-cpp-python` sdist on PyPI, not committed; llama.cpp is MIT-licensed
(Copyright (c) 2023-2026 The ggml authors). The tests are skipped when the download fails.

Also checked: which vocabularies add BOS / EOS (llama.cpp's rule, `llama_vocab::impl::load` in
`src/llama-vocab.cpp`: `tokenizer.ggml.add_bos_token` when present, else yes for SentencePiece
and for the LLaMA-3 family of pre-tokenizers, no for the other BPE ones; EOS only when
`add_eos_token` says so), and that a tokenizer model or pre-tokenizer the engine does not
implement is a typed error naming it and what is supported.

    pytest tests/test_llama_vocabs.py -s      # -s prints the pass counts of every vocabulary
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from lora_ens_rs import TokenizerError
from lora_ens_rs._core import Tokenizer

SEPARATOR = "\n__ggml_vocab_test__\n"

# Vocabularies the engine reproduces case for case, with whether llama.cpp adds BOS to them:
# `add_bos_token` from the file where it has one (llama-spm, phi-3, command-r, deepseek-*), else
# llama.cpp's default (llama-bpe: the LLaMA-3 pre-tokenizers add it; the other BPE ones do not).
SUPPORTED = {
    "command-r": True,
    "deepseek-coder": True,
    "deepseek-llm": True,
    "falcon": False,
    "gpt-2": False,
    "llama-bpe": True,
    "llama-spm": True,
    "mpt": False,
    "phi-3": True,
    "qwen2": False,
    "qwen35": False,
    "refact": False,
    "starcoder": False,
}

# Vocabularies of tokenizer models it refuses, with the value the error must name.
REFUSED = {
    "bert-bge": "`bert`",
    "gemma-4": "`gemma4`",
    "nomic-bert-moe": "`t5`",
}


def cases(directory: Path, name: str) -> list[tuple[str, list[int]]]:
    """The (text, ids) pairs of one vocabulary, split as `test-tokenizer-0` splits them."""
    stem = directory / f"ggml-vocab-{name}.gguf"
    raw = Path(f"{stem}.inp").read_bytes().decode("utf-8")
    texts = raw.split(SEPARATOR)
    if texts and texts[-1] == "":
        texts.pop()
    outs = Path(f"{stem}.out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(outs), f"{stem}: {len(texts)} inputs, {len(outs)} outputs"
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs, strict=True)]


@functools.cache
def load(directory: Path, name: str) -> Tokenizer:
    """The engine's tokenizer of one vocabulary (built once per test session)."""
    return Tokenizer.from_gguf(str(directory / f"ggml-vocab-{name}.gguf"))


def failures(directory: Path, name: str) -> tuple[int, list[str]]:
    """How many cases there are, and a line for each that does not match."""
    tok = load(directory, name)
    all_cases = cases(directory, name)
    wrong = [
        f"{text!r}: got {got}, expected {want}"
        for text, want in all_cases
        if (got := tok.encode(text, False)) != want
    ]
    return len(all_cases), wrong


def test_report_every_vocabulary(llama_vocabs: Path) -> None:
    """Pass counts for every vocabulary with cases, supported or not (shown with -s)."""
    lines = []
    for inp in sorted(llama_vocabs.glob("ggml-vocab-*.gguf.inp")):
        name = inp.name.removeprefix("ggml-vocab-").removesuffix(".gguf.inp")
        try:
            total, wrong = failures(llama_vocabs, name)
        except TokenizerError as e:
            lines.append(f"{name:>16}: refused ({e})")
            continue
        lines.append(f"{name:>16}: {total - len(wrong)}/{total}")
    print("\n" + "\n".join(lines))
    for name in SUPPORTED:
        assert any(line.lstrip().startswith(f"{name}:") for line in lines), name


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_vocabulary_matches_every_case(llama_vocabs: Path, name: str) -> None:
    total, wrong = failures(llama_vocabs, name)
    assert total >= 46
    assert not wrong, f"{name}: {len(wrong)}/{total} differ:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_vocabulary_decodes_every_case_back(llama_vocabs: Path, name: str) -> None:
    tok = load(llama_vocabs, name)
    wrong = [
        f"{text!r}: decoded as {back!r}"
        for text, ids in cases(llama_vocabs, name)
        if (back := tok.decode(ids, False)) != text
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("name", "adds_bos"), sorted(SUPPORTED.items()))
def test_bos_and_eos_as_llama_cpp_adds_them(llama_vocabs: Path, name: str, adds_bos: bool) -> None:
    tok = load(llama_vocabs, name)
    assert tok.add_bos_token is adds_bos
    assert tok.add_eos_token is False
    text = cases(llama_vocabs, name)[1][0]
    plain = tok.encode(text, False)
    assert tok.encode(text, True) == ([tok.bos_id] if adds_bos else []) + plain


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED.items()))
def test_unsupported_vocabulary_is_a_typed_error(llama_vocabs: Path, name: str, value: str) -> None:
    path = llama_vocabs / f"ggml-vocab-{name}.gguf"
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_gguf(str(path))
    message = str(err.value)
    assert value in message and path.name in message, message
    assert "supported: `gpt2` (byte-level BPE), `llama` (SentencePiece)" in message, message


def test_unknown_pre_tokenizer_is_a_typed_error(tmp_path: Path) -> None:
    """A `tokenizer.ggml.pre` llama.cpp does not define either: refused, naming it and listing
    the supported ones (a wrong split would give wrong ids silently)."""
    import gguf

    path = tmp_path / "made-up-pre.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("made-up-splitter")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_gguf(str(path))
    message = str(err.value)
    assert "pre-tokenizer `made-up-splitter`" in message and path.name in message, message
    for known in [
        "llama-bpe",
        "qwen2",
        "qwen35",
        "deepseek-llm",
        "deepseek-coder",
        "falcon",
        "mpt",
    ]:
        assert known in message, (known, message)
