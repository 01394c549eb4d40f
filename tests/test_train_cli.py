"""``lora-ens-rs train`` through the console script, on the tiny fixture model.

It writes an ensemble the engine loads, with per-epoch validation lines on stderr and the
directory on stdout; it refuses to replace an existing directory without ``--overwrite``;
usage errors exit with status 2 and the other subcommands still reach the Rust CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import DATA

import lora_ens_rs

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")
ARC = DATA / "arc" / "ARC-Easy" / "ARC-Easy-Train.jsonl"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=600)


def test_train_writes_an_ensemble_the_engine_loads(tiny_dir: Path, tmp_path: Path) -> None:
    model, out = str(tiny_dir / "tiny-q8_0.gguf"), str(tmp_path / "ens")
    args = [
        "train", str(ARC), "--model", model, "--out", out, "--limit", "12",
        "--members", "2", "--scoring", "choices", "--normalization", "per_token",
        "--layers", "top1", "--targets", "q_proj,v_proj", "--epochs", "2", "--lr", "1e-2",
        "--batch-size", "4", "--seed", "7", "--threads", "1",
    ]  # fmt: skip
    done = run(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == out
    for epoch in (1, 2):
        for m in (0, 1):
            assert f"epoch {epoch} m{m}: train loss" in done.stderr
    assert "val acc" in done.stderr and "epoch 1/2" in done.stderr
    manifest = json.loads(Path(out, "ensemble.json").read_text())
    assert manifest["seeds"] == [7, 8]
    assert manifest["training"]["limit"] == 12
    assert manifest["validation"]["n_questions"] == 1  # 10% of 12, rounded
    ens = lora_ens_rs.Ensemble(model, out)
    assert ens.members == ["m0", "m1"]
    q = lora_ens_rs.read_questions(ARC, limit=3)
    contexts = [lora_ens_rs.choice_context(x["question"]) for x in q]
    s = ens.score_choices(contexts, [x["choices"] for x in q])
    assert s.member_probs.shape[:2] == (3, 2)

    again = run(*args)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--overwrite" in again.stderr
    replaced = run(*args, "--overwrite", "--quiet", "--epochs", "1")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stderr.count("train loss") == 0
    assert json.loads(Path(out, "ensemble.json").read_text())["training"]["epochs"] == 1


def test_train_usage_errors(tmp_path: Path) -> None:
    done = run("train", str(ARC), "--out", str(tmp_path / "x"), "--scoring", "letters")
    assert done.returncode == 2 and "--scoring" in done.stderr
    out = str(tmp_path / "x")
    done = run("train", str(ARC), "--out", out, "--lr", "0.1", "--weight-decay", "10")
    assert done.returncode == 2 and "weight_decay" in done.stderr  # settings: usage
    done = run("train", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x"))
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert "--early-stopping" in run("train", "--help").stdout
    assert run("--help").returncode == 0  # the Rust CLI still answers everything else
