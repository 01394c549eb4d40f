"""lora_ens_rs.metrics against independent implementations: scikit-learn (accuracy, log loss,
Brier, ROC AUC, average precision) and a direct loop over bins for ECE, on random and
edge-case inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)
from support import loop_ece

import lora_ens_rs
from lora_ens_rs import metrics


def random_probs(rng: np.random.Generator, n: int, k: int, sharp: float = 1.0) -> np.ndarray:
    logits = rng.normal(size=(n, k)) * sharp
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 4, 5])
def test_random_inputs_match_references(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    probs = random_probs(rng, n, k, sharp=1 + seed)
    answers = rng.integers(0, k, size=n)
    assert metrics.accuracy(probs, answers) == pytest.approx(
        accuracy_score(answers, probs.argmax(1))
    )
    labels = list(range(k))
    assert metrics.nll(probs, answers) == pytest.approx(log_loss(answers, probs, labels=labels))
    assert metrics.brier(probs, answers) == pytest.approx(
        brier_score_loss(answers, probs, labels=labels, scale_by_half=False)
    )
    for bins in (15, 10, 1):
        assert metrics.ece(probs, answers, bins) == pytest.approx(loop_ece(probs, answers, bins))


def test_ece_edge_cases() -> None:
    # Perfectly calibrated at confidence 1 and always right: ECE 0.
    onehot = np.eye(4)[[0, 1, 2, 3]]
    assert metrics.ece(onehot, np.array([0, 1, 2, 3])) == 0.0
    # Always wrong at confidence 1: ECE 1.
    assert metrics.ece(onehot, np.array([1, 2, 3, 0])) == 1.0
    # Confidence exactly on a bin edge (0.6 = 9/15) belongs to the lower bin.
    p = np.array([[0.6, 0.4], [0.6, 0.4], [0.7, 0.3]])
    a = np.array([0, 1, 0])
    assert metrics.ece(p, a) == pytest.approx(loop_ece(p, a, 15))
    r = metrics.reliability(p, a)
    assert r.count.sum() == 3 and r.count[8] == 2 and r.count[10] == 1


def test_padding_and_clamping() -> None:
    # A 3-option question padded to K = 5: padding slots are zeros and change nothing.
    p = np.array([[0.2, 0.5, 0.3, 0.0, 0.0]])
    assert metrics.nll(p, np.array([1])) == pytest.approx(-np.log(0.5))
    assert metrics.brier(p, np.array([1])) == pytest.approx(0.04 + 0.25 + 0.09)
    # A zero probability on the answer is clamped, not infinite.
    assert metrics.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))


@pytest.mark.parametrize("seed", range(4))
def test_ood_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s_in = rng.normal(size=120)
    s_out = rng.normal(loc=0.7, size=80)
    if seed % 2:  # many ties
        s_in, s_out = np.round(s_in), np.round(s_out)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    assert metrics.ood_auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s))
    assert metrics.ood_aupr(s_in, s_out) == pytest.approx(average_precision_score(y, s))


def test_ood_edge_cases() -> None:
    assert metrics.ood_auroc([0, 0.1], [0.5, 0.9]) == 1.0
    assert metrics.ood_auroc([0.5, 0.9], [0, 0.1]) == 0.0
    assert metrics.ood_auroc([1.0, 1.0], [1.0]) == 0.5
    assert metrics.ood_aupr([0, 0.1], [0.5, 0.9]) == 1.0


def test_summary_has_every_metric() -> None:
    p = np.array([[0.9, 0.1], [0.4, 0.6]])
    assert set(metrics.summary(p, np.array([0, 0]))) == {"accuracy", "nll", "brier", "ece"}


@pytest.mark.parametrize(
    ("probs", "answers", "message"),
    [
        (np.ones(3), np.zeros(3, dtype=int), "shape"),
        (np.ones((2, 3)) / 3, np.zeros(3, dtype=int), "answers must have shape"),
        (np.ones((2, 3)) / 3, np.array([0, 3]), "0..2"),
        (np.ones((2, 3)) / 3, np.array([0.0, 1.0]), "integer"),
        (np.full((1, 2), np.nan), np.array([0]), "finite"),
        (np.ones((0, 2)), np.zeros(0, dtype=int), "N = 0"),
    ],
)
def test_bad_inputs_raise_input_error(probs, answers, message: str) -> None:
    with pytest.raises(lora_ens_rs.InputError, match=message):
        metrics.nll(probs, answers)


def test_bad_ood_inputs() -> None:
    with pytest.raises(lora_ens_rs.InputError, match="at least one"):
        metrics.ood_auroc([], [1.0])
    with pytest.raises(lora_ens_rs.InputError, match="n_bins"):
        metrics.ece(np.ones((1, 2)) / 2, np.array([0]), n_bins=0)


# --- Paired bootstrap -------------------------------------------------------------------

MASK64 = (1 << 64) - 1


def splitmix64_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """SplitMix64 (Steele, Lea & Flood 2014) written out with Python integers, each draw x
    mapped to floor(x * n / 2**64)."""
    state, out = seed, []
    for _ in range(n * n_resamples):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append((z * n) >> 64)
    return np.array(out, dtype=np.int64).reshape(n_resamples, n)


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (7, 3), (100, 2**64 - 1)])
def test_bootstrap_indices_are_splitmix64(n: int, seed: int) -> None:
    np.testing.assert_array_equal(
        metrics.bootstrap_indices(n, 20, seed), splitmix64_indices(n, 20, seed)
    )


def np_metric(name: str, p: np.ndarray, a: np.ndarray) -> float:
    """The metrics written out in NumPy (ECE by the bin loop of support.py)."""
    if name == "accuracy":
        return float((p.argmax(1) == a).mean())
    if name == "nll":
        return float(-np.log(np.maximum(p[np.arange(len(a)), a], 1e-12)).mean())
    if name == "brier":
        return float(((p - np.eye(p.shape[1])[a]) ** 2).sum(1).mean())
    return loop_ece(p, a, 15)


@pytest.mark.parametrize("metric", ["accuracy", "nll", "brier", "ece"])
def test_paired_bootstrap_matches_numpy_on_the_same_resamples(metric: str) -> None:
    rng = np.random.default_rng(7)
    n, k, r = 150, 4, 300 if metric == "ece" else 1000
    pa, pb = random_probs(rng, n, k, sharp=2.0), random_probs(rng, n, k)
    answers = rng.integers(0, k, size=n)
    idx = splitmix64_indices(n, r, 42)
    diffs = [
        np_metric(metric, pa[s], answers[s]) - np_metric(metric, pb[s], answers[s]) for s in idx
    ]
    lo, hi = np.quantile(diffs, [0.05, 0.95])
    got = metrics.paired_bootstrap(pa, pb, answers, metric, n_resamples=r, confidence=0.9, seed=42)
    full = np_metric(metric, pa, answers) - np_metric(metric, pb, answers)
    assert got.estimate == pytest.approx(full, rel=1e-9, abs=1e-12)
    assert got.low == pytest.approx(lo, rel=1e-9, abs=1e-12)
    assert got.high == pytest.approx(hi, rel=1e-9, abs=1e-12)


def test_paired_bootstrap_agrees_with_an_independent_resampler() -> None:
    # NumPy's own generator, many resamples: the percentile intervals agree up to Monte Carlo
    # error (a few thousandths here, where the interval is ~0.2 wide).
    rng = np.random.default_rng(3)
    n, k = 400, 5
    pa, pb = random_probs(rng, n, k, sharp=2.5), random_probs(rng, n, k, sharp=1.5)
    answers = np.array([rng.choice(k, p=row) for row in pa])
    correct_a = pa.argmax(1) == answers
    correct_b = pb.argmax(1) == answers
    idx = rng.integers(0, n, size=(20000, n))
    diffs = correct_a[idx].mean(1) - correct_b[idx].mean(1)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    got = metrics.paired_bootstrap(pa, pb, answers, "accuracy", n_resamples=20000, seed=9)
    assert got.high - got.low > 0.05
    assert got.low == pytest.approx(lo, abs=0.01)
    assert got.high == pytest.approx(hi, abs=0.01)
    assert got.low < got.estimate < got.high


def test_paired_bootstrap_edge_cases() -> None:
    rng = np.random.default_rng(0)
    p = random_probs(rng, 30, 3)
    answers = rng.integers(0, 3, size=30)
    for metric in metrics.BOOTSTRAP_METRICS:
        assert tuple(metrics.paired_bootstrap(p, p.copy(), answers, metric)) == (0.0, 0.0, 0.0)
    # One question: every resample repeats it, so the interval is the point.
    one = metrics.paired_bootstrap([[0.8, 0.2]], [[0.4, 0.6]], [0], "brier", n_resamples=50)
    assert one.estimate == pytest.approx(2 * 0.2**2 - 2 * 0.6**2)
    assert one.low == one.high == one.estimate
    # A seed fixes the interval; another seed moves it.
    q = random_probs(rng, 30, 3)
    first = metrics.paired_bootstrap(p, q, answers, "nll", n_resamples=200, seed=5)
    assert first == metrics.paired_bootstrap(p, q, answers, "nll", n_resamples=200, seed=5)
    assert first != metrics.paired_bootstrap(p, q, answers, "nll", n_resamples=200, seed=6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "auroc"}, "metric must be one of"),
        ({"probs_b": np.ones((2, 3)) / 3}, "same shape"),
        ({"n_resamples": 0}, "n_resamples"),
        ({"confidence": 1.0}, "confidence"),
        ({"seed": -1}, "seed"),
        ({"answers": np.array([0, 2])}, "0..1"),
    ],
)
def test_bad_bootstrap_inputs(kwargs: dict, message: str) -> None:
    args = {"probs_a": np.full((2, 2), 0.5), "probs_b": np.full((2, 2), 0.5)}
    args |= {"answers": np.array([0, 1]), "metric": "nll"} | kwargs
    with pytest.raises(lora_ens_rs.InputError, match=message):
        metrics.paired_bootstrap(**args)


# --- Selective prediction ---------------------------------------------------------------


def np_risks(errors: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Selective risk at coverage k/N, answering by ascending score, ties by index."""
    order = np.lexsort((np.arange(len(scores)), scores))
    return np.cumsum(errors[order]) / np.arange(1, len(scores) + 1)


