"""Scoring on Ray Data (``lora_ens_rs.ray``, ``lora-ens-rs infer --ray``) against single-process
``infer``, on one local 2-CPU Ray cluster per module and the tiny fixture model: 2,000 questions
on 2 actors give infer's records exactly (by id: none missing, none twice, every field equal,
floats bit for bit), also when an actor dies mid-run; bad input raises the typed errors.
Run: ``python -m pytest tests/test_ray.py`` (skipped without the ``ray`` extra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lora-ens-rs[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (the ray[data] extra)")
pa = pytest.importorskip("pyarrow", reason="pyarrow comes with ray[data]")

import lora_ens_rs as le  # noqa: E402 (after the skips: the module needs ray)
from lora_ens_rs import ray as ler  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")
N_QUESTIONS = 2000
WORDS = ["ice", "fire", "water", "stone", "cloud", "river", "tree", "bird", "salt", "glass"]


def make_questions(n: int) -> list[dict[str, Any]]:
    """``n`` short generic-JSONL questions: 2-5 choices, an answer on two in three, custom
    labels on some."""
    out = []
    for i in range(n):
        k = 2 + i % 4
        q: dict[str, Any] = {
            "id": f"q{i:05d}",
            "question": f"Which is {WORDS[i % 10]} like, {WORDS[(i * 7) % 10]}?",
            "choices": [WORDS[(i + j * 3) % 10] for j in range(k)],
        }
        if i % 5 == 1:
            q["labels"] = [str(j + 1) for j in range(k)]
        if i % 3 != 2:  # labels, not indices: a JSON column needs one type for Arrow
            q["answer"] = (q.get("labels") or "ABCDE")[i % k]
        out.append(q)
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray cluster (2 CPUs) for the module; its address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tiny_dir: Path, tiny_ensemble: Path) -> tuple[Path, Path]:
    return tiny_dir / "tiny-q8_0.gguf", tiny_ensemble


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ray") / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in make_questions(N_QUESTIONS)))
    return path


@pytest.fixture(scope="module")
def expected(questions: Path, model: tuple[Path, Path]) -> list[dict[str, Any]]:
    """Single-process ``lora-ens-rs infer --members`` (2 threads): the records to match."""
    gguf, ensemble = model
    args = [SCRIPT, "infer", str(questions), "--model", str(gguf), "--adapters", str(ensemble)]
    proc = subprocess.run(
        [*args, "--members", "--threads", "2", "-q"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == N_QUESTIONS
    return records


def assert_same_records(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Keyed by id: every expected record once, none extra, every field equal. The floats are
    bit-equal: each question's numbers do not depend on its batch or the thread count, and
    float64 columns hold ``to_records``' values, which infer's JSON spells exactly."""
    got: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["id"] not in got, f"record {row['id']} twice"
        got[row["id"]] = ler.record_from_row(row)
    want = {r["id"]: r for r in expected}
    assert sorted(got) == sorted(want), "missing or extra ids"
    for key, record in want.items():
        assert got[key] == record, key
        assert list(got[key]) == list(record), f"{key}: key order"


def test_record_schema_is_the_engines(model: tuple[Path, Path]) -> None:
    """The Arrow columns are, in order, the keys of a full engine record."""
    gguf, ensemble = model
    q = {"id": "x", "question": "Ice is", "choices": ["cold", "hot"], "answer": 0}
    record = le.Ensemble(gguf, ensemble, threads=1).score_questions([q]).to_records(members=True)
    assert ler.record_schema(members=True).names == list(record[0])
    assert "member_probs" not in ler.record_schema().names


def test_two_actors_give_infers_records(
    cluster: str, questions: Path, model: tuple[Path, Path], expected: list[dict[str, Any]]
) -> None:
    # Read first: the two actors hold both CPUs, so a read running beside them would wait.
    ds = ray.data.read_json(str(questions)).materialize()
    out = ler.score_dataset(ds, *model, members=True, concurrency=2, batch_size=128)
    assert_same_records(out.take_all(), expected)


