"""Text corpora shared by the tokenizer tests: every question and choice of the benchmark data,
the lettered prompts built from them, a deterministic sample of both, and the committed
multilingual / edge-case strings of ``tests/data/tokenizer_edge_cases.json``.

    from corpus import benchmark_strings, edge_cases, load_questions, prompt
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from support import DATA

EDGE_CASES = Path(__file__).resolve().parent / "data" / "tokenizer_edge_cases.json"


def load_questions() -> list[tuple[str, list[str], str]]:
    """(stem, choice texts, split file name) of every question of every data file."""
    assert DATA.is_dir(), f"benchmark data not found at {DATA} (set $LORA_ENS_RS_DATA)"
    questions = []
    for path in sorted(DATA.rglob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    q = json.loads(line)["question"]
                    questions.append((q["stem"], [c["text"] for c in q["choices"]], path.name))
    for path in sorted((DATA / "mmlu").rglob("*.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            questions.extend((row[0], row[1:5], path.name) for row in csv.reader(f))
    kinds = {name.split("_")[0].split("-")[0] for _, _, name in questions}
    assert len(questions) > 40_000 and len(kinds) > 5, f"incomplete data at {DATA}"
    return questions


def prompt(stem: str, choices: list[str]) -> str:
    """The lettered multiple-choice prompt ("Question: ...\\nA. ...\\nAnswer:")."""
    letters = "ABCDEFGH"
    lines = "\n".join(f"{letters[i]}. {text}" for i, text in enumerate(choices))
    return f"Question: {stem}\n{lines}\nAnswer:"


def benchmark_strings(questions: list[tuple[str, list[str], str]]) -> list[str]:
    """Distinct stems and choices of every question, the prompts of the dev/val splits and
    question/answer pairs, in a fixed order."""
    strings = [s for stem, choices, _ in questions for s in (stem, *choices)]
    dev = [q for q in questions if any(k in q[2] for k in ("dev", "Dev", "val"))]
    strings += [prompt(stem, choices) for stem, choices, _ in dev]
    strings += [f"Question: {stem}\nAnswer: {choices[-1]}" for stem, choices, _ in dev[::5]]
    return list(dict.fromkeys(strings))


def sample(strings: list[str], n: int, seed: int = 0) -> list[str]:
    """A deterministic sample of `n` strings (all of them if there are fewer), in order."""
    if len(strings) <= n:
        return list(strings)
    keep = sorted(random.Random(seed).sample(range(len(strings)), n))
    return [strings[i] for i in keep]


def edge_cases() -> dict[str, list[str]]:
    """The committed multilingual and edge-case strings, by group."""
    groups = json.loads(EDGE_CASES.read_text(encoding="utf-8"))
    return {k: v for k, v in groups.items() if not k.startswith("_")}
