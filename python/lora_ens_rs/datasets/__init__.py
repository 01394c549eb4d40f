"""Small benchmark subsets that ship with the package, so the demo runs without other data.

    from lora_ens_rs import datasets
    datasets.path("commonsenseqa", "dev")     # .../datasets/commonsenseqa/dev.jsonl

Each dataset directory keeps its licence (``LICENSE``) and provenance (``SOURCE.md``).
"""

from __future__ import annotations

from pathlib import Path

from lora_ens_rs.errors import InputError

ROOT = Path(__file__).resolve().parent

#: Bundled datasets and their splits.
BUNDLED = {"commonsenseqa": ("train", "dev")}


def path(name: str, split: str) -> Path:
    """The JSONL file of a bundled dataset split.

    Args:
        name: a key of :data:`BUNDLED` (``"commonsenseqa"``).
        split: one of its splits (``"train"`` or ``"dev"``).

    Returns:
        The file's path (read it with :func:`lora_ens_rs.read_questions`).

    Raises:
        InputError: an unknown dataset or split.
    """
    if name not in BUNDLED:
        raise InputError(f"unknown bundled dataset {name!r}: expected one of {sorted(BUNDLED)}")
    if split not in BUNDLED[name]:
        raise InputError(f"{name} has no split {split!r}: expected one of {BUNDLED[name]}")
    return ROOT / name / f"{split}.jsonl"
