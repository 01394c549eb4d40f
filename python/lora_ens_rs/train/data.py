"""Questions -> token sequences -> padded batches, with the engine's template and tokenizer.

    examples = encode_questions(questions, tokenizer, scoring="choices", normalization="per_token")
    batch = collate([examples[i] for i in rows])         # tokens, positions, 4-D mask, targets
    order = epoch_order(len(examples), seed=3, epoch=0)  # member's data order for one epoch

Label scoring: one sequence per question, ``label_prompt(question, choices, labels)``; the
answer is read at its last token over the tokens of ``label_continuation(label)``.

Choice scoring: the context ``choice_context(question)`` once, followed by every choice's
``choice_continuation(text)`` tokens *packed* into one row: each choice attends to the context
and causally to itself, never to another choice, and its positions continue from the context,
exactly as the engine scores it with a shared KV cache. The choice's log-likelihood is the sum
of its tokens' log-probabilities (the first read at the context's last position), divided by
1, its token count or its UTF-8 byte count (``sum`` / ``per_token`` / ``per_byte``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lora_ens_rs
from lora_ens_rs import _core, data
from lora_ens_rs.errors import DataError, InputError, LabelError, MissingFileError
from lora_ens_rs.train.config import TrainConfig

Question = dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One question as a (packed) token sequence.

    Attributes:
        tokens: the token ids of the row.
        segments: 0 for prompt / context tokens, ``j + 1`` for choice ``j``'s tokens.
        positions: rotary position of each token.
        read_at: row indices whose next-token distribution is needed.
        answer: index of the right option.
        n_options: K of this question.
        label_tokens: label scoring: the token of each label (K,).
        pred_read: choice scoring: for each predicted token, its index into ``read_at``.
        pred_token: choice scoring: the predicted token ids.
        pred_option: choice scoring: the option each predicted token belongs to.
        denominators: choice scoring: each option's normaliser (K,).
        id: the question id.
    """

    tokens: tuple[int, ...]
    segments: tuple[int, ...]
    positions: tuple[int, ...]
    read_at: tuple[int, ...]
    answer: int
    n_options: int
    label_tokens: tuple[int, ...] = ()
    pred_read: tuple[int, ...] = ()
    pred_token: tuple[int, ...] = ()
    pred_option: tuple[int, ...] = ()
    denominators: tuple[float, ...] = ()
    id: str = ""


def _label_token(tokenizer: _core.Tokenizer, label: str, qid: str) -> int:
    ids = tokenizer.encode(_core.label_continuation(label))
    if len(ids) != 1:
        raise LabelError(
            f"question {qid!r}: label {label!r} is {len(ids)} tokens "
            f"({_core.label_continuation(label)!r}); label scoring trains on one-token labels"
        )
    return ids[0]


def encode_questions(
    questions: Sequence[dict[str, Any]],
    tokenizer: _core.Tokenizer,
    scoring: str,
    normalization: str = "per_token",
    *,
    source: str = "questions",
) -> list[Example]:
    """Encode questions (dicts from :func:`lora_ens_rs.read_questions`) for training.

    Args:
        questions: dicts with ``question``, ``choices``, ``labels``, ``answer``, ``id``.
        tokenizer: the engine tokenizer.
        scoring: ``"labels"`` or ``"choices"``.
        normalization: ``sum``, ``per_token`` or ``per_byte`` (choices only).
        source: names the data in error messages.

    Returns:
        One :class:`Example` per question, in order.

    Raises:
        DataError: a question has no answer, no choices, or an empty context.
        LabelError: a label is not one token (label scoring).
    """
    out = []
    for n, q in enumerate(questions):
        qid = str(q.get("id") or f"#{n}")
        choices, answer = list(q.get("choices") or []), q.get("answer")
        if not choices:
            raise DataError(f"{source}: question {qid!r} has no choices")
        if answer is None or not 0 <= int(answer) < len(choices):
            raise DataError(f"{source}: question {qid!r} has no valid answer (got {answer!r})")
        if scoring == "labels":
            labels = list(q.get("labels") or [])
            prompt = _core.label_prompt(q["question"], choices, labels)
            # As the engine's scorer: the prompt with the model's special tokens (BOS where
            # its tokenizer adds one), each continuation without.
            tokens = tokenizer.encode(prompt, add_special_tokens=True)
            t = len(tokens)
            out.append(
                Example(
                    tokens=tuple(tokens),
                    segments=(0,) * t,
                    positions=tuple(range(t)),
                    read_at=(t - 1,),
                    answer=int(answer),
                    n_options=len(choices),
                    label_tokens=tuple(_label_token(tokenizer, lab, qid) for lab in labels),
                    id=qid,
                )
            )
            continue
        context = tokenizer.encode(_core.choice_context(q["question"]), add_special_tokens=True)
        if not context:
            raise DataError(f"{source}: question {qid!r} has an empty context")
        tokens, segments = list(context), [0] * len(context)
        positions = list(range(len(context)))
        read_at = [len(context) - 1]
        pred_read, pred_token, pred_option, denominators = [], [], [], []
        for j, choice in enumerate(choices):
            text = _core.choice_continuation(choice)
            ids = tokenizer.encode(text)
            if not ids:
                raise DataError(f"{source}: question {qid!r} choice {j} has no tokens")
            for k, tok in enumerate(ids):
                if k == 0:
                    pred_read.append(0)  # the context's last position
                else:
                    pred_read.append(len(read_at))
                    read_at.append(len(tokens) - 1)  # this choice's previous token
                pred_token.append(tok)
                pred_option.append(j)
                tokens.append(tok)
                segments.append(j + 1)
                positions.append(len(context) + k)
            denominators.append(
                {"sum": 1.0, "per_token": float(len(ids)), "per_byte": float(len(text.encode()))}[
                    normalization
                ]
            )
        out.append(
            Example(
                tokens=tuple(tokens),
                segments=tuple(segments),
                positions=tuple(positions),
                read_at=tuple(read_at),
                answer=int(answer),
                n_options=len(choices),
                pred_read=tuple(pred_read),
                pred_token=tuple(pred_token),
                pred_option=tuple(pred_option),
                denominators=tuple(denominators),
                id=qid,
            )
        )
    return out


