"""Prefill arithmetic rate: the engine's M-member every-layer scoring pass as a fraction of the
machine's measured f32 GEMM peak, side by side in one run.

Scoring (prefill) is compute-bound: each prompt token goes through every base matrix once per
member row (members stacked on the batch axis; LoRA in every layer means no shared trunk). This
bench counts the useful floating-point work of the pass from the model's shape (the base
matrices, the LoRA updates and the causal half of attention; the label-only head is left out)
and divides by the measured time. The peak is torch's 1024x1024 f32 GEMM with the same number
of threads, in its own process (`OMP_WAIT_POLICY=passive`), best of several runs.

Run: `.venv/bin/python benches/bench_prefill.py [--n 64 --members 5 --threads 2]`
(about 2 minutes; writes nothing unless `--out` is given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benches/ is a plain directory: running a file in it puts it on sys.path, so siblings import.
import common
from bench_ensemble import LORA, make_adapters
from bench_scoring import LABELS, describe_prompts, load_questions

TORCH_GEMM = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
n = 1024
a, b = torch.randn(n, n), torch.randn(n, n)
for _ in range(3):
    a @ b
best = float("inf")
for _ in range(20):
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    best = min(best, (time.perf_counter() - t) / 5)
print(2 * n**3 / best / 1e9)
"""


def torch_gemm_gflops(threads: int) -> float:
    """torch's f32 GEMM rate (GFLOP/s) on 1024x1024 matrices, in a fresh process."""
    env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, "-c", TORCH_GEMM, str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(done.stdout.strip())


def pass_flops(config: dict, lengths: list[int], members: int, rank: int) -> float:
    """Useful FLOPs of scoring prompts of `lengths` tokens with `members` member rows: per token
    2 x every base matrix's elements and 2 x r x (in + out) per LoRA module (q and v); per
    prompt 4 x heads x head_dim x L(L+1)/2 per layer for the causal scores and weighted sum."""
    h, ffn, layers = config["hidden"], config["ffn"], config["n_layer"]
    q_out = config["n_head"] * config["head_dim"]
    kv_out = config["n_kv_head"] * config["head_dim"]
    per_layer = h * q_out + 2 * h * kv_out + q_out * h + 3 * h * ffn
    lora = rank * (h + q_out) + rank * (h + kv_out)
    per_token = 2 * layers * (per_layer + lora)
    attention = sum(4 * q_out * length * (length + 1) / 2 * layers for length in lengths)
    return members * (per_token * sum(lengths) + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="CommonsenseQA dev prompts")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=common.REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    import lora_ens_rs
    from lora_ens_rs import _core

    model = Path(_core.default_model_path())
    texts = [q["text"] for q in load_questions(args.data, args.n)]
    peak = torch_gemm_gflops(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-prefill-") as tmp:
        members = make_adapters(model, ["all"], args.members, Path(tmp))["all"]
        ens = lora_ens_rs.Ensemble(model, members)
        tok = _core.Tokenizer.from_gguf(model)
        lengths = [len(tok.encode(t, True)) for t in texts]
        ens.score(texts[: args.batch_size], list(LABELS), batch_size=args.batch_size)  # warm up
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            ens.score(texts, list(LABELS), batch_size=args.batch_size)
            best = min(best, time.perf_counter() - t)
    flops = pass_flops(ens.config, lengths, args.members, LORA["r"])
    rate = flops / best / 1e9
    result = {
        "model": model.name,
        "prompts": describe_prompts([[0] * n for n in lengths]),
        "members": args.members,
        "lora": f"r={LORA['r']} on {'+'.join(LORA['target_modules'])}, every layer",
        "threads": args.threads,
        "seconds": round(best, 3),
        "gflop": round(flops / 1e9, 1),
        "engine_gflops": round(rate, 1),
        "torch_gemm_1024_gflops": round(peak, 1),
        "fraction_of_peak": round(rate / peak, 3),
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nM={args.members} every-layer scoring pass: {rate:.1f} GFLOP/s = "
        f"{rate / peak:.0%} of torch's 1024^3 f32 GEMM ({peak:.1f} GFLOP/s), {args.threads} threads"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