@pytest.mark.parametrize("seed", range(4))
def test_risk_coverage_and_aurc_match_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 200, 4
    probs = random_probs(rng, n, k, sharp=2.0)
    answers = rng.integers(0, k, size=n)
    entropy = -(probs * np.log(probs)).sum(1)
    scores = np.round(entropy, 1) if seed % 2 else entropy  # many ties on odd seeds
    errors = (probs.argmax(1) != answers).astype(float)
    risk = np_risks(errors, scores)
    rc = metrics.risk_coverage(probs, answers, scores)
    np.testing.assert_allclose(rc.coverage, np.arange(1, n + 1) / n, rtol=1e-12)
    np.testing.assert_allclose(rc.risk, risk, rtol=1e-12)
    np.testing.assert_allclose(rc.accuracy, 1 - risk, rtol=1e-12, atol=1e-12)
    assert metrics.aurc(probs, answers, scores) == pytest.approx(risk.mean(), rel=1e-12)
    c = int(n - errors.sum())
    best = sum((j - c) / j for j in range(c + 1, n + 1)) / n
    assert metrics.optimal_aurc(probs, answers) == pytest.approx(best, rel=1e-12)
    excess = metrics.excess_aurc(probs, answers, scores)
    assert excess == pytest.approx(risk.mean() - best, rel=1e-9)
    assert excess > 0  # entropy is not a perfect oracle on random data
    # The best ordering is the least over many orderings, and an oracle score reaches it.
    for _ in range(50):
        assert metrics.aurc(probs, answers, rng.permutation(n)) >= best
    assert metrics.aurc(probs, answers, errors) == pytest.approx(best, rel=1e-12)
    assert metrics.excess_aurc(probs, answers, errors) == pytest.approx(0.0, abs=1e-15)


