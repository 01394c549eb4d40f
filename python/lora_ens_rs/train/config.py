"""`TrainConfig`: every setting of a LoRA-ensemble training run, checked before any work starts.

    from lora_ens_rs.train import TrainConfig, train_ensemble
    config = TrainConfig(data="train.jsonl", out="runs/arc", members=5, scoring="choices")
    config.validate()                       # raises InputError naming the bad field
    parse_layers("top8", n_layer=30)        # [22, ..., 29]

The config is recorded in full in the ensemble's ``ensemble.json`` (``training``) and in every
checkpoint, where a resumed run checks that the settings that shape training are unchanged.
"""

from __future__ import annotations

import argparse
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


def meta(*, help: str, cli: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of a :class:`TrainConfig` field: its help and how ``lora-ens-rs train``
    takes it.

    ``cli`` holds argparse keywords (``type``, ``metavar``, ``required``, ``flag`` for a flag
    not named after the field, ``action``), or ``{"positional": True}``, or
    ``{"shared": True}`` for an option defined once for every subcommand
    (``lora_ens_rs.cli.add_shared_options``: ``--model``, ``--limit``, ...; with
    ``"own_help": True`` the field's help replaces the shared one). A ``help`` in ``cli`` is
    the flag's when it is not the field's (``--no-trunk-cache``). ``None`` leaves the field
    off the command line.
    """
    return {"help": help, "cli": cli}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def target_list(text: str) -> list[str]:
    """argparse type: comma-separated projections, or ``all``."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if text.strip() == "all":
        return list(TARGETS)
    unknown = [t for t in names if t not in TARGETS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown projection(s) {unknown or text!r}; choose from {','.join(TARGETS)} or all"
        )
    return names


SHARED: dict[str, Any] = {"shared": True}
SHARED_OWN_HELP: dict[str, Any] = {"shared": True, "own_help": True}


@dataclass
class TrainConfig:
    """Settings of one ensemble training run.

    Each field's meaning is its ``help`` metadata, which is also its ``lora-ens-rs train
    --help`` line (:func:`field_help` returns it); the command line is built from these fields.
    """

    data: str | None = field(
        default=None,
        metadata=meta(
            help="training questions (any format read_questions reads)", cli={"positional": True}
        ),
    )
    val: str | None = field(
        default=None,
        metadata=meta(
            help="validation questions (default: hold out --val-fraction of DATA, a fixed split "
            "that does not depend on the seed)",
            cli={},
        ),
    )
    format: str | None = field(
        default=None, metadata=meta(help="dataset format of DATA and --val", cli=SHARED)
    )
    limit: int | None = field(
        default=None,
        metadata=meta(help="read at most N training questions (before the split)", cli=SHARED),
    )
    val_limit: int | None = field(
        default=None,
        metadata=meta(help="use at most N validation questions", cli={"type": positive_int}),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=meta(help="share of DATA held out when --val is not given", cli={"type": float}),
    )
    model: str | None = field(
        default=None,
        metadata=meta(
            help="the base model: a GGUF file or a Hugging Face checkpoint directory "
            "(safetensors, config.json, tokenizer) of a llama, qwen2 or qwen3 model (default: "
            "the default model, lora_ens_rs.default_model_path())",
            cli=SHARED_OWN_HELP,
        ),
    )
    dtype: str = field(
        default="float32",
        metadata=meta(
            help="dtype the frozen base model computes in",
            cli={"choices": ["float32", "bfloat16", "float16"]},
        ),
    )
    members: int = field(
        default=5, metadata=meta(help="M, the number of LoRA members", cli={"type": positive_int})
    )
    seed: int = field(
        default=0,
        metadata=meta(help="member m uses seed + m unless seeds are given", cli={"type": int}),
    )
    seeds: list[int] | None = field(
        default=None, metadata=meta(help="one seed per member (A initialisation and data order)")
    )
    share_data_order: bool = field(
        default=False,
        metadata=meta(
            help="every member sees the data in the order of seed (the init differs)", cli={}
        ),
    )
    rank: int = field(default=8, metadata=meta(help="LoRA rank r", cli={"type": positive_int}))
    alpha: float = field(
        default=16.0,
        metadata=meta(
            help="LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with --rslora)",
            cli={"type": float},
        ),
    )
    rslora: bool = field(
        default=False, metadata=meta(help="rank-stabilised scaling, alpha / sqrt(r)", cli={})
    )
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata=meta(
            help="projections that get adapters: comma-separated names (q_proj, ...) or all",
            cli={"type": target_list},
        ),
    )
    layers: str | list[int] = field(
        default="all",
        metadata=meta(help="adapted layers: all, topN, a-b (inclusive) or a,b,c", cli={}),
    )
    dropout: float = field(
        default=0.0,
        metadata=meta(
            help="LoRA dropout on the adapter input (PEFT's lora_dropout)", cli={"type": float}
        ),
    )
    scoring: str = field(default="labels", metadata=meta(help="scoring mode", cli=SHARED))
    normalization: str = field(
        default="per_token", metadata=meta(help="choice scoring normalisation", cli=SHARED)
    )
    full_vocabulary: bool = field(
        default=False,
        metadata=meta(
            help="label scoring: the loss is the answer token's cross-entropy over the whole "
            "vocabulary instead of the softmax over the label tokens",
            cli={},
        ),
    )
    epochs: int = field(
        default=1, metadata=meta(help="passes over the training data", cli={"type": positive_int})
    )
    lr: float = field(
        default=2e-4, metadata=meta(help="AdamW learning rate (constant)", cli={"type": float})
    )
    batch_size: int = field(
        default=4,
        metadata=meta(help="questions per member per optimizer step", cli={"type": positive_int}),
    )
    weight_decay: float = field(
        default=0.0,
        metadata=meta(
            help="AdamW decoupled weight decay on the LoRA matrices (lr * weight decay must stay "
            "below 1)",
            cli={"type": float},
        ),
    )
    kl: float = field(
        default=0.0,
        metadata=meta(
            help="beta of the beta * KL(p_member || p_base) term on the option distribution",
            cli={"type": float},
        ),
    )
    early_stopping: int | None = field(
        default=None,
        metadata=meta(
            help="patience in epochs on validation NLL; each member keeps its best epoch's "
            "adapters (default: no early stopping)",
            cli={"type": positive_int, "metavar": "PATIENCE"},
        ),
    )
    trunk_cache: bool = field(
        default=True,
        metadata=meta(
            help="keep the hidden states below the first adapted layer in memory (computed once "
            "per question) instead of recomputing them every step",
            cli={
                "flag": "--no-trunk-cache",
                "action": "store_false",
                "help": "recompute the hidden states below the first adapted layer every step",
            },
        ),
    )
    eval_batch_size: int = field(
        default=16,
        metadata=meta(help="questions per pass when validating", cli={"type": positive_int}),
    )
    out: str | None = field(
        default=None,
        metadata=meta(
            help="the ensemble directory written at the end (in Python, None: nothing is written)",
            cli={"required": True},
        ),
    )
    overwrite: bool = field(default=False, metadata=meta(help="replace an existing --out", cli={}))
    resume: bool = field(
        default=False,
        metadata=meta(help="continue from the checkpoint in --checkpoint-dir", cli={}),
    )
    checkpoint_dir: str | None = field(
        default=None, metadata=meta(help="where checkpoints go (default: <out>.checkpoint)", cli={})
    )
    checkpoint_every: int | None = field(
        default=None,
        metadata=meta(
            help="also checkpoint every N optimizer steps (every epoch always)",
            cli={"type": positive_int, "metavar": "STEPS"},
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=meta(help="torch CPU threads (default: torch's choice)", cli=SHARED_OWN_HELP),
    )
    progress: bool = field(
        default=True,
        metadata=meta(
            help="a progress bar and per-epoch validation lines on stderr",
            cli={"flag": "--quiet", "action": "store_false", "help": "no progress output"},
        ),
    )

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
        for name, value in [("seed", self.seed), *(("seeds", s) for s in self.seeds or [])]:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
                raise bad(name, f"must be an integer in 0..{MAX_SEED}, got {value!r}")
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


def field_help(name: str) -> str:
    """The help of :class:`TrainConfig` field ``name``."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == name:
            return str(f.metadata["help"])
    raise KeyError(name)


#: More layers than any model has: a layer index at or past it is refused without a model.
MAX_LAYERS = 100_000

#: Seeds are unsigned 32-bit integers (torch and NumPy generators take them).
MAX_SEED = 2**32 - 1

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
            limit = n_layer if n_layer is not None else MAX_LAYERS
            if hi >= limit:  # checked before the list is built
                raise InputError(
                    f"{where}: layer {hi} does not exist (the model has {n_layer})"
                    if n_layer is not None
                    else f"{where}: layer {hi} is beyond any model (at most {MAX_LAYERS} layers)"
                )
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
