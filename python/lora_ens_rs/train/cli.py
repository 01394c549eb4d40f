"""The ``lora-ens-rs train`` subcommand: train a LoRA ensemble and write it for the engine.

    lora-ens-rs train ARC-Easy-Train.jsonl --out runs/arc --members 5 --scoring choices \\
        --layers top8 --targets q_proj,k_proj,v_proj,o_proj --epochs 2 --lr 5e-4

The console script hands ``train`` to :func:`main` (in Python: it needs torch); every other
subcommand runs in the Rust CLI. Progress (a bar per epoch with the running loss, one
validation line per member per epoch) goes to stderr; the ensemble directory is printed on
stdout at the end. Exit status 0 on success, 1 on an error (printed as ``error: ...``), 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from lora_ens_rs.errors import LoraEnsError
from lora_ens_rs.train.config import NORMALIZATIONS, SCORINGS, TARGETS, TrainConfig


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _targets(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if text.strip() == "all":
        return list(TARGETS)
    unknown = [t for t in names if t not in TARGETS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown projection(s) {unknown or text!r}; choose from {','.join(TARGETS)} or all"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lora-ens-rs train``."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="lora-ens-rs train",
        description="Train M LoRA adapters (different seeds) on one frozen base model and "
        "write them as an ensemble directory the engine loads (PEFT members + ensemble.json).",
    )
    p.add_argument("data", help="training questions (jsonl/csv/... as read_questions reads)")
    p.add_argument("--out", required=True, help="ensemble directory to write")
    p.add_argument("--format", help="dataset format (default: from the file name)")
    p.add_argument("--val", help="validation questions (default: hold out 10%% of DATA)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held-out share")
    p.add_argument("--limit", type=_positive_int, help="read at most N training questions")
    p.add_argument("--val-limit", type=_positive_int, help="use at most N validation questions")
    p.add_argument("--model", help="base GGUF or model directory (default: SmolLM2-135M)")
    p.add_argument("--members", type=_positive_int, default=d.members, help="M (default 5)")
    p.add_argument("--seed", type=int, default=d.seed, help="member m uses seed+m")
    p.add_argument("--share-data-order", action="store_true", help="one data order for all")
    p.add_argument("--rank", type=_positive_int, default=d.rank, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha (default 16)")
    p.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r)")
    p.add_argument(
        "--targets",
        type=_targets,
        default=d.targets,
        help="comma-separated projections, or all (default q_proj,v_proj)",
    )
    p.add_argument("--layers", default=d.layers, help="all, topN, a-b or a,b,c (default all)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="LoRA dropout")
    p.add_argument("--scoring", choices=SCORINGS, default=d.scoring, help="default labels")
    p.add_argument(
        "--normalization", choices=NORMALIZATIONS, default=d.normalization, help="choices"
    )
    p.add_argument(
        "--full-vocabulary", action="store_true", help="labels: CE over the whole vocabulary"
    )
    p.add_argument("--epochs", type=_positive_int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="per member")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay")
    p.add_argument("--kl", type=float, default=d.kl, help="beta of KL(member || base)")
    p.add_argument("--early-stopping", type=_positive_int, metavar="PATIENCE")
    p.add_argument("--no-trunk-cache", action="store_true", help="recompute the trunk")
    p.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size)
    p.add_argument("--checkpoint-dir", help="default <out>.checkpoint")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments."""
    return TrainConfig(
        data=args.data,
        val=args.val,
        format=args.format,
        limit=args.limit,
        val_limit=args.val_limit,
        val_fraction=args.val_fraction,
        model=args.model,
        members=args.members,
        seed=args.seed,
        share_data_order=args.share_data_order,
        rank=args.rank,
        alpha=args.alpha,
        rslora=args.rslora,
        targets=args.targets,
        layers=args.layers,
        dropout=args.dropout,
        scoring=args.scoring,
        normalization=args.normalization,
        full_vocabulary=args.full_vocabulary,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        kl=args.kl,
        early_stopping=args.early_stopping,
        trunk_cache=not args.no_trunk_cache,
        eval_batch_size=args.eval_batch_size,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
        progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``lora-ens-rs train`` with ``argv`` (without the ``train``); returns the exit code.

    Example:
        >>> main(["data.jsonl", "--out", "runs/x", "--members", "3", "--epochs", "1"])
        0
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args).validate()  # settings errors before importing torch
        from lora_ens_rs.train.loop import train_ensemble

        result = train_ensemble(config)
    except LoraEnsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.validation is not None and not args.quiet:
        summary = {
            "members": result.validation["members"],
            "ensemble": result.validation["ensemble"],
        }
        print(json.dumps(summary), file=sys.stderr)
    print(result.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
