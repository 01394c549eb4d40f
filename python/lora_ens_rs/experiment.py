"""The paper's experiment grid: for each in-domain task and scoring mode, the zero-shot base,
one LoRA (each member alone), the M-member LoRA ensemble and MC dropout, for each regulariser
setting (none, weight decay, KL to the base, early stopping); OOD detection on other datasets.

    lora-ens-rs experiment --preset small --out reports/small  # 46 min on 2 cores
    lora-ens-rs experiment --preset medium --out reports/medium  # docs/results.md
    lora_ens_rs.experiment.run(PRESETS["small"], out="reports/small")

Training is :func:`lora_ens_rs.train.train_ensemble` (torch); every evaluation runs in the Rust
engine on the exported adapters, with :mod:`lora_ens_rs.evaluate`'s metrics. Writes
``results.json``, ``results.md`` and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lora_ens_rs import compare, data, metrics
from lora_ens_rs.atomic import write_file
from lora_ens_rs.cli import EXIT_OK, add_shared_options, run_subcommand, subcommand_about
from lora_ens_rs.ensemble import Ensemble
from lora_ens_rs.errors import InputError, MissingFileError
from lora_ens_rs.evaluate import (
    answers_of,
    member_metrics,
    ood_detection,
    single_model_ood_detection,
)

#: Test split of each dataset family (CommonsenseQA's test set has no answers: dev it is).
TEST_SPLIT = {"csqa": "dev", "csqa-mini": "dev", "mmlu": "test"}


@dataclass
class ExperimentConfig:
    """One experiment grid. ``settings`` are TrainConfig overrides, each with a ``name``."""

    tasks: list[str] = field(default_factory=lambda: ["csqa", "obqa", "arc-easy", "arc-challenge"])
    scorings: list[str] = field(default_factory=lambda: ["labels", "choices"])
    settings: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "none"},
            {"name": "wd=1e2", "weight_decay": 1e2},
            {"name": "wd=1e3", "weight_decay": 1e3},
            {"name": "kl=0.1", "kl": 0.1},
            {"name": "kl=1", "kl": 1.0},
            {"name": "early-stop", "early_stopping": 1},
        ]
    )
    #: OOD test sets per in-domain task (dataset names, test splits).
    ood: dict[str, list[str]] = field(
        default_factory=lambda: {
            "csqa": ["mmlu:stem", "mmlu:humanities", "mmlu:social_sciences", "mmlu:other", "obqa"],
            "obqa": ["mmlu:stem", "mmlu:humanities", "mmlu:social_sciences", "mmlu:other", "csqa"],
        }
    )
    model: str | None = None
    members: int = 5
    mc_dropout_samples: int = 5
    mc_dropout_p: float = 0.1
    train_limit: int | None = None
    test_limit: int | None = None
    ood_limit: int | None = None
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 4
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )
    layers: str = "all"
    normalization: str = "per_token"
    seed: int = 0
    threads: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown experiment settings {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # Finishes on a 2-core CPU in under an hour: two tasks, choice scoring, top-layer adapters
    # (trunk cached), a few hundred questions.
    "small": {
        "tasks": ["arc-easy", "csqa"],
        "scorings": ["choices"],
        "settings": [
            {"name": "none"},
            {"name": "wd=1e2", "weight_decay": 1e2},
            {"name": "kl=1", "kl": 1.0},
            {"name": "early-stop", "early_stopping": 1},
        ],
        "ood": {"csqa": ["mmlu:stem", "obqa"], "arc-easy": ["mmlu:stem", "obqa"]},
        "members": 5,
        "train_limit": 250,
        "test_limit": 150,
        "ood_limit": 100,
        "epochs": 2,
        "lr": 1e-3,
        "batch_size": 4,
        "layers": "top4",
        "targets": ["q_proj", "v_proj", "up_proj", "down_proj"],
    },
    # The regime the paper studies, sized for about 1.5 hours on a quiet 2-core CPU (docs/
    # results.md): four tasks, members trained 3 epochs at a high learning rate until single
    # members grow over-confident ("none"), against early stopping; every ensemble-vs-member
    # difference with a paired bootstrap interval; temperature scaling and MC dropout baselines.
    "medium": {
        "tasks": ["arc-easy", "arc-challenge", "csqa", "obqa"],
        "scorings": ["choices"],
        "settings": [{"name": "none"}, {"name": "early-stop", "early_stopping": 1}],
        "ood": {"csqa": ["mmlu:stem"], "obqa": ["mmlu:stem"]},
        "members": 5,
        "train_limit": 300,
        "test_limit": 400,
        "ood_limit": 200,
        "epochs": 3,
        "lr": 1e-3,
        "batch_size": 4,
        "layers": "top4",
        "targets": ["q_proj", "v_proj", "up_proj", "down_proj"],
    },
    # The paper's grid (GPU-sized).
    "full": {},
    # A few questions and one epoch: checks that every table and plot is produced.
    "smoke": {
        "tasks": ["csqa"],
        "scorings": ["labels", "choices"],
        "settings": [{"name": "none"}, {"name": "wd=1e2", "weight_decay": 1e2}],
        "ood": {"csqa": ["obqa"]},
        "members": 2,
        "mc_dropout_samples": 2,
        "train_limit": 12,
        "test_limit": 8,
        "ood_limit": 8,
        "epochs": 1,
        "lr": 1e-3,
        "layers": "top1",
        "targets": ["q_proj", "v_proj"],
    },
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _test_split(task: str) -> str:
    family = task.partition(":")[0]
    return TEST_SPLIT.get(task, TEST_SPLIT.get(family, "test"))


def _train_split(task: str) -> str:
    return "val" if task.partition(":")[0] == "mmlu" else "train"


def run(config: ExperimentConfig | dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Run the grid; returns the results (also ``out/results.json`` and ``out/results.md``).

    Args:
        config: an :class:`ExperimentConfig` or a dict of its fields.
        out: directory for trained ensembles (``runs/``), results and plots.
    """
    from lora_ens_rs.train import TrainConfig, mc_dropout_probs, train_ensemble

    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = cfg.model
    if model is None:
        from lora_ens_rs import default_model_path

        model = default_model_path()
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    t_start = time.perf_counter()
    base_ens = Ensemble(model, threads=cfg.threads)
    scores_dir = out / "scores"
    scores_dir.mkdir(exist_ok=True)
    for task in cfg.tasks:
        # The validation questions training holds out (early stopping), also where the
        # temperature-scaling baseline fits its temperatures: never the test questions.
        train_q, val_q = data.split(data.load(task, _train_split(task), limit=cfg.train_limit))
        test_q = data.load(task, _test_split(task), limit=cfg.test_limit)
        ood_sets = {
            name: data.load(name, _test_split(name), limit=cfg.ood_limit)
            for name in cfg.ood.get(task, [])
        }
        answers = answers_of(test_q, task)
        val_answers = answers_of(val_q, task)
        for scoring in cfg.scorings:
            key = f"{task}/{scoring}"
            _log(f"== {key}: {len(train_q)} training, {len(val_q)} validation, "
                 f"{len(test_q)} test questions")  # fmt: skip
            b = base_ens.score_questions(test_q, scoring, normalization=cfg.normalization)
            b_ood = {n: base_ens.score_questions(q, scoring, normalization=cfg.normalization)
                     for n, q in ood_sets.items()}  # fmt: skip
            b_unc = compare.uncertainty(b.probs, b.n_options)
            rows.append(
                _row(task, scoring, "-", "zero-shot base", metrics.summary(b.probs, answers))
                | {"aurc": metrics.aurc(b.probs, answers, b_unc)}
                | _ood({n: single_model_ood_detection(b, o) for n, o in b_ood.items()})
            )
            curves[key] = {"zero-shot base": b.probs}
            selective: dict[str, tuple[np.ndarray, np.ndarray]] = {
                "zero-shot base": (b.probs, b_unc)
            }
            # The grid's training settings are the ExperimentConfig fields named like
            # TrainConfig fields (model, members, epochs, lr, ...).
            common = {name: getattr(cfg, name) for name in _train_fields(cfg)}
            common.update(model=model, scoring=scoring, overwrite=True)
            for setting in cfg.settings:
                name = setting["name"]
                overrides = {k: v for k, v in setting.items() if k != "name"}
                stem = f"{task.replace(':', '_')}-{scoring}-{name}"
                run_dir = out / "runs" / stem
                _log(f"-- {key} [{name}]: training {cfg.members} members")
                result = train_ensemble(
                    TrainConfig(**{**common, **overrides, "out": str(run_dir)}),
                    train=train_q,
                    val=val_q,
                )
                ens = Ensemble(model, run_dir, threads=cfg.threads)
                s = ens.score_questions(test_q, scoring, normalization=cfg.normalization)
                v = ens.score_questions(val_q, scoring, normalization=cfg.normalization)
                s_ood = {n: ens.score_questions(q, scoring, normalization=cfg.normalization)
                         for n, q in ood_sets.items()}  # fmt: skip
                m = member_metrics(s, answers)
                ood = {n: ood_detection(s, o) for n, o in s_ood.items()}
                temps, scaled = compare.temperature_scale(v, val_answers, s)
                ts = [metrics.summary(scaled[:, j], answers) for j in range(cfg.members)]
                unc = {
                    "one": compare.uncertainty(s.member_probs[:, 0], s.n_options),
                    "ts": compare.uncertainty(scaled[:, 0], s.n_options),
                    "ens": compare.uncertainty(s.probs, s.n_options),
                }
                rows.append(
                    _row(task, scoring, name, "one LoRA (mean of members)",
                         m["member_mean"] | _sd(m["members"]))
                    | {"aurc": _mean_aurc(s.member_probs, answers, s.n_options)}
                    | _ood({n: d["one_member"] for n, d in ood.items()})
                )  # fmt: skip
                rows.append(
                    _row(task, scoring, name, "one LoRA + temperature (mean of members)",
                         _mean(ts) | _sd(ts))
                    | {"aurc": _mean_aurc(scaled, answers, s.n_options), "temperatures": temps}
                )  # fmt: skip
                rows.append(
                    _row(task, scoring, name, f"ensemble (M={cfg.members})", m["ensemble"])
                    | {"aurc": metrics.aurc(s.probs, answers, unc["ens"]),
                       "aurc_mi": metrics.aurc(s.probs, answers, s.mutual_information),
                       "gains": compare.gains(s.probs, s.member_probs, answers),
                       "agreement": float(s.agreement.mean()),
                       "mutual_information": float(s.mutual_information.mean())}
                    | _ood({n: d["ensemble"] for n, d in ood.items()})
                )  # fmt: skip
                np.savez_compressed(
                    scores_dir / f"{stem}.npz", answers=answers, n_options=s.n_options,
                    base=b.probs, members=s.member_probs, ensemble=s.probs,
                    scaled_members=scaled, mutual_information=s.mutual_information,
                )  # fmt: skip
                curves[f"{key}/{name}"] = {
                    "one LoRA": s.member_probs[:, 0],
                    f"ensemble (M={cfg.members})": s.probs,
                    "history": result.history,
                }
                if name == cfg.settings[0]["name"]:
                    curves[key]["one LoRA"] = s.member_probs[:, 0]
                    curves[key]["one LoRA + temperature"] = scaled[:, 0]
                    curves[key][f"ensemble (M={cfg.members})"] = s.probs
                    selective |= {
                        "one LoRA": (s.member_probs[:, 0], unc["one"]),
                        "one LoRA + temperature": (scaled[:, 0], unc["ts"]),
                        f"ensemble (M={cfg.members})": (s.probs, unc["ens"]),
                        f"ensemble (M={cfg.members}), by MI": (s.probs, s.mutual_information),
                    }
            if cfg.mc_dropout_samples > 0:
                _log(f"-- {key} [MC dropout p={cfg.mc_dropout_p}]: training one member")
                mc_cfg = {**common, "members": 1, "dropout": cfg.mc_dropout_p, "out": None}
                result = train_ensemble(TrainConfig(**mc_cfg), train=train_q, val=val_q)
                mc = mc_dropout_probs(result, test_q, cfg.mc_dropout_samples, seed=cfg.seed)
                mc_unc = compare.uncertainty(mc.mean(1), s.n_options)
                rows.append(
                    _row(task, scoring, cfg.settings[0]["name"],
                         f"MC dropout (T={cfg.mc_dropout_samples})",
                         metrics.summary(mc.mean(1), answers))
                    | {"aurc": metrics.aurc(mc.mean(1), answers, mc_unc)}
                )  # fmt: skip
                curves[key]["MC dropout"] = mc.mean(1)
                selective["MC dropout"] = (mc.mean(1), mc_unc)
            curves[key]["answers"] = answers
            curves[key]["selective"] = compare.selective(selective, answers)
    results = {
        "config": dataclasses.asdict(cfg),
        "model": str(model),
        "seconds": time.perf_counter() - t_start,
        "rows": rows,
    }
    write_file(out / "results.json", json.dumps(results, indent=2) + "\n")
    images = _plots(out, curves, rows, cfg)
    write_file(out / "results.md", _markdown(results, images))
    _log(f"results: {out / 'results.md'} ({results['seconds'] / 60:.1f} min)")
    return results


