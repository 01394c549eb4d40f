"""Training wall time of an M-member LoRA ensemble: lora-ens-rs (batched) vs PEFT (sequential).

Both peers train M label-scoring LoRA members (r=8, alpha=16, q_proj + v_proj, --layers) on the
first --n CommonsenseQA train questions, --epochs passes, --batch-size questions per member and
step, AdamW lr --lr without weight decay, no validation. Each runs in its own subprocess:

- lora-ens-rs: `train_ensemble` with all M members stacked on the batch axis in one loop and the
  trunk below the first adapted layer cached (its default), on the base loaded beforehand.
- peft-sequential: M runs one after another of `peft.get_peft_model(fp32 base, LoraConfig)`
  with a plain torch loop: left-padded prompts, `logits_to_keep=1`, cross-entropy over the
  label tokens' logits, AdamW on the adapter. One PEFT wrapper; before each member its adapter
  is re-initialised (A as lora-ens-rs draws member m's, from seed + m; B zero) with a fresh
  optimizer. Member m visits the questions in lora-ens-rs member m's order.

Training time of lora-ens-rs includes encoding the questions and filling the trunk cache; the
PEFT peer encodes before its clock starts. Load time is reported apart. Both peers start from the
same adapters and see the same batches, so their final losses agree up to float rounding. Run:
`.venv/bin/python benches/bench_training.py [--n 200 --members 5 --layers top8 --threads 2]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# benches/ is a plain directory: running a file in it puts it on sys.path, so siblings import.
import common

PEERS = ("lora-ens-rs", "peft-sequential")


def train_lora_ens_rs(job: dict, base) -> dict:
    """One batched `train_ensemble` run on the preloaded base (its `load_base` is bypassed)."""
    from lora_ens_rs.train import TrainConfig, loop

    loop.load_base = lambda path: base  # the base is loaded (and timed) by the worker
    if job.get("pass_cost") is not None:
        loop.PASS_COST_TOKENS = job["pass_cost"]
    config = TrainConfig(
        model=job["model_path"],
        members=job["members"],
        seed=job["seed"],
        scoring="labels",
        layers=job["layers"],
        targets=["q_proj", "v_proj"],
        rank=8,
        alpha=16.0,
        epochs=job["epochs"],
        lr=job["lr"],
        batch_size=job["batch_size"],
        threads=job["threads"],
        progress=False,
    )
    steps: list[float] = []
    t0 = time.perf_counter()
    result = loop.train_ensemble(
        config, train=job["questions"], val=[], callback=lambda _: steps.append(time.perf_counter())
    )
    train_s = time.perf_counter() - t0
    return {
        "train_s": train_s,
        "steps_per_member": len(steps),
        # Encoding, attaching the adapters, the trunk cache and the first step.
        "first_step_s": steps[0] - t0,
        "later_step_s": (steps[-1] - steps[0]) / max(1, len(steps) - 1),
        "pass_cost_tokens": loop.PASS_COST_TOKENS,
        "member_loss": result.history[-1]["train_loss"],
    }


def train_peft_sequential(job: dict, base) -> dict:
    """M single-adapter PEFT trainings, one after another."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from lora_ens_rs.train import encode_questions, parse_layers
    from lora_ens_rs.train.data import collate, epoch_order

    layers = parse_layers(job["layers"], base.n_layer)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=layers,
        lora_dropout=0.0,
    )
    model = get_peft_model(base.model, config)
    # lora-ens-rs draws member m's A matrices from one generator, module by module in
    # (layer, target) order: do the same here, so both peers start from the same adapters.
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            layer = int(re.search(r"\.layers\.(\d+)\.", name).group(1))
            found.append(((layer, name.rsplit(".", 1)[-1]), module))
    adapters = [module for _, module in sorted(found, key=lambda kv: kv[0])]
    params = [p for p in model.parameters() if p.requires_grad]
    examples = encode_questions(job["questions"], base.tokenizer, scoring="labels")
    n, bs = len(examples), job["batch_size"]
    steps = math.ceil(n / bs)

    def step_loss(rows: list[int]) -> torch.Tensor:
        chunk = [examples[i] for i in rows]
        batch = collate(chunk)  # label tokens, valid options, answers
        width = max(len(e.tokens) for e in chunk)
        ids = torch.tensor([[0] * (width - len(e.tokens)) + list(e.tokens) for e in chunk])
        mask = torch.tensor([[0] * (width - len(e.tokens)) + [1] * len(e.tokens) for e in chunk])
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),  # from 0 at each prompt's start
            logits_to_keep=1,
            use_cache=False,
        ).logits[:, -1]  # (B, vocab)
        scores = logits.gather(1, batch.label_tokens).masked_fill(~batch.valid, float("-inf"))
        return F.cross_entropy(scores, batch.answers)

    member_loss, member_s = [], []
    model.train()
    t0 = time.perf_counter()
    for m in range(job["members"]):
        t_m = time.perf_counter()
        seed = job["seed"] + m
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in adapters:
                torch.nn.init.kaiming_uniform_(
                    module.lora_A["default"].weight, a=math.sqrt(5), generator=generator
                )
                module.lora_B["default"].weight.zero_()
        optimizer = torch.optim.AdamW(params, lr=job["lr"], weight_decay=0.0)
        for epoch in range(job["epochs"]):
            order = epoch_order(n, seed, epoch)
            losses = []
            for step in range(steps):
                loss = step_loss([int(i) for i in order[step * bs : (step + 1) * bs]])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        member_loss.append(sum(losses) / len(losses))  # the last epoch's, as lora-ens-rs
        member_s.append(time.perf_counter() - t_m)
    return {
        "train_s": time.perf_counter() - t0,
        "steps_per_member": steps * job["epochs"],
        "member_s": member_s,
        "member_loss": member_loss,
    }


