"""``lora-ens-rs infer ... --ray [ADDRESS]``: ``infer`` on a Ray cluster (:mod:`lora_ens_rs.ray`).

    lora-ens-rs infer questions.jsonl --adapters runs/arc --ray -o scores.jsonl   # local Ray
    lora-ens-rs infer qs.parquet --adapters runs/arc --ray auto --actors 8 -o scores.parquet

Takes ``infer``'s options and writes its records, in input order, as JSONL (stdout or
``--output``) or as one Parquet file when the output name ends ``.parquet``, atomically. The
console script routes ``infer`` here when ``--ray`` is given (the Rust binary has no Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lora_ens_rs.cli import EXIT_ERROR, EXIT_OK, add_shared_options, one_line, run_subcommand
from lora_ens_rs.errors import InputError, LoraEnsError

#: The flag that sends ``infer`` here, and the options only this path has.
RAY_FLAG = "--ray"


def wants_ray(args: Sequence[str]) -> bool:
    """Whether an ``infer`` command line (without the subcommand) asks for Ray."""
    return any(a == RAY_FLAG or a.startswith(RAY_FLAG + "=") for a in args)


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``lora-ens-rs infer --ray``."""
    ap = argparse.ArgumentParser(
        prog="lora-ens-rs infer",
        description="Score multiple-choice questions on a Ray cluster: one record per question, "
        "the same records as `infer` without --ray.",
    )
    ap.add_argument(
        "input", nargs="?", default="-", metavar="INPUT",
        help="questions: a file infer reads (.jsonl, MMLU .csv; `-`: stdin), or Parquet "
        "(a .parquet file or a directory of them) read by Ray; rows need an `id`",
    )  # fmt: skip
    add_shared_options(ap, ["format", "model", "adapters", "device", "scoring", "normalization"])
    add_shared_options(
        ap, ["threads", "batch-size", "limit"],
        helps={"threads": "Threads for each actor's kernels (default: --actor-cpus)"},
    )  # fmt: skip
    ap.add_argument(
        "-o", "--output", metavar="PATH",
        help="write the records here (`.parquet`: one Parquet file; else JSONL) instead of stdout",
    )  # fmt: skip
    ap.add_argument("--members", action="store_true", help="include `member_probs`")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    ray = ap.add_argument_group("Ray")
    ray.add_argument(
        RAY_FLAG, nargs="?", const="", default=None, metavar="ADDRESS",
        help="run on Ray: ADDRESS of a running cluster (`auto`, `HOST:6379`, `ray://HOST:10001`); "
        "without one, the cluster RAY_ADDRESS names or a local one",
    )  # fmt: skip
    ray.add_argument("--actors", type=int, default=2, help="scoring actors (default: 2)")
    ray.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs per actor (default: 1)")
    ray.add_argument("--actor-gpus", type=float, default=0.0, help="GPUs per actor (default: 0)")
    ray.add_argument(
        "--ray-batch-size", type=int, default=256, help="questions per actor call (default: 256)"
    )
    return ap


def main(argv: Sequence[str]) -> int:
    """Run ``lora-ens-rs infer --ray``; returns the exit code (0, 1 error, 2 usage error)."""
    return run_subcommand(parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import ray

    from lora_ens_rs import ray as ler

    output = Path(args.output) if args.output else None
    if output is not None and not output.parent.is_dir():
        raise InputError(f"output directory {output.parent} does not exist")
    questions = _read(args)  # before Ray starts: a bad file fails fast, as in infer
    started = not ray.is_initialized()
    if started:
        quiet = {"log_to_driver": False, "logging_level": "ERROR"} if args.quiet else {}
        ray.init(address=args.ray or None, **quiet)
    try:
        if isinstance(questions, Path):
            ds = ray.data.read_parquet(os.fspath(questions))
            ds = ds.limit(args.limit) if args.limit is not None else ds
            if ray.cluster_resources().get("CPU", 0) - args.actors * args.actor_cpus < 1:
                ds = ds.materialize()  # no CPU would be left to read beside the actors
        else:
            ds = ray.data.from_items(questions)
        out = ler.score_dataset(
            ds, args.model, args.adapters or None,
            scoring=args.scoring, normalization=args.normalization, members=args.members,
            concurrency=args.actors, num_cpus=args.actor_cpus, num_gpus=args.actor_gpus,
            threads=args.threads, device=args.device, batch_size=args.ray_batch_size,
            engine_batch_size=args.batch_size,
        )  # fmt: skip
        context = _context(out)
        context.execution_options.preserve_order = True  # infer's line order
        context.enable_progress_bars = not args.quiet
        n = _write(out, output, ler.record_schema(args.members))
    except Exception as e:
        cause = ler.unwrap_error(e)  # an actor's error arrives wrapped by Ray
        if isinstance(cause, LoraEnsError):
            raise cause from None
        if not isinstance(e, ray.exceptions.RayError):
            raise
        print(f"error: ray: {one_line(str(e))[:500] or type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if started:
            ray.shutdown()
    if not args.quiet:
        print(f"{n} records written to {output or 'stdout'}", file=sys.stderr)
    return EXIT_OK


def _read(args: argparse.Namespace) -> list[dict[str, Any]] | Path:
    """The questions, read by the engine's reader (so ids, formats and errors are exactly
    ``infer``'s); or the path of Parquet input, which Ray reads."""
    import lora_ens_rs as le

    path = Path(args.input)
    if args.input != "-" and (path.suffix == ".parquet" or path.is_dir()):
        if not path.exists():
            raise le.MissingFileError(f"{path}: no such file or directory")
        return path
    if args.input == "-":
        questions = le.parse_questions(sys.stdin.read(), "<stdin>", args.format, args.limit)
    else:
        questions = le.read_questions(path, format=args.format, limit=args.limit)
    if not questions:
        raise InputError(f"{args.input}: no questions")
    return questions


def _context(ds: Any) -> Any:
    import ray.data

    return getattr(ds, "context", None) or ray.data.DataContext.get_current()


def _batches(ds: Any) -> Iterator[Any]:
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def _write(ds: Any, output: Path | None, schema: Any) -> int:
    """Write the records (stdout JSONL, a JSONL file, or one Parquet file); returns how many."""
    from lora_ens_rs.atomic import atomic_path

    if output is None:
        return _write_jsonl(ds, sys.stdout)
    with atomic_path(output) as tmp:
        if output.suffix == ".parquet":
            import pyarrow.parquet as pq

            n = 0
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in _batches(ds):
                    writer.write_table(batch.cast(schema))
                    n += batch.num_rows
            return n
        with open(tmp, "w", encoding="utf-8") as f:
            return _write_jsonl(ds, f)


def _write_jsonl(ds: Any, f: IO[str]) -> int:
    from lora_ens_rs.ray import record_from_row

    n = 0
    for batch in _batches(ds):
        for row in batch.to_pylist():
            f.write(json.dumps(record_from_row(row), ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
            n += 1
    return n
