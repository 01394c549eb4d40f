"""Dataset readers and the prompt template, through the Python bindings.

Real-data checks read the benchmark files in `$LORA_ENS_RS_DATA` (else `../shared/data` beside
the repository) and are skipped when that directory is absent.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from support import DATA, csqa_prompts

import lora_ens_rs
from lora_ens_rs import _core

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no benchmark data at {DATA}")


@needs_data
def test_csqa_dev_prompts_match_the_parity_test() -> None:
    path = DATA / "commonsenseqa" / "dev_rand_split.jsonl"
    questions = _core.read_questions(path)
    assert len(questions) == 1221
    first = questions[0]
    assert set(first) == {"id", "question", "choices", "labels", "answer", "subject"}
    assert first["id"] == "1afa02df02c908a558b4036e80242fac"
    assert first["labels"] == ["A", "B", "C", "D", "E"]
    assert first["answer"] == 0
    assert first["subject"] is None
    assert all(q["answer"] is not None and len(q["choices"]) == 5 for q in questions)
    prompts = [_core.label_prompt(q["question"], q["choices"], q["labels"]) for q in questions]
    assert prompts == csqa_prompts()
    assert len(_core.read_questions(str(path), format="csqa", limit=7)) == 7


@needs_data
def test_mmlu_test_split_matches_python_csv_reader() -> None:
    total = 0
    for path in sorted((DATA / "mmlu" / "test").glob("*_test.csv")):
        questions = _core.read_questions(path)
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert [[q["question"], *q["choices"]] for q in questions] == [r[:5] for r in rows]
        assert [q["labels"][q["answer"]] for q in questions] == [r[5] for r in rows]
        subject = path.name.removesuffix("_test.csv")
        assert {q["subject"] for q in questions} == {subject}
        assert questions[-1]["id"] == f"{subject}-{len(rows)}"
        total += len(questions)
    assert total == 14042


def test_mmlu_quoting(tmp_path: Path) -> None:
    text = (
        '"Which, if ""any"", holds?",yes,"no, never","line one\r\nline two",both,C\r\n'
        "plain,1,2,3,4,D\r\n"
    )
    path = tmp_path / "logic_dev.csv"
    path.write_bytes(text.encode())
    questions = _core.read_questions(path)
    assert questions[0]["question"] == 'Which, if "any", holds?'
    assert questions[0]["choices"] == ["yes", "no, never", "line one\r\nline two", "both"]
    assert questions[0]["answer"] == 2
    assert questions[1]["id"] == "logic-2"
    assert questions[1]["subject"] == "logic"
    assert _core.parse_questions(text, source="logic_dev.csv") == questions


def test_generic_jsonl_answers_by_index_and_by_label() -> None:
    text = "\n".join(
        json.dumps(r)
        for r in [
            {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1},
            {
                "id": "x",
                "question": "Pick",
                "choices": ["a", "b"],
                "labels": ["1", "2"],
                "answer": "2",
            },
            {"question": "Open", "choices": ["yes", "no"], "subject": "misc"},
        ]
    )
    questions = _core.parse_questions(text, source="mine.jsonl")
    assert [q["answer"] for q in questions] == [1, 1, None]
    assert [q["id"] for q in questions] == ["mine-1", "x", "mine-3"]
    assert questions[0]["labels"] == ["A", "B", "C"]
    assert questions[1]["labels"] == ["1", "2"]
    assert questions[2]["subject"] == "misc"
    assert _core.parse_questions(text, format="generic", limit=1) == [
        {**questions[0], "id": "<string>-1"}
    ]


def test_bad_record_names_file_line_and_reason(tmp_path: Path) -> None:
    good = {"question": {"stem": "s", "choices": [{"label": "A", "text": "a"}]}, "answerKey": "A"}
    bad = {"question": {"stem": "s", "choices": [{"label": "A", "text": "a"}]}, "answerKey": "Z"}
    path = tmp_path / "broken.jsonl"
    path.write_text(f"{json.dumps(good)}\n\n{json.dumps(bad)}\n")
    with pytest.raises(lora_ens_rs.DataError) as info:
        _core.read_questions(path)
    assert f"{path}:3: " in str(info.value)
    assert 'answer "Z" is not among the labels A' in str(info.value)
    assert isinstance(info.value, lora_ens_rs.InputError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(lora_ens_rs.DataError, match=r"^<string>:1: invalid JSON"):
        _core.parse_questions("{oops", format="qa")
    with pytest.raises(lora_ens_rs.DataError, match="expected a dataset file"):
        _core.read_questions(tmp_path)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(lora_ens_rs.MissingFileError) as info:
        _core.read_questions(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(lora_ens_rs.InputError, match="qa, csqa, obqa, arc, mmlu, jsonl, generic"):
        _core.parse_questions("x", format="tsv")


def test_prompt_template() -> None:
    assert _core.TEMPLATE_NAME == "qa-v1"
    assert _core.LABEL_PREFIX == " "
    prompt = _core.label_prompt("Why?", ["because", "no"], ["1", "2"])
    assert prompt == "Question: Why?\n1. because\n2. no\nAnswer:"
    assert _core.label_continuation("2") == " 2"
    assert _core.choice_context("Why?") == "Question: Why?\nAnswer:"
    assert _core.choice_continuation("  because \n") == " because"
    with pytest.raises(lora_ens_rs.InputError, match="2 choices but 1 labels"):
        _core.label_prompt("q", ["a", "b"], ["A"])
    with pytest.raises(lora_ens_rs.InputError, match="at least one choice"):
        _core.label_prompt("q", [], [])
