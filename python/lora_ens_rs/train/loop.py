"""`train_ensemble`: train M LoRA members on one frozen base in one batched loop, then export.

    from lora_ens_rs.train import TrainConfig, train_ensemble
    result = train_ensemble(TrainConfig(data="ARC-Easy-Train.jsonl", out="runs/arc",
                                        members=3, scoring="choices", layers="top4"))
    result.history[-1]["val"]       # per-member validation metrics of the last epoch
    result.model.member_probs(...)  # the trained ensemble in torch

Each step takes ``batch_size`` questions per member, each member from its own seeded order
(``share_data_order`` for one order), and runs all members' rows together on the batch axis,
each row through its own member's adapters, sorted by length into a few passes so that little
is padding (gradients accumulated). It sums the members' mean losses and takes one AdamW step
(constant learning rate; decoupled weight decay on the LoRA matrices). After each epoch
every member is validated (accuracy, NLL, ECE with :mod:`lora_ens_rs.metrics`); with early
stopping each member keeps its best epoch's adapters and stops counting once its patience
runs out. Checkpoints are written each epoch and every ``checkpoint_every`` steps;
``resume=True`` continues from the last one and ends with the same adapters as an
uninterrupted run. Under torchrun each rank trains its block of members
(:mod:`lora_ens_rs.train.distributed`); the passes of a step are cut from every member's rows,
so a member's rows meet the same padding whatever the world size.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_ens_rs.errors import InputError
from lora_ens_rs.train import checkpoint as ckpt
from lora_ens_rs.train.base import BaseModel, load_base
from lora_ens_rs.train.config import TrainConfig, parse_layers
from lora_ens_rs.train.data import (
    Example,
    Question,
    collate,
    encode_questions,
    epoch_order,
    length_buckets,
    load_questions,
)
from lora_ens_rs.train.distributed import Shard, shard_from_env
from lora_ens_rs.train.export import check_writable, export_ensemble
from lora_ens_rs.train.lora import LoraStack, dropout_generator
from lora_ens_rs.train.model import EnsembleModel
from lora_ens_rs.train.objective import row_losses
from lora_ens_rs.train.predictions import member_and_ensemble_metrics

#: The price of one more forward/backward pass in a step, in tokens: a step splits its rows
#: into length buckets when that saves more padded tokens than this per extra pass. On
#: SmolLM2 (top-8 q/v adapters, 5 x 8 CommonsenseQA rows a step, 2 threads) 64..256 gave
#: 1.71-1.76 s a step, against 2.27 s in one pass and 2.50 s with a pass per row
#: (`benches/bench_training.py --pass-cost N`).
PASS_COST_TOKENS = 128

#: Called after every optimizer step with ``{"epoch", "step", "steps", "loss"}``.
StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What :func:`train_ensemble` returns.

    Under torchrun ``model`` holds this rank's members only; ``history`` and ``validation``
    cover all members on every rank.

    Attributes:
        model: the trained ensemble in torch (adapters attached to the base model).
        config: the config it ran with.
        out: the ensemble directory written, or None.
        history: one dict per epoch: ``epoch``, ``train_loss`` (per member), ``val``
            (per-member metrics) and ``ensemble`` (metrics of the mean).
        validation: final per-member and ensemble validation metrics (after restoring each
            member's best epoch), or None without validation data.
        train_examples: the encoded training questions.
        val_examples: the encoded validation questions.
        val_answers: their answers.
        rank: this process's rank under torchrun (0 otherwise).
    """

    model: EnsembleModel
    config: TrainConfig
    out: Path | None
    history: list[dict[str, Any]]
    validation: dict[str, Any] | None
    train_examples: list[Example] = field(repr=False)
    val_examples: list[Example] = field(repr=False)
    val_answers: np.ndarray = field(repr=False)
    rank: int = 0

    def adapters(self) -> dict[str, torch.Tensor]:
        """A copy of the stacked adapter tensors (``"{layer}.{target}.lora_A"`` -> (M, r, in))."""
        return self.model.stack.state()