@dataclass
class Batch:
    """Padded rows ready for the model (R rows, T positions, K options).

    Attributes:
        tokens: (R, T) token ids, 0-padded.
        positions: (R, T) rotary positions.
        mask: (R, 1, T, T) bool attention mask (True: may attend).
        read_flat: (Q,) indices into the flattened (R * T) positions to read.
        read_row: (Q,) the row of each read.
        answers: (R,) answer indices.
        valid: (R, K) which options exist.
        label_tokens: (R, K) label scoring: the label token ids (0-padded).
        pred_q: (P,) choice scoring: index into ``read_flat`` of each predicted token.
        pred_token: (P,) predicted token ids.
        pred_slot: (P,) ``row * K + option`` of each predicted token.
        denominators: (R, K) choice normalisers (1 where padded).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    read_flat: torch.Tensor
    read_row: torch.Tensor
    answers: torch.Tensor
    valid: torch.Tensor
    label_tokens: torch.Tensor
    pred_q: torch.Tensor
    pred_token: torch.Tensor
    pred_slot: torch.Tensor
    denominators: torch.Tensor

    @property
    def rows(self) -> int:
        """R."""
        return int(self.tokens.shape[0])

    @property
    def width(self) -> int:
        """T."""
        return int(self.tokens.shape[1])


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """(R, 1, T, T) bool mask for packed rows: causal, within the context or one's own choice.

    Args:
        segments: (R, T) segment ids, -1 for padding.

    Returns:
        True where query position i may attend to key position j. Padding attends to itself
        only (no fully masked rows).
    """
    t = segments.shape[1]
    i = torch.arange(t)
    causal = i[None, :] <= i[:, None]  # [query, key]
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = causal & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q)) & (seg_q >= 0)
    allowed |= torch.eye(t, dtype=torch.bool)
    return allowed[:, None]


def collate(
    examples: Sequence[Example], n_options: int | None = None, width: int | None = None
) -> Batch:
    """Pad ``examples`` (one row each) into a :class:`Batch`.

    Args:
        examples: the rows, in order (member-major when stacking members).
        n_options: K of the batch (default: the largest ``n_options``).
        width: pad to at least this many tokens (default: the longest row).

    Returns:
        The batch.
    """
    r = len(examples)
    t = max(width or 0, *(len(e.tokens) for e in examples))
    k = n_options or max(e.n_options for e in examples)
    tokens = torch.zeros((r, t), dtype=torch.long)
    positions = torch.zeros((r, t), dtype=torch.long)
    segments = torch.full((r, t), -1, dtype=torch.long)
    valid = torch.zeros((r, k), dtype=torch.bool)
    label_tokens = torch.zeros((r, k), dtype=torch.long)
    denominators = torch.ones((r, k), dtype=torch.float32)
    read_flat, read_row, pred_q, pred_token, pred_slot = [], [], [], [], []
    for row, e in enumerate(examples):
        n = len(e.tokens)
        tokens[row, :n] = torch.tensor(e.tokens)
        positions[row, :n] = torch.tensor(e.positions)
        segments[row, :n] = torch.tensor(e.segments)
        valid[row, : e.n_options] = True
        if e.label_tokens:
            label_tokens[row, : e.n_options] = torch.tensor(e.label_tokens)
        if e.denominators:
            denominators[row, : e.n_options] = torch.tensor(e.denominators)
        base = len(read_flat)
        read_flat += [row * t + p for p in e.read_at]
        read_row += [row] * len(e.read_at)
        pred_q += [base + q for q in e.pred_read]
        pred_token += e.pred_token
        pred_slot += [row * k + o for o in e.pred_option]
    long = torch.long
    return Batch(
        tokens=tokens,
        positions=positions,
        mask=attention_mask(segments),
        read_flat=torch.tensor(read_flat, dtype=long),
        read_row=torch.tensor(read_row, dtype=long),
        answers=torch.tensor([e.answer for e in examples], dtype=long),
        valid=valid,
        label_tokens=label_tokens,
        pred_q=torch.tensor(pred_q, dtype=long),
        pred_token=torch.tensor(pred_token, dtype=long),
        pred_slot=torch.tensor(pred_slot, dtype=long),
        denominators=denominators,
    )


def pad_hidden(states: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Stack per-row hidden states (T_i, H) into (R, width, H), zero-padded on the right."""
    out = states[0].new_zeros((len(states), width, states[0].shape[-1]))
    for row, h in enumerate(states):
        out[row, : h.shape[0]] = h
    return out


