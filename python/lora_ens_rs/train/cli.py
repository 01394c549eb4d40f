"""The ``lora-ens-rs train`` subcommand: train a LoRA ensemble and write it for the engine.

    lora-ens-rs train ARC-Easy-Train.jsonl --out runs/arc --members 5 --scoring choices \\
        --layers top8 --targets q_proj,k_proj,v_proj,o_proj --epochs 2 --lr 5e-4

The console script hands ``train`` to :func:`main` (in Python: it needs torch). Its options
are :class:`TrainConfig`'s fields (help, flag and type in each field's metadata); the ones
other subcommands share (``--model``, ``--limit``, ``--scoring``, ...) come from the Rust
command line's definitions. Progress (a bar per epoch with the running loss, one validation
line per member per epoch) goes to stderr; the ensemble directory is printed on stdout at the
end; under torchrun (``torchrun ... -m lora_ens_rs train ...``) rank 0 alone reports. Exit
status 0 on success, 1 on an error (printed as ``error: ...``), 2 on a usage error (including
a flag value out of range, such as ``--lr -1e-3`` or ``--seed 2**70``), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lora_ens_rs.cli import (
    EXIT_OK,
    EXIT_USAGE,
    add_shared_options,
    one_line,
    run_subcommand,
    subcommand_about,
)
from lora_ens_rs.errors import InputError
from lora_ens_rs.train.config import TrainConfig


def _cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli") is not None]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lora-ens-rs train``, built from :class:`TrainConfig`'s fields."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="lora-ens-rs train", description=subcommand_about("train"))
    for f in _cli_fields():
        cli, help_text, default = dict(f.metadata["cli"]), f.metadata["help"], getattr(d, f.name)
        flag = f.name.replace("_", "-")
        if cli.pop("shared", False):
            helps = {flag: help_text} if cli.pop("own_help", False) else None
            add_shared_options(p, [flag], defaults={flag: default}, helps=helps)
            continue
        if cli.pop("positional", False):
            p.add_argument(f.name, metavar=f.name.upper(), help=help_text)
            continue
        flag, help_text = cli.pop("flag", f"--{flag}"), cli.pop("help", help_text)
        if isinstance(default, bool):
            cli.setdefault("action", "store_false" if default else "store_true")
        elif default is not None:
            shown = ",".join(default) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        p.add_argument(flag, dest=f.name, default=default, help=help_text.replace("%", "%%"), **cli)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in _cli_fields()})


def main(argv: list[str] | None = None) -> int:
    """Run ``lora-ens-rs train`` with ``argv`` (without the ``train``); returns the exit code.

    Example:
        >>> main(["data.jsonl", "--out", "runs/x", "--members", "3", "--epochs", "1"])
        0
    """
    return run_subcommand(build_parser(), _run, sys.argv[1:] if argv is None else argv)


def _run(args: argparse.Namespace) -> int:
    try:  # settings errors before importing torch: a flag's value is out of range (usage)
        config = config_from_args(args).validate()
    except InputError as e:
        print(f"lora-ens-rs train: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    from lora_ens_rs.train.loop import train_ensemble

    result = train_ensemble(config)
    if result.rank != 0:  # under torchrun rank 0 reports for all
        return EXIT_OK
    if result.validation is not None and config.progress:
        summary = {
            "members": result.validation["members"],
            "ensemble": result.validation["ensemble"],
        }
        print(json.dumps(summary), file=sys.stderr)
    print(result.out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
