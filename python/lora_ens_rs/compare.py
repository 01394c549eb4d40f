"""An ensemble against its own members on the same questions: paired bootstrap intervals of the
ensemble's gain over the mean member, selective prediction (risk-coverage curves and AURC by
each model's uncertainty), and the temperature-scaling baseline (Guo et al. 2017).

    from lora_ens_rs import compare
    compare.gains(s.probs, s.member_probs, answers)          # {"nll": {"estimate", "low", ...}}
    compare.selective({"ensemble": (s.probs, u)}, answers)   # {"ensemble": {"aurc", ...}}
    t, scaled = compare.temperature_scale(val_s, val_answers, s)  # per member, fitted on val

Every metric is the engine's (:mod:`lora_ens_rs.metrics`); this module only arranges them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lora_ens_rs import metrics
from lora_ens_rs.errors import InputError
from lora_ens_rs.results import Scores

#: Metrics whose ensemble-vs-member gain is reported (``ece`` with the caller's bins).
GAIN_METRICS = ("accuracy", "nll", "ece", "brier")


def _metric(name: str, probs: np.ndarray, answers: np.ndarray, n_bins: int) -> float:
    if name == "ece":
        return metrics.ece(probs, answers, n_bins)
    return float(getattr(metrics, name)(probs, answers))


def gains(
    probs: np.ndarray,
    member_probs: np.ndarray,
    answers: np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    n_bins: int = 15,
) -> dict[str, dict[str, float]]:
    """The ensemble's metric minus the mean of its members' metrics, with a paired bootstrap
    percentile interval: every resample draws the same questions for the ensemble and each
    member (:func:`lora_ens_rs.metrics.bootstrap_indices` with ``seed``), so the interval is
    that of the difference, not of two independent estimates.

    Args:
        probs: (N, K) the ensemble's probabilities.
        member_probs: (N, M, K) each member's probabilities on the same questions.
        answers: (N,) right options.

    Returns:
        Per metric of :data:`GAIN_METRICS`: ``estimate`` (on all questions), ``low``,
        ``high``. Negative is better for NLL, ECE and Brier, positive for accuracy.

    Raises:
        InputError: shapes that do not match, ``confidence`` outside (0, 1).
    """
    p = np.asarray(probs, dtype=np.float64)
    mp = np.asarray(member_probs, dtype=np.float64)
    a = np.asarray(answers)
    if mp.ndim != 3 or mp.shape[0] != p.shape[0] or mp.shape[2] != p.shape[1]:
        raise InputError(f"member_probs must be (N, M, K) = {p.shape[0]}, M, {p.shape[1]}; "
                         f"got {mp.shape}")  # fmt: skip
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    n, m = p.shape[0], mp.shape[1]

    def delta(idx: np.ndarray | slice, name: str) -> float:
        members = [_metric(name, mp[idx, j], a[idx], n_bins) for j in range(m)]
        return _metric(name, p[idx], a[idx], n_bins) - float(np.mean(members))

    rows = metrics.bootstrap_indices(n, n_resamples, seed)
    lo, hi = (1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0
    out: dict[str, dict[str, float]] = {}
    for name in GAIN_METRICS:
        boot = np.array([delta(idx, name) for idx in rows])
        out[name] = {
            "estimate": delta(slice(None), name),
            "low": float(np.quantile(boot, lo)),
            "high": float(np.quantile(boot, hi)),
        }
    return out


def uncertainty(probs: np.ndarray, n_options: np.ndarray) -> np.ndarray:
    """Predictive entropy of each (N, K) row divided by ln K_i (so 4- and 5-option questions
    compare): the score selective prediction answers in ascending order."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(1) / np.log(np.maximum(np.asarray(n_options, np.float64), 2.0))


def selective(
    models: Mapping[str, tuple[np.ndarray, np.ndarray]], answers: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Selective prediction of each model: answering only its most certain questions.

    Args:
        models: name -> ``(probs (N, K), uncertainty (N,))``, lower uncertainty answered first.
        answers: (N,) right options.

    Returns:
        name -> ``aurc``, ``excess_aurc`` (AURC minus the best any ordering reaches on these
        predictions), ``coverage`` and ``accuracy`` lists (the risk-coverage curve as
        selective accuracy), and the accuracy at 50% and 80% coverage.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, (probs, scores) in models.items():
        rc = metrics.risk_coverage(probs, answers, scores)
        n = len(rc.coverage)

        def at(c: float, rc: metrics.RiskCoverage = rc, n: int = n) -> float:
            return float(rc.accuracy[max(1, int(np.ceil(c * n))) - 1])

        out[name] = {
            "aurc": metrics.aurc(probs, answers, scores),
            "excess_aurc": metrics.excess_aurc(probs, answers, scores),
            "accuracy_at_50": at(0.5),
            "accuracy_at_80": at(0.8),
            "coverage": rc.coverage.tolist(),
            "accuracy": rc.accuracy.tolist(),
        }
    return out


def _member_logits(s: Scores) -> np.ndarray:
    """(N, M, K) the members' per-option scores, the logits their softmax turns into
    probabilities (answer log-likelihoods for ``choices``, label logits for ``labels``)."""
    return np.asarray(s.member_scores, dtype=np.float64)


def temperature_scale(
    val: Scores, val_answers: np.ndarray, test: Scores
) -> tuple[list[float], np.ndarray]:
    """Temperature scaling of each member alone: a temperature per member fitted on the
    validation questions' scores (:func:`lora_ens_rs.metrics.fit_temperature`), applied to its
    test scores. The argmax, hence accuracy, is unchanged.

    Returns:
        ``(temperatures, probs)``: one temperature per member and the (N, M, K) scaled test
        probabilities (padding options stay zero).
    """
    if val.member_probs.shape[1] != test.member_probs.shape[1]:
        raise InputError("validation and test scores come from different ensembles")
    vz, tz = _member_logits(val), _member_logits(test)
    temps: list[float] = []
    scaled = np.zeros(tz.shape, dtype=np.float64)
    for j in range(tz.shape[1]):
        t = metrics.fit_temperature(vz[:, j], val_answers, val.n_options)
        temps.append(t)
        scaled[:, j] = metrics.apply_temperature(tz[:, j], t, test.n_options)
    return temps, scaled
