"""One command line: ``lora-ens-rs --help`` lists every subcommand, the Python subcommands'
shared options are the Rust parser's definitions, ``train``'s options are ``TrainConfig``'s
fields, and every subcommand exits 2 on a usage error and 1 on an error.
Run: ``python -m pytest tests/test_cli_options.py`` (no model needed)."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from lora_ens_rs import _core, cli, convert, eval_cli, experiment
from lora_ens_rs.train import cli as train_cli
from lora_ens_rs.train.config import TrainConfig

PARSERS = {
    "train": train_cli.build_parser,
    "eval": eval_cli.parser,
    "experiment": experiment.parser,
    "convert": convert.parser,
}


def lora_ens_rs(*args: str) -> subprocess.CompletedProcess[str]:
    """The console script's code, run as ``python -m lora_ens_rs``."""
    return subprocess.run(
        [sys.executable, "-m", "lora_ens_rs", *args], capture_output=True, text=True, timeout=120
    )


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def test_help_lists_every_subcommand() -> None:
    out = lora_ens_rs("--help")
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    names = [name for name, _, _ in _core.cli_subcommands()]
    expected = ["fetch-model", "infer", "generate", "serve", "train", "eval", "experiment"]
    assert names == [*expected, "convert"]
    assert set(names) <= listed, out.stdout


def test_python_subcommands_are_dispatched_by_the_rust_table() -> None:
    in_python = {name for name, _, python in _core.cli_subcommands() if python}
    assert set(cli.PYTHON_MAIN) == set(PARSERS) == in_python
    for name, build in PARSERS.items():
        parser = build()
        assert parser.prog == f"lora-ens-rs {name}"
        assert parser.description == cli.subcommand_about(name)


@pytest.mark.parametrize("name", sorted(set(PARSERS) - {"convert"}))  # convert shares none
def test_shared_options_have_one_definition(name: str) -> None:
    specs = cli.option_specs()
    parser_options = options(PARSERS[name]())
    shared = {flag[2:]: a for flag, a in parser_options.items() if flag[2:] in specs}
    assert shared, name
    if name == "train":
        # train --batch-size is training's own setting (questions per member per step),
        # not the scoring batch the shared option sets.
        own = {
            f.name.replace("_", "-")
            for f in dataclasses.fields(TrainConfig)
            if f.metadata["cli"] is not None and not f.metadata["cli"].get("shared")
        }
        assert own & set(shared) == {"batch-size"}
        del shared["batch-size"]
    for flag, action in shared.items():
        spec = specs[flag]
        assert action.option_strings == [f"--{flag}"], (name, flag)
        assert action.dest == spec["key"]
        assert action.metavar == (None if spec["choices"] else spec["value_name"])
        assert list(action.choices or []) == spec["choices"], (name, flag)
        assert isinstance(action, argparse._AppendAction) == spec["repeatable"]
        # The help is the shared one, or (train) the TrainConfig field's where training
        # gives the option a wider meaning; a default note may follow.
        help_text = action.help.replace("%%", "%")
        own = name == "train" and flag in {"model", "threads"}
        assert own or help_text.startswith(spec["help"].split(" (default: ")[0]), (name, flag)
        if spec["kind"] == "int":
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(str(spec["min"] - 1))
            assert action.type(str(spec["min"])) == spec["min"]
        if name != "train" and spec["default"] is not None:
            assert str(action.default) == spec["default"], (name, flag)


def test_the_specs_are_the_rust_parsers() -> None:
    specs = cli.option_specs()
    assert list(specs) == [
        "model", "adapters", "device", "threads", "scoring", "normalization", "batch-size",
        "limit", "format",
    ]  # fmt: skip
    assert specs["batch-size"]["default"] == "16" and specs["batch-size"]["min"] == 1
    assert specs["scoring"]["choices"] == ["labels", "choices"]
    assert specs["adapters"]["repeatable"] and specs["model"]["kind"] == "path"
    assert "csqa" in specs["format"]["choices"]
    rust_help = lora_ens_rs("infer", "--help").stdout
    for spec in specs.values():
        assert f"--{spec['name']} <{spec['value_name']}>" in rust_help
        assert spec["help"].split()[0] in rust_help


def test_train_options_are_the_config_fields() -> None:
    parser = train_cli.build_parser()
    dests = {a.dest for a in parser._actions} - {"help"}
    cli_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["cli"] is not None}
    assert dests == cli_fields
    assert "seeds" not in dests
    args = parser.parse_args(["data.jsonl", "--out", "runs/x"])
    assert train_cli.config_from_args(args) == TrainConfig(data="data.jsonl", out="runs/x")
    args = parser.parse_args(
        ["d.jsonl", "--out", "o", "--no-trunk-cache", "--quiet", "--targets", "all", "--limit", "3"]
    )
    config = train_cli.config_from_args(args)
    assert not config.trunk_cache and not config.progress and config.limit == 3
    assert config.targets == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                              "down_proj"]  # fmt: skip
    text = parser.format_help()
    assert "--early-stopping PATIENCE" in text and "--no-trunk-cache" in text
    assert "(default: labels)" in text  # train's scoring default is TrainConfig's


def test_experiment_trains_with_the_config_fields_of_its_grid() -> None:
    fields = experiment._train_fields(experiment.ExperimentConfig())
    assert set(fields) == {
        "model", "members", "normalization", "epochs", "lr", "batch_size", "rank", "alpha",
        "targets", "layers", "seed", "threads",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["train", "d.jsonl", "--out", "x", "--scoring", "letters"], "--scoring"),
        (["train", "d.jsonl", "--out", "x", "--threads", "0"], "--threads"),
        (["eval", "--data", "d.jsonl", "--adapters", "e", "--batch-size", "0"], "--batch-size"),
        (["eval", "--data", "d.jsonl", "--adapters", "e", "--format", "xml"], "--format"),
        (["eval", "--data", "d.jsonl"], "--adapters"),
        (["experiment", "--out", "x", "--threads", "-1"], "--threads"),
        (["infer", "--limit", "0"], "--limit"),
        (["generate"], "PROMPT"),
    ],
)
def test_usage_errors_exit_with_2(args: list[str], flag: str) -> None:
    out = lora_ens_rs(*args)
    assert out.returncode == cli.EXIT_USAGE == 2, out.stderr
    assert flag in out.stderr
    assert out.stdout == ""


def test_errors_exit_with_1_on_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    for args in (
        ["experiment", "--out", str(tmp_path / "exp"), "--config", str(missing)],
        ["eval", "--data", str(tmp_path / "missing.jsonl"), "--adapters", str(tmp_path)],
        ["train", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")],
        ["infer", str(tmp_path / "missing.jsonl"), "--model", str(tmp_path / "m.gguf")],
    ):
        out = lora_ens_rs(*args)
        assert out.returncode == cli.EXIT_ERROR == 1, (args, out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "missing" in last, (args, out.stderr)


def test_help_of_a_python_subcommand() -> None:
    for args in (["train", "--help"], ["help", "train"]):
        out = lora_ens_rs(*args)
        assert out.returncode == 0
        assert out.stdout.startswith("usage: lora-ens-rs train")
        assert "--batch-size" in out.stdout and "--model PATH" in out.stdout


def test_the_rust_parser_refuses_python_subcommands_with_2() -> None:
    assert _core.cli_main(["lora-ens-rs", "experiment", "--out", "x"]) == 2