def test_selective_edge_cases() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    scores = [0.4, 0.1, 0.3, 0.2]
    assert metrics.aurc(probs, [0, 1, 0, 1], scores) == 0.0  # all right
    assert metrics.aurc(probs, [1, 0, 1, 0], scores) == 1.0  # all wrong
    assert metrics.optimal_aurc(probs, [1, 0, 1, 0]) == 1.0
    # Ties: equal scores answer questions in index order (wrong, right, right, wrong).
    answers = [1, 1, 0, 0]
    tied = metrics.risk_coverage(probs, answers, [0.5] * 4)
    np.testing.assert_allclose(tied.risk, [1.0, 0.5, 1 / 3, 0.5])
    # One question.
    assert metrics.aurc([[0.6, 0.4]], [0], [3.0]) == 0.0
    assert metrics.risk_coverage([[0.6, 0.4]], [1], [3.0]).risk.tolist() == [1.0]


def test_bad_selective_inputs() -> None:
    p = np.full((2, 2), 0.5)
    with pytest.raises(lora_ens_rs.InputError, match="scores must have shape"):
        metrics.aurc(p, [0, 1], [0.1])
    with pytest.raises(lora_ens_rs.InputError, match=r"scores\[1\] is NaN"):
        metrics.risk_coverage(p, [0, 1], [0.1, np.nan])
    with pytest.raises(lora_ens_rs.InputError, match="N = 0"):
        metrics.optimal_aurc(np.ones((0, 2)), np.zeros(0, dtype=int))