def worker(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    import torch
    import transformers

    from lora_ens_rs.train import load_base

    torch.set_num_threads(job["threads"])
    t0 = time.perf_counter()
    base = load_base(job["model_path"])
    load_s = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    run = train_lora_ens_rs if job["peer"] == "lora-ens-rs" else train_peft_sequential
    result = {
        "peer": job["peer"],
        "load_s": load_s,
        **run(job, base),
        **common.process_stats(load_before),
        "info": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": sys.modules["peft"].__version__ if "peft" in sys.modules else None,
        },
    }
    job_path.with_suffix(".out.json").write_text(json.dumps(result))


def table(results: dict, member_epochs: int) -> str:
    ours = results.get("lora-ens-rs", {})

    def cells(r: dict) -> list[str]:
        ratio = f"{r['train_s'] / ours['train_s']:.2f}x" if "train_s" in ours else "-"
        return [
            f"{r['train_s']:.2f}",
            f"{r['train_s'] / member_epochs:.2f}",
            str(r["steps_per_member"]),
            f"{sum(r['member_loss']) / len(r['member_loss']):.4f}",
            f"{r['load_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{max(r['loadavg_1m']):.1f}",
            ratio,
        ]

    header = [
        "peer", "train s", "s / member-epoch", "steps / member", "final train loss (mean of M)",
        "load s", "peak RSS MiB", "load avg", "time / lora-ens-rs time",
    ]  # fmt: skip
    return common.md_table(header, "l" + "r" * 8, [([n], r) for n, r in results.items()], cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("LORA_ENS_RS_DATA") or common.REPO.parent / "shared" / "data"
    ap.add_argument("--data-dir", type=Path, default=Path(default_data))
    ap.add_argument("--model", help="GGUF file (default: lora_ens_rs.default_model_path())")
    ap.add_argument("--n", type=int, default=200, help="questions (from the top of csqa train)")
    ap.add_argument("--members", type=int, default=5, help="M")
    ap.add_argument("--layers", default="top8", help="adapted layers: topN, all, ...")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8, help="questions per member and step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="member m uses seed + m")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each peer")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument(
        "--pass-cost",
        type=int,
        help="lora-ens-rs: price of an extra length-bucket pass in tokens (default: the "
        "library's PASS_COST_TOKENS; 1e9 runs each step in one pass)",
    )
    args = common.parse_args(ap, argv, worker)
    if args is None:  # a worker process
        return 0
    peers = common.parse_choices(ap, "peers", args.peers, PEERS)

    os.environ["LORA_ENS_RS_DATA"] = str(args.data_dir)
    import lora_ens_rs
    from lora_ens_rs import data
    from lora_ens_rs.train import load_base

    model_path = Path(args.model or lora_ens_rs.default_model_path()).resolve()
    questions = data.load("csqa", "train", limit=args.n)
    t0 = time.perf_counter()
    load_base(model_path)  # writes the dequantized cache once: both workers then load from it
    print(
        f"{len(questions)} questions, M={args.members}, layers {args.layers}, "
        f"{args.epochs} epoch(s), batch {args.batch_size}/member, lr {args.lr:g}, "
        f"{args.threads} threads; base cache ready in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    job = {
        "model_path": str(model_path),
        "questions": questions,
        **{k: getattr(args, k) for k in ("members", "layers", "epochs", "lr", "seed", "threads")},
        "batch_size": args.batch_size,
        "pass_cost": args.pass_cost,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for peer in peers:
            print(f"running {peer} ...", file=sys.stderr, flush=True)
            out = common.run_worker(
                __file__, {**job, "peer": peer}, Path(tmp) / f"{peer}.json", args.threads
            )
            results[peer] = {"peer": peer, **out}
            r = results[peer]
            msg = f"error: {r['error']}" if "error" in r else f"{r['train_s']:.1f} s training"
            print(f"  {peer}: {msg}", file=sys.stderr, flush=True)

    md = table(results, args.members * args.epochs) + "\n\n" + common.notes(results, args.threads)
    ours, peft = results.get("lora-ens-rs", {}), results.get("peft-sequential", {})
    if "first_step_s" in ours:
        md += (
            f"\n- lora-ens-rs: first step {ours['first_step_s']:.1f} s (encoding, adapters, trunk "
            f"cache), later steps {ours['later_step_s']:.2f} s for {args.members} members "
            f"(length buckets, {ours['pass_cost_tokens']} tokens a pass)"
        )
    if "train_s" in peft:
        peft_step = peft["train_s"] / (args.members * peft["steps_per_member"])
        md += f"\n- peft-sequential: {peft_step:.2f} s a member-step"
    if "member_loss" in ours and "member_loss" in peft:
        diff = max(
            abs(a - b) for a, b in zip(ours["member_loss"], peft["member_loss"], strict=True)
        )
        md += (
            f"\n- final train loss per member (last epoch's mean): lora-ens-rs "
            f"{[round(x, 4) for x in ours['member_loss']]}, peft-sequential "
            f"{[round(x, 4) for x in peft['member_loss']]}; max |difference| {diff:.2e}. Same "
            "initial adapters and data order, so they differ only by float rounding (batched "
            "members, cached trunk, right vs left padding), which training amplifies"
        )
        speedup = peft["train_s"] / ours["train_s"]
        if args.layers.strip().lower() == "top8":
            verdict = "met" if speedup >= 2 else "MISSED"
            md += f"\n\ntarget >= 2x for top-8-layer adapters: {verdict} ({speedup:.2f}x)"
        else:
            md += f"\n\ntarget >= 2x for top-8-layer adapters: not measured (layers {args.layers})"
    print(md)
    summary = {k: v for k, v in job.items() if k != "questions"}
    common.write_report(args.out, md, {**summary, "n": len(questions), "results": results})
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
