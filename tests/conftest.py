"""Shared pytest fixtures for lora-ens-rs: test models first, then anything else, by heading.

The tiny random LLaMA is written by `scripts/make_tiny_llama.py` (`make fixtures`) into
`$LORA_ENS_RS_FIXTURES` or `tests/fixtures/tiny`, and rewritten here whenever it is missing or
stale (the script changed, or a file no longer matches the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAKE_TINY_LLAMA = REPO / "scripts" / "make_tiny_llama.py"
MAKE_TINY_ENSEMBLE = REPO / "scripts" / "make_tiny_ensemble.py"
FETCH_LLAMA_VOCABS = REPO / "scripts" / "fetch_llama_vocabs.py"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_fixture_is_fresh(directory: Path) -> bool:
    """Whether `directory` holds every file its manifest lists, written by the current script."""
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("script_sha256") != sha256(MAKE_TINY_LLAMA):
        return False
    return all(
        (directory / name).is_file() and sha256(directory / name) == digest
        for name, digest in manifest["files"].items()
    )


# ---------------------------------------------------------------------------------------------
# Models


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """Directory of the tiny random LLaMA: `tiny-*.gguf`, `hf/`, `hf-untied/`, `manifest.json`."""
    directory = Path(os.environ.get("LORA_ENS_RS_FIXTURES") or REPO / "tests" / "fixtures" / "tiny")
    if not tiny_fixture_is_fresh(directory):
        subprocess.run(
            [sys.executable, str(MAKE_TINY_LLAMA), "--out", str(directory)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        assert tiny_fixture_is_fresh(directory), f"{MAKE_TINY_LLAMA} left {directory} incomplete"
    return directory


@pytest.fixture(scope="session")
def tiny_ensemble(tiny_dir: Path) -> Path:
    """The tiny model's 3-member LoRA ensemble directory (``ensemble.json`` + ``m0..m2``)."""
    directory = tiny_dir / "ensemble"
    if not (directory / "ensemble.json").is_file():
        subprocess.run(
            [sys.executable, str(MAKE_TINY_ENSEMBLE), "--fixtures", str(tiny_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return directory


@pytest.fixture(scope="session")
def default_model() -> str:
    """Path of the default model (SmolLM2-135M-Instruct Q4_1 GGUF), fetched on first use."""
    import lora_ens_rs

    return lora_ens_rs.default_model_path()


@pytest.fixture(scope="session")
def llama_vocabs() -> Path:
    """The directory of llama.cpp's test vocabularies (`ggml-vocab-*.gguf` with `.inp` / `.out`),
    fetched by `scripts/fetch_llama_vocabs.py`; the test is skipped when they cannot be."""
    done = subprocess.run(
        [sys.executable, str(FETCH_LLAMA_VOCABS)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"llama.cpp's test vocabularies could not be fetched: {reason}")
    return Path(done.stdout.strip())
