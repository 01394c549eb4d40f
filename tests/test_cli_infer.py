"""`lora-ens-rs infer` through the console script, on the tiny fixture model and its 3-member
ensemble: questions from stdin, per-member probabilities, the metrics summary on stderr, and a
bad record reported as one line with exit code 1 and no output file written.
Run: `python -m pytest tests/test_cli_infer.py` (after `maturin develop`)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")

QUESTIONS = [
    {
        "id": "sky",
        "question": "What colour is the sky?",
        "choices": ["blue", "green", "red"],
        "answer": 0,
    },
    {
        "id": "cat",
        "question": "A baby cat is a",
        "choices": ["kitten", "puppy", "calf", "foal"],
        "answer": "A",
    },
    {
        "id": "sun",
        "question": "Where does the sun rise?",
        "choices": ["west", "east"],
        "labels": ["1", "2"],
    },
]
KEYS = [
    "id",
    "labels",
    "probs",
    "prediction",
    "prediction_index",
    "confidence",
    "entropy",
    "expected_entropy",
    "mutual_information",
    "agreement",
]


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def infer(tiny_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    model = str(tiny_dir / "tiny-q8_0.gguf")
    ensemble = str(tiny_dir / "ensemble")
    return subprocess.run(
        [SCRIPT, "infer", "--model", model, "--adapters", ensemble, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_stdin_questions_give_one_record_each(tiny_dir: Path) -> None:
    out = infer(tiny_dir, "-", stdin=jsonl(QUESTIONS))
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in records] == ["sky", "cat", "sun"]
    for rec, q in zip(records, QUESTIONS, strict=True):
        assert list(rec)[: len(KEYS)] == KEYS
        assert len(rec["probs"]) == len(q["choices"])
        assert math.isclose(sum(rec["probs"]), 1.0, abs_tol=1e-5)
        assert rec["prediction"] == rec["labels"][rec["probs"].index(max(rec["probs"]))]
        assert rec["confidence"] == max(rec["probs"])
        assert rec["mutual_information"] >= 0.0
        assert any(rec["agreement"] == pytest.approx(k / 3) for k in range(4))
        assert "member_probs" not in rec
    assert records[1]["labels"] == ["A", "B", "C", "D"]
    assert records[2]["labels"] == ["1", "2"]
    # Answers give `answer` and `correct`; the last question has none.
    assert records[0]["answer"] == "A" and records[0]["correct"] == (
        records[0]["prediction"] == "A"
    )
    assert "answer" not in records[2] and "correct" not in records[2]


def test_members_average_to_the_ensemble(tiny_dir: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(jsonl(QUESTIONS))
    out = infer(tiny_dir, str(questions), "--members", "--scoring", "labels")
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        rec = json.loads(line)
        members = rec["member_probs"]
        assert len(members) == 3
        assert all(len(m) == len(rec["probs"]) for m in members)
        for j, p in enumerate(rec["probs"]):
            assert p == pytest.approx(sum(m[j] for m in members) / 3, abs=1e-6)


def test_answers_give_a_summary_on_stderr(tiny_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    out = infer(tiny_dir, "--output", str(output), stdin=jsonl(QUESTIONS))
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert len(output.read_text().splitlines()) == 3
    n = r"\d+\.\d{3}"
    pattern = rf"accuracy {n}  nll {n}  ece {n}  brier {n}  \(2 questions, 3 members\)"
    assert re.fullmatch(pattern, out.stderr.strip()), out.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    accuracy = float(out.stderr.split()[1])
    assert accuracy == pytest.approx(sum(r["correct"] for r in records[:2]) / 2, abs=1e-3)
    # --quiet keeps stderr empty.
    quiet = infer(tiny_dir, "--quiet", stdin=jsonl(QUESTIONS))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_malformed_line_is_one_error_and_writes_nothing(tiny_dir: Path, tmp_path: Path) -> None:
    questions = tmp_path / "bad.jsonl"
    questions.write_text(jsonl(QUESTIONS[:1]) + '{"question": "unfinished\n')
    output = tmp_path / "out.jsonl"
    out = infer(tiny_dir, str(questions), "--output", str(output))
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"error: {questions}:2: ")
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


@pytest.mark.parametrize("scoring", ["labels", "choices"])
def test_cli_and_python_api_give_identical_numbers(
    tmp_path: Path, tiny_dir: Path, tiny_ensemble: Path, scoring: str
) -> None:
    """The same 50 CommonsenseQA dev questions through `infer` and through `Ensemble`."""
    import numpy as np
    from support import DATA

    import lora_ens_rs

    data = DATA / "commonsenseqa" / "dev_rand_split.jsonl"
    model = tiny_dir / "tiny-q8_0.gguf"
    out = tmp_path / "out.jsonl"
    args = [SCRIPT, "infer", str(data), "--model", str(model), "--adapters", str(tiny_ensemble)]
    args += ["--limit", "50", "--scoring", scoring, "--members", "--output", str(out), "-q"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 50

    questions = lora_ens_rs.read_questions(data, limit=50)
    ens = lora_ens_rs.Ensemble(model, tiny_ensemble)
    if scoring == "labels":
        prompts = [
            lora_ens_rs.label_prompt(q["question"], q["choices"], q["labels"]) for q in questions
        ]
        s = ens.score(prompts, [q["labels"] for q in questions])
    else:
        contexts = [lora_ens_rs.choice_context(q["question"]) for q in questions]
        s = ens.score_choices(
            contexts, [q["choices"] for q in questions], normalization="per_token"
        )
    got = {
        key: np.array([r[key] for r in records], dtype=np.float32)
        for key in ("probs", "confidence", "entropy", "expected_entropy", "mutual_information")
    }
    np.testing.assert_array_equal(got["probs"], s.probs)
    for key in ("confidence", "entropy", "expected_entropy", "mutual_information"):
        np.testing.assert_array_equal(got[key], getattr(s, key), err_msg=key)
    member_probs = np.array([r["member_probs"] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(member_probs, s.member_probs)
    want = [q["labels"][int(p)] for q, p in zip(questions, s.prediction, strict=True)]
    assert [r["prediction"] for r in records] == want
    assert [r["id"] for r in records] == [q["id"] for q in questions]
    # One record schema: infer's lines are, field by field, Scores.to_records of the same
    # questions scored through the Python API.
    by_api = ens.score_questions(questions, scoring, normalization="per_token")
    assert by_api.scoring == scoring
    assert by_api.to_records(members=True) == records
    assert by_api.to_records() == [
        {k: v for k, v in r.items() if k != "member_probs"} for r in records
    ]
