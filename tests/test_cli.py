"""The `lora-ens-rs` command line (console script and Rust binary share one implementation)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_ens_rs import _core

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=600)


def test_generate_matches_the_engine(tiny_dir: Path) -> None:
    model = str(tiny_dir / "tiny-q8_0.gguf")
    out = run("generate", "--model", model, "--max-new-tokens", "6", "The sun is")
    assert out.returncode == 0, out.stderr
    tok = _core.Tokenizer.from_gguf(model)
    ids = _core.Model(model).generate_greedy(
        tok.encode("The sun is"), max_new_tokens=6, stop_ids=[tok.eos_id]
    )
    if ids and ids[-1] == tok.eos_id:
        ids = ids[:-1]
    assert out.stdout == tok.decode(ids, skip_special_tokens=True) + "\n"


def test_generate_with_an_ensemble_matches_the_bindings(tiny_dir: Path) -> None:
    model, ensemble = str(tiny_dir / "tiny-q8_0.gguf"), str(tiny_dir / "ensemble")
    flags = ["--max-new-tokens", "8", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3"]
    out = run("generate", "--model", model, "--adapters", ensemble, *flags, "The sun is")
    assert out.returncode == 0, out.stderr
    want = _core.Ensemble(model, [ensemble]).generate(
        "The sun is", max_new_tokens=8, temperature=0.7, top_p=0.9, seed=3
    )
    assert out.stdout == want.text + "\n"


def test_generate_uncertainty_prints_a_table_after_the_text(tiny_dir: Path) -> None:
    model, ensemble = str(tiny_dir / "tiny-q8_0.gguf"), str(tiny_dir / "ensemble")
    args = ["--max-new-tokens", "5", "--uncertainty", "Hello"]
    out = run("generate", "--model", model, "--adapters", ensemble, *args)
    assert out.returncode == 0, out.stderr
    want = _core.Ensemble(model, [ensemble]).generate("Hello", max_new_tokens=5)
    text, table = out.stdout.split("\n\n", 1)
    assert text == want.text
    rows = table.splitlines()
    assert rows[0].split() == ["token", "p", "entropy", "mi"]
    assert len(rows) == len(want.tokens) + 1
    for row, p, h, mi in zip(
        rows[1:], want.probs, want.entropy, want.mutual_information, strict=True
    ):
        numbers = [float(x) for x in row.rsplit(maxsplit=3)[1:]]
        assert numbers == pytest.approx([p, h, mi], abs=5e-5)
        assert row.startswith('"')


def test_generate_chat_renders_the_template(tiny_dir: Path) -> None:
    out = run("generate", "--chat", "--model", str(tiny_dir / "tiny-q4_1.gguf"), "Hi")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--model", "/nonexistent/m.gguf", "x"], "/nonexistent/m.gguf"),
        (["generate", "--model", __file__, "x"], "not a valid GGUF file"),
        (["generate", "--device", "tpu", "x"], "unknown device `tpu`"),
    ],
)
def test_errors_are_one_line_with_exit_code(args: list[str], message: str) -> None:
    out = run(*args)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    assert message in lines[-1]
