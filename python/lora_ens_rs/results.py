"""Result objects of :class:`lora_ens_rs.Ensemble`: :class:`Scores` (one row per question)
and :class:`Generation` (one entry per generated token), NumPy arrays throughout.

    s = ens.score_choices(contexts, choices)
    s.probs[i, : s.n_options[i]]     # the ensemble's distribution over question i's options
    s.to_records()                    # list of dicts, one per question (JSON-ready)
    s.to_json("scores.json")          # written atomically
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lora_ens_rs.atomic import write_file

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Scores:
    """Scores of N questions by M members over up to K options each.

    Attributes:
        member_probs: (N, M, K) float32, each member's softmax over the question's options.
        probs: (N, K) float32, the ensemble's distribution (mean of the members').
        prediction: (N,) int64, argmax of ``probs``.
        confidence: (N,) float32, max of ``probs``.
        entropy: (N,) float32, H[probs] in nats (total uncertainty).
        expected_entropy: (N,) float32, the members' mean entropy (aleatoric part).
        mutual_information: (N,) float32, ``entropy - expected_entropy`` (epistemic part).
        member_predictions: (N, M) int64, each member's argmax.
        agreement: (N,) float32, the fraction of members that predict ``prediction``.
        n_options: (N,) int64, options of each question; slots beyond are padding (p = 0).
        member_scores: (N, M, K) float32, what each member's softmax was taken over (label
            logits or normalized choice log-likelihoods; ``-inf`` in padding).
        options: the labels (or choice texts) of each question.
        members: the members' names (``["base"]`` for the base model alone).
    """

    member_probs: F32
    probs: F32
    prediction: I64
    confidence: F32
    entropy: F32
    expected_entropy: F32
    mutual_information: F32
    member_predictions: I64
    agreement: F32
    n_options: I64
    member_scores: F32
    options: list[list[str]]
    members: list[str]

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, Any], options: list[list[str]], n: int, members: list[str]
    ) -> Scores:
        """Build from the engine's dict of arrays; a single shared option list is repeated."""
        per_question = options * n if len(options) == 1 else options
        fields = {k: arrays[k] for k in cls.__dataclass_fields__ if k in arrays}
        return cls(**fields, options=per_question, members=members)

    def __len__(self) -> int:
        return len(self.prediction)

    @property
    def prediction_labels(self) -> list[str]:
        """The predicted option (label or choice text) of each question."""
        return [opts[int(p)] for opts, p in zip(self.options, self.prediction, strict=True)]

    def to_records(self, members: bool = False) -> list[dict[str, Any]]:
        """One JSON-ready dict per question (padding dropped).

        Args:
            members: include ``member_probs`` ([M][K_i]) and ``member_predictions``.

        Returns:
            Dicts with ``options``, ``probs``, ``prediction`` (index), ``prediction_label``,
            ``confidence``, ``entropy``, ``expected_entropy``, ``mutual_information``,
            ``agreement``.
        """
        records = []
        for i, opts in enumerate(self.options):
            k = int(self.n_options[i])
            rec: dict[str, Any] = {
                "options": opts,
                "probs": self.probs[i, :k].tolist(),
                "prediction": int(self.prediction[i]),
                "prediction_label": opts[int(self.prediction[i])],
                "confidence": float(self.confidence[i]),
                "entropy": float(self.entropy[i]),
                "expected_entropy": float(self.expected_entropy[i]),
                "mutual_information": float(self.mutual_information[i]),
                "agreement": float(self.agreement[i]),
            }
            if members:
                rec["member_probs"] = self.member_probs[i, :, :k].tolist()
                rec["member_predictions"] = self.member_predictions[i].tolist()
            records.append(rec)
        return records

    def to_json(self, path: str | os.PathLike[str] | None = None, members: bool = False) -> str:
        """The records as JSON (``{"members": [...], "questions": [...]}``).

        Args:
            path: also write it there, atomically (temporary file, then rename).
            members: include each member's probabilities.

        Returns:
            The JSON text.
        """
        text = json.dumps({"members": self.members, "questions": self.to_records(members)})
        if path is not None:
            write_file(path, text)
        return text


@dataclass(frozen=True, eq=False)
class Generation:
    """Text generated by the ensemble and its uncertainty at each step.

    Attributes:
        text: the generated text (special tokens and the stop string left out).
        tokens: generated token ids.
        finish_reason: ``"eos"``, ``"stop"`` (a stop string) or ``"length"``.
        probs: (T,) float32, the mixture's probability of each picked token.
        entropy: (T,) float32, entropy of the mixture over the vocabulary at each step.
        expected_entropy: (T,) float32, the members' mean entropy at each step.
        mutual_information: (T,) float32, the members' disagreement at each step.
    """

    text: str
    tokens: list[int]
    finish_reason: str
    probs: F32
    entropy: F32
    expected_entropy: F32
    mutual_information: F32

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Generation:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def __str__(self) -> str:
        return self.text
