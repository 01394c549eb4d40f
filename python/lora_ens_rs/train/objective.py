"""The training objective, matching the engine's two scoring modes.

    >>> from lora_ens_rs.train.data import collate
    >>> batch = collate(examples[:4])                 # 4 questions of 5 choices
    >>> base = result.model.base
    >>> hidden = torch.randn(batch.rows, batch.width, base.hidden_size)   # after the final norm
    >>> scores, full = option_scores(hidden, batch, base.lm_head.weight, scoring="choices")
    >>> logp = option_log_probs(scores, batch)        # (R, K) log-softmax over the options
    >>> loss, nll = row_losses(logp, batch, base_logp=logp, kl=0.1)   # (R,) each
    >>> tuple(logp.shape), full, bool(torch.equal(loss, nll))        # no KL to itself
    ((4, 5), None, True)

- labels: the logits of the label tokens at the prompt's last position; the softmax over those
  K tokens is the prediction (the engine's ``score``). With ``full_vocabulary`` the loss is the
  answer token's cross-entropy over the whole vocabulary (the prediction is unchanged).
- choices: each option's normalised log-likelihood (sum / per token / per byte), softmaxed over
  the K options (the engine's ``score_choices``).

The loss of member m is the mean over its questions of ``-log p_m(answer)`` plus
``kl * KL(p_m || p_base)`` over the options, with ``p_base`` the frozen model's prediction.
Members' losses are summed, so each member's gradient is that of its own loss alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lora_ens_rs.train.data import Batch


def option_scores(
    hidden: torch.Tensor,
    batch: Batch,
    head_weight: torch.Tensor,
    scoring: str,
    *,
    full_vocabulary: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-option scores of each row (``-inf`` where an option does not exist).

    Args:
        hidden: (R, T, H) final hidden states (after the model's final norm).
        batch: the batch the hidden states belong to.
        head_weight: (V, H) the output layer's weight.
        scoring: ``"labels"`` or ``"choices"``.
        full_vocabulary: labels: also return each label token's full-vocabulary log-prob.

    Returns:
        ``(scores, full)``: scores (R, K) are label logits or normalised choice
        log-likelihoods; ``full`` (R, K) the label tokens' full-vocabulary log-probs or None.
    """
    r, t, h = hidden.shape
    k = batch.valid.shape[1]
    read = hidden.reshape(r * t, h)[batch.read_flat]  # (Q, H)
    full = None
    if scoring == "labels":
        # One read per row, at the prompt's last token: K rows of the output layer only.
        rows = head_weight[batch.label_tokens]  # (R, K, H)
        scores = torch.einsum("rh,rkh->rk", read, rows)
        if full_vocabulary:
            logp = F.log_softmax(read @ head_weight.T, dim=-1)
            full = logp.gather(1, batch.label_tokens)
    else:
        logp = F.log_softmax(read @ head_weight.T, dim=-1)  # (Q, V)
        token_logp = logp[batch.pred_q, batch.pred_token]  # (P,)
        sums = token_logp.new_zeros(r * k).index_add(0, batch.pred_slot, token_logp)
        scores = sums.view(r, k) / batch.denominators
    return scores.masked_fill(~batch.valid, float("-inf")), full


def option_log_probs(scores: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Log-softmax over each row's existing options (``-inf`` elsewhere)."""
    return F.log_softmax(scores, dim=-1).masked_fill(~batch.valid, float("-inf"))


def kl_to_base(logp: torch.Tensor, base_logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``KL(p || p_base)`` per row over the valid options.

    Args:
        logp: (R, K) the member's option log-probs.
        base_logp: (R, K) the base model's.
        valid: (R, K) option mask.

    Returns:
        (R,) KL divergences (nats).
    """
    zero = torch.zeros((), dtype=logp.dtype)
    # Zero the missing options first: -inf there would give NaN gradients through `where`.
    lp = torch.where(valid, logp, zero)
    lq = torch.where(valid, base_logp, zero)
    return torch.where(valid, lp.exp() * (lp - lq), zero).sum(-1)


def row_losses(
    logp: torch.Tensor,
    batch: Batch,
    *,
    full: torch.Tensor | None = None,
    base_logp: torch.Tensor | None = None,
    kl: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's loss: ``-log p(answer)`` plus ``kl * KL(p || p_base)``.

    Args:
        logp: (R, K) option log-probs.
        batch: the batch (answers, valid).
        full: (R, K) full-vocabulary label log-probs: the cross-entropy uses them.
        base_logp: (R, K) the base model's option log-probs (needed when ``kl > 0``).
        kl: beta of the KL term.

    Returns:
        ``(loss, nll)``: (R,) total loss and (R,) its cross-entropy part.
    """
    answers = batch.answers[:, None]
    source = full if full is not None else logp
    ce = -source.gather(1, answers)[:, 0]
    loss = ce
    if kl > 0:
        if base_logp is None:
            raise ValueError("kl > 0 needs the base model's log-probs")
        loss = ce + kl * kl_to_base(logp, base_logp, batch.valid)
    return loss, ce