class _Trainer:
    """The state of one training run (see :func:`train_ensemble`)."""

    def __init__(
        self, config: TrainConfig, base: BaseModel, train_q, val_q, shard: Shard | None = None
    ) -> None:
        self.config = config
        self.base = base
        self.shard = shard or Shard(n_members=config.members, members=list(range(config.members)))
        self.members = self.shard.members  # global indices, contiguous
        self.all_seeds = config.member_seeds()
        self.seeds = [self.all_seeds[g] for g in self.members]
        self.n, self.m = config.members, len(self.members)
        self.generators = [dropout_generator(s) for s in self.seeds]
        tok = base.tokenizer
        enc = dict(scoring=config.scoring, normalization=config.normalization)
        self.train = encode_questions(train_q, tok, source="training data", **enc)
        self.val = encode_questions(val_q, tok, source="validation data", **enc)
        if not self.train:
            raise InputError("no training questions")
        if config.early_stopping is not None and not self.val:
            raise InputError("early_stopping needs validation questions")
        self.val_answers = np.array([e.answer for e in self.val], dtype=np.int64)
        self.labels = max((list(q.get("labels") or []) for q in train_q), key=len)
        layers = parse_layers(config.layers, base.n_layer)
        self.stack = LoraStack.attach(
            base.model,
            n_members=self.m,
            rank=config.rank,
            alpha=config.alpha,
            targets=config.targets,
            layers=layers,
            seeds=self.seeds,
            dropout=config.dropout,
            rslora=config.rslora,
        )
        self.model = EnsembleModel(
            base,
            self.stack,
            config.scoring,
            config.normalization,
            full_vocabulary=config.full_vocabulary,
        )
        bs = config.eval_batch_size
        self.train_states = self.model.trunk(self.train, bs) if config.trunk_cache else None
        self.val_states = (
            self.model.trunk(self.val, bs) if config.trunk_cache and self.val else None
        )
        self.base_logp: torch.Tensor | None = None
        if config.kl > 0:
            probs = self.model.base_probs(self.train, states=self.train_states, batch_size=bs)
            with np.errstate(divide="ignore"):
                self.base_logp = torch.from_numpy(np.log(probs)).float()
        self.optimizer = torch.optim.AdamW(
            self.stack.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.steps = math.ceil(len(self.train) / config.batch_size)
        self.epoch, self.step, self.epoch_losses = 0, 0, []
        self.history: list[dict[str, Any]] = []
        # Early-stopping bookkeeping for all members (the same on every rank); adapters local.
        self.best_nll = [math.inf] * self.n
        self.best_epoch = [0] * self.n
        self.bad_epochs = [0] * self.n
        self.stopped = [False] * self.n
        self.best_state = self.stack.state()

    # ---- checkpoints -----------------------------------------------------------------

    def checkpoint(self) -> None:
        """Each rank writes its members' files; rank 0 commits once all are written."""
        ckpt.write(self)

    def gather_members(self, local: np.ndarray, axis: int) -> np.ndarray:
        """Every rank's per-member array, joined along the member ``axis`` in member order."""
        return np.concatenate(self.shard.gather(local, "sharing validation results"), axis=axis)

    # ---- training --------------------------------------------------------------------

    def orders(self, epoch: int) -> list[np.ndarray]:
        """Every member's order (all members: the passes are cut from all their rows)."""
        n = len(self.train)
        if self.config.share_data_order:
            return [epoch_order(n, self.config.seed, epoch)] * self.n
        return [epoch_order(n, s, epoch) for s in self.all_seeds]

    def train_step(self, rows: list[int]) -> list[float]:
        """One optimizer step on ``rows`` (all members, member-major, equal counts); each of
        this rank's members' mean loss.

        The rows run in length buckets (see :data:`PASS_COST_TOKENS`) cut from every member's
        rows, each bucket a forward and backward pass over this rank's rows in it, each row
        with its own member (and dropout stream); gradients accumulate, scaled so that the
        step's gradient is that of the members' summed mean losses.
        """
        self.stack.train(True)
        per_member = len(rows) // self.n
        members = np.repeat(np.arange(self.n), per_member) - self.members[0]  # local slots
        lengths = [len(self.train[i].tokens) for i in rows]
        totals = torch.zeros(self.m, dtype=torch.float64)
        self.optimizer.zero_grad(set_to_none=True)
        for cut in length_buckets(lengths, PASS_COST_TOKENS):
            bucket = [j for j in cut if 0 <= members[j] < self.m]
            if not bucket:
                continue
            part = [rows[j] for j in bucket]
            # Padded as the whole bucket is, so a row's shapes do not depend on the sharding.
            width = max(lengths[j] for j in cut)
            k = max(self.train[rows[j]].n_options for j in cut)
            batch = collate([self.train[i] for i in part], n_options=k, width=width)
            hidden = self.model.hidden_in(part, self.train, self.train_states, batch.width)
            with self.stack.select(members[bucket].tolist(), self.generators):  # member per row
                logp, full = self.model.log_probs(batch, hidden)
            base_logp = None
            if self.base_logp is not None:
                base_logp = self.base_logp[part][:, : logp.shape[1]]
            loss, _ = row_losses(logp, batch, full=full, base_logp=base_logp, kl=self.config.kl)
            (loss.sum() / per_member).backward()
            totals.index_add_(0, torch.from_numpy(members[bucket]), loss.detach().double())
        self.optimizer.step()
        return (totals / per_member).tolist()

    def run_epoch(self, callback: StepCallback | None) -> None:
        config, bs = self.config, self.config.batch_size
        orders = self.orders(self.epoch)
        bar = None
        if config.progress and self.shard.is_main:
            from tqdm.auto import tqdm

            desc = f"epoch {self.epoch + 1}/{config.epochs}"
            bar = tqdm(total=self.steps, initial=self.step, desc=desc, file=sys.stderr)
        try:
            while self.step < self.steps:
                lo = self.step * bs
                rows = [int(i) for order in orders for i in order[lo : lo + bs]]
                losses = self.train_step(rows)
                self.epoch_losses.append(losses)
                self.step += 1
                if bar is not None:
                    recent = np.mean(self.epoch_losses[-20:])
                    bar.set_postfix(loss=f"{recent:.4f}")
                    bar.update(1)
                every = config.checkpoint_every
                if every is not None and self.step % every == 0 and self.step < self.steps:
                    self.checkpoint()
                if callback is not None:
                    info = {"epoch": self.epoch, "step": self.step, "steps": self.steps}
                    callback({**info, "loss": losses})
        finally:
            if bar is not None:
                bar.close()

    def end_epoch(self) -> None:
        losses = self.gather_members(np.mean(self.epoch_losses, axis=0), axis=0)
        record: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": losses.tolist()}
        if self.val:
            probs = self.val_probs()
            record["val"], record["ensemble"] = member_and_ensemble_metrics(probs, self.val_answers)
            self.early_stopping(record["val"])
        self.history.append(record)
        if self.config.progress and self.shard.is_main:
            self.print_epoch(record)
        self.epoch, self.step, self.epoch_losses = self.epoch + 1, 0, []
        self.checkpoint()

    def val_probs(self) -> np.ndarray:
        """(N, M, K) validation probabilities of all members."""
        bs = self.config.eval_batch_size
        local = self.model.member_probs(self.val, states=self.val_states, batch_size=bs)
        return self.gather_members(local, axis=1)

    def early_stopping(self, val: list[dict[str, float]]) -> None:
        """Bookkeeping for all members; best adapters kept for this rank's."""
        current = None
        for m in range(self.n):
            if self.stopped[m]:
                continue
            if val[m]["nll"] < self.best_nll[m]:
                i = m - self.members[0]
                if 0 <= i < self.m:
                    current = current if current is not None else self.stack.state()
                    for key, tensor in current.items():
                        self.best_state[key][i] = tensor[i]
                self.best_nll[m], self.best_epoch[m], self.bad_epochs[m] = (
                    val[m]["nll"],
                    self.epoch + 1,
                    0,
                )
            else:
                self.bad_epochs[m] += 1
                patience = self.config.early_stopping
                if patience is not None and self.bad_epochs[m] >= patience:
                    self.stopped[m] = True

    def print_epoch(self, record: dict[str, Any]) -> None:
        for m, loss in enumerate(record["train_loss"]):
            line = f"epoch {record['epoch']} m{m}: train loss {loss:.4f}"
            if "val" in record:
                v = record["val"][m]
                line += f" | val acc {v['accuracy']:.3f} nll {v['nll']:.4f} ece {v['ece']:.4f}"
                if self.stopped[m]:
                    line += f" (stopped; best epoch {self.best_epoch[m]})"
            print(line, file=sys.stderr)
        if "ensemble" in record:
            e = record["ensemble"]
            print(
                f"epoch {record['epoch']} ensemble: val acc {e['accuracy']:.3f} "
                f"nll {e['nll']:.4f} ece {e['ece']:.4f}",
                file=sys.stderr,
            )

    def finish(self) -> dict[str, Any] | None:
        if self.config.early_stopping is not None:
            self.stack.load_state(self.best_state)
        if not self.val:
            return None
        probs = self.val_probs()
        members, ensemble = member_and_ensemble_metrics(probs, self.val_answers)
        if self.config.early_stopping is not None:
            for m, record in enumerate(members):
                record["best_epoch"] = self.best_epoch[m]
        return {"n_questions": len(self.val), "members": members, "ensemble": ensemble}


def train_ensemble(
    config: TrainConfig | None = None,
    *,
    train: Sequence[Question] | None = None,
    val: Sequence[Question] | None = None,
    callback: StepCallback | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train an M-member LoRA ensemble and (with ``config.out``) export it.

    Args:
        config: the settings (default ``TrainConfig()``); ``overrides`` replace fields.
        train: training questions (dicts as :func:`lora_ens_rs.read_questions` returns)
            instead of ``config.data``.
        val: validation questions instead of ``config.val`` / the held-out split.
        callback: called after every optimizer step with ``{"epoch", "step", "steps",
            "loss"}``; an exception raised there stops training (the last checkpoint stays).
        **overrides: TrainConfig fields, e.g. ``members=3, epochs=2``.

    Returns:
        :class:`TrainResult` with the trained model, history and validation metrics.

    Raises:
        InputError: a bad setting, or resuming without a compatible checkpoint.
        DataError: a question without an answer or choices.
        LabelError: label scoring with a label that is not one token.
        MissingFileError: a data or model file does not exist.
        LoraEnsIOError: ``out`` exists without ``overwrite``, or a write fails.

    Example:
        >>> result = train_ensemble(model=tiny_gguf, data=csqa_train, limit=24,
        ...                         out="runs/demo", members=3, scoring="choices",
        ...                         layers="top1", epochs=2, progress=False)
        >>> len(result.validation["members"]), result.out.name
        (3, 'demo')
    """
    config = TrainConfig.from_dict({**(config or TrainConfig()).to_dict(), **overrides}).validate()
    with shard_from_env(config.members) as shard:
        return _train(config, shard, train, val, callback)


def _train(
    config: TrainConfig,
    shard: Shard,
    train: Sequence[Question] | None,
    val: Sequence[Question] | None,
    callback: StepCallback | None,
) -> TrainResult:
    if config.out is not None:
        check_writable(config.out, overwrite=config.overwrite)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    train_q, val_q = load_questions(config, train, val)
    base = load_base(config.model, dtype=config.dtype)
    torch.manual_seed(config.seed)
    trainer = _Trainer(config, base, train_q, val_q, shard)
    if config.resume:
        where = config.checkpoint_path()
        state = ckpt.load_checkpoint(where) if where is not None else None
        if state is None:
            raise InputError(f"resume: no checkpoint in {where!r}")
        ckpt.restore(trainer, state, str(where))
    while trainer.epoch < config.epochs and not all(trainer.stopped):
        trainer.run_epoch(callback)
        trainer.end_epoch()
    validation = trainer.finish()
    out = None
    if config.out is not None:
        out = export_ensemble(
            config.out,
            trainer.stack,
            base_path=base.path,
            base_sha256=base.sha256,
            base_checkpoint_sha256=base.checkpoint_sha256,
            alpha=config.alpha,
            dropout=config.dropout,
            rslora=config.rslora,
            seeds=trainer.all_seeds,
            labels=trainer.labels,
            scoring={
                "mode": config.scoring,
                "normalization": config.normalization if config.scoring == "choices" else None,
                "full_vocabulary": config.full_vocabulary,
            },
            training={**config.to_dict(), "layers_resolved": trainer.stack.layers},
            validation=validation,
            overwrite=config.overwrite,
            shard=shard,
        )
    return TrainResult(
        model=trainer.model,
        config=config,
        out=out,
        history=trainer.history,
        validation=validation,
        train_examples=trainer.train,
        val_examples=trainer.val,
        val_answers=trainer.val_answers,
        rank=shard.rank,
    )