def _train_fields(cfg: ExperimentConfig) -> list[str]:
    """The fields of ``cfg`` that are also :class:`TrainConfig` fields."""
    from lora_ens_rs.train.config import TrainConfig

    train = {f.name for f in dataclasses.fields(TrainConfig)}
    return [f.name for f in dataclasses.fields(cfg) if f.name in train]


def _mean(ms: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([x[k] for x in ms])) for k in ms[0]}


def _sd(ms: list[dict[str, float]]) -> dict[str, float]:
    """Spread over members: ``{metric}_sd`` of each metric."""
    return {f"{k}_sd": float(np.std([x[k] for x in ms])) for k in ms[0]}


def _mean_aurc(member_probs: np.ndarray, answers: np.ndarray, n_options: np.ndarray) -> float:
    """Mean over members of each member's AURC, ordered by its own entropy."""
    return float(np.mean([
        metrics.aurc(member_probs[:, j], answers,
                     compare.uncertainty(member_probs[:, j], n_options))
        for j in range(member_probs.shape[1])
    ]))  # fmt: skip


def _row(task: str, scoring: str, setting: str, model: str, m: dict[str, float]) -> dict[str, Any]:
    return {"task": task, "scoring": scoring, "setting": setting, "model": model, **m}


def _ood(per_set: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """``ood``: per OOD set, AUROC/AUPR by each score (nothing without OOD sets)."""
    return {"ood": per_set} if per_set else {}


def _plots(
    out: Path, curves: dict[str, Any], rows: list[dict[str, Any]], cfg: ExperimentConfig
) -> list[str]:
    from lora_ens_rs import plots

    images: list[str] = []
    for key, c in curves.items():
        if "answers" not in c:
            continue
        stem = key.replace("/", "-").replace(":", "_")
        models = {k: v for k, v in c.items() if k not in ("answers", "selective")}
        for name, fig in (
            (f"reliability-{stem}.png", plots.reliability_diagram(models, c["answers"])),
            (f"wrong-confidence-{stem}.png", plots.confidence_when_wrong(models, c["answers"])),
            (f"risk-coverage-{stem}.png", plots.risk_coverage(c["selective"])),
        ):
            plots.save(fig, out / name)
            images.append(name)
        points = []
        for setting in cfg.settings:
            sel = [r for r in rows if f"{r['task']}/{r['scoring']}" == key
                   and r["setting"] == setting["name"]]  # fmt: skip
            single = next((r for r in sel if r["model"].startswith("one LoRA")), None)
            ens = next((r for r in sel if r["model"].startswith("ensemble")), None)
            if single and ens:
                points.append({"label": setting["name"], "single": single, "ensemble": ens})
        if points:
            name = f"accuracy-vs-ece-{stem}.png"
            plots.save(plots.accuracy_vs_ece(points), out / name)
            images.append(name)
        history = curves.get(f"{key}/{cfg.settings[0]['name']}", {}).get("history") or []
        flat = [
            {"member": m, "epoch": h["epoch"], **v}
            for h in history
            for m, v in enumerate(h.get("val") or [])
        ]
        if flat:
            name = f"training-{stem}.png"
            plots.save(plots.training_curves(flat), out / name)
            images.append(name)
    return images


def _fmt(r: dict[str, Any], k: str) -> str:
    sd = r.get(f"{k}_sd")
    return f"{r[k]:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def _gain(g: dict[str, float]) -> str:
    star = "*" if g["low"] > 0 or g["high"] < 0 else ""
    return f"{g['estimate']:+.3f}{star} [{g['low']:+.3f}, {g['high']:+.3f}]"


def _markdown(results: dict[str, Any], images: list[str]) -> str:
    cfg = results["config"]
    lines = [
        "# LoRA ensemble experiments",
        "",
        f"Model `{Path(results['model']).name}`, M = {cfg['members']} members, "
        f"{cfg['epochs']} epochs, lr {cfg['lr']}, rank {cfg['rank']}, layers {cfg['layers']}, "
        f"targets {', '.join(cfg['targets'])}; {results['seconds'] / 60:.1f} min in all. "
        "One LoRA = mean ± sd over the members, each scored alone; + temperature = each member "
        "with its temperature fitted on the validation questions. AURC: area under the "
        "risk-coverage curve, answering by ascending entropy (lower is better).",
        "",
        "| task | scoring | setting | model | accuracy | NLL | ECE | Brier | AURC |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['task']} | {r['scoring']} | {r['setting']} | {r['model']} "
            f"| {_fmt(r, 'accuracy')} | {_fmt(r, 'nll')} | {_fmt(r, 'ece')} | {_fmt(r, 'brier')} "
            f"| {r['aurc']:.3f} |"
        )
    lines += [
        "",
        "## Ensemble minus mean member",
        "",
        "Same questions, same members; 95% paired bootstrap interval over test questions (2000 "
        "resamples). Negative is better for NLL, ECE and Brier; `*` marks an interval that "
        "excludes 0. Agreement: share of member votes that agree with the ensemble's answer; MI: "
        "mean mutual information (nats).",
        "",
        "| task | scoring | setting | accuracy | NLL | ECE | Brier | agreement | MI |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        if "gains" in r:
            g = r["gains"]
            cells = " | ".join(_gain(g[k]) for k in ("accuracy", "nll", "ece", "brier"))
            lines.append(f"| {r['task']} | {r['scoring']} | {r['setting']} | {cells} "
                         f"| {r['agreement']:.3f} | {r['mutual_information']:.4f} |")  # fmt: skip
    ood_rows = [r for r in results["rows"] if r.get("ood")]
    if ood_rows:
        lines += ["", "## OOD detection (AUROC)", "",
                  "| task | scoring | setting | model | OOD set | max prob | entropy | MI |",
                  "|---|---|---|---|---|---:|---:|---:|"]  # fmt: skip
        for r in ood_rows:
            for name, m in r["ood"].items():
                cell = [f"{m[s]['auroc']:.3f}" if s in m else "-"
                        for s in ("max_probability", "entropy", "mutual_information")]  # fmt: skip
                lines.append(
                    f"| {r['task']} | {r['scoring']} | {r['setting']} | {r['model']} | {name} | "
                    + " | ".join(cell)
                    + " |"
                )
    lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in images]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``lora-ens-rs experiment``."""
    ap = argparse.ArgumentParser(
        prog="lora-ens-rs experiment", description=subcommand_about("experiment")
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--config", type=Path, help="JSON file of ExperimentConfig fields (override)")
    add_shared_options(ap, ["model"])
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    add_shared_options(ap, ["threads"])
    return ap


def main(argv: list[str]) -> int:
    """``lora-ens-rs experiment``: run a preset (optionally overridden by a JSON config file);
    returns the exit code (0, 1 on an error, 2 on a usage error)."""
    return run_subcommand(parser(), _main, argv)


def _main(args: argparse.Namespace) -> int:
    settings = dict(PRESETS[args.preset])
    if args.config:
        try:
            settings.update(json.loads(args.config.read_text()))
        except FileNotFoundError:
            raise MissingFileError(
                f"experiment config {str(args.config)!r} does not exist"
            ) from None
        except (OSError, ValueError) as e:
            raise InputError(f"experiment config {str(args.config)!r}: {e}") from e
    if args.model is not None:
        settings["model"] = args.model
    if args.threads is not None:
        settings["threads"] = args.threads
    run(ExperimentConfig.from_dict(settings), args.out)
    return EXIT_OK
