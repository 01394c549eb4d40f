"""Evaluate an ensemble on a labelled dataset: each member, the ensemble and the zero-shot base
on the same questions (accuracy, NLL, Brier, ECE), the ensemble's gain over the mean member with
paired bootstrap intervals, temperature-scaled members (with validation questions), selective
prediction (AURC), member disagreement, and out-of-distribution detection (AUROC / AUPR by max
probability, entropy and mutual information); optionally a report directory with
``metrics.json``, ``report.md`` and plots.

    lora-ens-rs eval --adapters runs/csqa --data dev.jsonl --ood mmlu.csv --report reports/csqa
    lora_ens_rs.evaluate.evaluate(ens, questions, ood_questions=..., report_dir=...)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_ens_rs import compare, metrics
from lora_ens_rs.atomic import write_file
from lora_ens_rs.ensemble import Ensemble, Progress
from lora_ens_rs.errors import InputError
from lora_ens_rs.results import Scores

#: OOD scores, each higher for "more out of distribution": 1 - max probability, and entropy
#: and mutual information divided by ln K (K options of the question).
OOD_SCORES = ("max_probability", "entropy", "mutual_information")


def answers_of(questions: Sequence[dict[str, Any]], what: str) -> np.ndarray:
    """The answer indices; every question must have one."""
    missing = [q["id"] for q in questions if q.get("answer") is None]
    if missing:
        raise InputError(
            f"{what}: {len(missing)} questions have no answer (first: {missing[0]!r}); "
            "evaluation needs labelled data"
        )
    return np.array([q["answer"] for q in questions], dtype=np.int64)


def single_scores(probs: np.ndarray, n_options: np.ndarray) -> dict[str, np.ndarray]:
    """OOD scores of one predictive distribution (N, K) (mutual information is 0). Entropy is
    divided by ln K_i so questions with different numbers of options compare (a 5-way
    question's entropy is otherwise higher than a 4-way one's, whatever the model's doubt)."""
    return {
        "max_probability": 1.0 - np.clip(probs.astype(np.float64), 0.0, 1.0).max(1),
        "entropy": compare.uncertainty(probs, n_options),
        "mutual_information": np.zeros(len(probs)),
    }


def ensemble_scores(s: Scores) -> dict[str, np.ndarray]:
    """OOD scores of an ensemble's predictions; entropy and MI divided by ln K_i."""
    norm = np.log(np.maximum(s.n_options.astype(np.float64), 2.0))
    return {
        "max_probability": 1.0 - s.confidence.astype(np.float64),
        "entropy": s.entropy.astype(np.float64) / norm,
        "mutual_information": s.mutual_information.astype(np.float64) / norm,
    }


def ood_metrics(
    in_scores: dict[str, np.ndarray], out_scores: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """AUROC and AUPR of each OOD score (in-distribution vs out-of-distribution)."""
    out: dict[str, dict[str, float]] = {}
    for name in OOD_SCORES:
        if np.all(in_scores[name] == 0) and np.all(out_scores[name] == 0):
            continue  # mutual information of a single model: no signal, not reported
        out[name] = {
            "auroc": metrics.ood_auroc(in_scores[name], out_scores[name]),
            "aupr": metrics.ood_aupr(in_scores[name], out_scores[name]),
        }
    return out


def member_metrics(s: Scores, answers: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """The ensemble's metrics, each member's, and the members' mean.

    Returns:
        ``{"ensemble": {...}, "members": [{...}, ...], "member_mean": {...}}``, each a
        :func:`lora_ens_rs.metrics.summary`.
    """
    members = [
        metrics.summary(s.member_probs[:, m], answers, n_bins)
        for m in range(s.member_probs.shape[1])
    ]
    return {
        "ensemble": metrics.summary(s.probs, answers, n_bins),
        "members": members,
        "member_mean": {k: float(np.mean([m[k] for m in members])) for k in members[0]},
    }


def ood_detection(in_s: Scores, out_s: Scores) -> dict[str, dict[str, dict[str, float]]]:
    """OOD detection by the ensemble and by its first member alone, from its scores of
    in-distribution and out-of-distribution questions: ``{"ensemble": ..., "one_member": ...}``
    (:func:`ood_metrics` of each)."""
    return {
        "ensemble": ood_metrics(ensemble_scores(in_s), ensemble_scores(out_s)),
        "one_member": ood_metrics(
            single_scores(in_s.member_probs[:, 0], in_s.n_options),
            single_scores(out_s.member_probs[:, 0], out_s.n_options),
        ),
    }


def single_model_ood_detection(in_s: Scores, out_s: Scores) -> dict[str, dict[str, float]]:
    """OOD detection by one model's predictive distribution (``probs``), such as the zero-shot
    base's (:func:`ood_metrics`; mutual information is left out)."""
    return ood_metrics(
        single_scores(in_s.probs, in_s.n_options), single_scores(out_s.probs, out_s.n_options)
    )


def evaluate(
    ensemble: Ensemble,
    questions: Sequence[dict[str, Any]],
    *,
    ood_questions: Sequence[dict[str, Any]] | None = None,
    val_questions: Sequence[dict[str, Any]] | None = None,
    base: Ensemble | None = None,
    mc_dropout: np.ndarray | None = None,
    scoring: str | None = None,
    normalization: str | None = None,
    n_bins: int = 15,
    batch_size: int = 16,
    progress: Progress = False,
    report_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of each member, the ensemble and (optionally) the base model on ``questions``.

    Args:
        ensemble: the ensemble to evaluate (M >= 1 members).
        questions: labelled records (:func:`lora_ens_rs.read_questions`).
        ood_questions: records of another distribution, for OOD detection (answers unused).
        val_questions: labelled validation questions (not the test ones): each member's
            temperature is fitted there, and the temperature-scaled members are reported.
        base: the zero-shot base model (an :class:`Ensemble` without adapters), scored alike.
        mc_dropout: (N, T, K) probabilities of T MC-dropout samples on ``questions``, to
            report as another ensemble (see ``lora_ens_rs.train``).
        scoring, normalization: as :meth:`Ensemble.score_questions`.
        n_bins: ECE bins.
        batch_size: questions per forward pass.
        progress: ``True`` for progress bars on stderr.
        report_dir: write ``metrics.json``, ``report.md`` and PNG plots there.

    Returns:
        A dict (also ``metrics.json``): ``ensemble``, ``members`` (list), ``member_mean``,
        ``base``, ``mc_dropout``, ``temperature`` metric dicts, ``gains`` (ensemble minus
        mean member, with 95% paired bootstrap intervals), ``selective`` (AURC per model),
        ``disagreement``, ``ood``, and the settings.

    Raises:
        InputError: no questions, a question without an answer, or an empty ensemble.
    """
    if not questions:
        raise InputError("no questions to evaluate")
    if ensemble.n_members == 0:
        raise InputError("the ensemble has no members: pass adapters (the base is `base=`)")
    answers = answers_of(questions, "data")
    mode, norm = ensemble.scoring_defaults()
    mode, norm = scoring or mode, normalization or norm
    t0 = time.perf_counter()
    s = ensemble.score_questions(
        questions, mode, normalization=norm, batch_size=batch_size, progress=progress
    )
    result: dict[str, Any] = {
        "n_questions": len(questions),
        "scoring": {"mode": mode, "normalization": norm if mode == "choices" else None},
        "n_bins": n_bins,
        "members_names": s.members,
        **member_metrics(s, answers, n_bins),
        "disagreement": {
            "mean_agreement": float(s.agreement.mean()),
            "mean_mutual_information": float(s.mutual_information.mean()),
            "mean_entropy": float(s.entropy.mean()),
            "mean_expected_entropy": float(s.expected_entropy.mean()),
        },
    }
    result["gains"] = compare.gains(s.probs, s.member_probs, answers, n_bins=n_bins)
    curves: dict[str, np.ndarray] = {"ensemble": s.probs, "one member": s.member_probs[:, 0]}
    ranked = {
        "one member": (s.member_probs[:, 0], compare.uncertainty(s.member_probs[:, 0],
                                                                 s.n_options)),
        "ensemble (entropy)": (s.probs, compare.uncertainty(s.probs, s.n_options)),
        "ensemble (MI)": (s.probs, s.mutual_information.astype(np.float64)),
    }  # fmt: skip
    base_scores = None
    if base is not None:
        base_scores = base.score_questions(
            questions, mode, normalization=norm, batch_size=batch_size, progress=progress
        )
        result["base"] = metrics.summary(base_scores.probs, answers, n_bins)
        curves = {"zero-shot base": base_scores.probs, **curves}
        ranked = {"zero-shot base": (base_scores.probs, compare.uncertainty(
            base_scores.probs, base_scores.n_options)), **ranked}  # fmt: skip
    if val_questions:
        v = ensemble.score_questions(
            val_questions, mode, normalization=norm, batch_size=batch_size, progress=progress
        )
        temps, scaled = compare.temperature_scale(v, answers_of(val_questions, "validation"), s)
        ts = [metrics.summary(scaled[:, m], answers, n_bins) for m in range(scaled.shape[1])]
        result["temperature"] = {
            "n_val_questions": len(val_questions),
            "temperatures": temps,
            "member_mean": {k: float(np.mean([t[k] for t in ts])) for k in ts[0]},
            "ensemble_of_scaled": metrics.summary(scaled.mean(1), answers, n_bins),
        }
        curves["one member + temperature"] = scaled[:, 0]
        ranked["one member + temperature"] = (
            scaled[:, 0], compare.uncertainty(scaled[:, 0], s.n_options))  # fmt: skip
    if mc_dropout is not None:
        mc = np.asarray(mc_dropout, dtype=np.float64)
        if mc.ndim != 3 or mc.shape[0] != len(questions):
            raise InputError(f"mc_dropout must be (N, T, K) with N = {len(questions)}")
        result["mc_dropout"] = metrics.summary(mc.mean(1), answers, n_bins)
        curves["MC dropout"] = mc.mean(1)
    selective = compare.selective(ranked, answers)
    result["selective"] = {
        name: {k: v for k, v in c.items() if k not in ("coverage", "accuracy")}
        for name, c in selective.items()
    }
    if ood_questions:
        o = ensemble.score_questions(
            ood_questions, mode, normalization=norm, batch_size=batch_size, progress=progress
        )
        result["ood"] = {"n_questions": len(ood_questions), **ood_detection(s, o)}
        if base is not None and base_scores is not None:
            ob = base.score_questions(
                ood_questions, mode, normalization=norm, batch_size=batch_size, progress=progress
            )
            result["ood"]["base"] = single_model_ood_detection(base_scores, ob)
    result["seconds"] = time.perf_counter() - t0
    if report_dir is not None:
        write_report(Path(report_dir), result, curves, answers, n_bins, selective)
    return result


def write_report(
    out: Path,
    result: dict[str, Any],
    curves: dict[str, np.ndarray],
    answers: np.ndarray,
    n_bins: int,
    selective: dict[str, dict[str, Any]] | None = None,
) -> None:
    """``metrics.json``, ``report.md`` and the plots into ``out`` (each file atomically)."""
    from lora_ens_rs import plots

    out.mkdir(parents=True, exist_ok=True)
    write_file(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    images = {
        "reliability.png": plots.reliability_diagram(curves, answers, n_bins),
        "confidence_when_wrong.png": plots.confidence_when_wrong(curves, answers),
    }
    if selective:
        images["risk_coverage.png"] = plots.risk_coverage(selective)
    for name, fig in images.items():
        plots.save(fig, out / name)
    write_file(out / "report.md", markdown(result, list(images)))


def gains_markdown(gains: dict[str, dict[str, float]]) -> list[str]:
    """Lines of the table of the ensemble's gains over the mean member, with their intervals."""
    lines = [
        "",
        "Ensemble minus mean member (same questions, same members; 95% paired bootstrap "
        "interval over questions, 2000 resamples):",
        "",
        "| metric | difference | 95% interval | interval excludes 0 |",
        "|---|---:|---:|---|",
    ]
    for k, g in gains.items():
        excl = "yes" if g["low"] > 0 or g["high"] < 0 else "no"
        lines.append(f"| {k} | {g['estimate']:+.4f} | [{g['low']:+.4f}, {g['high']:+.4f}] "
                     f"| {excl} |")  # fmt: skip
    return lines


def _row(name: str, m: dict[str, float]) -> str:
    return f"| {name} | {m['accuracy']:.3f} | {m['nll']:.3f} | {m['ece']:.3f} | {m['brier']:.3f} |"


def markdown(result: dict[str, Any], images: list[str]) -> str:
    """The report's Markdown: metric tables, OOD table, plots."""
    mode = result["scoring"]["mode"]
    lines = [
        "# Evaluation report",
        "",
        f"{result['n_questions']} questions, scoring: {mode}"
        + (f" ({result['scoring']['normalization']})" if mode == "choices" else "")
        + f", ECE with {result['n_bins']} bins.",
        "",
        "| model | accuracy | NLL | ECE | Brier |",
        "|---|---:|---:|---:|---:|",
    ]
    if "base" in result:
        lines.append(_row("zero-shot base", result["base"]))
    for name, m in zip(result["members_names"], result["members"], strict=True):
        lines.append(_row(f"member {name}", m))
    lines.append(_row("mean of members", result["member_mean"]))
    if "temperature" in result:
        t = result["temperature"]
        lines.append(_row("member + temperature (mean of members)", t["member_mean"]))
        lines.append(_row("ensemble of temperature-scaled members", t["ensemble_of_scaled"]))
    if "mc_dropout" in result:
        lines.append(_row("MC dropout", result["mc_dropout"]))
    lines.append(_row(f"**ensemble (M={len(result['members'])})**", result["ensemble"]))
    if "temperature" in result:
        temps = ", ".join(f"{x:.2f}" for x in result["temperature"]["temperatures"])
        lines += ["", f"Temperatures fitted on {result['temperature']['n_val_questions']} "
                  f"validation questions, one per member: {temps}."]  # fmt: skip
    lines += gains_markdown(result["gains"])
    lines += [
        "",
        "## Selective prediction",
        "",
        "Each model answers its most certain questions first (lowest entropy / ln K, or mutual "
        "information); AURC = mean error rate over all coverages (lower is better), E-AURC = "
        "AURC minus the best any ordering reaches on the same predictions.",
        "",
        "| model (ordered by) | AURC | E-AURC | accuracy at 50% | accuracy at 80% |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in result["selective"].items():
        lines.append(f"| {name} | {c['aurc']:.3f} | {c['excess_aurc']:.3f} "
                     f"| {c['accuracy_at_50']:.3f} | {c['accuracy_at_80']:.3f} |")  # fmt: skip
    d = result["disagreement"]
    lines += [
        "",
        f"Members agree with the ensemble's prediction on {d['mean_agreement']:.1%} of votes; "
        f"mean mutual information {d['mean_mutual_information']:.4f} nats "
        f"(total entropy {d['mean_entropy']:.3f} = expected {d['mean_expected_entropy']:.3f} "
        "+ mutual information).",
    ]
    if "ood" in result:
        lines += [
            "",
            f"## Out-of-distribution detection ({result['ood']['n_questions']} OOD questions)",
            "",
            "Scores: 1 - max probability, and entropy / mutual information divided by ln K "
            "(K options of the question).",
            "",
            "| model | score | AUROC | AUPR |",
            "|---|---|---:|---:|",
        ]
        for who in ("base", "one_member", "ensemble"):
            for score, m in result["ood"].get(who, {}).items():
                lines.append(
                    f"| {who.replace('_', ' ')} | {score} | {m['auroc']:.3f} | {m['aupr']:.3f} |"
                )
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"
