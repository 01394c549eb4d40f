"""Greedy decoding speed: the engine's M-member ensemble (M = 1, 5 random LoRA members, r=8 on
q_proj + v_proj in every layer) against llama.cpp (base model, its own one-token-at-a-time
loop) and transformers (+ PEFT: the M members run one after another at every step, their
next-token probabilities averaged as the engine does), side by side. M = 0 is the base model
from token ids (`Model.generate_greedy`: files whose tokenizer the engine lacks).

Each (model, M, peer) runs in its own subprocess: load, warm up on 2 tokens, then generate
--new-tokens tokens greedily after a fixed prompt, best of --repeats. Columns: tokens/s,
the achieved GB/s of weight traffic (bytes of the weights one token reads, times tokens/s: each
member's step reads every matrix once, so the ensemble reads them once per token for all M) next
to the machine's copy bandwidth (numpy copy of 1 GiB, bytes copied per second), and agreement of
the generated tokens with transformers'. The prompt is a story opening (`PROMPT`).
`--engine-so` adds an engine row per extra build (e.g. an older `_core.abi3.so`, to compare
before/after). `--batches 1,4,16` adds engine rows that decode B prompts at once
(`generate_batch`: one forward pass per step for all B sequences and their members). Run:

    OMP_WAIT_POLICY=passive .venv/bin/python benches/bench_decode.py [--members 1,5] \\
        [--models smollm2,llama1b-q4_k_m,llama1b-q4_1] [--batches 1,4,16] \\
        [--engine-so before=/path/_core.abi3.so]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import bench_ensemble
import common

PEERS = ("engine", "llamacpp", "transformers")
INIT_SCALE = 0.02  # std of the random lora_A / lora_B entries
# A story opening: greedy continuations run to the token limit (a question prompt ending in
# "Answer:" made SmolLM2 emit EOS at once, leaving nothing to time).
PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def batch_prompts(b: int) -> list[str]:
    """`b` prompts for batched decoding: PROMPT first (its tokens are compared with
    transformers'), then the same opening with other characters (different lengths)."""
    people = ["baker", "young sailor", "shepherd", "clockmaker", "weaver", "lighthouse keeper"]
    others = [PROMPT.replace("an old fisherman", f"a {people[i % len(people)]}") for i in range(b)]
    return [PROMPT, *others[1:]][:b]


def model_paths(cache: Path) -> dict[str, Path]:
    return {
        "smollm2": cache / "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llama1b-q4_k_m": cache / "bench-llama32-1b" / "q4_k_m.gguf",
        "llama1b-q4_1": cache / "bench-llama32-1b" / "q4_1.gguf",
    }


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of every tensor one decoding step reads in full: all of them except the token
    embedding when the lm_head is a separate `output.weight` (then one embedding row is read)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def copy_bandwidth_gbs() -> float:
    """Bytes per second of a numpy copy of 1 GiB (best of 3), in GB/s."""
    import numpy as np

    src = np.ones(2**30 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return src.nbytes / best / 1e9


# ---------------------------------------------------------------------------------------------
# Workers: each returns run(n_new) -> generated token ids


def run_engine(job: dict):
    if job.get("core_so"):
        # Another build of the extension: load it as lora_ens_rs._core before the package does.
        import importlib.util

        spec = importlib.util.spec_from_file_location("lora_ens_rs._core", job["core_so"])
        module = importlib.util.module_from_spec(spec)
        sys.modules["lora_ens_rs._core"] = module
        spec.loader.exec_module(module)
    import lora_ens_rs

    if not job["members"]:
        # M = 0: the base model from token ids (no tokenizer needed).
        model = lora_ens_rs._core.Model(job["model_path"])

        def run_base(n_new: int) -> list[int]:
            return model.generate_greedy(job["ids"], max_new_tokens=n_new, stop_ids=[])

        return run_base
    ens = lora_ens_rs.Ensemble(job["model_path"], job["members"])
    if job.get("batch", 1) > 1:
        prompts = batch_prompts(job["batch"])

        def run_batch(n_new: int) -> list[list[int]]:
            gens = ens.generate_batch(prompts, max_new_tokens=n_new, temperature=0.0)
            return [list(g.tokens) for g in gens]

        return run_batch

    def run(n_new: int) -> list[int]:
        gen = ens.generate(job["prompt"], max_new_tokens=n_new, temperature=0.0)
        return list(gen.tokens)

    return run


def run_llamacpp(job: dict):
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=job["model_path"],
        n_ctx=512,
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        verbose=False,
    )

    def run(n_new: int) -> list[int]:
        return common.llamacpp_greedy(llm, job["ids"], n_new)

    return run


def run_transformers(job: dict):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(job["threads"])
    path = Path(job["model_path"])
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    names = [f"m{i}" for i in range(len(job["members"]))]
    if names:
        model = PeftModel.from_pretrained(model, job["members"][0], adapter_name=names[0])
        for name, member in zip(names[1:], job["members"][1:], strict=True):
            model.load_adapter(member, adapter_name=name)
    model.eval()
    eos = set(job["eos"])

    def run(n_new: int) -> list[int]:
        caches = [DynamicCache() for _ in names or [None]]
        inputs = torch.tensor([job["ids"]])
        out: list[int] = []
        with torch.inference_mode():
            for _ in range(n_new):
                probs = 0
                for name, cache in zip(names or [None], caches, strict=True):
                    if name is not None:
                        model.set_adapter(name)
                    logits = model(input_ids=inputs, past_key_values=cache, use_cache=True).logits
                    probs = probs + torch.softmax(logits[0, -1], dim=-1)
                out.append(int(probs.argmax()))
                if out[-1] in eos:
                    break
                inputs = torch.tensor([[out[-1]]])
        return out

    return run


def worker(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    runners = {"engine": run_engine, "llamacpp": run_llamacpp, "transformers": run_transformers}
    t0 = time.perf_counter()
    run = runners[job["peer"]](job)
    load_s = time.perf_counter() - t0
    run(2)  # warm up
    load_before = os.getloadavg()[0]
    times, tokens = [], []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        tokens = run(job["new_tokens"])
        times.append(time.perf_counter() - t0)
    best = min(times)
    # A batch returns one token list per sequence: tokens/s counts them all; a step reads the
    # weights once for the whole batch, so weight traffic follows steps (the longest sequence).
    batch = tokens if tokens and isinstance(tokens[0], list) else [tokens]
    result = {
        "load_s": load_s,
        "times_s": times,
        "tokens": batch[0],
        "batch": len(batch),
        "tokens_per_s": sum(map(len, batch)) / best,
        "steps_per_s": max(map(len, batch)) / best,
        **common.process_stats(load_before),
    }
    job_path.with_suffix(".out.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="default: lora_ens_rs.cache_dir()")
    ap.add_argument("--models", default="smollm2,llama1b-q4_k_m,llama1b-q4_1")
    ap.add_argument("--members", default="1,5")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--batches", default="1", help="engine rows decoding this many prompts at once, e.g. 1,4,16"
    )
    ap.add_argument(
        "--engine-so",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another engine build to run as peer `engine-NAME` (repeatable)",
    )
    args = common.parse_args(ap, argv, worker)
    if args is None:
        return 0
    import lora_ens_rs

    cache = Path(args.cache or lora_ens_rs.cache_dir())
    paths = model_paths(cache)
    models = common.parse_choices(ap, "models", args.models, paths)
    peers = common.parse_choices(ap, "peers", args.peers, PEERS)
    members = [int(m) for m in args.members.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    extra = dict(spec.split("=", 1) for spec in args.engine_so)
    copy_gbs = copy_bandwidth_gbs()
    load0 = os.getloadavg()
    prompt = PROMPT
    results: dict[tuple[str, int, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model in models:
            path = paths[model]
            from transformers import AutoTokenizer

            hf = path.parent / "hf"  # the LLaMA-shaped files keep their checkpoint beside them
            tok = (
                AutoTokenizer.from_pretrained(hf)
                if hf.is_dir()
                else AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            )
            ids = tok(prompt)["input_ids"]
            # Gentler members than bench_ensemble's: with its scale the 5-member mixture of
            # SmolLM2 ends the answer (EOS) at once, leaving nothing to time.
            bench_ensemble.INIT_SCALE = INIT_SCALE
            adapters = {"all": []}
            if max(members) > 0:
                adapters = bench_ensemble.make_adapters(path, ["all"], max(members), tmp / model)
            for m in members:
                runs = [(f"engine-{name}", "engine", so, 1) for name, so in extra.items()]
                runs += [(p, p, None, 1) for p in peers]
                if "engine" in peers and m > 0:
                    runs += [(f"engine x{b}", "engine", None, b) for b in batches if b > 1]
                for label, peer, so, b in runs:
                    if peer == "llamacpp" and m != members[0]:
                        continue  # the base model alone: one row per model
                    print(f"decode {model} M={m} {label} ...", file=sys.stderr, flush=True)
                    job = {
                        "peer": peer,
                        "model_path": str(path),
                        "members": adapters["all"][:m],
                        "prompt": prompt,
                        "ids": ids,
                        "eos": [tok.eos_token_id] if tok.eos_token_id is not None else [],
                        "new_tokens": args.new_tokens,
                        "threads": args.threads,
                        "repeats": args.repeats,
                        "core_so": so,
                        "batch": b,
                    }
                    results[(model, m, label)] = common.run_worker(
                        __file__,
                        job,
                        tmp / f"{model}-{m}-{label.replace(' ', '-')}.json",
                        args.threads,
                    )
                    r = results[(model, m, label)]
                    print(f"  {r.get('tokens_per_s', r.get('error'))}", file=sys.stderr)
    weights = {model: weight_bytes_per_token(paths[model]) for model in models}
    md = report(results, weights, copy_gbs, load0, args)
    print(md)
    summary = {
        "results": {f"{k[0]}/M={k[1]}/{k[2]}": r for k, r in results.items()},
        "weight_bytes_per_token": weights,
        "copy_gb_per_s": copy_gbs,
        "loadavg_at_start": load0,
    }
    common.write_report(args.out, md, summary)
    return 0 if all("error" not in r for r in results.values()) else 1


def report(results: dict, weights: dict, copy_gbs: float, load0, args) -> str:
    def cells(key: tuple[str, int, str]):
        r = results[key]
        model, m, label = key
        ref = results.get((model, m, "transformers"), {}).get("tokens")
        gbs = weights[model] * r.get("steps_per_s", r["tokens_per_s"]) / 1e9
        agree = "-"
        if ref is not None and label != "llamacpp":
            pairs = enumerate(zip(r["tokens"], ref, strict=False))
            same = next((i for i, (a, b) in pairs if a != b), None)
            n = min(len(r["tokens"]), len(ref))
            agree = f"{n}/{n}" if same is None else f"first {same}/{n}"
        base = results.get((model, m, "engine"), {}).get("tokens_per_s")
        speedup = f"{base / r['tokens_per_s']:.2f}" if base else "-"
        return [
            f"{r['tokens_per_s']:.2f}",
            str(len(r["tokens"])),
            f"{gbs:.1f}",
            f"{gbs / copy_gbs:.0%}",
            speedup,
            agree,
            f"{max(r['loadavg_1m']):.1f}",
        ]

    rows = [((k[0], str(k[1]) if k[2] != "llamacpp" else "base", k[2]), k) for k in results]
    header = ["model", "M", "peer", "tokens/s", "tokens", "weight GB/s", "of copy BW"]
    header += ["engine speed-up", "tokens = transformers", "load avg"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|---:|---|" + "---:|" * (len(header) - 3),
    ]
    for lead, key in rows:
        r = results[key]
        rest = (
            [f"failed: {r['error'].splitlines()[-1]}"] + [""] * (len(header) - 4)
            if "error" in r
            else cells(key)
        )
        lines.append("| " + " | ".join([*lead, *rest]) + " |")
    notes = [
        "weights read per token: " + ", ".join(f"{m} {b / 1e6:.0f} MB" for m, b in weights.items()),
        f"copy bandwidth (numpy, 1 GiB): {copy_gbs:.1f} GB/s",
        f"{args.threads} threads, {args.new_tokens} new tokens, best of {args.repeats}; "
        f"load average at start {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f}",
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        "llamacpp runs the base model (no adapters): one row per model",
        "engine xB: B prompts decoded together (`generate_batch`); tokens/s counts all of them, "
        "weight GB/s counts one read of the weights per step",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


if __name__ == "__main__":
    sys.exit(main())
