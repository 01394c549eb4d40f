"""`TrainConfig`: every setting of a LoRA-ensemble training run, checked before any work starts.

    from lora_ens_rs.train import TrainConfig, train_ensemble
    config = TrainConfig(data="train.jsonl", out="runs/arc", members=5, scoring="choices")
    config.validate()                       # raises InputError naming the bad field
    parse_layers("top8", n_layer=30)        # [22, ..., 29]

The config is recorded in full in the ensemble's ``ensemble.json`` (``training``) and in every
checkpoint, where a resumed run checks that the settings that shape training are unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lora_ens_rs.errors import InputError

#: Projections of a LLaMA decoder layer that can carry an adapter.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCORINGS = ("labels", "choices")
NORMALIZATIONS = ("sum", "per_token", "per_byte")

#: Fields that may change between a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "out",
        "overwrite",
        "resume",
        "progress",
        "threads",
        "checkpoint_every",
        "checkpoint_dir",
        "eval_batch_size",
    }
)


@dataclass
class TrainConfig:
    """Settings of one ensemble training run (see ``lora-ens-rs train --help``).

    Attributes:
        data: training questions (any format :func:`lora_ens_rs.read_questions` reads).
        val: validation questions; ``None`` holds out ``val_fraction`` of ``data`` (a fixed
            split that does not depend on ``seed``).
        format: dataset format of ``data`` / ``val`` (``None``: from the file name).
        limit: read at most this many training questions (before the split).
        val_limit: use at most this many validation questions.
        val_fraction: share of ``data`` held out when ``val`` is ``None``.
        model: the base model, a GGUF file or a transformers model directory; ``None`` is
            the default model (:func:`lora_ens_rs.default_model_path`).
        members: M, the number of LoRA members.
        seed: member ``m`` uses seed ``seed + m`` unless ``seeds`` is given.
        seeds: one seed per member (A initialisation and data order).
        share_data_order: every member sees the data in the order of ``seed`` (init differs).
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is scaled by ``alpha / r`` (``alpha / sqrt(r)``
            with ``rslora``).
        rslora: rank-stabilised scaling.
        targets: projections that get adapters (``q_proj``, ``v_proj``, ...).
        layers: adapted layers: ``"all"``, ``"topN"``, ``"a-b"`` (inclusive), ``"1,3,5"``.
        dropout: LoRA dropout on the adapter input (PEFT's ``lora_dropout``).
        scoring: ``"labels"`` (answer letter after a lettered prompt) or ``"choices"``
            (each answer text as a continuation of the question).
        normalization: choice scoring: ``sum``, ``per_token`` or ``per_byte`` log-likelihood.
        full_vocabulary: label scoring: the loss is the answer token's cross-entropy over
            the whole vocabulary instead of the softmax over the label tokens.
        epochs: passes over the training data.
        lr: AdamW learning rate (constant).
        batch_size: questions per member per step.
        weight_decay: AdamW decoupled weight decay on the LoRA matrices (``lr *
            weight_decay`` must stay below 1).
        kl: beta of the ``beta * KL(p_member || p_base)`` term on the option distribution.
        early_stopping: patience in epochs on validation NLL; each member keeps its best
            epoch's adapters. ``None``: no early stopping.
        trunk_cache: keep the hidden states below the first adapted layer in memory
            (computed once per question) instead of recomputing them every step.
        eval_batch_size: questions per pass when validating.
        out: the ensemble directory written at the end (``None``: nothing is written).
        overwrite: replace an existing ``out``.
        resume: continue from the checkpoint in ``checkpoint_dir``.
        checkpoint_dir: where checkpoints go (default ``<out>.checkpoint``).
        checkpoint_every: also checkpoint every N optimizer steps (every epoch always).
        threads: torch CPU threads (``None``: torch's default).
        progress: progress bar and per-epoch validation lines on stderr.
    """

    data: str | None = None
    val: str | None = None
    format: str | None = None
    limit: int | None = None
    val_limit: int | None = None
    val_fraction: float = 0.1
    model: str | None = None
    members: int = 5
    seed: int = 0
    seeds: list[int] | None = None
    share_data_order: bool = False
    rank: int = 8
    alpha: float = 16.0
    rslora: bool = False
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: str | list[int] = "all"
    dropout: float = 0.0
    scoring: str = "labels"
    normalization: str = "per_token"
    full_vocabulary: bool = False
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 4
    weight_decay: float = 0.0
    kl: float = 0.0
    early_stopping: int | None = None
    trunk_cache: bool = True
    eval_batch_size: int = 16
    out: str | None = None
    overwrite: bool = False
    resume: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    threads: int | None = None
    progress: bool = True

    def member_seeds(self) -> list[int]:
        """The seed of each member: ``seeds`` if given, else ``seed, seed + 1, ...``."""
        if self.seeds is not None:
            return [int(s) for s in self.seeds]
        return [self.seed + m for m in range(self.members)]

    def validate(self) -> TrainConfig:
        """Check every field; returns ``self``.

        Raises:
            InputError: a field is out of range or inconsistent; the message names it.

        Example:
            >>> TrainConfig(lr=1e-2, weight_decay=100).validate()
            Traceback (most recent call last):
            lora_ens_rs.errors.InputError: TrainConfig.weight_decay is too large for lr: ...
        """

        def bad(name: str, why: str) -> InputError:
            return InputError(f"TrainConfig.{name} {why}")

        for name in ("members", "rank", "epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, f"must be a positive integer, got {value!r}")
        for name in ("limit", "val_limit", "checkpoint_every", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, f"must be a positive integer or None, got {value!r}")
        if self.early_stopping is not None and (
            not isinstance(self.early_stopping, int) or self.early_stopping < 1
        ):
            raise bad(
                "early_stopping", f"must be a patience >= 1 or None, got {self.early_stopping!r}"
            )
        if self.seeds is not None and len(self.seeds) != self.members:
            raise bad("seeds", f"has {len(self.seeds)} seeds for {self.members} members")
        if len(set(self.member_seeds())) != len(self.member_seeds()):
            raise bad("seeds", f"must differ between members, got {self.member_seeds()}")
        for name in ("lr", "alpha"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise bad(name, f"must be a positive number, got {value!r}")
        for name in ("weight_decay", "kl"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise bad(name, f"must be a non-negative number, got {value!r}")
        if self.lr * self.weight_decay >= 1:
            raise bad(
                "weight_decay",
                f"is too large for lr: lr * weight_decay = {self.lr * self.weight_decay:g} "
                "must be below 1 (AdamW multiplies the adapters by 1 - lr * weight_decay "
                "every step); lower lr or weight_decay",
            )
        if not 0 <= self.dropout < 1:
            raise bad("dropout", f"must lie in [0, 1), got {self.dropout!r}")
        if not 0 < self.val_fraction < 1:
            raise bad("val_fraction", f"must lie in (0, 1), got {self.val_fraction!r}")
        if self.scoring not in SCORINGS:
            raise bad("scoring", f"must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.normalization not in NORMALIZATIONS:
            raise bad(
                "normalization",
                f"must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}",
            )
        if self.full_vocabulary and self.scoring != "labels":
            raise bad("full_vocabulary", "applies to label scoring only (scoring='labels')")
        if not self.targets:
            raise bad("targets", "must name at least one projection")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise bad("targets", f"has unknown projections {unknown}; known: {', '.join(TARGETS)}")
        if len(set(self.targets)) != len(self.targets):
            raise bad("targets", f"lists a projection twice: {self.targets}")
        parse_layers(self.layers, None)
        if self.resume and self.out is None and self.checkpoint_dir is None:
            raise bad("resume", "needs out or checkpoint_dir to find the checkpoint")
        return self

    def checkpoint_path(self) -> str | None:
        """The checkpoint directory: ``checkpoint_dir``, else ``<out>.checkpoint``, else None."""
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        if self.out is not None:
            return str(self.out).rstrip("/\\") + ".checkpoint"
        return None

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config with ``values``; unknown keys raise InputError.

        Raises:
            InputError: a key is not a field of TrainConfig.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**values)


_RANGE = re.compile(r"^(\d+)-(\d+)$")
_TOP = re.compile(r"^top(\d+)$")


def parse_layers(spec: str | list[int] | tuple[int, ...], n_layer: int | None) -> list[int]:
    """The sorted layer indices a layer spec selects.

    Args:
        spec: ``"all"``, ``"topN"`` (the N highest layers), ``"a-b"`` (inclusive),
            ``"a,b,c"`` or a list of ints.
        n_layer: the model's number of layers; ``None`` checks the syntax only (and returns
            what can be known without it: ``[]`` for ``all`` / ``topN``).

    Returns:
        Sorted distinct layer indices.

    Raises:
        InputError: malformed spec, or a layer outside ``0..n_layer-1``.

    Example:
        >>> parse_layers("top3", 30), parse_layers("20-22", 30), parse_layers("0,2", 30)
        ([27, 28, 29], [20, 21, 22], [0, 2])
    """
    where = f"layers {spec!r}"
    if isinstance(spec, list | tuple):
        if not spec or not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            raise InputError(f"{where}: a layer list must hold at least one int")
        layers = sorted(set(spec))
    else:
        text = str(spec).strip().lower()
        if text == "all":
            layers = list(range(n_layer)) if n_layer is not None else []
        elif (m := _TOP.match(text)) is not None:
            k = int(m.group(1))
            if k < 1:
                raise InputError(f"{where}: topN needs N >= 1")
            if n_layer is not None and k > n_layer:
                raise InputError(f"{where}: the model has only {n_layer} layers")
            layers = list(range(n_layer - k, n_layer)) if n_layer is not None else []
        elif (m := _RANGE.match(text)) is not None:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise InputError(f"{where}: the range is empty ({lo} > {hi})")
            layers = list(range(lo, hi + 1))
        elif re.fullmatch(r"\d+(,\d+)*", text.replace(" ", "")):
            layers = sorted({int(x) for x in text.replace(" ", "").split(",")})
        else:
            raise InputError(
                f"{where}: expected 'all', 'topN', 'a-b' or a comma-separated list of layers"
            )
    if layers and layers[0] < 0:
        raise InputError(f"{where}: layer indices must be >= 0")
    if n_layer is not None and layers and layers[-1] >= n_layer:
        raise InputError(f"{where}: layer {layers[-1]} does not exist (the model has {n_layer})")
    return layers