# --- Temperature scaling ----------------------------------------------------------------


def np_temperature_nll(logits: np.ndarray, answers: np.ndarray, t: float) -> float:
    z = logits / t
    m = z.max(1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(answers)), answers].mean())


def sampled(rng: np.random.Generator, n: int, k: int, scale: float):
    """Answers drawn from softmax(base), returned with the logits scale * base."""
    base = rng.normal(size=(n, k)) * 1.5
    p = np.exp(base - base.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    answers = np.array([rng.choice(k, p=row) for row in p])
    return base * scale, answers


@pytest.mark.parametrize(("scale", "seed"), [(4.0, 0), (0.3, 1), (1.0, 2)])
def test_fitted_temperature_minimises_the_nll(scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits, answers = sampled(rng, 500, 4, scale)
    t = metrics.fit_temperature(logits, answers)
    at = np_temperature_nll(logits, answers, t)
    assert at <= np_temperature_nll(logits, answers, t * (1 + 1e-3))
    assert at <= np_temperature_nll(logits, answers, t * (1 - 1e-3))
    grid = np.geomspace(0.05, 20.0, 20001)
    nlls = [np_temperature_nll(logits, answers, g) for g in grid]
    assert at <= min(nlls) + 1e-12
    best = grid[int(np.argmin(nlls))]
    assert t == pytest.approx(best, rel=1e-3)
    # Over-confident logits (scaled up) are softened, under-confident ones sharpened; the true
    # temperature is the scale, up to sampling noise.
    if scale > 1:
        assert t > 1
    elif scale < 1:
        assert t < 1
    assert t == pytest.approx(scale, rel=0.35)


def test_apply_temperature_is_a_softmax_keeping_the_argmax() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(50, 5)) * 3
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(metrics.apply_temperature(logits, 1.0), e / e.sum(1, keepdims=True))
    for t in (0.07, 0.5, 2.0, 15.0):
        p = metrics.apply_temperature(logits, t)
        np.testing.assert_allclose(p.sum(1), 1.0)
        np.testing.assert_array_equal(p.argmax(1), logits.argmax(1))
        assert metrics.accuracy(p, logits.argmax(1)) == 1.0


def test_padding_is_ignored_by_temperature_scaling() -> None:
    rng = np.random.default_rng(6)
    logits, answers = sampled(rng, 60, 3, 2.0)
    n_options = np.where(np.arange(60) % 2 == 0, 3, 2)
    answers = np.minimum(answers, n_options - 1)
    padded = np.c_[logits, np.full(60, 99.0)]  # a junk fourth slot, never read
    padded[n_options == 2, 2] = -7.0
    t = metrics.fit_temperature(padded, answers, n_options=n_options)
    # The same fit by hand over each question's real options.
    rows = [logits[i, : n_options[i]] for i in range(60)]

    def nll_at(t: float) -> float:
        return -np.mean(
            [r[a] / t - np.log(np.exp(r / t).sum()) for r, a in zip(rows, answers, strict=True)]
        )

    assert nll_at(t) <= min(nll_at(t * 1.001), nll_at(t * 0.999))
    p = metrics.apply_temperature(padded, t, n_options=n_options)
    assert (p[:, 3] == 0).all() and (p[n_options == 2, 2] == 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0)


@pytest.mark.parametrize(
    ("logits", "answers", "message"),
    [
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "logits has 0 values"),
        (np.array([[0.0, np.nan]]), [0], r"logits\[0, 1\] is NaN"),
        (np.array([[0.0, np.inf]]), [0], r"logits\[0, 1\] is inf"),
        (np.zeros((1, 2)), [2], r"answers\[0\] = 2 is out of range"),
        (np.zeros((1, 2)), [-1], "answers must be >= 0"),
        (np.zeros((2, 2)), [0], "answers must have shape"),
        (np.zeros(2), [0], "logits must have shape"),
    ],
)
def test_bad_temperature_inputs(logits, answers, message: str) -> None:
    with pytest.raises(lora_ens_rs.InputError, match=message):
        metrics.fit_temperature(logits, answers)


@pytest.mark.parametrize("t", [0.0, -1.0, np.nan, np.inf])
def test_bad_temperatures(t: float) -> None:
    with pytest.raises(lora_ens_rs.InputError, match="temperature must be finite and > 0"):
        metrics.apply_temperature(np.zeros((1, 2)), t)
