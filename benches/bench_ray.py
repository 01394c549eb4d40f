"""Scoring on Ray Data vs single-process `infer`, side by side: 1 and 2 Ray actors (1 thread
each, `lora_ens_rs.ray.score_dataset`) against `lora-ens-rs infer --threads 2` and the engine
in-process with 1 and 2 threads, on the default model with M random LoRA members; the Ray
records are checked equal to infer's in the same run. Each peer runs in its own subprocess.
Run: `.venv/bin/python benches/bench_ray.py [--n 200 --members 5] --out benches/results/ray.md`.
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

PEERS = ("infer-2t", "engine-1t", "engine-2t", "ray-1x1t", "ray-2x1t")
THREADS = {"infer-2t": 2, "engine-1t": 1, "engine-2t": 2, "ray-1x1t": 1, "ray-2x1t": 1}
ACTORS = {"ray-1x1t": 1, "ray-2x1t": 2}


def worker(job_path: Path) -> None:
    """One peer: score the questions, write wall times, records and process statistics."""
    job = json.loads(job_path.read_text())
    peer, load_before = job["peer"], os.getloadavg()[0]
    result: dict = {"peer": peer}
    t0 = time.perf_counter()
    if peer == "infer-2t":
        script = Path(sys.executable).parent / "lora-ens-rs"
        args = [str(script), "infer", job["questions"], "--model", job["model"], "-q"]
        args += ["--scoring", job["scoring"], "--threads", "2", "-o", job["records"]]
        for a in job["adapters"]:
            args += ["--adapters", a]
        subprocess.run(args, check=True, timeout=3600)
        records = [json.loads(line) for line in Path(job["records"]).read_text().splitlines()]
    elif peer.startswith("engine"):
        import lora_ens_rs as le

        ens = le.Ensemble(job["model"], job["adapters"], threads=THREADS[peer])
        result["load_s"] = time.perf_counter() - t0
        questions = le.read_questions(job["questions"])
        records = ens.score_questions(questions, job["scoring"]).to_records()
    else:
        import ray

        import lora_ens_rs as le
        from lora_ens_rs import ray as ler

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        result["ray_init_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = ray.data.from_items(le.read_questions(job["questions"]))
        out = ler.score_dataset(
            ds, job["model"], job["adapters"], scoring=job["scoring"],
            concurrency=ACTORS[peer], num_cpus=1, threads=1, batch_size=job["ray_batch"],
        )  # fmt: skip
        records = [ler.record_from_row(r) for r in out.take_all()]
        ray.shutdown()
    result["wall_s"] = time.perf_counter() - t0
    result["n"] = len(records)
    result["records"] = records
    result.update(common.process_stats(load_before))
    job_path.with_suffix(".out.json").write_text(json.dumps(result))


def check(results: dict[str, dict]) -> list[str]:
    """Every peer's records equal infer's, by id (none missing, none twice, fields equal)."""
    lines = []
    want = {r["id"]: r for r in results["infer-2t"].get("records", [])}
    for peer, r in results.items():
        if "records" not in r or peer == "infer-2t":
            continue
        got = {x["id"]: x for x in r["records"]}
        same = len(got) == len(r["records"]) == len(want) and got == want
        lines.append(f"{peer}: records {'equal to' if same else 'DIFFER from'} infer's")
    return lines


def table(results: dict[str, dict], n: int) -> str:
    base = results["infer-2t"].get("wall_s")

    def cells(r: dict) -> list[str]:
        wall = r["wall_s"]
        return [
            f"{wall:.2f}",
            f"{n / wall:.2f}",
            f"{base / wall:.2f}" if base else "",
            f"{r['ray_init_s']:.2f}" if "ray_init_s" in r else "",
            f"{max(r['loadavg_1m']):.1f}",
        ]

    header = ["peer", "wall s", "q/s", "vs infer-2t", "ray.init s", "load avg"]
    return common.md_table(header, "lrrrrr", (([p], results[p]) for p in results), cells)


def overhead(results: dict[str, dict], n: int) -> str:
    """The Ray path's cost per question: 1 actor (1 thread) vs the engine in-process on 1 thread,
    both including the model load; ray.init is reported apart (once per job)."""
    ray1, eng1 = results.get("ray-1x1t", {}), results.get("engine-1t", {})
    if "wall_s" not in ray1 or "wall_s" not in eng1:
        return "overhead: not measured (a peer failed)"
    ms = 1000 * (ray1["wall_s"] - eng1["wall_s"]) / n
    return (
        f"Ray overhead: {ms:.1f} ms per question over {n} questions (1 actor vs in-process, "
        f"1 thread each, model load included; actor start-up is most of it), plus ray.init "
        f"{ray1['ray_init_s']:.1f} s once per job"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="questions (bundled CSQA train, 300)")
    ap.add_argument("--members", type=int, default=5, help="random LoRA members (top 8 layers)")
    ap.add_argument("--scoring", default="labels", choices=["labels", "choices"])
    ap.add_argument("--ray-batch", type=int, default=32, help="questions per actor call")
    ap.add_argument("--peers", default=",".join(PEERS))
    args = common.parse_args(ap, argv, worker)
    if args is None:
        return 0
    peers = common.parse_choices(ap, "peer", args.peers, PEERS)
    if "infer-2t" not in peers:
        ap.error("infer-2t is the reference: keep it in --peers")
    from bench_ensemble import make_adapters

    import lora_ens_rs as le
    from lora_ens_rs import data

    model = Path(le.default_model_path())
    questions = data.load("csqa-mini", "train", limit=args.n)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        qpath = tmp / "questions.jsonl"
        qpath.write_text("".join(json.dumps(q) + "\n" for q in questions))
        print(f"writing {args.members} adapters ...", file=sys.stderr, flush=True)
        adapters = make_adapters(model, ["top8"], args.members, tmp / "adapters")["top8"]
        for peer in peers:
            print(f"{peer} ...", file=sys.stderr, flush=True)
            job = {
                "peer": peer, "model": str(model), "adapters": adapters,
                "questions": str(qpath), "records": str(tmp / "infer.jsonl"),
                "scoring": args.scoring, "ray_batch": args.ray_batch,
            }  # fmt: skip
            results[peer] = common.run_worker(__file__, job, tmp / f"{peer}.json", THREADS[peer])
    n = len(questions)
    md = "\n".join(
        [
            f"Scoring {n} CommonsenseQA questions ({args.scoring}), SmolLM2-135M Q4_1 + "
            f"{args.members} random LoRA members (r=8, q/v, top 8 layers), {os.cpu_count()} cores",
            "",
            table(results, n),
            "",
            *(f"- {line}" for line in [*check(results), overhead(results, n)]),
            common.notes(results, 2),
        ]
    )
    print(md)
    summary = {
        "n": n,
        "members": args.members,
        "scoring": args.scoring,
        "results": {p: {k: v for k, v in r.items() if k != "records"} for p, r in results.items()},
    }
    common.write_report(args.out, md, summary)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