def test_a_killed_actor_is_restarted_and_nothing_is_lost(
    cluster: str,
    questions: Path,
    model: tuple[Path, Path],
    expected: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "crashed"
    ds = ray.data.from_items(le.read_questions(questions))
    out = ler.score_dataset(
        ds, *model, members=True, concurrency=2, batch_size=200,
        actor_class=crashing_scorer(marker, nth=3),
    )  # fmt: skip
    rows = out.take_all()
    assert marker.is_file(), "no actor died: the test did not test a restart"
    assert_same_records(rows, expected)


def crashing_scorer(marker: Path, nth: int) -> type[ler.RecordScorer]:
    """A scorer whose process exits on its ``nth`` batch, in the first actor to get there
    (the marker file, created exclusively, makes it once per run). Defined in a function so
    Ray ships the class by value to its workers."""

    class CrashOnce(ler.RecordScorer):
        calls = 0

        def __call__(self, batch: pa.Table) -> pa.Table:
            self.calls += 1
            if self.calls == nth:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)  # as an out-of-memory kill would: no cleanup, no exception
            return super().__call__(batch)

    return CrashOnce


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_cli_writes_infers_records_in_order(
    cluster: str,
    questions: Path,
    model: tuple[Path, Path],
    expected: list[dict[str, Any]],
    tmp_path: Path,
    suffix: str,
) -> None:
    """``infer --ray ADDRESS`` on the running cluster, the first 300 questions."""
    gguf, ensemble = model
    output = tmp_path / f"out{suffix}"
    args = [SCRIPT, "infer", str(questions), "--model", str(gguf), "--adapters", str(ensemble)]
    args += ["--limit", "300", "--members", "-q", "--ray", cluster, "-o", str(output)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        records = [ler.record_from_row(r) for r in pq.read_table(output).to_pylist()]
    else:
        records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records == expected[:300]


def test_unknown_scoring_and_missing_fields_are_input_errors(
    cluster: str, model: tuple[Path, Path]
) -> None:
    ds = ray.data.from_items(make_questions(4))
    with pytest.raises(le.InputError, match="unknown scoring 'letters'"):
        ler.score_dataset(ds, *model, scoring="letters")
    with pytest.raises(le.InputError, match="unknown normalization 'mean'"):
        ler.score_dataset(ds, *model, normalization="mean")
    no_choices = ray.data.from_items([{"id": "a", "question": "Ice is"}])
    with pytest.raises(le.InputError, match="no `choices` field"):
        ler.score_dataset(no_choices, *model)
    no_id = ray.data.from_items([{"question": "Ice is", "choices": ["cold", "hot"]}])
    with pytest.raises(le.InputError, match="no `id` field"):
        ler.score_dataset(no_id, *model)


def test_a_bad_row_fails_the_run_with_the_engines_error(
    cluster: str, model: tuple[Path, Path]
) -> None:
    rows = [{"id": "a", "question": "Ice is", "choices": "cold or hot"}]
    out = ler.score_dataset(ray.data.from_items(rows), *model, concurrency=1)
    with pytest.raises(Exception) as caught:
        out.take_all()
    error = ler.unwrap_error(caught.value)
    assert isinstance(error, le.DataError), repr(caught.value)
    assert "`choices` must be an array of strings" in str(error)


def test_cli_bad_question_is_one_error_line_and_no_output(
    model: tuple[Path, Path], tmp_path: Path
) -> None:
    """The engine's reader refuses the file before Ray starts, as infer does."""
    gguf, ensemble = model
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "Ice is", "choices": "cold"}\n')
    output = tmp_path / "out.jsonl"
    args = [SCRIPT, "infer", str(bad), "--model", str(gguf), "--adapters", str(ensemble)]
    proc = subprocess.run(
        [*args, "--ray", "-o", str(output)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "`choices`" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not output.exists()
