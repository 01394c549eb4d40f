"""Predictions of a trained ensemble in torch: members' probabilities, MC dropout, metrics.

    from lora_ens_rs.train import predict, mc_dropout_probs, member_and_ensemble_metrics
    probs = predict(result, questions)                      # (N, M, K), dropout off
    samples = mc_dropout_probs(result, questions, samples=8)   # (N, T, K), one member
    members, ensemble = member_and_ensemble_metrics(probs, answers)  # accuracy, NLL, Brier, ECE

``result`` is what :func:`lora_ens_rs.train.train_ensemble` returned (or its ``model``);
questions are dicts from :func:`lora_ens_rs.read_questions`, encoded with the run's scoring.
The exported ensemble gives the same members' probabilities in the engine
(``lora_ens_rs.Ensemble``), which is the faster way to score many questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lora_ens_rs import metrics
from lora_ens_rs.train.data import Example, Question, encode_questions
from lora_ens_rs.train.model import EnsembleModel


def member_and_ensemble_metrics(
    member_probs: np.ndarray, answers: np.ndarray
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-member and ensemble (mean of members) accuracy, NLL, Brier and ECE.

    Args:
        member_probs: (N, M, K) probabilities.
        answers: (N,) answer indices.

    Returns:
        ``(members, ensemble)``: a metrics dict per member and one for the ensemble.
    """
    members = [metrics.summary(member_probs[:, m], answers) for m in range(member_probs.shape[1])]
    return members, metrics.summary(member_probs.mean(axis=1), answers)


def _model(trained: Any) -> EnsembleModel:
    """The :class:`EnsembleModel` of a TrainResult (or the model itself)."""
    return trained if isinstance(trained, EnsembleModel) else trained.model


def _encoded(
    model: EnsembleModel, questions: Sequence[Question] | Sequence[Example]
) -> list[Example]:
    items = list(questions)
    if all(isinstance(q, Example) for q in items):
        return items
    return encode_questions(items, model.base.tokenizer, model.scoring, model.normalization)


def predict(
    trained: Any,
    questions: Sequence[Question] | Sequence[Example],
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Each member's option probabilities in torch (eval mode: no dropout).

    Args:
        trained: a ``TrainResult`` or its ``model``.
        questions: question dicts (encoded with the run's scoring) or encoded examples.
        batch_size: questions per pass.

    Returns:
        (N, M, K) float64, zero-padded; ``.mean(1)`` is the ensemble.

    Example:
        >>> probs = predict(result, questions)   # result = train_ensemble(...), 2 members
        >>> probs.shape                          # 8 questions of 5 options
        (8, 2, 5)
    """
    model = _model(trained)
    return model.member_probs(_encoded(model, questions), batch_size=batch_size)


def mc_dropout_probs(
    trained: Any,
    questions: Sequence[Question] | Sequence[Example],
    samples: int,
    *,
    member: int = 0,
    p: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> np.ndarray:
    """The MC-dropout baseline: one member with LoRA dropout on at test time, T samples.

    Args:
        trained: a ``TrainResult`` or its ``model`` (trained with ``dropout > 0``).
        questions: question dicts or encoded examples.
        samples: T.
        member: which member to sample.
        p: dropout probability (default: the trained one).
        seed: seeds the dropout masks.
        batch_size: questions per pass.

    Returns:
        (N, T, K) float64 probabilities; ``.mean(1)`` is the MC-dropout ensemble.

    Raises:
        InputError: ``samples < 1`` or the adapters have no dropout and ``p`` is None.

    Example:
        >>> mc = mc_dropout_probs(result, questions, samples=5)   # trained with dropout 0.1
        >>> mc.shape
        (8, 5, 5)
        >>> bool(metrics.nll(mc.mean(1), answers) > 0)
        True
    """
    model = _model(trained)
    return model.mc_dropout_probs(
        _encoded(model, questions),
        samples,
        member=member,
        p=p,
        seed=seed,
        batch_size=batch_size,
    )