def length_buckets(lengths: Sequence[int], pass_cost: int) -> list[list[int]]:
    """Split rows into passes by length so that padding costs little: indices per pass.

    The rows are sorted by length and cut into contiguous runs minimising
    ``sum(rows * longest) + pass_cost * passes``: the tokens computed, padding included, plus a
    fixed price per extra pass (in tokens) for the smaller matrix products and the per-pass
    overhead. Exact dynamic programme over the cut points, O(R^2) for R rows.

    Example:
        >>> length_buckets([10, 50, 11, 52], pass_cost=20)
        [[0, 2], [1, 3]]
        >>> length_buckets([10, 50, 11, 52], pass_cost=1000)
        [[0, 2, 1, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes = [lengths[i] for i in order]
    # best[j]: cheapest plan for the j shortest rows; cut[j]: where its last pass starts.
    best, cut = [0.0] + [math.inf] * len(sizes), [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * sizes[j - 1] + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes, j = [], len(sizes)
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which a member with ``seed`` visits ``n`` examples in ``epoch``.

    A pure function of (seed, epoch), so a resumed run sees the same orders.

    Example:
        >>> epoch_order(5, seed=0, epoch=0).tolist() == epoch_order(5, 0, 0).tolist()
        True
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(n)


def _read(path: str, config: TrainConfig, limit: int | None, what: str) -> list[Question]:
    if not Path(path).exists():
        raise MissingFileError(f"{what} file {path!r} does not exist")
    return list(lora_ens_rs.read_questions(path, format=config.format, limit=limit))


def load_questions(
    config: TrainConfig,
    train: Sequence[Question] | None = None,
    val: Sequence[Question] | None = None,
) -> tuple[list[Question], list[Question]]:
    """Training and validation questions from the config's files or the given lists.

    Args:
        config: ``data``, ``val``, ``format``, ``limit``, ``val_limit``, ``val_fraction``.
        train: training questions (instead of ``config.data``).
        val: validation questions (instead of ``config.val``).

    Returns:
        ``(train, val)``; without ``val`` a fixed ``val_fraction`` of train is held out
        (:func:`lora_ens_rs.data.split`, the same questions whatever the seed).

    Raises:
        InputError: no training data given.
        MissingFileError: a data file does not exist.
    """
    if train is None:
        if config.data is None:
            raise InputError("no training data: set TrainConfig.data or pass train=")
        train = _read(config.data, config, config.limit, "training data")
    elif config.limit is not None:
        train = list(train)[: config.limit]
    train = list(train)
    if val is None and config.val is not None:
        val = _read(config.val, config, config.val_limit, "validation data")
    if val is None:
        if len(train) < 2:
            raise DataError(
                f"cannot hold out validation questions from {len(train)} question(s); pass val"
            )
        train, val = data.split(train, config.val_fraction)
    val = list(val)[: config.val_limit] if config.val_limit is not None else list(val)
    return train, val
