"""A corpus of malformed adapters, ensembles, question files and arguments: each must give its
documented exception (or exit status and message), within a time limit, inside a memory
limit, and leave no output or temporary file behind.

Every case runs in a fresh interpreter under ``RLIMIT_AS`` (1 GiB of address space; loading
the tiny ensemble takes about 250 MiB) and a timeout, so a reader that follows ``/dev/zero``,
blocks on a FIFO or grows with a huge line fails here instead of hanging the test run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 1 << 30
TIMEOUT_S = 60

PRELUDE = """
import json, resource, sys, warnings
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import lora_ens_rs as le
from lora_ens_rs import _core
MODEL = {model!r}
ENS = {ens!r}
W = {work!r}
def result(kind, message=""):
    print(json.dumps([kind, message]))
try:
    warnings.simplefilter("error")
{body}
except BaseException as e:
    result(type(e).__name__, str(e))
else:
    result("ok")
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MALLOC_ARENA_MAX="2", RAYON_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "python"), env.get("PYTHONPATH", "")])
    return env


def run_case(body: str, tiny_dir: Path, work: Path) -> tuple[str, str]:
    """Run ``body`` (indented into a try block) in a limited interpreter: (class, message)."""
    code = PRELUDE.format(
        limit=MEMORY_LIMIT,
        model=str(tiny_dir / "tiny-q8_0.gguf"),
        ens=str(work / "ens"),
        work=str(work),
        body=textwrap.indent(textwrap.dedent(body), "    "),
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_env(),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert lines, f"no result (exit {done.returncode}):\n{done.stderr[-3000:]}"
    kind, message = json.loads(lines[-1])
    return kind, message


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def work(tiny_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny ensemble under ``tmp_path / "ens"`` to break."""
    shutil.copytree(tiny_dir / "ensemble", tmp_path / "ens")
    return tmp_path


def _replace(path: Path, by: Callable[[Path], None]) -> None:
    path.unlink()
    by(path)


def _devzero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def _questions(work: Path, lines: list[str]) -> None:
    (work / "q.jsonl").write_text("\n".join(lines) + "\n")


def _huge_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (1 << 62).to_bytes(8, "little")
    path.write_bytes(bytes(data))


LOAD = "le.Ensemble(MODEL, ENS, threads=1)"
READ = "le.read_questions(W + '/q.jsonl')"
GENERIC = '{"question": "q", "choices": ["a", "b"]}'

# (name, setup(work), body, expected class, a piece of the message)
CASES: list[tuple[str, Callable[[Path], None], str, str, str]] = [
    (
        "weights are /dev/zero",
        lambda w: _replace(w / "ens/m0/adapter_model.safetensors", _devzero),
        LOAD,
        "AdapterError",
        "adapter_model.safetensors: member 1 of 3 in",
    ),
    (
        "weights are a FIFO",
        lambda w: _replace(w / "ens/m0/adapter_model.safetensors", _fifo),
        LOAD,
        "AdapterError",
        "is a FIFO",
    ),
    (
        "weights are a directory",
        lambda w: _replace(w / "ens/m0/adapter_model.safetensors", Path.mkdir),
        LOAD,
        "AdapterError",
        "is a directory",
    ),
    (
        "safetensors header length past the file",
        lambda w: _huge_header(w / "ens/m0/adapter_model.safetensors"),
        LOAD,
        "AdapterError",
        "header length 4611686018427387904 does not fit",
    ),
    (
        "sparse weights file far larger than any adapter of the model",
        lambda w: os.truncate(w / "ens/m0/adapter_model.safetensors", 1 << 40),
        LOAD,
        "AdapterError",
        "more than the",
    ),
    (
        "adapter config is /dev/zero",
        lambda w: _replace(w / "ens/m1/adapter_config.json", _devzero),
        LOAD,
        "AdapterError",
        "is a character device; expected a regular file",
    ),
    (
        "adapter config of 5 MiB",
        lambda w: (w / "ens/m1/adapter_config.json").write_text(" " * (5 << 20) + "{}"),
        LOAD,
        "AdapterError",
        "more than the 4194304 bytes",
    ),
    (
        "ensemble manifest is a FIFO",
        lambda w: _replace(w / "ens/ensemble.json", _fifo),
        LOAD,
        "AdapterError",
        "is a FIFO",
    ),
    (
        "alpha_pattern of 1e39",
        lambda w: _edit_json(
            w / "ens/m0/adapter_config.json", lambda c: c.update(alpha_pattern={"q_proj": 1e39})
        ),
        LOAD,
        "AdapterError",
        "`alpha_pattern` entry `q_proj` has bad value",
    ),
    (
        "rank_pattern of 2**40",
        lambda w: _edit_json(
            w / "ens/m0/adapter_config.json", lambda c: c.update(rank_pattern={"q_proj": 2**40})
        ),
        LOAD,
        "AdapterError",
        "`rank_pattern` entry `q_proj` has bad value",
    ),
    (
        "manifest scoring mode vibes",
        lambda w: _edit_json(
            w / "ens/ensemble.json", lambda m: m.update(scoring={"mode": "vibes"})
        ),
        LOAD,
        "AdapterError",
        '`scoring.mode` must be "labels" or "choices", got "vibes"',
    ),
    (
        "manifest scoring mode vibes, built in Python",
        lambda w: None,
        "_core.EnsembleManifest(['m0'], scoring='vibes')",
        "AdapterError",
        "vibes",
    ),
    (
        "an adapter_config.json given as the ensemble",
        lambda w: None,
        "le.Ensemble(MODEL, ENS + '/m0/adapter_config.json')",
        "AdapterError",
        "this is a PEFT adapter config, not an ensemble manifest",
    ),
    (
        "a directory given as the model",
        lambda w: None,
        "le.Ensemble(W, [])",
        "ModelLoadError",
        "is a directory; expected a regular file",
    ),
    (
        "questions are /dev/zero",
        lambda w: _devzero(w / "q.jsonl"),
        READ,
        "DataError",
        "q.jsonl: is a character device",
    ),
    (
        "questions are a FIFO",
        lambda w: _fifo(w / "q.jsonl"),
        READ,
        "DataError",
        "is a FIFO",
    ),
    (
        "a sparse question file of 2 GiB",
        lambda w: (w / "q.jsonl").touch() or os.truncate(w / "q.jsonl", 2 << 30),
        READ,
        "DataError",
        "more than the 1073741824 bytes",
    ),
    (
        "one question with 2,000,000 choices",
        lambda w: _questions(w, [json.dumps({"question": "q", "choices": ["c"] * 2_000_000})]),
        READ,
        "DataError",
        "q.jsonl:1: line is",
    ),
    (
        "one question with 50,000 choices",
        lambda w: _questions(
            w,
            [
                GENERIC,
                json.dumps(
                    {
                        "question": "q",
                        "choices": [str(i) for i in range(50_000)],
                        "labels": [f"L{i}" for i in range(50_000)],
                    }
                ),
            ],
        ),
        READ,
        "DataError",
        "q.jsonl:2: 50000 choices, more than the 1024",
    ),
    (
        "a zero-width label",
        lambda w: _questions(
            w, [json.dumps({"question": "q", "choices": ["a", "b"], "labels": ["A", "\u200b"]})]
        ),
        READ,
        "DataError",
        "has no visible character",
    ),
    (
        "threads=-1",
        lambda w: None,
        "le.Ensemble(MODEL, ENS, threads=-1)",
        "InputError",
        "threads must be in 1..",
    ),
    (
        "threads=10**6 is capped with a warning",
        lambda w: None,
        "le.Ensemble(MODEL, ENS, threads=10**6)",
        "UserWarning",
        "threads=1000000 is more than the",
    ),
    (
        "batch_size=-1",
        lambda w: None,
        f"{LOAD}.score(['Answer:'], ['A', 'B'], batch_size=-1)",
        "InputError",
        "batch_size must be in 1..",
    ),
    (
        "batch_size=2**70",
        lambda w: None,
        f"{LOAD}.score(['Answer:'], ['A', 'B'], batch_size=2**70)",
        "InputError",
        "batch_size must be in 1..",
    ),
    (
        "a prompt that is not a string",
        lambda w: None,
        f"{LOAD}.score([3], ['A', 'B'])",
        "InputError",
        "prompts[0] must be a str, got int",
    ),
    (
        "an integer label",
        lambda w: None,
        f"{LOAD}.score(['Answer:'], [['A', 1]])",
        "InputError",
        "labels[0][1] must be a str, got int",
    ),
    (
        "seed=-1",
        lambda w: None,
        f"{LOAD}.generate('Hi', seed=-1)",
        "InputError",
        "seed must be in 0..",
    ),
    (
        "max_new_tokens=-1",
        lambda w: None,
        f"{LOAD}.generate('Hi', max_new_tokens=-1)",
        "InputError",
        "max_new_tokens must be in 0..",
    ),
    (
        "a prompt longer than the context",
        lambda w: None,
        f"e = {LOAD}; e.generate('word ' * (e.config['context_length'] + 10))",
        "InputError",
        "leaves no room to generate",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gives_its_typed_error(
    case: tuple[str, Callable[[Path], None], str, str, str], tiny_dir: Path, work: Path
) -> None:
    _, setup, body, kind, piece = case
    setup(work)
    before = listing(work)
    start = time.monotonic()
    got, message = run_case(body, tiny_dir, work)
    assert (got, piece in message) == (kind, True), message
    assert time.monotonic() - start < TIMEOUT_S
    assert listing(work) == before, "files left behind"


# The command line: exit status 2 for usage errors (the line does not parse, or a flag's
# value is out of range), 1 for failures while running, 130 when interrupted.


def cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lora_ens_rs", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_env(),
        **kw,
    )


@pytest.mark.parametrize(
    ("args", "piece"),
    [
        (["infer", "--batch-size", "-1"], "invalid value '-1' for '--batch-size <N>'"),
        (["infer", "--threads", "0"], "--threads"),
        (["generate"], "PROMPT"),
        (["eval", "--data", "d", "--adapters", "a", "--no-such-flag"], "--no-such-flag"),
        (["train", "x.jsonl", "--out", "o", "--lr", "-1e-3"], "lr must be a positive number"),
        (["train", "x.jsonl", "--out", "o", "--seed", str(2**70)], "seed must be an integer"),
        (["train", "x.jsonl", "--out", "o", "--layers", "0-2000000000"], "layer 2000000000"),
        (["train", "x.jsonl", "--out", "o", "--no-such-flag"], "--no-such-flag"),
    ],
)
def test_usage_errors_exit_2_in_every_command(args: list[str], piece: str, tmp_path: Path) -> None:
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert piece in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_runtime_errors_exit_1_and_name_the_cause(tiny_dir: Path, tmp_path: Path) -> None:
    model = str(tiny_dir / "tiny-q8_0.gguf")
    done = cli("infer", str(tmp_path / "missing.jsonl"), "--model", model)
    assert done.returncode == 1 and "missing.jsonl" in done.stderr
    done = cli("infer", "--model", str(tmp_path), str(tmp_path / "q.jsonl"))
    assert done.returncode == 1
    # A question too long for the context is named by file, line and id.
    long = json.dumps({"id": "q-long", "question": "word " * 5000, "choices": ["a", "b"]})
    (tmp_path / "q.jsonl").write_text(f"{GENERIC}\n{long}\n")
    done = cli("infer", str(tmp_path / "q.jsonl"), "--model", model, "-q")
    assert done.returncode == 1
    assert "q.jsonl: question q-long (line 2):" in done.stderr, done.stderr
    assert "context length" in done.stderr


def test_output_symlink_is_written_through_and_stale_temporaries_go(
    tiny_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "q.jsonl").write_text(GENERIC + "\n")
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n")
    link.symlink_to(real)
    stale = tmp_path / ".real.jsonl.999999999.AbCdEf.tmp"  # a killed run's
    stale.write_text("partial")
    model = str(tiny_dir / "tiny-q8_0.gguf")
    done = cli("infer", str(tmp_path / "q.jsonl"), "--model", model, "-q", "-o", str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and json.loads(real.read_text())["id"] == "q-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "q.jsonl", "real.jsonl"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_stops_infer_without_replacing_the_output(
    sig: signal.Signals, tiny_dir: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "q.jsonl"
    line = json.dumps({"question": "Which is cold? " * 20, "choices": ["ice", "fire", "sun"]})
    questions.write_text((line + "\n") * 20000)
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    model = str(tiny_dir / "tiny-q8_0.gguf")
    ens = str(tiny_dir / "ensemble")
    args = ["infer", str(questions), "--model", model, "--adapters", ens, "--batch-size", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_ens_rs", *args, "-q", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    time.sleep(3)
    assert proc.poll() is None, "finished before the signal: make the input longer"
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "q.jsonl"]


def test_stale_temporaries_of_the_python_writers_are_removed(tmp_path: Path) -> None:
    from lora_ens_rs.atomic import atomic_directory

    dead = tmp_path / ".tmp-999999999-abc.run"  # a killed export
    dead.mkdir()
    (dead / "ensemble.json").write_text("{}")
    old = tmp_path / ".old-999999999-def.run"
    old.mkdir()
    mine = tmp_path / f".tmp-{os.getpid()}-ghi.run"  # a live writer's: kept
    mine.mkdir()
    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "a").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "run"]
