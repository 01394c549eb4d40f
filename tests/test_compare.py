"""`lora_ens_rs.compare` (an ensemble against its members) and `eval`'s new report parts,
each checked against an independent NumPy / scikit-learn computation: the paired bootstrap of
the ensemble's gain over the mean member, selective prediction, temperature-scaled members of
the fixture ensemble, and the reliability diagram's per-bin counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import DATA, loop_ece

import lora_ens_rs
from lora_ens_rs import compare, metrics, plots
from lora_ens_rs.data import split
from lora_ens_rs.errors import InputError

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")
CSQA = DATA / "commonsenseqa" / "dev_rand_split.jsonl"


def direct(name: str, p: np.ndarray, a: np.ndarray) -> float:
    """One metric, computed without the engine."""
    if name == "accuracy":
        return float(np.mean(p.argmax(1) == a))
    if name == "nll":
        return float(-np.mean(np.log(np.clip(p[np.arange(len(a)), a], 1e-12, None))))
    if name == "brier":
        return float(np.mean(np.sum((p - np.eye(p.shape[1])[a]) ** 2, 1)))
    return loop_ece(p, a, 15)


def random_ensemble(rng: np.random.Generator, n: int, m: int, k: int):
    logits = rng.normal(size=(n, m, k)) * rng.uniform(0.5, 3.0, size=(1, m, 1))
    member = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    return member.mean(1), member, rng.integers(0, k, size=n)


@pytest.mark.parametrize("seed", [0, 1])
def test_gains_match_an_independent_bootstrap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs, member, answers = random_ensemble(rng, 60, 4, 5)
    got = compare.gains(probs, member, answers, n_resamples=150, seed=seed + 11)
    rows = metrics.bootstrap_indices(60, 150, seed + 11)
    for name in compare.GAIN_METRICS:

        def delta(i: np.ndarray, name: str = name) -> float:
            ms = [direct(name, member[i, j], answers[i]) for j in range(4)]
            return direct(name, probs[i], answers[i]) - float(np.mean(ms))

        boot = np.array([delta(i) for i in rows])
        assert got[name]["estimate"] == pytest.approx(delta(np.arange(60)), abs=1e-9)
        assert got[name]["low"] == pytest.approx(np.quantile(boot, 0.025), abs=1e-9)
        assert got[name]["high"] == pytest.approx(np.quantile(boot, 0.975), abs=1e-9)
    # Averaging distributions never raises the NLL above the members' mean (Jensen).
    assert got["nll"]["estimate"] <= 0


def test_gains_edge_cases() -> None:
    rng = np.random.default_rng(3)
    _, member, answers = random_ensemble(rng, 20, 1, 3)
    same = compare.gains(member[:, 0], np.repeat(member, 3, axis=1), answers, n_resamples=50)
    # (x + x + x) / 3 may differ from x in the last bit: zero up to rounding.
    assert all(abs(v) < 1e-12 for g in same.values() for v in g.values())
    one = compare.gains(member[:1, 0], member[:1], answers[:1], n_resamples=10)
    assert one["nll"]["low"] == one["nll"]["high"] == 0.0
    with pytest.raises(InputError, match="member_probs must be"):
        compare.gains(member[:, 0], member[:, 0], answers)
    with pytest.raises(InputError, match="confidence"):
        compare.gains(member[:, 0], member, answers, confidence=1.0)


def test_selective_matches_a_sort() -> None:
    rng = np.random.default_rng(5)
    probs, _, answers = random_ensemble(rng, 41, 3, 4)
    unc = compare.uncertainty(probs, np.full(41, 4))
    ent = -np.sum(probs * np.log(probs), 1) / np.log(4)
    np.testing.assert_allclose(unc, ent, rtol=1e-12)
    got = compare.selective({"m": (probs, unc)}, answers)["m"]
    right = (probs.argmax(1) == answers)[np.argsort(unc, kind="stable")]
    acc = np.cumsum(right) / np.arange(1, 42)
    np.testing.assert_allclose(got["accuracy"], acc, rtol=1e-12)
    assert got["aurc"] == pytest.approx(np.mean(1 - acc), abs=1e-12)
    assert got["accuracy_at_50"] == pytest.approx(acc[20]) and got["accuracy_at_80"] == acc[32]
    assert 0 <= got["excess_aurc"] <= got["aurc"]


@pytest.mark.parametrize("scoring", ["choices", "labels"])
def test_temperature_scaled_members(tiny_dir: Path, tiny_ensemble: Path, scoring: str) -> None:
    ens = lora_ens_rs.Ensemble(tiny_dir / "tiny-q8_0.gguf", tiny_ensemble)
    qs = lora_ens_rs.read_questions(CSQA, limit=60)
    test_q, val_q = split(qs, 0.4)
    s, v = ens.score_questions(test_q, scoring), ens.score_questions(val_q, scoring)
    val_answers = np.array([q["answer"] for q in val_q])
    temps, scaled = compare.temperature_scale(v, val_answers, s)
    assert len(temps) == 3 and scaled.shape == s.member_probs.shape
    # The member scores are the logits of the member probabilities (temperature 1).
    z = s.member_scores.astype(np.float64)
    np.testing.assert_allclose(
        np.exp(z) / np.exp(z).sum(2, keepdims=True), s.member_probs, atol=1e-5
    )
    vz = v.member_scores.astype(np.float64)
    for j, t in enumerate(temps):
        # The fitted temperature's validation NLL is no worse than any on a fine grid.
        def val_nll(temp: float, j: int = j) -> float:
            q = np.exp(vz[:, j] / temp - (vz[:, j] / temp).max(1, keepdims=True))
            q /= q.sum(1, keepdims=True)
            return float(-np.mean(np.log(q[np.arange(len(val_answers)), val_answers])))

        grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
        assert val_nll(t) <= min(val_nll(g) for g in grid) + 1e-9
        want = np.exp(z[:, j] / t - (z[:, j] / t).max(1, keepdims=True))
        np.testing.assert_allclose(scaled[:, j], want / want.sum(1, keepdims=True), atol=1e-9)
        assert (scaled[:, j].argmax(1) == s.member_probs[:, j].argmax(1)).all()


def test_eval_reports_gains_temperature_and_selective(
    tmp_path: Path, tiny_dir: Path, tiny_ensemble: Path
) -> None:
    model = tiny_dir / "tiny-q8_0.gguf"
    report = tmp_path / "r"
    args = [SCRIPT, "eval", "--model", str(model), "--adapters", str(tiny_ensemble), "-q"]
    args += ["--data", str(CSQA), "--limit", "50", "--val-fraction", "0.2", "--report", str(report)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads((report / "metrics.json").read_text())
    assert got["n_questions"] == 40 and got["temperature"]["n_val_questions"] == 10
    assert (report / "risk_coverage.png").read_bytes()[:4] == b"\x89PNG"
    md = (report / "report.md").read_text()
    assert "Selective prediction" in md and "95% interval" in md and "temperature" in md
    test_q, _ = split(lora_ens_rs.read_questions(CSQA, limit=50), 0.2)
    s = lora_ens_rs.Ensemble(model, tiny_ensemble).score_questions(test_q, "choices")
    answers = np.array([q["answer"] for q in test_q])
    p, mp = s.probs.astype(np.float64), s.member_probs.astype(np.float64)
    for name in compare.GAIN_METRICS:
        want = direct(name, p, answers) - np.mean(
            [direct(name, mp[:, j], answers) for j in range(3)]
        )
        g = got["gains"][name]
        assert g["estimate"] == pytest.approx(want, abs=1e-6) and g["low"] <= g["high"]
    ent = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), 1) / np.log(5)
    right = (p.argmax(1) == answers)[np.argsort(ent, kind="stable")]
    aurc = np.mean(1 - np.cumsum(right) / np.arange(1, 41))
    assert got["selective"]["ensemble (entropy)"]["aurc"] == pytest.approx(aurc, abs=1e-6)

    both = [*args[:-2], "--val", str(CSQA), "--report", str(tmp_path / "x")]
    proc = subprocess.run(both, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "exclusive" in proc.stderr


def test_reliability_diagram_shows_questions_per_bin() -> None:
    rng = np.random.default_rng(9)
    probs, _, answers = random_ensemble(rng, 80, 2, 4)
    fig = plots.reliability_diagram({"a": probs}, answers, n_bins=10, min_count=5)
    try:
        counts = fig.axes[1].patches[0].get_data().values
        want = np.histogram(probs.max(1), bins=np.linspace(0, 1, 11))[0]
        np.testing.assert_array_equal(counts, want)
        r = metrics.reliability(probs, answers, 10)
        hollow = fig.axes[0].collections[1].get_offsets()
        assert len(hollow) == int(((r.count > 0) & (r.count < 5)).sum())
    finally:
        plots._plt().close(fig)
