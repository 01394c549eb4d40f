"""Ensemble scoring throughput: the engine's one-pass M-member ensemble vs PEFT, side by side.

Scores the first --n CommonsenseQA dev questions as letter prompts over the 5 label tokens
with M = 1, 5, 10 random LoRA members (r=8, alpha=16 on q_proj + v_proj, in every layer or in
the top 8 only), plus the engine's base model alone (M=0) as the reference for speed and memory.
Peers: the engine (`lora_ens_rs.Ensemble`), PEFT running the members one after another, and
PEFT's mixed-adapter batch (`adapter_names=`). Each peer runs in its own subprocess (peak RSS
includes model loading); the ensemble's probabilities are checked against PEFT's in the same
run; prints a Markdown table. Run (slow: the PEFT peers take most of the time):
`.venv/bin/python benches/bench_ensemble.py [--n 200 --members 1,5,10 --configs all,top8]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

# benches/ is a plain directory: running a file in it puts it on sys.path, so siblings import.
import common
from bench_scoring import LABELS, describe_prompts, load_questions, softmax, timed_passes

PEERS = ("engine", "peft-seq", "peft-mixed")
# Adapter configurations: LoRA on the top N layers (None: every layer).
CONFIGS = {"all": None, "top8": 8}
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
INIT_SCALE = 0.05  # std of the random lora_A / lora_B entries (PEFT would start B at zero)
BASE = "base"  # config name of the M=0 reference row


# ---------------------------------------------------------------------------------------------
# Adapters (parent process)


def make_adapters(model_path: Path, configs: list[str], m: int, out: Path) -> dict[str, list[str]]:
    """Write `m` PEFT adapters with random non-zero A and B per configuration, under
    `out/<config>/m0..`, and return their directories. Seeded: every run writes the same ones."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        model_path.parent, gguf_file=model_path.name, dtype=torch.float32
    )
    n_layer = base.config.num_hidden_layers
    dirs = {}
    for seed, config in enumerate(configs):
        top = CONFIGS[config]
        layers = {} if top is None else {"layers_to_transform": list(range(n_layer - top, n_layer))}
        lora = LoraConfig(**LORA, **layers)
        names = [f"m{i}" for i in range(m)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT warns about layers_to_transform on some versions
            peft_model = get_peft_model(base, lora, adapter_name=names[0])
            for name in names[1:]:
                peft_model.add_adapter(name, lora)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in sorted(peft_model.named_parameters()):
                if "lora_" in name:
                    p.copy_(INIT_SCALE * torch.randn(p.shape, generator=generator))
        # Adapters other than "default" are saved to out/<config>/<name>. No embedding LoRA:
        # skip PEFT's check for a changed vocabulary (it would ask the hub).
        peft_model.save_pretrained(
            out / config, selected_adapters=names, save_embedding_layers=False
        )
        dirs[config] = [str(out / config / name) for name in names]
        base = peft_model.unload()  # the plain model again, for the next configuration
    del base, peft_model
    gc.collect()
    return dirs


# ---------------------------------------------------------------------------------------------
# Peers (worker processes). Each returns score(inputs) -> (N, 5) ensemble probabilities, the
# inputs it takes (texts or token ids), and information about what ran.


def run_engine(job: dict) -> tuple[object, list, dict]:
    import lora_ens_rs
    from lora_ens_rs import _core

    # Threads: the global rayon pool, sized by RAYON_NUM_THREADS (set by the parent).
    ens = lora_ens_rs.Ensemble(job["model_path"], job["members"])
    so = Path(_core.__file__)
    info = {
        "core_so": str(so),
        "core_so_mtime": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(so.stat().st_mtime)),
        "members": ens.n_members,
    }

    def score(texts):
        return ens.score(texts, list(LABELS), batch_size=job["batch_size"]).probs.tolist()

    return score, job["texts"], info


