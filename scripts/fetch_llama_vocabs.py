"""Fetch llama.cpp's tokenizer test vocabularies (`models/ggml-vocab-*.gguf` with their
`.inp` / `.out` cases) and its HF-to-GGUF converter (`convert_hf_to_gguf.py` with its
`conversion/` package and the `gguf-py` it ships) from the `llama-cpp-python` sdist on PyPI
into the cache.

    python scripts/fetch_llama_vocabs.py            # prints the directory holding the files

llama.cpp is MIT-licensed (Copyright (c) 2023-2026 The ggml authors); the files are fetched
at test time, not committed. The sdist is downloaded with pip, checked against its sha256,
and only those files (and llama.cpp's LICENSE) are kept, under
``<cache>/llama-vocabs-<version>`` (``$LORA_ENS_RS_CACHE`` or ``~/.cache/lora-ens-rs``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lora_ens_rs import cache_dir
from lora_ens_rs.atomic import atomic_directory

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MEMBER_PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
# The directory appears whole (atomic rename), so holding this file means it is complete.
DONE = "convert_hf_to_gguf.py"
CONVERTER = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")


def vocab_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Where the vocabularies of this version live (fetched or not)."""
    return Path(cache or cache_dir()) / f"llama-vocabs-{VERSION}"


def _wanted(name: str) -> str | None:
    """The file name to keep for an sdist member, or None to skip it."""
    if not name.startswith(MEMBER_PREFIX):
        return None
    rest = name[len(MEMBER_PREFIX) :]
    if rest == "LICENSE" or rest.startswith(CONVERTER):
        return rest
    if rest.startswith("models/ggml-vocab-") and "/" not in rest[len("models/") :]:
        return rest[len("models/") :]
    return None


def fetch(cache: str | os.PathLike[str] | None = None) -> Path:
    """The directory of the vocabularies, downloading them first if it is not complete.

    Raises:
        RuntimeError: pip could not download the sdist, or it did not verify.
    """
    target = vocab_dir(cache)
    if (target / DONE).is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="llama-vocabs-") as download:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
        cmd += ["llama-cpp-python", f"llama-cpp-python=={VERSION}", "-d", download]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sdist = Path(download) / SDIST
        if done.returncode != 0 or not sdist.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip could not download {SDIST}: {' | '.join(tail)}")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{SDIST} has sha256 {digest}, expected {SDIST_SHA256}")
        with tarfile.open(sdist) as tar, atomic_directory(target, replace=True) as tmp:
            for member in tar.getmembers():
                name = _wanted(member.name)
                if name is None or not member.isfile():
                    continue
                src = tar.extractfile(member)
                assert src is not None, member.name
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(src.read())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", help="cache directory (default: lora_ens_rs.cache_dir())")
    try:
        print(fetch(parser.parse_args().cache))
    except RuntimeError as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()
