"""A LLaMA-3.2-1B-shaped model with random weights: the engine vs llama.cpp vs transformers
fp32 on the same GGUF files (load time, peak RSS, scoring q/s, greedy decode tokens/s), and the
engine's Q4_K_M path vs its Q4_1 path on the same shapes.

The model is LLaMA-3.2-1B's config (16 layers, hidden 2048, 32 query / 8 KV heads, FFN 8192,
llama3 rope scaling, tied head) with random weights and the real LLaMA-3 vocabulary (llama.cpp's
``ggml-vocab-llama-bpe.gguf`` read by transformers), saved as bf16, converted to F16 by
llama.cpp's ``convert_hf_to_gguf.py`` and quantized to Q4_K_M and Q4_1 by llama.cpp's quantizer
(llama-cpp-python, benches/requirements.txt) when it is installed, else by the package's numpy
quantizer (scripts/kquants.py). Files live under ``<cache>/bench-llama32-1b`` (about 5 GB) and
are reused. Scoring runs benches/bench_scoring.py on each file; decoding is measured here, each
peer in its own subprocess. Run:

    .venv/bin/python benches/bench_llama_family.py [--n 48] [--out benches/results/llama32-1b.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import bench_scoring
import common

SCRIPTS = common.REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))
from make_arch_fixtures import LLAMA3_ROPE_SCALING, convert  # noqa: E402

CONFIG = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": LLAMA3_ROPE_SCALING,
    "tie_word_embeddings": True,
}
FILES = ("q4_k_m", "q4_1")
DECODE_PEERS = ("engine", "llamacpp", "transformers")
NEW_TOKENS = 32


def prepare(root: Path) -> dict[str, Path]:
    """The random checkpoint and its GGUF files under `root`, made when missing."""
    hf, f16 = root / "hf", root / "f16.gguf"
    if not (hf / "model.safetensors").is_file():
        import torch
        from fetch_llama_vocabs import fetch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

        tok = AutoTokenizer.from_pretrained(fetch(), gguf_file="ggml-vocab-llama-bpe.gguf")
        tok.save_pretrained(hf)
        config = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **CONFIG,
        )
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(hf)
    if not f16.is_file():
        convert(hf, f16, "f16", None)
    out = {}
    for kind in FILES:
        out[kind] = root / f"{kind}.gguf"
        if not out[kind].is_file():
            quantize(f16, out[kind], kind)
    return out


def quantize(src: Path, dst: Path, kind: str) -> None:
    """llama.cpp's quantizer when llama-cpp-python is installed, else scripts/kquants.py."""
    try:
        import llama_cpp
    except ImportError:
        import gguf
        import kquants

        qt = gguf.GGMLQuantizationType

        def type_for(name: str, shape: tuple[int, ...]):
            if kind == "q4_k_m":
                return kquants.q4_k_m_type(name, shape, CONFIG["num_hidden_layers"], False)
            return qt.F32 if len(shape) == 1 else qt.Q4_1

        print(f"quantizing {dst.name} with scripts/kquants.py ...", file=sys.stderr)
        kquants.requantize_gguf(src, dst, type_for)
        return
    ftype = {
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    }
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype[kind]
    params.nthread = os.cpu_count() or 1
    print(f"quantizing {dst.name} with llama.cpp ...", file=sys.stderr)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {kind}")
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------------
# Decode workers: load, then greedy-generate NEW_TOKENS tokens after the prompt, best of repeats


def decode_engine(job: dict):
    from lora_ens_rs import _core

    model = _core.Model(job["model_path"])

    def run(ids):
        return model.generate_greedy(ids, max_new_tokens=NEW_TOKENS, stop_ids=[])

    return run


def decode_llamacpp(job: dict):
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=job["model_path"],
        n_ctx=512,
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        verbose=False,
    )

    def run(ids):
        return common.llamacpp_greedy(llm, ids, NEW_TOKENS)

    return run


def decode_transformers(job: dict):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(job["threads"])
    path = Path(job["model_path"])
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()

    def run(ids):
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        return out[0, len(ids) :].tolist()

    return run


