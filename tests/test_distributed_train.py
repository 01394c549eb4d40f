"""``lora-ens-rs train`` under torchrun: members sharded over two CPU ranks (gloo).

- Two ranks training 4 members write the adapters of one process, bit for bit, and the same
  ``ensemble.json`` but for ``training.out``: a member's seed, initialisation, data order and
  dropout stream depend on the member alone, and every pass pads its rows as the whole
  (all-member) bucket would, so each member's arithmetic is the same on any rank.
- A rank killed with SIGKILL after its first checkpoint fails the run (non-zero exit, the rank
  named), and ``--resume`` finishes it to the same adapters, with two ranks or with one.

Run: ``pytest tests/test_distributed_train.py`` (about a minute on two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import DATA

from lora_ens_rs.train import train_ensemble
from lora_ens_rs.train.cli import build_parser, config_from_args

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ARC = DATA / "arc" / "ARC-Easy" / "ARC-Easy-Train.jsonl"
MEMBERS = 4


def args(tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(ARC), "--model", str(tiny_dir / "tiny-q8_0.gguf"), "--out", str(out),
        "--limit", "12", "--members", str(MEMBERS), "--scoring", "choices",
        "--layers", "top1", "--targets", "q_proj,v_proj", "--epochs", "2", "--lr", "1e-2",
        "--batch-size", "2", "--seed", "7", "--dropout", "0.1", "--threads", "1",
        "--checkpoint-every", "2", "--quiet", *extra,
    ]  # fmt: skip


def torchrun(script: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORA_ENS_RS_DIST_TIMEOUT": "60"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *script, *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def one_process(argv: list[str]) -> None:
    train_ensemble(config_from_args(build_parser().parse_args(argv)))


def adapters(out: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(out / f"m{m}" / "adapter_model.safetensors") for m in range(MEMBERS)]


def assert_same_adapters(got: Path, want: Path) -> None:
    for m, (a, b) in enumerate(zip(adapters(got), adapters(want), strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"m{m} {key}"


@pytest.fixture(scope="module")
def single(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "ens"
    one_process(args(tiny_dir, out))
    return out


def test_two_ranks_write_the_adapters_of_one_process(
    tiny_dir: Path, single: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ens"
    done = torchrun(["-m", "lora_ens_rs", "train"], args(tiny_dir, out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)  # rank 0 alone reports
    assert_same_adapters(out, single)
    got = json.loads((out / "ensemble.json").read_text())
    want = json.loads((single / "ensemble.json").read_text())
    assert got["training"].pop("out") == str(out)
    want["training"].pop("out")
    assert got == want
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.json", "m0", "m1", "m2", "m3"]


def test_a_killed_rank_fails_the_run_and_resume_finishes_it(
    tiny_dir: Path, single: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ens"
    done = torchrun([str(HERE / "dist_killed_rank.py")], args(tiny_dir, out))
    assert done.returncode != 0
    assert "rank: 1" in done.stderr and "Signal 9 (SIGKILL)" in done.stderr, done.stderr
    assert not out.exists()
    checkpoint = Path(f"{out}.checkpoint")
    assert (checkpoint / "state.pt").is_file()
    shutil.copytree(checkpoint, tmp_path / "one.checkpoint")

    resumed = torchrun(["-m", "lora_ens_rs", "train"], args(tiny_dir, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_adapters(out, single)

    # The checkpoint holds one file per member: one process resumes what two began.
    one = tmp_path / "one"
    one_process(args(tiny_dir, one, "--resume"))
    assert_same_adapters(one, single)
