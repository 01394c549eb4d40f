"""Evaluation metrics of (ensemble) predictions: NumPy in, the engine's one implementation
(``lora_ens::metrics``, the same numbers ``lora-ens-rs infer`` prints) underneath.

    from lora_ens_rs import metrics
    metrics.accuracy(s.probs, answers), metrics.nll(s.probs, answers), metrics.ece(s.probs, answers)
    metrics.ood_auroc(in_scores, out_scores)    # e.g. s.mutual_information of both sets
    metrics.paired_bootstrap(s.probs, single.probs, answers, "nll")   # (estimate, low, high)
    metrics.aurc(s.probs, answers, s.entropy), metrics.excess_aurc(s.probs, answers, s.entropy)
    t = metrics.fit_temperature(val_logits, val_answers); metrics.apply_temperature(logits, t)

``probs`` is (N, K): each row a distribution over the question's options; questions with fewer
options are padded with zeros (as :class:`lora_ens_rs.Scores` returns them). ``answers`` is (N,)
integer indices. ECE follows Guo et al. (2017): equal-width bins on the max probability,
``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``, 15 bins by default; a confidence of exactly 0 falls
in the first bin, bin b covers ``(b / n_bins, (b + 1) / n_bins]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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


#: The metrics :func:`paired_bootstrap` can compare (ECE with 15 bins).
BOOTSTRAP_METRICS = ("accuracy", "nll", "brier", "ece")


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**64:
        raise InputError(f"seed must lie in 0 .. 2**64 - 1, got {seed}")


class Interval(NamedTuple):
    """A difference on all the questions and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float


