"""`EnsembleModel`: the frozen base, its M-member LoRA stack and the scoring head, in torch.

    >>> model = EnsembleModel(result.model.base, result.model.stack, scoring="choices",
    ...                       normalization="per_token")   # the trained stack, M = 2
    >>> states = model.trunk(examples[:4])   # hidden states below the first adapter
    >>> rows = [0, 1, 2, 3]                  # member 0: questions 0, 1; member 1: 2, 3
    >>> batch = collate([examples[i] for i in rows])
    >>> logp, full = model.log_probs(batch, model.hidden_in(rows, examples, states, batch.width))
    >>> model.member_probs(examples[:4]).shape   # (N, M, K), eval mode
    (4, 2, 5)
    >>> model.mc_dropout_probs(examples[:4], samples=8, member=0).shape   # (N, T, K)
    (4, 8, 5)

Layers below the lowest adapted layer k are the same for every member, so their output (the
"trunk", computed once per question, without gradients) can be cached in memory and reused by
every member and epoch; only layers k.. , the final norm and the K needed rows (labels) or the
read positions (choices) of the output layer run per step. Rows of a batch are member-major:
member m's questions are rows ``m*B:(m+1)*B`` (training passes instead name each row's member
with ``stack.select``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lora_ens_rs.errors import InputError
from lora_ens_rs.train.base import BaseModel
from lora_ens_rs.train.data import Batch, Example, collate, pad_hidden
from lora_ens_rs.train.lora import LoraStack
from lora_ens_rs.train.objective import option_log_probs, option_scores


class EnsembleModel:
    """M LoRA members on a frozen base, with the objective's scoring.

    Args:
        base: the frozen base model (adapters already attached by ``stack``).
        stack: the LoRA stack attached to ``base.model``.
        scoring: ``"labels"`` or ``"choices"``.
        normalization: choice normalisation (recorded; applied when encoding).
        full_vocabulary: label scoring: also compute full-vocabulary label log-probs.
    """

    def __init__(
        self,
        base: BaseModel,
        stack: LoraStack,
        scoring: str,
        normalization: str = "per_token",
        *,
        full_vocabulary: bool = False,
    ) -> None:
        self.base = base
        self.stack = stack
        self.scoring = scoring
        self.normalization = normalization
        self.full_vocabulary = full_vocabulary
        self.first_layer = stack.first_layer

    @property
    def n_members(self) -> int:
        """M."""
        return self.stack.n_members

    # ------------------------------------------------------------------------------------
    # The two halves of the forward pass

    def _layers(self, h: torch.Tensor, batch: Batch, lo: int, hi: int) -> torch.Tensor:
        decoder = self.base.decoder
        cos_sin = decoder.rotary_emb(h, batch.positions)
        for layer in decoder.layers[lo:hi]:
            h = layer(
                h,
                attention_mask=batch.mask,
                position_embeddings=cos_sin,
                position_ids=batch.positions,
            )
        return h

    @torch.no_grad()
    def trunk_batch(self, batch: Batch) -> torch.Tensor:
        """(R, T, H) hidden states entering the first adapted layer (no gradients)."""
        h = self.base.decoder.embed_tokens(batch.tokens)
        return self._layers(h, batch, 0, self.first_layer)

    def trunk(self, examples: Sequence[Example], batch_size: int = 16) -> list[torch.Tensor]:
        """Each example's trunk output, trimmed to its length: a list of (T_i, H).

        Examples are processed in length order to limit padding; padding never changes the
        real positions (causal attention, padding at the end).
        """
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
        out: list[torch.Tensor] = [torch.empty(0)] * len(examples)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            h = self.trunk_batch(collate([examples[i] for i in rows]))
            for row, i in enumerate(rows):
                out[i] = h[row, : len(examples[i].tokens)].clone()
        return out

    def hidden_in(
        self,
        rows: Sequence[int],
        examples: Sequence[Example],
        states: Sequence[torch.Tensor] | None,
        width: int,
    ) -> torch.Tensor:
        """(R, width, H) trunk output for ``rows`` (indices into ``examples``).

        Args:
            rows: example index of each row (repeats allowed).
            examples: the examples.
            states: cached trunk outputs (see :meth:`trunk`) or None to compute them now.
            width: T of the batch.
        """
        if states is not None:
            return pad_hidden([states[i] for i in rows], width)
        unique = sorted(set(rows))
        h = self.trunk_batch(collate([examples[i] for i in unique]))
        where = {i: n for n, i in enumerate(unique)}
        out = h.new_zeros((len(rows), width, h.shape[-1]))
        for row, i in enumerate(rows):
            n = len(examples[i].tokens)
            out[row, :n] = h[where[i], :n]
        return out

    def log_probs(
        self, batch: Batch, hidden_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Option log-probs (R, K) of every row from the trunk output, through layers k..

        Returns:
            ``(logp, full)``: log-softmax over the options, and (full-vocabulary label
            scoring only) the label tokens' full-vocabulary log-probs.
        """
        h = self._layers(hidden_in, batch, self.first_layer, self.base.n_layer)
        h = self.base.decoder.norm(h)
        head = self.base.lm_head.weight
        if h.dtype != torch.float32:  # a bf16/fp16 base: scores in fp32
            h, head = h.float(), head.float()
        scores, full = option_scores(
            h,
            batch,
            head,
            self.scoring,
            full_vocabulary=self.full_vocabulary,
        )
        return option_log_probs(scores, batch), full

    # ------------------------------------------------------------------------------------
    # Predictions

    @torch.no_grad()
    def _predict(
        self,
        examples: Sequence[Example],
        copies: int,
        states: Sequence[torch.Tensor] | None,
        batch_size: int,
    ) -> np.ndarray:
        """(N, copies, K) probabilities, each question run as ``copies`` member-major rows."""
        k = max(e.n_options for e in examples)
        out = np.zeros((len(examples), copies, k), dtype=np.float64)
        # Questions of similar length share a pass: less padding.
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = idx * copies
            batch = collate([examples[i] for i in rows], n_options=k)
            logp, _ = self.log_probs(batch, self.hidden_in(rows, examples, states, batch.width))
            probs = logp.exp().view(copies, len(idx), k).transpose(0, 1)
            out[idx] = probs.double().numpy()
        return out

    def member_probs(
        self,
        examples: Sequence[Example],
        *,
        states: Sequence[torch.Tensor] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Each member's option probabilities, dropout off.

        Args:
            examples: encoded questions.
            states: their cached trunk outputs (None: computed on the fly).
            batch_size: questions per pass.

        Returns:
            (N, M, K) float64, zero-padded where a question has fewer options.
        """
        self.stack.train(False)
        return self._predict(examples, self.n_members, states, batch_size)

    def base_probs(
        self,
        examples: Sequence[Example],
        *,
        states: Sequence[torch.Tensor] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """The frozen base model's option probabilities, (N, K)."""
        self.stack.train(False)
        with self.stack.disabled():
            return self._predict(examples, 1, states, batch_size)[:, 0]

    def mc_dropout_probs(
        self,
        examples: Sequence[Example],
        samples: int,
        *,
        member: int = 0,
        p: float | None = None,
        seed: int = 0,
        states: Sequence[torch.Tensor] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """MC-dropout predictions of one member: LoRA dropout on at test time, T samples.

        Args:
            examples: encoded questions.
            samples: T, the number of dropout masks per question.
            member: which member.
            p: dropout probability (default: the one the member was trained with).
            seed: seeds the dropout masks (the global torch RNG is left as it was).
            states: cached trunk outputs.
            batch_size: questions per pass.

        Returns:
            (N, T, K) float64 probabilities; average over axis 1 for the MC-dropout ensemble.

        Raises:
            InputError: ``samples < 1`` or no dropout to sample.
        """
        if samples < 1:
            raise InputError(f"samples must be >= 1, got {samples}")
        modules = list(self.stack.modules.values())
        trained_p = [getattr(m.dropout, "p", 0.0) for m in modules]
        if p is None and max(trained_p) == 0:
            raise InputError("MC dropout needs dropout: the adapters have none; pass p")
        if p is not None:
            self.stack.set_dropout(p)
        try:
            self.stack.train(True)
            with torch.random.fork_rng(devices=[]), self.stack.select([member] * samples):
                torch.manual_seed(seed)
                return self._predict(examples, samples, states, batch_size)
        finally:
            self.stack.train(False)
            if p is not None:
                for module, q in zip(modules, trained_p, strict=True):
                    module.dropout = torch.nn.Dropout(q) if q > 0 else torch.nn.Identity()
