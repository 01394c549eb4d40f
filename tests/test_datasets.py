"""lora_ens_rs.data: dataset names, MMLU subject groups, deterministic splits, the bundled
CommonsenseQA subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import DATA

import lora_ens_rs
from lora_ens_rs import data


@pytest.fixture(autouse=True)
def data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_ENS_RS_DATA", str(DATA))


def test_named_splits_read_the_right_files() -> None:
    assert len(data.load("csqa", "dev")) == 1221
    assert len(data.load("obqa", "test")) == 500
    arc = data.load("arc-challenge", "test", limit=7)
    first = (DATA / "arc/ARC-Challenge/ARC-Challenge-Test.jsonl").read_text().splitlines()[0]
    assert len(arc) == 7 and arc[0]["id"] == json.loads(first)["id"]
    assert data.load(DATA / "openbookqa/Main/dev.jsonl") == data.load("obqa", "dev")


def test_mmlu_groups_cover_every_subject_once() -> None:
    subjects = {p.name.removesuffix("_test.csv") for p in (DATA / "mmlu/test").glob("*.csv")}
    assert set(data.MMLU_GROUPS) == subjects
    groups = {g: data.mmlu_subjects(g) for g in ("stem", "humanities", "social_sciences", "other")}
    assert sorted(s for g in groups.values() for s in g) == sorted(subjects)
    stem = data.load("mmlu:stem", "test")
    assert {q["subject"] for q in stem} == set(groups["stem"])
    assert len(data.load("mmlu:anatomy", "test")) == 135


def test_split_is_deterministic_exact_and_seeded() -> None:
    qs = data.load("csqa", "train", limit=2000)
    rest, held = data.split(qs, 0.1, seed=3)
    assert len(rest) == 1800 and len(held) == 200
    assert sorted(q["id"] for q in rest + held) == sorted(q["id"] for q in qs)
    assert [q["id"] for q in held] == [q["id"] for q in qs if q in held]  # input order kept
    assert data.split(qs, 0.1, seed=3) == (rest, held)
    _, other = data.split(qs, 0.1, seed=4)
    assert {q["id"] for q in other} != {q["id"] for q in held}
    # At least one question on each side, whatever the fraction.
    assert [len(part) for part in data.split(qs[:3], 0.01)] == [2, 1]
    assert [len(part) for part in data.split(qs[:3], 0.99)] == [1, 2]


def test_bundled_subset_matches_the_source_and_has_its_licence() -> None:
    bundled = data.load("csqa-mini", "dev")
    assert bundled == data.load("csqa", "dev", limit=300)
    assert len(data.load("csqa-mini", "train")) == 1000
    folder = Path(lora_ens_rs.datasets.path("commonsenseqa", "dev")).parent
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert "first 300" in (folder / "SOURCE.md").read_text()


def test_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(lora_ens_rs.InputError, match="unknown dataset"):
        data.load("squad")
    with pytest.raises(lora_ens_rs.InputError, match="no split 'val'"):
        data.load("csqa", "val")
    with pytest.raises(lora_ens_rs.InputError, match="unknown MMLU subject or group"):
        data.load("mmlu:cooking")
    with pytest.raises(lora_ens_rs.InputError, match="fraction"):
        data.split([], 1.5)
    with pytest.raises(lora_ens_rs.DataError, match="from 1 question"):
        data.split(data.load("csqa-mini", "dev", limit=1))
    monkeypatch.setenv("LORA_ENS_RS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(lora_ens_rs.InputError, match="LORA_ENS_RS_DATA"):
        data.load("csqa", "dev")
    assert len(data.load("csqa-mini", "dev", limit=5)) == 5  # bundled: no data directory needed
