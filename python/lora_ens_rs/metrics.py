"""Evaluation metrics of (ensemble) predictions, in NumPy.

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

from lora_ens_rs.errors import InputError

ArrayLike = npt.ArrayLike

#: Probabilities are clamped here before the log in :func:`nll`, so a confident miss costs
#: ``-log(1e-12) ~ 27.6`` nats instead of infinity.
EPS = 1e-12


def _check(probs: ArrayLike, answers: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    a = np.asarray(answers)
    if p.ndim != 2:
        raise InputError(f"probs must have shape (N, K), got shape {p.shape}")
    if a.shape != (p.shape[0],):
        raise InputError(f"answers must have shape ({p.shape[0]},), got shape {a.shape}")
    if p.shape[0] == 0:
        raise InputError("no predictions to evaluate (N = 0)")
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"answers must be integer option indices, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= p.shape[1]:
        raise InputError(f"answers must lie in 0..{p.shape[1] - 1}, got {a.min()}..{a.max()}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise InputError("probs must be finite and non-negative")
    return p, a.astype(np.int64)


def accuracy(probs: ArrayLike, answers: ArrayLike) -> float:
    """Fraction of questions whose argmax (lowest index on ties) is the answer."""
    p, a = _check(probs, answers)
    return float(np.mean(p.argmax(axis=1) == a))


def nll(probs: ArrayLike, answers: ArrayLike) -> float:
    """Mean negative log-probability of the answer (nats), probabilities clamped at 1e-12."""
    p, a = _check(probs, answers)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(a)), a], EPS))))


def brier(probs: ArrayLike, answers: ArrayLike) -> float:
    """Multi-class Brier score: mean over questions of ``sum_k (p_k - onehot_k)^2``."""
    p, a = _check(probs, answers)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(a)), a] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


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
    p, a = _check(probs, answers)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == a).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin b holds (b / n, (b + 1) / n]; ceil(conf * n) - 1 gives b, and conf = 0 goes to bin 0.
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(index, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
    return Reliability(edges=edges, count=count, accuracy=acc, confidence=mean_conf)


def ece(probs: ArrayLike, answers: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width confidence bins."""
    r = reliability(probs, answers, n_bins)
    filled = r.count > 0
    gaps = np.abs(r.accuracy[filled] - r.confidence[filled])
    return float(np.sum(r.count[filled] * gaps) / r.count.sum())


def _ood_inputs(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s_in = np.asarray(in_scores, dtype=np.float64).ravel()
    s_out = np.asarray(out_scores, dtype=np.float64).ravel()
    if len(s_in) == 0 or len(s_out) == 0:
        raise InputError("OOD detection needs at least one in- and one out-of-distribution score")
    if not (np.all(np.isfinite(s_in)) and np.all(np.isfinite(s_out))):
        raise InputError("OOD scores must be finite")
    return s_in, s_out


def ood_auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Area under the ROC curve for telling OOD (positive) from in-distribution questions by a
    score that is higher for OOD (entropy, mutual information, 1 - max probability): the
    probability that a random OOD score beats a random in-distribution one, ties counting 1/2
    (the Mann-Whitney U statistic)."""
    s_in, s_out = _ood_inputs(in_scores, out_scores)
    both = np.concatenate([s_in, s_out])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    ranks[order] = np.arange(1, len(both) + 1)
    # Ties share the mean of their ranks.
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = sums[inverse] / counts[inverse]
    u = ranks[len(s_in) :].sum() - len(s_out) * (len(s_out) + 1) / 2
    return float(u / (len(s_in) * len(s_out)))


def ood_aupr(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Average precision for OOD (positive) detection by a higher-is-OOD score (step-wise,
    as scikit-learn's ``average_precision_score``; tied scores form one threshold)."""
    s_in, s_out = _ood_inputs(in_scores, out_scores)
    scores = np.concatenate([s_in, s_out])
    labels = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # One threshold per distinct score: the last index of each run of equal scores.
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(labels)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / len(s_out)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def summary(probs: ArrayLike, answers: ArrayLike, n_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, brier and ece of one set of predictions, as a dict."""
    return {
        "accuracy": accuracy(probs, answers),
        "nll": nll(probs, answers),
        "brier": brier(probs, answers),
        "ece": ece(probs, answers, n_bins),
    }
