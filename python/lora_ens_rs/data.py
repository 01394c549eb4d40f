"""Benchmark datasets by name, MMLU subject groups and deterministic splits.

    from lora_ens_rs import data
    train = data.load("csqa", "train", limit=1000)        # list of question dicts
    test = data.load("mmlu:stem", "test")                  # an MMLU subject group
    fit, val = data.split(train, fraction=0.1)             # the training validation split

Files are read by the engine's readers (:func:`lora_ens_rs.read_questions`); prompts come from
the shared template. Names resolve under the data directory (``$LORA_ENS_RS_DATA``, else
``../shared/data`` from the working directory); ``csqa-mini`` is bundled with the package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_ens_rs import _core, datasets
from lora_ens_rs.errors import DataError, InputError

Question = dict[str, Any]

# MMLU subject -> category, as in the MMLU release (Hendrycks et al. 2021, `categories.py`):
# STEM, humanities, social sciences, other (business, health, misc.).
_STEM = "stem"
_HUM = "humanities"
_SOC = "social_sciences"
_OTH = "other"
MMLU_GROUPS: dict[str, str] = {
    **dict.fromkeys(
        [
            "abstract_algebra", "astronomy", "college_biology", "college_chemistry",
            "college_computer_science", "college_mathematics", "college_physics",
            "computer_security", "conceptual_physics", "electrical_engineering",
            "elementary_mathematics", "high_school_biology", "high_school_chemistry",
            "high_school_computer_science", "high_school_mathematics", "high_school_physics",
            "high_school_statistics", "machine_learning",
        ],
        _STEM,
    ),
    **dict.fromkeys(
        [
            "formal_logic", "high_school_european_history", "high_school_us_history",
            "high_school_world_history", "international_law", "jurisprudence",
            "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
            "prehistory", "professional_law", "world_religions",
        ],
        _HUM,
    ),
    **dict.fromkeys(
        [
            "econometrics", "high_school_geography", "high_school_government_and_politics",
            "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
            "human_sexuality", "professional_psychology", "public_relations",
            "security_studies", "sociology", "us_foreign_policy",
        ],
        _SOC,
    ),
    **dict.fromkeys(
        [
            "anatomy", "business_ethics", "clinical_knowledge", "college_medicine",
            "global_facts", "human_aging", "management", "marketing", "medical_genetics",
            "miscellaneous", "nutrition", "professional_accounting", "professional_medicine",
            "virology",
        ],
        _OTH,
    ),
}  # fmt: skip

# name -> split -> file under the data directory.
FILES: dict[str, dict[str, str]] = {
    "csqa": {
        "train": "commonsenseqa/train_rand_split.jsonl",
        "dev": "commonsenseqa/dev_rand_split.jsonl",
    },
    "obqa": {
        "train": "openbookqa/Main/train.jsonl",
        "dev": "openbookqa/Main/dev.jsonl",
        "test": "openbookqa/Main/test.jsonl",
    },
    **{
        f"arc-{level.lower()}": {
            split: f"arc/ARC-{level}/ARC-{level}-{split.capitalize()}.jsonl"
            for split in ("train", "dev", "test")
        }
        for level in ("Easy", "Challenge")
    },
}
#: MMLU splits: ``dev`` (5 per subject, few-shot), ``val`` and ``test``.
MMLU_SPLITS = ("dev", "val", "test")
#: Default seed of :func:`split`, the one training holds out its validation questions with
#: (``TrainConfig.val_fraction``): fixed, so every member, every run and a resumed run hold out
#: the same questions whatever their own seeds.
SPLIT_SEED = 20231001


def data_dir() -> Path:
    """The benchmark data directory: ``$LORA_ENS_RS_DATA``, else ``../shared/data``."""
    env = os.environ.get("LORA_ENS_RS_DATA")
    path = Path(env) if env else Path.cwd().parent / "shared" / "data"
    if not path.is_dir():
        raise InputError(
            f"benchmark data directory {path} does not exist: set LORA_ENS_RS_DATA, or use the "
            "bundled 'csqa-mini' dataset"
        )
    return path


def names() -> list[str]:
    """Every dataset name :func:`load` accepts (MMLU subjects and groups as ``mmlu:<x>``)."""
    groups = sorted(set(MMLU_GROUPS.values()))
    return [
        *FILES,
        "csqa-mini",
        "mmlu",
        *(f"mmlu:{g}" for g in groups),
        *(f"mmlu:{s}" for s in sorted(MMLU_GROUPS)),
    ]


def mmlu_subjects(selector: str = "") -> list[str]:
    """MMLU subjects of a group (``stem``, ``humanities``, ``social_sciences``, ``other``), a
    single subject, or all of them for ``""``."""
    if not selector:
        return sorted(MMLU_GROUPS)
    if selector in MMLU_GROUPS:
        return [selector]
    subjects = sorted(s for s, g in MMLU_GROUPS.items() if g == selector)
    if not subjects:
        raise InputError(
            f"unknown MMLU subject or group {selector!r}: groups are "
            f"{sorted(set(MMLU_GROUPS.values()))}, or a subject such as 'anatomy'"
        )
    return subjects


def files(name: str, split: str) -> list[Path]:
    """The files behind a dataset name and split."""
    if name == "csqa-mini":
        return [datasets.path("commonsenseqa", split)]
    if name == "mmlu" or name.startswith("mmlu:"):
        if split not in MMLU_SPLITS:
            raise InputError(f"MMLU has no split {split!r}: expected one of {MMLU_SPLITS}")
        root = data_dir() / "mmlu" / split
        return [root / f"{s}_{split}.csv" for s in mmlu_subjects(name.partition(":")[2])]
    if name not in FILES:
        raise InputError(f"unknown dataset {name!r}: expected a file path or one of {names()[:8]}")
    if split not in FILES[name]:
        raise InputError(f"{name} has no split {split!r}: expected one of {list(FILES[name])}")
    return [data_dir() / FILES[name][split]]


def load(
    name: str | os.PathLike[str], split: str = "test", limit: int | None = None
) -> list[Question]:
    """Questions of a named dataset split, or of a file path (``split`` is then ignored).

    Args:
        name: a file path, or a name from :func:`names` (``csqa``, ``obqa``, ``arc-easy``,
            ``arc-challenge``, ``mmlu``, ``mmlu:stem``, ``mmlu:anatomy``, ``csqa-mini``).
        split: ``train``, ``dev`` (validation) or ``test``; MMLU has ``dev``, ``val``, ``test``.
        limit: the first N questions.

    Returns:
        Question dicts (``id``, ``question``, ``choices``, ``labels``, ``answer``, ``subject``).

    Raises:
        InputError: an unknown name or split, or no data directory.
        DataError: a malformed record (the message names file and line).
    """
    as_path = Path(name)
    if as_path.suffix in {".jsonl", ".json", ".csv"} or as_path.exists():
        return _core.read_questions(as_path, limit=limit)
    out: list[Question] = []
    for path in files(str(name), split):
        left = None if limit is None else limit - len(out)
        if left == 0:
            break
        out += _core.read_questions(path, limit=left)
    return out


def split(
    questions: Sequence[Question], fraction: float = 0.1, seed: int = SPLIT_SEED
) -> tuple[list[Question], list[Question]]:
    """Split into (rest, held-out) deterministically: ``round(N * fraction)`` questions are held
    out (at least one, and at least one left), those at the first positions of a permutation of
    ``0..N`` drawn with ``seed``; both parts keep the input order. With the default seed this
    is training's validation split.

    Raises:
        InputError: ``fraction`` outside (0, 1).
        DataError: fewer than 2 questions.

    Example:
        >>> rest, held = split([{"id": str(i)} for i in range(10)], 0.2)
        >>> len(rest), len(held), held == split([{"id": str(i)} for i in range(10)], 0.2)[1]
        (8, 2, True)
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be in (0, 1), got {fraction}")
    n = len(questions)
    if n < 2:
        raise DataError(f"cannot hold out questions from {n} question(s)")
    n_held = min(max(1, round(n * fraction)), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:n_held].tolist())
    return (
        [q for i, q in enumerate(questions) if i not in held],
        [q for i, q in enumerate(questions) if i in held],
    )
