"""``lora-ens-rs eval``: score a labelled dataset with an ensemble, each of its members and the
zero-shot base model, and write ``metrics.json``, ``report.md`` and plots.

    lora-ens-rs eval --adapters runs/csqa --data dev.jsonl --ood mmlu/test/anatomy_test.csv \\
        --report reports/csqa

Runs in Python (matplotlib for the plots); the scoring itself is the Rust engine's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_ens_rs.errors import LoraEnsError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lora-ens-rs eval",
        description="Evaluate a LoRA ensemble against its members and the zero-shot base model: "
        "accuracy, NLL, ECE, Brier, member disagreement and OOD detection, with a report.",
    )
    ap.add_argument("--data", required=True, type=Path, help="labelled questions (JSONL / CSV)")
    ap.add_argument(
        "--adapters",
        required=True,
        action="append",
        type=Path,
        help="ensemble directory or member adapter directory (repeatable)",
    )
    ap.add_argument("--model", type=Path, help="GGUF base model (default: the default model)")
    ap.add_argument("--ood", type=Path, help="questions from another distribution, for OOD AUROC")
    ap.add_argument("--report", type=Path, help="write metrics.json, report.md and plots here")
    ap.add_argument("--format", help="data format: qa, mmlu or jsonl (default: detected)")
    ap.add_argument(
        "--scoring",
        choices=["labels", "choices"],
        help="default: the ensemble's manifest, else choices",
    )
    ap.add_argument("--normalization", choices=["sum", "per_token", "per_byte"])
    ap.add_argument("--no-base", action="store_true", help="skip the zero-shot base model")
    ap.add_argument("--limit", type=int, help="first N questions of --data (and of --ood)")
    ap.add_argument("--bins", type=int, default=15, help="ECE bins (default 15)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: list[str]) -> int:
    """Run ``lora-ens-rs eval``; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        import lora_ens_rs as le
        from lora_ens_rs.evaluate import evaluate, markdown

        questions = le.read_questions(args.data, format=args.format, limit=args.limit)
        ood = (
            le.read_questions(args.ood, format=args.format, limit=args.limit) if args.ood else None
        )
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
            base=base,
            scoring=args.scoring,
            normalization=args.normalization,
            n_bins=args.bins,
            batch_size=args.batch_size,
            progress=not args.quiet and sys.stderr.isatty(),
            report_dir=args.report,
        )
    except LoraEnsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown(result, []).split("## Plots")[0].rstrip())
    if args.report:
        print(f"\nreport: {args.report / 'report.md'}")
    return 0
