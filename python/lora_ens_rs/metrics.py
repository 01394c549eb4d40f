"""Evaluation metrics of (ensemble) predictions: NumPy in, the engine's one implementation
(``lora_ens::metrics``, the same numbers ``lora-ens-rs infer`` prints) underneath.

    from lora_ens_rs import metrics
    metrics.accuracy(s.probs, answers), metrics.nll(s.probs, answers), metrics.ece(s.probs, answers)
    metrics.ood_auroc(in_scores, out_scores)    # e.g. s.mutual_information of both sets

``probs`` is (N, K): each row a distribution over the question's options; questions with fewer
options are padded with zeros (as :class:`lora_ens_rs.Scores` returns them). ``answers`` is (N,)
integer indices. ECE follows Guo et al. (2017): equal-width bins on the max probability,
``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``, 15 bins by default; a confidence of exactly 0 falls
in the first bin, bin b covers ``(b / n_bins, (b + 1) / n_bins]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lora_ens_rs import _core
from lora_ens_rs.errors import InputError

ArrayLike = npt.ArrayLike

#: Probabilities are clamped here before the log in :func:`nll` (by the engine), so a
#: confident miss costs ``-log(1e-12) ~ 27.6`` nats instead of infinity.
EPS = 1e-12


def _check(probs: ArrayLike, answers: ArrayLike) -> tuple[np.ndarray, list[int]]:
    """The arrays as float64 (N, K) and int64 (N,), with NumPy-facing messages on misuse."""
    p = np.asarray(probs, dtype=np.float64)
    a = np.asarray(answers)
    if p.ndim != 2:
        raise InputError(f"probs must have shape (N, K), got shape {p.shape}")
    if a.shape != (p.shape[0],):
        raise InputError(f"answers must have shape ({p.shape[0]},), got shape {a.shape}")
    if p.shape[0] == 0:
        return p, []  # the engine names the empty input
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"answers must be integer option indices, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= p.shape[1]:
        raise InputError(f"answers must lie in 0..{p.shape[1] - 1}, got {a.min()}..{a.max()}")
    return p, a.astype(np.int64).tolist()


def accuracy(probs: ArrayLike, answers: ArrayLike) -> float:
    """Fraction of questions whose argmax (lowest index on ties) is the answer."""
    return _core.accuracy(*_check(probs, answers))


def nll(probs: ArrayLike, answers: ArrayLike) -> float:
    """Mean negative log-probability of the answer (nats), probabilities clamped at 1e-12."""
    return _core.nll(*_check(probs, answers))


def brier(probs: ArrayLike, answers: ArrayLike) -> float:
    """Multi-class Brier score: mean over questions of ``sum_k (p_k - onehot_k)^2``."""
    return _core.brier(*_check(probs, answers))


@dataclass(frozen=True)
class Reliability:
    """Per-bin data of a reliability diagram (empty bins have count 0 and NaN means)."""

    edges: np.ndarray  # (n_bins + 1,)
    count: np.ndarray  # (n_bins,) questions per bin
    accuracy: np.ndarray  # (n_bins,) fraction correct in the bin
    confidence: np.ndarray  # (n_bins,) mean max probability in the bin


def reliability(probs: ArrayLike, answers: ArrayLike, n_bins: int = 15) -> Reliability:
    """Bin questions by confidence (max probability) into ``n_bins`` equal-width bins."""
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    count, acc, conf = _core.reliability(*_check(probs, answers), n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return Reliability(edges=edges, count=count, accuracy=acc, confidence=conf)


def ece(probs: ArrayLike, answers: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width confidence bins."""
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    return _core.ece(*_check(probs, answers), n_bins)


def _ood_inputs(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    # Flat float64 arrays; the engine checks that both are non-empty and finite.
    return (
        np.asarray(in_scores, dtype=np.float64).ravel(),
        np.asarray(out_scores, dtype=np.float64).ravel(),
    )


def ood_auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Area under the ROC curve for telling OOD (positive) from in-distribution questions by a
    score that is higher for OOD (entropy, mutual information, 1 - max probability): the
    probability that a random OOD score beats a random in-distribution one, ties counting 1/2
    (the Mann-Whitney U statistic)."""
    return _core.ood_auroc(*_ood_inputs(in_scores, out_scores))


def ood_aupr(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Average precision for OOD (positive) detection by a higher-is-OOD score (step-wise,
    as scikit-learn's ``average_precision_score``; tied scores form one threshold)."""
    return _core.ood_aupr(*_ood_inputs(in_scores, out_scores))


def summary(probs: ArrayLike, answers: ArrayLike, n_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, brier and ece of one set of predictions, as a dict."""
    return {
        "accuracy": accuracy(probs, answers),
        "nll": nll(probs, answers),
        "brier": brier(probs, answers),
        "ece": ece(probs, answers, n_bins),
    }
