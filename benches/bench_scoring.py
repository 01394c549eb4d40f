"""Scoring throughput of the engine vs transformers (fp32) vs llama.cpp, side by side.

Scores the first --n CommonsenseQA dev questions as letter prompts over the 5 label tokens with
each peer in its own subprocess (peak RSS includes model loading), checks that the peers agree
on the answers, and prints a Markdown table. Run: `make bench`, or
`.venv/bin/python benches/bench_scoring.py [--n 200 --peers engine,transformers,llamacpp]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# benches/ is a plain directory: running a file in it puts it on sys.path, so siblings import.
import common

PEERS = ("engine", "transformers", "llamacpp")
LABELS = ("A", "B", "C", "D", "E")


def build_prompt(stem: str, choices: list[str]) -> str:
    """The multiple-choice prompt every peer scores: the next token after it is the letter."""
    lines = [f"Question: {stem}"]
    lines += [f"{label}. {text}" for label, text in zip(LABELS, choices, strict=True)]
    lines.append("Answer:")
    return "\n".join(lines)


def describe_prompts(ids: list[list[int]]) -> str:
    """``"200 prompts, 31-95 tokens (median 52)"``."""
    lengths = sorted(map(len, ids))
    return (
        f"{len(ids)} prompts, {lengths[0]}-{lengths[-1]} tokens "
        f"(median {lengths[len(lengths) // 2]})"
    )


def load_questions(data_dir: Path, n: int) -> list[dict]:
    path = data_dir / "commonsenseqa" / "dev_rand_split.jsonl"
    questions = []
    with path.open() as f:
        for line in f:
            if len(questions) == n:
                break
            rec = json.loads(line)
            choices = [c["text"] for c in rec["question"]["choices"]]
            questions.append(
                {
                    "text": build_prompt(rec["question"]["stem"], choices),
                    "answer": LABELS.index(rec["answerKey"]),
                }
            )
    return questions


def timed_passes(score, job: dict) -> tuple[list[float], list[float], list[list[float]]]:
    """Warm up on one batch, then time `repeats` passes over all prompts; logits of the last.

    CPU seconds are recorded beside wall seconds: on a machine shared with other work, CPU
    seconds per question move much less than throughput does.
    """
    ids = job["ids"]
    score(ids[: job["batch_size"]])
    times, cpu, logits = [], [], []
    for _ in range(job["repeats"]):
        c0, t0 = common.cpu_seconds(), time.perf_counter()
        logits = score(ids)
        times.append(time.perf_counter() - t0)
        cpu.append(common.cpu_seconds() - c0)
    return times, cpu, logits


def run_engine(job: dict) -> tuple[object, dict]:
    from lora_ens_rs import _core

    model = _core.Model(job["model_path"])
    so = Path(_core.__file__)
    info = {
        "core_so": str(so),
        "core_so_mtime": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(so.stat().st_mtime)),
        "core_so_mib": round(so.stat().st_size / 2**20, 1),
    }

    def score(ids):
        out = model.logits(ids, token_ids=job["label_ids"], batch_size=job["batch_size"])
        return out.tolist()

    return score, info


def run_transformers(job: dict) -> tuple[object, dict]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(job["threads"])
    path = Path(job["model_path"])
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    label_ids = torch.tensor(job["label_ids"])
    pad_id = 0  # any id: padded positions are masked out

    @torch.inference_mode()
    def score(ids):
        out = []
        for start in range(0, len(ids), job["batch_size"]):
            chunk = ids[start : start + job["batch_size"]]
            width = max(map(len, chunk))
            input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in chunk])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk])
            # Left padding: positions of the real tokens must start at 0, as in the engine.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                logits_to_keep=1,
                use_cache=False,
            ).logits  # (B, 1, vocab)
            out += logits[:, -1, label_ids].tolist()
        return out

    info = {"torch": torch.__version__, "transformers": transformers.__version__}
    return score, info


def run_llamacpp(job: dict) -> tuple[object, dict]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=job["model_path"],
        n_ctx=512,
        n_batch=512,
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        logits_all=False,
        verbose=False,
    )
    label_ids = job["label_ids"]

    def score(ids):
        out = []
        for s in ids:
            llm.reset()
            llm.eval(s)
            # With logits_all=False llama.cpp computes only the last position's logits and
            # llama-cpp-python does not copy them into `llm.scores`: read the context's row.
            last = llm._ctx.get_logits_ith(-1)  # ctypes float*, n_vocab entries
            out.append([float(last[i]) for i in label_ids])
        return out

    same = sum(
        llm.tokenize(t.encode(), add_bos=False, special=True) == s
        for t, s in zip(job["texts"], job["ids"], strict=True)
    )
    info = {"llama_cpp_python": llama_cpp.__version__, "tokenizer_matches_hf": same}
    return score, info


def worker(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    runners = {"engine": run_engine, "transformers": run_transformers, "llamacpp": run_llamacpp}
    t0 = time.perf_counter()
    score, info = runners[job["peer"]](job)
    load_s = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    times, cpu, logits = timed_passes(score, job)
    best = min(range(len(times)), key=times.__getitem__)
    result = {
        "peer": job["peer"],
        "load_s": load_s,
        "times_s": times,
        "cpu_s": cpu,
        "qps": len(job["ids"]) / times[best],
        "cpu_ms_per_q": 1000 * cpu[best] / len(job["ids"]),
        **common.process_stats(load_before),
        "info": info,
        "logits": logits,
    }
    job_path.with_suffix(".out.json").write_text(json.dumps(result))


def run_peer(job: dict, tmp: Path, threads: int) -> dict:
    out = common.run_worker(__file__, job, tmp / f"{job['peer']}.json", threads)
    return {"peer": job["peer"], **out}


def softmax(rows):
    import numpy as np

    x = np.asarray(rows, dtype=np.float64)
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


def compare(results: dict, answers: list[int]) -> None:
    """Add accuracy and agreement with the engine (argmax rate, max |label softmax diff|)."""
    import numpy as np

    for r in results.values():
        if "logits" in r:
            r["probs"] = softmax(r["logits"])
            r["accuracy"] = float((r["probs"].argmax(1) == np.asarray(answers)).mean())
    ref = results.get("engine", {})
    for name, r in results.items():
        if name == "engine" or "probs" not in r or "probs" not in ref:
            continue
        r["argmax_agree_engine"] = float((r["probs"].argmax(1) == ref["probs"].argmax(1)).mean())
        r["max_abs_dprob_engine"] = float(np.abs(r["probs"] - ref["probs"]).max())


def table(results: dict) -> str:
    def ratio(r, other):
        o = results.get(other, {})
        return f"{r['qps'] / o['qps']:.2f}x" if "qps" in o else "-"

    def cells(r: dict) -> list[str]:
        agree = f"{r['argmax_agree_engine']:.3f}" if "argmax_agree_engine" in r else "-"
        dprob = f"{r['max_abs_dprob_engine']:.2e}" if "max_abs_dprob_engine" in r else "-"
        return [
            f"{r['qps']:.2f}",
            ratio(r, "transformers"),
            ratio(r, "llamacpp"),
            f"{r['cpu_ms_per_q']:.0f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['load_s']:.1f}",
            f"{max(r['loadavg_1m']):.1f}",
            f"{r['accuracy']:.3f}",
            agree,
            dprob,
        ]

    header = [
        "peer", "q/s", "vs transformers", "vs llama.cpp", "CPU ms/q", "peak RSS MiB", "load s",
        "load avg", "accuracy", "argmax agree w/ engine", "max abs dprob vs engine",
    ]  # fmt: skip
    rows = [([name], r) for name, r in results.items()]
    return common.md_table(header, "l" + "r" * 10, rows, cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=common.REPO.parent / "shared" / "data")
    ap.add_argument("--model", help="GGUF file (default: lora_ens_rs.default_model_path())")
    ap.add_argument("--n", type=int, default=200, help="questions (from the top of dev)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes; the best is reported")
    ap.add_argument("--peers", default=",".join(PEERS))
    args = common.parse_args(ap, argv, worker)
    if args is None:  # a worker process
        return 0

    peers = common.parse_choices(ap, "peers", args.peers, PEERS)

    from transformers import AutoTokenizer

    import lora_ens_rs

    model_path = Path(args.model or lora_ens_rs.default_model_path()).resolve()
    tok = AutoTokenizer.from_pretrained(model_path.parent, gguf_file=model_path.name)
    label_ids = [tok(" " + c, add_special_tokens=False)["input_ids"][-1] for c in LABELS]
    questions = load_questions(args.data_dir, args.n)
    texts = [q["text"] for q in questions]
    ids = [tok(t)["input_ids"] for t in texts]
    print(
        f"{describe_prompts(ids)}, label ids {label_ids}, {args.threads} threads, "
        f"batch {args.batch_size}, best of {args.repeats}",
        file=sys.stderr,
    )

    job = {
        "model_path": str(model_path),
        "ids": ids,
        "texts": texts,
        "label_ids": label_ids,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for peer in peers:
            print(f"running {peer} ...", file=sys.stderr, flush=True)
            results[peer] = run_peer({**job, "peer": peer}, Path(tmp), args.threads)
            r = results[peer]
            msg = f"error: {r['error']}" if "error" in r else f"{r['qps']:.2f} q/s {r['info']}"
            print(f"  {peer}: {msg}", file=sys.stderr, flush=True)

    compare(results, [q["answer"] for q in questions])
    md = table(results) + "\n\n" + common.notes(results, args.threads)
    print(md)
    for name, r in results.items():
        if "argmax_agree_engine" in r:
            print(
                f"{name} vs engine: argmax agreement {r['argmax_agree_engine']:.3f}, "
                f"max |label softmax diff| {r['max_abs_dprob_engine']:.2e}"
            )

    common.write_report(
        args.out,
        md,
        {
            "n": len(ids),
            "batch_size": args.batch_size,
            "threads": args.threads,
            "repeats": args.repeats,
            "label_ids": label_ids,
            "results": {
                k: {f: v for f, v in r.items() if f not in ("logits", "probs")}
                for k, r in results.items()
            },
        },
    )
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