def worker(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    runners = {
        "engine": decode_engine,
        "llamacpp": decode_llamacpp,
        "transformers": decode_transformers,
    }
    t0 = time.perf_counter()
    run = runners[job["peer"]](job)
    load_s = time.perf_counter() - t0
    run(job["ids"][:8])  # warm up
    load_before = os.getloadavg()[0]
    times, tokens = [], []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        tokens = run(job["ids"])
        times.append(time.perf_counter() - t0)
    result = {
        "load_s": load_s,
        "times_s": times,
        "tokens_per_s": NEW_TOKENS / min(times),
        "tokens": tokens,
        **common.process_stats(load_before),
    }
    job_path.with_suffix(".out.json").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="default: lora_ens_rs.cache_dir()")
    ap.add_argument("--n", type=int, default=48, help="scoring questions")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--decode-peers", default=",".join(DECODE_PEERS))
    args = common.parse_args(ap, argv, worker)
    if args is None:
        return 0
    decode_peers = common.parse_choices(ap, "peers", args.decode_peers, DECODE_PEERS)

    import lora_ens_rs

    root = Path(args.cache or lora_ens_rs.cache_dir()) / "bench-llama32-1b"
    files = prepare(root)
    scoring, decode = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, path in files.items():
            out = Path(tmp) / f"scoring-{kind}.json"
            peers = "engine,llamacpp,transformers" if kind == "q4_k_m" else "engine,llamacpp"
            bench_scoring.main(
                [
                    *("--model", str(path), "--n", str(args.n), "--threads", str(args.threads)),
                    *("--repeats", str(args.repeats), "--peers", peers, "--out", str(out)),
                ]
            )
            scoring[kind] = json.loads(out.read_text())["results"]
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(root / "hf")
        prompt = bench_scoring.load_questions(common.REPO.parent / "shared" / "data", 1)[0]
        ids = tok(prompt["text"])["input_ids"]
        for kind, path in files.items():
            for peer in decode_peers if kind == "q4_k_m" else ["engine", "llamacpp"]:
                print(f"decode {kind} {peer} ...", file=sys.stderr, flush=True)
                job = {"peer": peer, "model_path": str(path), "ids": ids}
                job |= {"threads": args.threads, "repeats": args.repeats}
                decode[(kind, peer)] = common.run_worker(
                    __file__, job, Path(tmp) / f"decode-{kind}-{peer}.json", args.threads
                )
    md = report(scoring, decode, len(ids))
    print(md)
    summary = {
        "scoring": scoring,
        "decode": {f"{k}/{p}": r for (k, p), r in decode.items()},
        "prompt_tokens": len(ids),
    }
    common.write_report(args.out, md, summary)
    return 0


def report(scoring: dict, decode: dict, prompt_tokens: int) -> str:
    rows = []
    for kind in FILES:
        for peer, r in scoring[kind].items():
            d = decode.get((kind, peer), {})
            rows.append(([kind, peer], {**r, "decode": d}))

    def cells(r: dict) -> list[str]:
        d = r["decode"]
        tps = f"{d['tokens_per_s']:.1f}" if "tokens_per_s" in d else d.get("error", "-")[-40:]
        return [
            f"{r['load_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['qps']:.2f}",
            tps,
            f"{max(r['loadavg_1m']):.1f}",
        ]

    header = ["file", "peer", "load s", "peak RSS MiB", "scoring q/s", "decode tok/s", "load avg"]
    md = common.md_table(header, "llrrrrr", rows, cells)
    lines = [md, ""]
    e = {k: scoring[k].get("engine", {}) for k in FILES}
    if all("qps" in x for x in e.values()):
        lines.append(
            f"- engine Q4_K_M / Q4_1 scoring speed: {e['q4_k_m']['qps'] / e['q4_1']['qps']:.2f}"
        )
    de = {k: decode.get((k, "engine"), {}) for k in FILES}
    if all("tokens_per_s" in x for x in de.values()):
        ratio = de["q4_k_m"]["tokens_per_s"] / de["q4_1"]["tokens_per_s"]
        lines.append(f"- engine Q4_K_M / Q4_1 decode speed: {ratio:.2f}")
    for kind in FILES:
        for peer in ("llamacpp", "transformers"):
            a, b = decode.get((kind, "engine"), {}), decode.get((kind, peer), {})
            if "tokens" in a and "tokens" in b:
                same = sum(x == y for x, y in zip(a["tokens"], b["tokens"], strict=True))
                lines.append(
                    f"- {kind}: greedy tokens equal to {peer}'s: {same}/{NEW_TOKENS} "
                    f"(random weights: near-ties make small numeric differences visible)"
                )
    lines.append(f"- decode: {NEW_TOKENS} new tokens after a {prompt_tokens}-token prompt")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
