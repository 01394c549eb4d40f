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
