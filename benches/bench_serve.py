"""Load test of `lora-ens-rs serve` on loopback: 1, 4, 16, 64 concurrent clients for a fixed
short time each, scoring (one question per request) and generating (a short completion per
request); throughput, p50/p95/p99 latency, errors and 429s, and the server's peak RSS (sampled
over time). Compared with offline `lora-ens-rs infer` on the same questions.

The ensemble: M random LoRA members (r=8 on q_proj + v_proj of every layer, as
`bench_ensemble.py` writes them) on the default model (SmolLM2-135M-Instruct Q4_1). Bounded:
every cell stops after --seconds, the server after the last. Run:
`.venv/bin/python benches/bench_serve.py [--seconds 10 --clients 1,4,16,64 --members 5]`;
prints a Markdown table (benches/README.md has the results) and writes --out JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The command that runs `serve` and `infer` (--binary: e.g. a Rust build of `lora-ens-rs`).
SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")
DATA = REPO / "python" / "lora_ens_rs" / "datasets" / "commonsenseqa" / "dev.jsonl"


def load_questions(n: int) -> list[dict[str, Any]]:
    """The first `n` CommonsenseQA dev questions as generic question objects."""
    out = []
    with DATA.open() as f:
        for line in f:
            if len(out) == n:
                break
            rec = json.loads(line)
            q = rec["question"]
            out.append(
                {
                    "id": rec["id"],
                    "question": q["stem"],
                    "choices": [c["text"] for c in q["choices"]],
                    "labels": [c["label"] for c in q["choices"]],
                    "answer": rec["answerKey"],
                }
            )
    return out


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [SCRIPT, "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                break
        else:
            raise SystemExit("the server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def run_cell(
    server: Server, mode: str, clients: int, seconds: float, questions: list[dict], max_tokens: int
) -> dict[str, Any]:
    """`clients` threads, each with its own keep-alive connection, sending requests back to
    back for `seconds`; the server's RSS is sampled every 0.25 s."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    units = [0]  # questions scored or tokens generated
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    rss: list[tuple[float, float]] = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
        i = k
        while time.monotonic() < stop_at:
            if mode == "score":
                path, body = "/v1/score", [questions[i % len(questions)]]
            else:
                q = questions[i % len(questions)]
                path = "/v1/completions"
                body = {"prompt": q["question"], "max_tokens": max_tokens, "temperature": 0}
            i += clients
            t0 = time.monotonic()
            try:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                r = conn.getresponse()
                payload = r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
            dt = time.monotonic() - t0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(dt)
                    if mode == "score":
                        units[0] += len(body)
                    else:
                        units[0] += json.loads(payload)["usage"]["completion_tokens"]
                elif status == 429:
                    time.sleep(0.05)
        conn.close()

    def sample() -> None:
        t0 = time.monotonic()
        while time.monotonic() < stop_at + 1:
            rss.append((round(time.monotonic() - t0, 2), rss_mib(server.proc.pid)))
            time.sleep(0.25)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    ok = statuses.get(200, 0)
    return {
        "mode": mode,
        "clients": clients,
        "wall_s": wall,
        "requests_ok": ok,
        "requests_per_s": ok / wall,
        "units_per_s": units[0] / wall,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "errors": sum(n for s, n in statuses.items() if s not in (200, 429)),
        "rejected_429": statuses.get(429, 0),
        "peak_rss_mib": max((r for _, r in rss), default=float("nan")),
        "rss_timeline": rss,
    }


def offline_infer(model_args: list[str], questions: list[dict], tmp: Path) -> float:
    """Questions per second of `infer` on the same questions, model loading subtracted (the
    time of a run on one question)."""
    times = []
    for n in (1, len(questions)):
        path = tmp / f"q{n}.jsonl"
        path.write_text("".join(json.dumps(q) + "\n" for q in questions[:n]))
        t0 = time.monotonic()
        subprocess.run(
            [SCRIPT, "infer", str(path), *model_args, "-q", "-o", str(tmp / "out.jsonl")],
            check=True,
        )
        times.append(time.monotonic() - t0)
    return (len(questions) - 1) / (times[1] - times[0])


def make_members(model: Path, m: int, out: Path) -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_ensemble import make_adapters

    return make_adapters(model, ["all"], m, out)["all"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="GGUF model (default: the default model)")
    p.add_argument("--members", type=int, default=5, help="random LoRA members (0: base alone)")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--modes", default="score,generate")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each cell")
    p.add_argument("--questions", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--binary", default=None, help="the lora-ens-rs executable to run")
    args = p.parse_args()
    if args.binary:
        global SCRIPT
        SCRIPT = args.binary

    if args.model is None:
        import lora_ens_rs

        args.model = Path(lora_ens_rs.default_model_path())
    questions = load_questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        members = make_members(args.model, args.members, tmp / "members") if args.members else []
        model_args = ["--model", str(args.model)]
        for m in members:
            model_args += ["--adapters", m]
        offline = offline_infer(model_args, questions, tmp)
        server = Server([*model_args, "--max-queue", "256", "--max-generations", "16"])
        try:
            results = [
                run_cell(server, mode, int(c), args.seconds, questions, args.max_tokens)
                for mode in args.modes.split(",")
                for c in args.clients.split(",")
            ]
        finally:
            code = server.stop()
    header = (
        "| mode | clients | ok requests | throughput | p50 s | p95 s | p99 s | errors | 429 "
        "| peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for r in results:
        unit = "questions/s" if r["mode"] == "score" else "tokens/s"
        rows.append(
            f"| {r['mode']} | {r['clients']} | {r['requests_ok']} | {r['units_per_s']:.1f} {unit} "
            f"| {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['p99_s']:.3f} | {r['errors']} "
            f"| {r['rejected_429']} | {r['peak_rss_mib']:.0f} |"
        )
    by = {(r["mode"], r["clients"]): r for r in results}
    lines = [header, *rows, "", f"offline `infer`: {offline:.1f} questions/s"]
    if ("score", 16) in by:
        lines.append(
            f"16 scoring clients: {by[('score', 16)]['units_per_s'] / offline:.0%} of offline infer"
        )
    if ("generate", 16) in by and ("generate", 1) in by:
        ratio = by[("generate", 16)]["units_per_s"] / by[("generate", 1)]["units_per_s"]
        lines.append(f"generation, 16 clients vs 1: {ratio:.1f}x tokens/s")
    lines.append(f"server exit status after SIGTERM: {code}")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(
            json.dumps(
                {"offline_questions_per_s": offline, "members": args.members, "cells": results},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