def paired_bootstrap(
    probs_a: ArrayLike,
    probs_b: ArrayLike,
    answers: ArrayLike,
    metric: str,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Paired bootstrap interval of ``metric(a) - metric(b)`` for two predictors on the same
    questions.

    Each resample draws N question indices with replacement, the same indices for both
    predictors, and recomputes the difference; the interval is the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles of those differences (interpolated as
    :func:`numpy.quantile`'s default). The indices are those of :func:`bootstrap_indices`.

    Parameters
    ----------
    probs_a, probs_b : array_like, shape (N, K)
        The two predictors' probabilities (padding zeros), the same shape.
    answers : array_like of int, shape (N,)
        The right option of each question.
    metric : {"accuracy", "nll", "brier", "ece"}
        The metric to compare (``ece`` with 15 bins).
    n_resamples : int, default 2000
        Number of bootstrap resamples, >= 1.
    confidence : float, default 0.95
        Coverage of the interval, in (0, 1).
    seed : int, default 0
        Seed of the resampling stream (0 <= seed < 2**64); the same seed gives the same interval.

    Returns
    -------
    Interval
        ``(estimate, low, high)``: the difference on all questions and the interval.

    Raises
    ------
    InputError
        For bad probabilities or answers, different shapes, an unknown metric, ``n_resamples``
        < 1 or ``confidence`` outside (0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from lora_ens_rs import metrics
    >>> a = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    >>> b = np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    >>> est, low, high = metrics.paired_bootstrap(a, b, [0, 1, 1], "accuracy", seed=1)
    >>> round(est, 4), low <= est <= high
    (0.3333, True)
    >>> metrics.paired_bootstrap(a, a, [0, 1, 1], "nll")
    Interval(estimate=0.0, low=0.0, high=0.0)
    """
    if metric not in BOOTSTRAP_METRICS:
        raise InputError(f"metric must be one of {', '.join(BOOTSTRAP_METRICS)}; got {metric!r}")
    pa, ans = _check(probs_a, answers)
    pb, _ = _check(probs_b, answers)
    if pa.shape != pb.shape:
        raise InputError(
            f"probs_a and probs_b must have the same shape, got {pa.shape} and {pb.shape}"
        )
    if n_resamples < 1:
        raise InputError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    _check_seed(seed)
    return Interval(*_core.paired_bootstrap(pa, pb, ans, metric, n_resamples, confidence, seed))


def bootstrap_indices(n: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """The ``(n_resamples, n)`` int64 question indices :func:`paired_bootstrap` resamples
    with ``seed``, to reuse them elsewhere.

    Row r is resample r: ``n`` draws of one SplitMix64 stream whose state starts at ``seed``
    (0 <= seed < 2**64), draw x mapped to the index ``floor(x * n / 2**64)``.

    Examples
    --------
    >>> from lora_ens_rs import metrics
    >>> idx = metrics.bootstrap_indices(5, n_resamples=3, seed=7)
    >>> idx.shape, bool(((idx >= 0) & (idx < 5)).all())
    ((3, 5), True)
    >>> bool((idx == metrics.bootstrap_indices(5, n_resamples=3, seed=7)).all())
    True
    """
    if n < 1 or n_resamples < 1:
        raise InputError(f"n and n_resamples must be >= 1, got {n} and {n_resamples}")
    _check_seed(seed)
    return _core.bootstrap_indices(n, n_resamples, seed)


@dataclass(frozen=True)
class RiskCoverage:
    """A risk-coverage curve: answering the k most certain of N questions, k = 1..N."""

    coverage: np.ndarray  # (N,) k / N
    risk: np.ndarray  # (N,) fraction wrong among the k answered

    @property
    def accuracy(self) -> np.ndarray:
        """Selective accuracy, ``1 - risk``."""
        return 1.0 - self.risk


def _scores(scores: ArrayLike, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise InputError(f"scores must have shape ({n},), got shape {s.shape}")
    return s


def risk_coverage(probs: ArrayLike, answers: ArrayLike, scores: ArrayLike) -> RiskCoverage:
    """Risk-coverage curve of selective prediction by an uncertainty score.

    Questions are answered in ascending order of ``scores`` (lower = more certain: predictive
    entropy, mutual information, 1 - max probability); ties go by question index, the earlier
    question first. At coverage k / N the risk is the fraction of the k answered questions
    whose argmax (lowest index on ties) is wrong.

    Parameters
    ----------
    probs : array_like, shape (N, K)
        Probabilities (padding zeros).
    answers : array_like of int, shape (N,)
        The right option of each question.
    scores : array_like, shape (N,)
        Finite uncertainty scores, lower = answered first.

    Returns
    -------
    RiskCoverage
        ``coverage`` and ``risk`` arrays of length N (``accuracy`` is ``1 - risk``).

    Examples
    --------
    >>> from lora_ens_rs import metrics
    >>> p = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]  # right, wrong, right
    >>> rc = metrics.risk_coverage(p, [0, 1, 1], scores=[0.1, 0.5, 0.3])
    >>> rc.coverage.tolist(), rc.risk.tolist()
    ([0.3333333333333333, 0.6666666666666666, 1.0], [0.0, 0.0, 0.3333333333333333])
    """
    p, a = _check(probs, answers)
    coverage, risk = _core.risk_coverage(p, a, _scores(scores, p.shape[0]))
    return RiskCoverage(coverage=coverage, risk=risk)


def aurc(probs: ArrayLike, answers: ArrayLike, scores: ArrayLike) -> float:
    """Area under the risk-coverage curve (AURC; Geifman & El-Yaniv 2017).

    The mean selective risk over the coverages k / N, k = 1..N, of :func:`risk_coverage`:
    ``AURC = (1 / N) * sum_k risk(k / N)``. 0 when every answer is right, 1 when every one is
    wrong; lower is better. Arguments as :func:`risk_coverage`.

    Examples
    --------
    >>> from lora_ens_rs import metrics
    >>> p = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]  # right, wrong, right
    >>> metrics.aurc(p, [0, 1, 1], scores=[0.1, 0.5, 0.3])  # risks 0, 0, 1/3
    0.1111111111111111
    """
    p, a = _check(probs, answers)
    return _core.aurc(p, a, _scores(scores, p.shape[0]))


def optimal_aurc(probs: ArrayLike, answers: ArrayLike) -> float:
    """The AURC of the best possible ordering, every right answer before every wrong one.

    With C right answers of N it is ``(1 / N) * sum_{k > C} (k - C) / k``, the least AURC any
    score reaches on these predictions.

    Examples
    --------
    >>> from lora_ens_rs import metrics
    >>> metrics.optimal_aurc([[0.9, 0.1], [0.6, 0.4]], [0, 1])  # risks 0, 1/2
    0.25
    """
    return _core.optimal_aurc(*_check(probs, answers))


def excess_aurc(probs: ArrayLike, answers: ArrayLike, scores: ArrayLike) -> float:
    """Excess AURC (E-AURC): :func:`aurc` minus :func:`optimal_aurc`, >= 0.

    How far the score's ordering is from the best one on these predictions: the AURC less the
    part any score must pay for the wrong answers. Arguments as :func:`risk_coverage`.

    Examples
    --------
    >>> from lora_ens_rs import metrics
    >>> p = [[0.9, 0.1], [0.6, 0.4]]  # right, wrong
    >>> metrics.excess_aurc(p, [0, 1], scores=[0.2, 0.1])  # wrong first: risks 1, 1/2
    0.5
    """
    p, a = _check(probs, answers)
    return _core.excess_aurc(p, a, _scores(scores, p.shape[0]))


def _logits(logits: ArrayLike, n_options: ArrayLike | None) -> tuple[np.ndarray, list[int] | None]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise InputError(f"logits must have shape (N, K), got shape {z.shape}")
    if n_options is None:
        return z, None
    v = np.asarray(n_options)
    if v.shape != (z.shape[0],) or (v.size and not np.issubdtype(v.dtype, np.integer)):
        raise InputError(f"n_options must be ({z.shape[0]},) integers, got {v.dtype} {v.shape}")
    if v.size and (v.min() < 1 or v.max() > z.shape[1]):
        raise InputError(f"n_options must lie in 1..{z.shape[1]}, got {v.min()}..{v.max()}")
    return z, v.astype(np.int64).tolist()


def fit_temperature(
    logits: ArrayLike, answers: ArrayLike, n_options: ArrayLike | None = None
) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the mean negative
    log-likelihood of ``answers`` under ``softmax(logits / T)``.

    Fit on validation questions, then :func:`apply_temperature` on test ones. The NLL is
    convex in 1 / T; a golden-section search on ``log T`` over ``[0.05, 20]`` finds the
    minimiser to a relative 1e-7 (a minimum beyond the range gives the nearest bound).

    Parameters
    ----------
    logits : array_like, shape (N, K)
        Finite logits (e.g. log-probabilities) of each question's options.
    answers : array_like of int, shape (N,)
        The right option of each question.
    n_options : array_like of int, shape (N,), optional
        Question i uses its first ``n_options[i]`` logits; the rest is padding and never read.
        Default: all K.

    Returns
    -------
    float
        The fitted temperature (> 1 softens over-confident predictions).

    Raises
    ------
    InputError
        For empty or non-finite logits, a shape mismatch or an answer out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from lora_ens_rs import metrics
    >>> logits = np.array([[4.0, 0.0], [4.0, 0.0]])  # confident, right only half the time
    >>> metrics.fit_temperature(logits, [0, 1]) > 1
    True
    """
    z, valid = _logits(logits, n_options)
    a = np.asarray(answers)
    if a.shape != (z.shape[0],):
        raise InputError(f"answers must have shape ({z.shape[0]},), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"answers must be integer option indices, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise InputError(f"answers must be >= 0, got {a.min()}")
    return _core.fit_temperature(z, a.astype(np.int64).tolist(), valid)


def apply_temperature(
    logits: ArrayLike, temperature: float, n_options: ArrayLike | None = None
) -> np.ndarray:
    """``softmax(logits / temperature)`` of each question, float64 (N, K).

    ``temperature = 1`` is the plain softmax; the argmax never changes. Padding slots (beyond
    ``n_options[i]``, see :func:`fit_temperature`) come back as zeros.

    Raises
    ------
    InputError
        For non-finite logits or a temperature that is not finite and > 0.

    Examples
    --------
    >>> import numpy as np
    >>> from lora_ens_rs import metrics
    >>> metrics.apply_temperature(np.log([[1.0, 3.0]]), 1.0)
    array([[0.25, 0.75]])
    >>> metrics.apply_temperature(np.log([[1.0, 3.0]]), 1e9).round(6)
    array([[0.5, 0.5]])
    """
    z, valid = _logits(logits, n_options)
    if not (np.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature must be finite and > 0, got {temperature}")
    return _core.apply_temperature(z, float(temperature), valid)
