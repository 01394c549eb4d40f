"""``lora-ens-rs eval``: score a labelled dataset with an ensemble, each of its members and the
zero-shot base model, and write ``metrics.json``, ``report.md`` and plots.

    lora-ens-rs eval --adapters runs/csqa --data dev.jsonl --ood mmlu/test/anatomy_test.csv \\
        --val val.jsonl --report reports/csqa

Runs in Python (matplotlib for the plots); the scoring itself is the Rust engine's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_ens_rs.cli import EXIT_OK, _at_least, add_shared_options, run_subcommand, subcommand_about


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``lora-ens-rs eval``."""
    ap = argparse.ArgumentParser(prog="lora-ens-rs eval", description=subcommand_about("eval"))
    ap.add_argument("--data", required=True, type=Path, help="labelled questions (JSONL / CSV)")
    add_shared_options(ap, ["adapters", "model"], required=["adapters"])
    ap.add_argument("--ood", type=Path, help="questions from another distribution, for OOD AUROC")
    ap.add_argument(
        "--val",
        type=Path,
        help="labelled validation questions (not the test ones): fit one temperature per member "
        "there and report the temperature-scaled members as a baseline",
    )
    ap.add_argument(
        "--val-limit", type=_at_least(1), metavar="N", help="use at most N validation questions"
    )
    ap.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="instead of --val: hold out this share of DATA (a fixed split) as the validation "
        "questions and evaluate on the rest",
    )
    ap.add_argument("--report", type=Path, help="write metrics.json, report.md and plots here")
    add_shared_options(ap, ["format", "scoring", "normalization"])
    ap.add_argument("--no-base", action="store_true", help="skip the zero-shot base model")
    add_shared_options(ap, ["limit"])
    ap.add_argument("--bins", type=int, default=15, help="ECE bins (default 15)")
    add_shared_options(ap, ["batch-size", "threads", "device"])
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: list[str]) -> int:
    """Run ``lora-ens-rs eval``; returns the exit code (0, 1 on an error, 2 on a usage error)."""
    return run_subcommand(parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import lora_ens_rs as le
    from lora_ens_rs.data import split
    from lora_ens_rs.errors import InputError
    from lora_ens_rs.evaluate import evaluate, markdown

    questions = le.read_questions(args.data, format=args.format, limit=args.limit)
    ood = le.read_questions(args.ood, format=args.format, limit=args.limit) if args.ood else None
    val = (
        le.read_questions(args.val, format=args.format, limit=args.val_limit) if args.val else None
    )
    if args.val_fraction is not None:
        if args.val is not None:
            raise InputError("--val and --val-fraction are exclusive: give one")
        questions, val = split(questions, args.val_fraction)
        val = val[: args.val_limit]
    ens = le.Ensemble(args.model, args.adapters, device=args.device, threads=args.threads)
    base = (
        None
        if args.no_base
        else le.Ensemble(ens.model_path, device=args.device, threads=args.threads)
    )
    result = evaluate(
        ens,
        questions,
        ood_questions=ood,
        val_questions=val,
        base=base,
        scoring=args.scoring,
        normalization=args.normalization,
        n_bins=args.bins,
        batch_size=args.batch_size,
        progress=not args.quiet and sys.stderr.isatty(),
        report_dir=args.report,
    )
    print(markdown(result, []).split("## Plots")[0].rstrip())
    if args.report:
        print(f"\nreport: {args.report / 'report.md'}")
    return EXIT_OK
