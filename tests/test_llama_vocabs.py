"""The GGUF tokenizer against llama.cpp's tokenizer test vocabularies.

llama.cpp's `models/ggml-vocab-*.gguf` are vocabulary-only GGUF files, each with `.inp`
(texts separated by ``\\n__ggml_vocab_test__\\n``) and `.out` (per text, the ids the HF
tokenizer gives without special tokens), which its `test-tokenizer-0` checks llama.cpp
against. They are fetched at test time by `scripts/fetch_llama_vocabs.py` from the
`llama-cpp-python` sdist on PyPI, not committed; llama.cpp is MIT-licensed (Copyright (c)
2023-2026 The ggml authors). The tests are skipped when the download fails.

    pytest tests/test_llama_vocabs.py -s      # -s prints the pass counts of every vocabulary
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lora_ens_rs import TokenizerError
from lora_ens_rs._core import Tokenizer

FETCH = Path(__file__).resolve().parent.parent / "scripts" / "fetch_llama_vocabs.py"
SEPARATOR = "\n__ggml_vocab_test__\n"

# Vocabularies the engine reproduces case for case ("llama" SentencePiece, the rest BPE).
SUPPORTED = [
    "command-r",
    "gpt-2",
    "llama-bpe",
    "llama-spm",
    "phi-3",
    "qwen2",
    "refact",
    "starcoder",
]

# Vocabularies it refuses, with the value the error must name.
REFUSED = {
    "bert-bge": "`bert`",
    "deepseek-llm": "`deepseek-llm`",
    "gemma-4": "`gemma4`",
    "qwen35": "`qwen35`",
}


@pytest.fixture(scope="module")
def vocabs() -> Path:
    done = subprocess.run([sys.executable, str(FETCH)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"llama.cpp's test vocabularies could not be fetched: {reason}")
    return Path(done.stdout.strip())


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


def failures(directory: Path, name: str) -> tuple[int, list[str]]:
    """How many cases there are, and a line for each that does not match."""
    tok = Tokenizer.from_gguf(str(directory / f"ggml-vocab-{name}.gguf"))
    all_cases = cases(directory, name)
    wrong = [
        f"{text!r}: got {got}, expected {want}"
        for text, want in all_cases
        if (got := tok.encode(text, False)) != want
    ]
    return len(all_cases), wrong


def test_report_every_vocabulary(vocabs: Path) -> None:
    """Pass counts for every vocabulary with cases, supported or not (shown with -s)."""
    lines = []
    for inp in sorted(vocabs.glob("ggml-vocab-*.gguf.inp")):
        name = inp.name.removeprefix("ggml-vocab-").removesuffix(".gguf.inp")
        try:
            total, wrong = failures(vocabs, name)
        except TokenizerError as e:
            lines.append(f"{name:>16}: refused ({e})")
            continue
        lines.append(f"{name:>16}: {total - len(wrong)}/{total}")
    print("\n" + "\n".join(lines))
    for name in SUPPORTED:
        assert any(line.lstrip().startswith(f"{name}:") for line in lines), name


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_vocabulary_matches_every_case(vocabs: Path, name: str) -> None:
    total, wrong = failures(vocabs, name)
    assert not wrong, f"{name}: {len(wrong)}/{total} differ:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_vocabulary_decodes_every_case_back(vocabs: Path, name: str) -> None:
    tok = Tokenizer.from_gguf(str(vocabs / f"ggml-vocab-{name}.gguf"))
    wrong = [
        f"{text!r}: decoded as {back!r}"
        for text, ids in cases(vocabs, name)
        if (back := tok.decode(ids, False)) != text
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED.items()))
def test_unsupported_vocabulary_is_a_typed_error(vocabs: Path, name: str, value: str) -> None:
    path = vocabs / f"ggml-vocab-{name}.gguf"
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_gguf(str(path))
    message = str(err.value)
    assert value in message and path.name in message, message
    assert "supported" in message or "known" in message, message