def load_peft(job: dict):
    """transformers' fp32 model of the GGUF with the M adapters loaded as m0, m1, ..."""
    import peft
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(job["threads"])
    path = Path(job["model_path"])
    base = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    names = [f"m{i}" for i in range(len(job["members"]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, job["members"][0], adapter_name=names[0])
        for name, member in zip(names[1:], job["members"][1:], strict=True):
            model.load_adapter(member, adapter_name=name)
    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "members": len(names),
    }
    return model.eval(), names, info


def padded(chunk: list[list[int]]):
    """Left-padded ids, attention mask and positions (from 0 at each prompt's first token)."""
    import torch

    width = max(map(len, chunk))
    pad_id = 0  # any id: padded positions are masked out
    input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in chunk])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk])
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def run_peft_seq(job: dict) -> tuple[object, list, dict]:
    """The members one after another (`set_adapter`), each over all prompts in batches."""
    import numpy as np
    import torch

    model, names, info = load_peft(job)
    label_ids = torch.tensor(job["label_ids"])
    bs = job["batch_size"]

    @torch.inference_mode()
    def score(ids):
        members = []
        for name in names:
            model.set_adapter(name)
            logits = []
            for start in range(0, len(ids), bs):
                input_ids, mask, position_ids = padded(ids[start : start + bs])
                out = model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=position_ids,
                    logits_to_keep=1,
                    use_cache=False,
                ).logits  # (B, 1, vocab)
                logits += out[:, -1, label_ids].tolist()
            members.append(softmax(logits))
        return np.mean(members, axis=0).tolist()

    return score, job["ids"], info


def run_peft_mixed(job: dict) -> tuple[object, list, dict]:
    """PEFT's mixed-adapter batch: each batch repeated M times, row block i through member i."""
    import torch

    model, names, info = load_peft(job)
    label_ids = torch.tensor(job["label_ids"])
    bs, m = job["batch_size"], len(names)

    @torch.inference_mode()
    def score(ids):
        probs = []
        for start in range(0, len(ids), bs):
            input_ids, mask, position_ids = padded(ids[start : start + bs])
            b = len(input_ids)
            logits = model(
                input_ids=input_ids.repeat(m, 1),
                attention_mask=mask.repeat(m, 1),
                position_ids=position_ids.repeat(m, 1),
                logits_to_keep=1,
                use_cache=False,
                adapter_names=[name for name in names for _ in range(b)],
            ).logits[:, -1, label_ids]  # (M * B, 5), member-major
            member_probs = torch.softmax(logits.double(), dim=-1).reshape(m, b, -1)
            probs += member_probs.mean(0).tolist()
        return probs

    return score, job["ids"], info


RUNNERS = {"engine": run_engine, "peft-seq": run_peft_seq, "peft-mixed": run_peft_mixed}


