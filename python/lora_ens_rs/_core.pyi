# Type stubs of the compiled module lora_ens_rs._core (rust/lora-ens-py).
# tests/test_package.py checks that these names match the compiled module.

import os
import pathlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str
DEFAULT_MODEL_SHA256: str
DEFAULT_MODEL_FILE: str
_ERROR_CLASSES: list[str]

def default_model_path(python: str | None = None, force: bool = False) -> str: ...
def cache_dir() -> str: ...
def sha256_file(path: str) -> str: ...
def cli_main(argv: list[str], python: str | None = None) -> int: ...

class Model:
    """A LLaMA-family model loaded from a GGUF file (weights stay quantized)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None: ...
    @property
    def config(self) -> dict[str, int | float | bool]: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def weight_bytes(self) -> int: ...
    def logits(
        self,
        prompts: Sequence[Sequence[int]],
        token_ids: Sequence[int] | None = None,
        batch_size: int = 16,
    ) -> npt.NDArray[np.float32]: ...
    def generate_greedy(
        self, prompt: Sequence[int], max_new_tokens: int = 32, stop_ids: Sequence[int] = ...
    ) -> list[int]: ...
    def __repr__(self) -> str: ...
