# Type stubs of the compiled module lora_ens_rs._core (rust/lora-ens-py).
# tests/test_package.py checks that these names match the compiled module.

import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__version__: str
DEFAULT_MODEL_SHA256: str
DEFAULT_MODEL_FILE: str
_ERROR_CLASSES: list[str]
EXIT_ERROR: int
EXIT_USAGE: int

def default_model_path(python: str | None = None, force: bool = False) -> str: ...
def cache_dir() -> str: ...
def sha256_file(path: str) -> str: ...
def cli_main(argv: list[str], python: str | None = None) -> int: ...
def cli_subcommands() -> list[tuple[str, str, bool]]:
    """Every subcommand as (name, about, runs_in_python), in ``--help`` order."""

def cli_option_specs() -> list[dict[str, object]]:
    """The options several subcommands share, as the Rust parser defines them."""

def reduce(
    member_logits: npt.ArrayLike, valid: Sequence[int] | npt.ArrayLike | None = None
) -> dict[str, npt.NDArray[np.float32] | npt.NDArray[np.int64]]:
    """Reduce member logits (N, M, K) to the ensemble's probabilities and uncertainty."""

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

class Tokenizer:
    """A byte-level BPE tokenizer whose ids match the HF tokenizer of the same model."""

    @staticmethod
    def from_gguf(path: str | os.PathLike[str]) -> Tokenizer: ...
    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Tokenizer: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, id: int) -> str | None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def chat_template(self) -> str | None: ...
    def __repr__(self) -> str: ...

class LoraAdapter:
    """A PEFT LoRA adapter directory, validated against a base model."""

    @staticmethod
    def load(path: str | os.PathLike[str], model: Model) -> LoraAdapter: ...
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def modules(self) -> list[tuple[int, str]]: ...
    def rank(self, layer: int, target: str) -> int: ...
    def scaling(self, layer: int, target: str) -> float: ...
    def delta(self, layer: int, target: str) -> npt.NDArray[np.float32]:
        """``scaling * lora_B @ lora_A`` of one module, (out, in), rows in GGUF order."""
    def __repr__(self) -> str: ...

def load_adapters(
    paths: Sequence[str | os.PathLike[str]], model: Model, base_sha256: str | None = None
) -> list[LoraAdapter]:
    """Load adapters for ``model`` from PEFT adapter and ensemble (``ensemble.json``) dirs."""

class Ensemble:
    """A GGUF base model with M PEFT LoRA members run in one batched pass."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        adapters: Sequence[str | os.PathLike[str]],
        device: str = "cpu",
        threads: int | None = None,
    ) -> None: ...
    def score(
        self,
        prompts: Sequence[str],
        labels: Sequence[Sequence[str]],
        batch_size: int = 16,
        progress: Callable[[int, int], object] | None = None,
    ) -> dict[str, npt.NDArray[np.float32] | npt.NDArray[np.int64]]:
        """Score prompts over label tokens; a dict of arrays (see ``lora_ens_rs.Scores``)."""
    def score_choices(
        self,
        contexts: Sequence[str],
        choices: Sequence[Sequence[str]],
        normalization: str = "per_token",
        batch_size: int = 16,
        progress: Callable[[int, int], object] | None = None,
    ) -> dict[str, npt.NDArray[np.float32] | npt.NDArray[np.int64]]:
        """Score answer texts as continuations; a dict of arrays."""
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        chat: bool = False,
    ) -> dict[str, object]:
        """Generate with the members' averaged next-token distribution; a dict."""
    @property
    def member_names(self) -> list[str]: ...
    @property
    def member_paths(self) -> list[pathlib.Path]: ...
    @property
    def model_path(self) -> pathlib.Path: ...
    @property
    def manifest_path(self) -> pathlib.Path | None: ...
    @property
    def config(self) -> dict[str, int | float | bool]: ...
    @property
    def weight_bytes(self) -> int: ...
    def __repr__(self) -> str: ...

# ---------------------------------------------------------------------------------------------
# Datasets and the prompt template (rust/lora-ens-py/src/data.rs, prompt.rs)

TEMPLATE_NAME: str
LABEL_PREFIX: str

def read_questions(
    path: str | os.PathLike[str], format: str | None = None, limit: int | None = None
) -> list[dict[str, str | int | list[str] | None]]:
    """Read a QA dataset file into dicts: id, question, choices, labels, answer, subject."""

def parse_questions(
    text: str,
    source: str | os.PathLike[str] = "<string>",
    format: str | None = None,
    limit: int | None = None,
) -> list[dict[str, str | int | list[str] | None]]:
    """Parse a QA dataset held in a string; ``source`` names it in errors and default ids."""

def label_prompt(question: str, choices: Sequence[str], labels: Sequence[str]) -> str:
    """The lettered prompt ``"Question: {question}\\n{label}. {choice}\\n...\\nAnswer:"``."""

def label_continuation(label: str) -> str:
    """The text scored for a label after a label prompt: ``LABEL_PREFIX + label``."""

def choice_context(question: str) -> str:
    """The context for choice-text scoring: ``"Question: {question}\\nAnswer:"``."""

def choice_continuation(choice: str) -> str:
    """The continuation scored for one choice: a space, then the trimmed choice text."""
