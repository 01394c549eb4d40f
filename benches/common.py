"""What the side-by-side benchmarks share: worker subprocesses, process statistics, the
Markdown table frame and the report files.

Each benchmark (`bench_scoring.py`, `bench_ensemble.py`, `bench_training.py`) runs every peer in
a fresh interpreter (`run_worker`), so each peer's peak RSS is its own; the worker adds
`process_stats` to its result; the parent builds a table with `md_table`, adds `notes` under it
and, with `--out`, writes both files with `write_report`. Not run by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB, model loading included.

    ru_maxrss is not used on Linux: the kernel carries it across fork + exec, so a worker would
    report the parent's peak (torch and the tokenizer) whenever that is larger. VmHWM belongs
    to the process image and starts afresh at exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 2**20 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime + r.ru_stime


def process_stats(load_before: float) -> dict[str, Any]:
    """A worker's load average around its timed work, OpenMP wait policy and peak memory."""
    return {
        # Other work on the machine skews the timings: keep the 1-minute load around them.
        "loadavg_1m": [load_before, os.getloadavg()[0]],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_worker(script: str, job: dict, job_path: Path, threads: int) -> dict:
    """Run `script --worker job_path` in a fresh interpreter (its own peak RSS) and return the
    result it wrote beside the job, or `{"error": <last lines of its output>}`."""
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    # The engine's pools (rayon, candle) size themselves from this; default: all cores.
    env["RAYON_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, script, "--worker", str(job_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    out_path = job_path.with_suffix(".out.json")
    if proc.returncode != 0 or not out_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": "\n".join(tail) or f"exit {proc.returncode}"}
    return json.loads(out_path.read_text())


def parse_args(
    ap: argparse.ArgumentParser, argv: list[str] | None, worker: Callable[[Path], None]
) -> argparse.Namespace | None:
    """Add ``--out`` and the hidden ``--worker``, parse; in a worker process run ``worker`` on
    its job file and return None."""
    ap.add_argument("--out", type=Path, help="write the table here, and JSON beside it")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return None
    return args


def parse_choices(
    ap: argparse.ArgumentParser, what: str, text: str, known: Iterable[str]
) -> list[str]:
    """A comma-separated option (``--peers a,b``) as a list; unknown names are a usage error."""
    got = [x.strip() for x in text.split(",") if x.strip()]
    known = list(known)
    unknown = set(got) - set(known)
    if unknown:
        ap.error(f"unknown {what} {sorted(unknown)}; choose from {', '.join(known)}")
    return got


def md_table(
    header: Sequence[str],
    align: str,
    rows: Iterable[tuple[Sequence[str], dict]],
    cells: Callable[[dict], Sequence[str]],
) -> str:
    """A Markdown table: one line per ``(leading cells, result)``; a failed result (one with
    ``"error"``) gets the last line of its error instead of ``cells(result)``.

    ``align`` holds one character per column: ``l`` (left) or ``r`` (right).
    """
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
    ]
    for lead, r in rows:
        if "error" in r:
            rest = [f"failed: {r['error'].splitlines()[-1]}"]
            rest += [""] * (len(header) - len(lead) - 1)
        else:
            rest = list(cells(r))
        lines.append("| " + " | ".join([*lead, *rest]) + " |")
    return "\n".join(lines)


def notes(results: dict, threads: int) -> str:
    """Lines under the table: which engine build ran and whether the timings can be trusted."""
    lines = []
    engine = results.get("engine", {}).get("info")
    if engine:
        lines.append(f"engine build: {engine['core_so']}, mtime {engine['core_so_mtime']}")
    policy = os.environ.get("OMP_WAIT_POLICY")
    lines.append(
        f"OMP_WAIT_POLICY={policy}"
        if policy
        else "OMP_WAIT_POLICY unset: OpenMP peers (torch, llama.cpp) spin while they wait"
    )
    loads = [max(r["loadavg_1m"]) for r in results.values() if "loadavg_1m" in r]
    if loads and max(loads) > threads + 0.5:
        lines.append(
            f"WARNING: 1-min load average reached {max(loads):.1f} on {threads} threads: other "
            "work shared the CPUs and the timings are skewed (spinning OpenMP peers most; "
            "OMP_WAIT_POLICY=passive limits that)"
        )
    return "\n".join(f"- {line}" for line in lines)


def write_report(out: Path | None, md: str, summary: dict) -> None:
    """With ``--out``: the Markdown at ``out`` (``.md`` beside a ``.json`` path) and the JSON
    summary beside it, with the command line and OpenMP wait policy added."""
    if out is None:
        return
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **summary,
    }
    md_path = out.with_suffix(".md") if out.suffix == ".json" else out
    md_path.write_text(md + "\n")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")


def llamacpp_greedy(llm: Any, ids: list[int], n_new: int) -> list[int]:
    """llama.cpp's own greedy decoding with llama-cpp-python: evaluate the prompt, then one
    token at a time, taking the argmax of the last position's logits."""
    import numpy as np

    n_vocab = llm.n_vocab()
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n_new):
        last = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
        out.append(int(last.argmax()))
        llm.eval([out[-1]])
    return out