def worker(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    t0 = time.perf_counter()
    score, inputs, info = RUNNERS[job["peer"]](job)
    load_s = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    times, cpu, probs = timed_passes(score, {**job, "ids": inputs})
    best = min(range(len(times)), key=times.__getitem__)
    result = {
        "config": job["config"],
        "m": len(job["members"]),
        "peer": job["peer"],
        "load_s": load_s,
        "times_s": times,
        "cpu_s": cpu,
        "qps": len(inputs) / times[best],
        "cpu_ms_per_q": 1000 * cpu[best] / len(inputs),
        **common.process_stats(load_before),
        "info": info,
        "probs": probs,
    }
    job_path.with_suffix(".out.json").write_text(json.dumps(result))


def run_peer(job: dict, tmp: Path, threads: int) -> dict:
    key = {"config": job["config"], "m": len(job["members"]), "peer": job["peer"]}
    job_path = tmp / f"{job['config']}-m{key['m']}-{job['peer']}.json"
    return {**key, **common.run_worker(__file__, job, job_path, threads)}


# ---------------------------------------------------------------------------------------------
# Report


def find(results: list[dict], config: str, m: int, peer: str) -> dict:
    for r in results:
        if (r["config"], r["m"], r["peer"]) == (config, m, peer) and "error" not in r:
            return r
    return {}


def compare(results: list[dict]) -> None:
    """Agreement of each peer's ensemble probabilities with peft-seq's (same config and M)."""
    import numpy as np

    base = find(results, BASE, 0, "engine")
    for r in results:
        if r["peer"] == "engine" and r["m"] > 0 and "probs" in r and "probs" in base:
            # The members must move the output, or agreeing with PEFT would prove little.
            diff = np.abs(np.asarray(r["probs"]) - np.asarray(base["probs"]))
            r["max_abs_dprob_base"] = float(diff.max())
        ref = find(results, r["config"], r["m"], "peft-seq")
        if r["peer"] == "peft-seq" or "probs" not in r or "probs" not in ref:
            continue
        got, want = np.asarray(r["probs"]), np.asarray(ref["probs"])
        r["max_abs_dprob_peft_seq"] = float(np.abs(got - want).max())
        r["argmax_agree_peft_seq"] = float((got.argmax(1) == want.argmax(1)).mean())


def table(results: list[dict]) -> str:
    def ratio(num: dict, den: dict, key: str) -> str:
        return f"{num[key] / den[key]:.2f}x" if key in num and key in den else "-"

    base = find(results, BASE, 0, "engine")

    def cells(r: dict) -> list[str]:
        # Engine rows only: its q/s over the PEFT peers' at the same config and M.
        vs_seq = vs_mixed = "-"
        if r["peer"] == "engine":
            vs_seq = ratio(r, find(results, r["config"], r["m"], "peft-seq"), "qps")
            vs_mixed = ratio(r, find(results, r["config"], r["m"], "peft-mixed"), "qps")
        # Time of a pass relative to the engine with one member (q/s of that / q/s of this).
        rel_time = ratio(find(results, r["config"], 1, "engine"), r, "qps")
        dprob = r.get("max_abs_dprob_peft_seq")
        agree = r.get("argmax_agree_peft_seq")
        return [
            f"{r['qps']:.2f}",
            vs_seq,
            vs_mixed,
            rel_time if r["config"] != BASE else "-",
            f"{r['cpu_ms_per_q']:.0f}",
            f"{r['peak_rss_mib']:.0f}",
            ratio(r, base, "peak_rss_mib"),
            f"{max(r['loadavg_1m']):.1f}",
            "-" if dprob is None else f"{dprob:.2e}",
            "-" if agree is None else f"{agree:.3f}",
        ]

    header = [
        "config", "M", "peer", "q/s", "engine vs peft-seq", "engine vs peft-mixed",
        "time / engine M=1", "CPU ms/q", "peak RSS MiB", "RSS / engine M=0", "load avg",
        "max abs dprob vs peft-seq", "argmax agree w/ peft-seq",
    ]  # fmt: skip
    rows = [([r["config"], str(r["m"]), r["peer"]], r) for r in results]
    return common.md_table(header, "lrl" + "r" * 10, rows, cells)


def targets(results: list[dict]) -> str:
    """The M=5 targets (benches/README.md), met or missed, where the run measured them."""
    lines = []

    def check(what: str, value: float, bound: float, at_least: bool) -> None:
        met = value >= bound if at_least else value <= bound
        sign = ">=" if at_least else "<="
        lines.append(f"{what}: {value:.2f} (target {sign} {bound:g}) {'met' if met else 'MISSED'}")

    base = find(results, BASE, 0, "engine")
    for config, speedup, growth in (("all", 3.0, 5.5), ("top8", 6.0, 2.3)):
        e5, e1 = find(results, config, 5, "engine"), find(results, config, 1, "engine")
        seq = find(results, config, 5, "peft-seq")
        if e5 and seq:
            check(f"{config} M=5: engine q/s / peft-seq q/s", e5["qps"] / seq["qps"], speedup, True)
        if e5 and e1:
            check(
                f"{config} M=5: engine time / engine M=1 time", e1["qps"] / e5["qps"], growth, False
            )
        if e5 and base:
            rss = e5["peak_rss_mib"] / base["peak_rss_mib"]
            check(f"{config} M=5: engine peak RSS / engine M=0", rss, 1.2, False)
        if e5 and seq:
            rss = e5["peak_rss_mib"] / seq["peak_rss_mib"]
            check(f"{config} M=5: engine peak RSS / peft-seq peak RSS", rss, 0.5, False)
    return "\n".join(f"- {line}" for line in lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=common.REPO.parent / "shared" / "data")
    ap.add_argument("--model", help="GGUF file (default: lora_ens_rs.default_model_path())")
    ap.add_argument("--n", type=int, default=200, help="questions (from the top of dev)")
    ap.add_argument("--members", default="1,5,10", help="ensemble sizes M (M=0 always runs)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="adapter configurations")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    ap.add_argument("--repeats", type=int, default=2, help="engine's timed passes; best kept")
    ap.add_argument("--peft-repeats", type=int, default=1, help="timed passes of PEFT peers")
    args = common.parse_args(ap, argv, worker)
    if args is None:  # a worker process
        return 0

    peers = common.parse_choices(ap, "peers", args.peers, PEERS)
    configs = common.parse_choices(ap, "configs", args.configs, CONFIGS)
    try:
        sizes = sorted({int(m) for m in args.members.split(",") if m.strip()} - {0})
    except ValueError:
        ap.error(f"--members takes ensemble sizes like 1,5,10, not {args.members!r}")
    if not sizes or sizes[0] < 0:
        ap.error("--members needs at least one size >= 1")

    import lora_ens_rs

    model_path = Path(args.model or lora_ens_rs.default_model_path()).resolve()
    tok = lora_ens_rs.Tokenizer.from_gguf(model_path)
    label_ids = [tok.encode(" " + c)[-1] for c in LABELS]
    questions = load_questions(args.data_dir, args.n)
    texts = [q["text"] for q in questions]
    # The engine's tokenizer, special tokens as the engine adds them: every peer sees these ids.
    ids = [tok.encode(t, add_special_tokens=True) for t in texts]
    print(
        f"{describe_prompts(ids)}, label ids {label_ids}, {args.threads} threads, "
        f"batch {args.batch_size}, M in {sizes}, configs {configs}, best of {args.repeats} "
        f"(engine) / {args.peft_repeats} (PEFT)",
        file=sys.stderr,
    )

    job = {
        "model_path": str(model_path),
        "ids": ids,
        "texts": texts,
        "label_ids": label_ids,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    results = []

    def run(config: str, members: list[str], peer: str, tmp: Path) -> None:
        print(f"running {config} M={len(members)} {peer} ...", file=sys.stderr, flush=True)
        repeats = args.repeats if peer == "engine" else args.peft_repeats
        spec = {**job, "config": config, "members": members, "peer": peer, "repeats": repeats}
        r = run_peer(spec, tmp, args.threads)
        results.append(r)
        msg = (
            f"error: {r['error']}"
            if "error" in r
            else f"{r['qps']:.2f} q/s, {r['peak_rss_mib']:.0f} MiB, load {r['load_s']:.1f} s"
        )
        print(f"  {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        print(f"writing {sizes[-1]} adapters per config ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        adapters = make_adapters(model_path, configs, sizes[-1], tmp / "adapters")
        print(f"  {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if "engine" in peers:
            run(BASE, [], "engine", tmp)
        for config in configs:
            for m in sizes:
                for peer in peers:
                    run(config, adapters[config][:m], peer, tmp)

    compare(results)
    engine = next((r for r in results if r["peer"] == "engine" and "info" in r), None)
    # common.notes() reads the engine build from "engine" and load averages from every row.
    md = (
        table(results)
        + "\n\n"
        + common.notes({"engine": engine or {}, **dict(enumerate(results))}, args.threads)
    )
    moved = [
        f"{r['config']} M={r['m']} {r['max_abs_dprob_base']:.3f}"
        for r in results
        if "max_abs_dprob_base" in r
    ]
    if moved:
        md += "\n- the members move the engine's probabilities from the base model's by up to: "
        md += ", ".join(moved)
    checks = targets(results)
    if checks:
        md += "\n\nTargets (benches/README.md):\n\n" + checks
    print(md)

    common.write_report(
        args.out,
        md,
        {
            "n": len(ids),
            "batch_size": args.batch_size,
            "threads": args.threads,
            "repeats": args.repeats,
            "peft_repeats": args.peft_repeats,
            "members": sizes,
            "configs": {c: {**LORA, "top_layers": CONFIGS[c]} for c in configs},
            "init_scale": INIT_SCALE,
            "label_ids": label_ids,
            "results": [{k: v for k, v in r.items() if k != "probs"} for r in results],
        },
    )
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
