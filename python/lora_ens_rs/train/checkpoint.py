"""Training checkpoints: one file per member plus the run's state, so that a resumed run ends
with the same adapters, with the same number of processes or another.

    save_members("runs/arc.checkpoint", epoch, step, {0: s0, 1: s1})   # each rank, its members
    commit("runs/arc.checkpoint", run_state)                            # rank 0, after a barrier
    state = load_checkpoint("runs/arc.checkpoint")                      # None if there is none
    s1 = load_member("runs/arc.checkpoint", state, 1)
    write(trainer); restore(trainer, state, "runs/arc.checkpoint")  # a loop._Trainer

A member's file ``e{epoch}-s{step}/m{m}.pt`` holds its adapters, its AdamW moments, its dropout
generator, its best adapters (early stopping) and its losses in the current epoch; it is
written by the rank that trains the member. The run's ``state.pt``, written by rank 0 once every
member's file of that position exists, names the position and holds what all ranks share: the
config, the position in training (epoch and optimizer steps done in it; each member's data
order is a pure function of its seed and the epoch, see ``data.epoch_order``), the early-
stopping bookkeeping and the per-epoch history. Writing ``state.pt`` commits the position; a
run killed before that resumes from the previous one. Files load with
``torch.load(weights_only=True)``; every write is atomic.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lora_ens_rs.atomic import atomic_path
from lora_ens_rs.errors import InputError, LoraEnsIOError
from lora_ens_rs.train.config import RESUMABLE_CHANGES

FILE = "state.pt"
FORMAT = 2


def position_dir(directory: str | os.PathLike[str], epoch: int, step: int) -> Path:
    """Where the member files of position (``epoch``, ``step``) go."""
    return Path(directory) / f"e{int(epoch)}-s{int(step)}"


def _save(target: Path, state: dict[str, Any]) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            torch.save({"format": FORMAT, **state}, tmp)
    except OSError as e:
        raise LoraEnsIOError(f"cannot write checkpoint {str(target)!r}: {e}") from e
    return target


def _load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:
        raise LoraEnsIOError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise LoraEnsIOError(
            f"checkpoint {str(path)!r} has format {found!r}, expected {FORMAT} (written by "
            "another version of lora-ens-rs; train again without --resume)"
        )
    return state


def save_members(
    directory: str | os.PathLike[str], epoch: int, step: int, states: dict[int, dict[str, Any]]
) -> None:
    """Write each member's state (member index -> state) for position (``epoch``, ``step``).

    Raises:
        LoraEnsIOError: a file cannot be written.
    """
    where = position_dir(directory, epoch, step)
    for m, state in states.items():
        _save(where / f"m{m}.pt", state)


def commit(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write the run's ``state.pt`` (with ``epoch`` and ``step``) and drop older positions.

    Call it once every member's file of that position is written (after a barrier).

    Raises:
        LoraEnsIOError: the file cannot be written.
    """
    target = _save(Path(directory) / FILE, state)
    keep = position_dir(directory, state["epoch"], state["step"]).name
    for old in Path(directory).glob("e*-s*"):
        if old.is_dir() and old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The committed run state in ``directory``, or None if there is none.

    Raises:
        LoraEnsIOError: the file exists but cannot be read, or has another format.
    """
    path = Path(directory) / FILE
    return _load(path) if path.is_file() else None


def load_member(directory: str | os.PathLike[str], state: dict[str, Any], m: int) -> dict[str, Any]:
    """Member ``m``'s file of the position ``state`` (from :func:`load_checkpoint`) names.

    Raises:
        LoraEnsIOError: the file is missing or unreadable.
    """
    path = position_dir(directory, state["epoch"], state["step"]) / f"m{m}.pt"
    if not path.is_file():
        raise LoraEnsIOError(f"checkpoint {str(directory)!r} has no file for member m{m}: {path}")
    return _load(path)


def member_slice(tensors: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Slot ``i`` of stacked tensors (``key`` -> (M, ...)), cloned."""
    return {k: v[i].detach().clone() for k, v in tensors.items()}


def stack_slices(slices: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`member_slice` over every slot."""
    return {k: torch.stack([s[k] for s in slices]) for k in slices[0]}


def optimizer_slice(optimizer: dict[str, Any], i: int, n: int) -> dict[int, dict[str, Any]]:
    """Slot ``i`` of an optimizer's ``state_dict()["state"]`` over stacked parameters.

    Tensors with ``n`` rows (AdamW's moments) are sliced; scalars (the step) are kept.
    """
    out: dict[int, dict[str, Any]] = {}
    for p, values in optimizer["state"].items():
        out[int(p)] = {
            k: v[i].clone() if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v
            for k, v in values.items()
        }
    return out


def optimizer_stack(template: dict[str, Any], slices: list[dict[int, dict[str, Any]]]) -> dict:
    """An optimizer ``state_dict`` from ``template``'s param groups and per-slot states."""
    state: dict[int, dict[str, Any]] = {}
    for p, values in slices[0].items():
        state[p] = {
            k: torch.stack([s[p][k] for s in slices]) if torch.is_tensor(v) and v.dim() > 0 else v
            for k, v in values.items()
        }
    return {"state": state, "param_groups": template["param_groups"]}


# ---- the trainer's state ------------------------------------------------------------


def run_state(trainer: Any) -> dict[str, Any]:
    """What every rank of ``trainer`` shares (written by rank 0)."""
    keys = ("epoch", "step", "history", "best_nll", "best_epoch", "bad_epochs", "stopped")
    return {"config": trainer.config.to_dict(), **{k: getattr(trainer, k) for k in keys}}


def member_state(trainer: Any, i: int) -> dict[str, Any]:
    """The state of ``trainer``'s member in slot ``i`` (its file's content)."""
    return {
        "seed": trainer.seeds[i],
        "adapters": member_slice(trainer.stack.named_tensors(), i),
        "best_state": member_slice(trainer.best_state, i),
        "optimizer": optimizer_slice(trainer.optimizer.state_dict(), i, trainer.m),
        "dropout_rng": trainer.generators[i].get_state(),
        "epoch_losses": [losses[i] for losses in trainer.epoch_losses],
    }


def restore(trainer: Any, state: dict[str, Any], directory: str) -> None:
    """Put the committed ``state`` and this rank's member files into ``trainer``.

    Raises:
        InputError: a setting that shapes training changed, or a member's seed differs.
        LoraEnsIOError: a member's file is missing or unreadable.
    """
    check_compatible(state["config"], trainer.config.to_dict(), repr(directory))
    own = [load_member(directory, state, g) for g in trainer.members]
    for g, member in zip(trainer.members, own, strict=True):
        if member["seed"] != trainer.all_seeds[g]:
            raise InputError(f"checkpoint {directory!r}: member m{g} has another seed")
    trainer.stack.load_state(stack_slices([s["adapters"] for s in own]))
    trainer.best_state = stack_slices([s["best_state"] for s in own])
    if own[0]["optimizer"]:
        template = trainer.optimizer.state_dict()
        merged = optimizer_stack(template, [s["optimizer"] for s in own])
        trainer.optimizer.load_state_dict(merged)
    for generator, member in zip(trainer.generators, own, strict=True):
        generator.set_state(member["dropout_rng"])
    columns = [s["epoch_losses"] for s in own]  # per member -> per step
    trainer.epoch_losses = [list(row) for row in zip(*columns, strict=True)]
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    trainer.history = list(state["history"])
    trainer.best_nll = list(state["best_nll"])
    trainer.best_epoch = list(state["best_epoch"])
    trainer.bad_epochs = list(state["bad_epochs"])
    trainer.stopped = list(state["stopped"])


def write(trainer: Any) -> None:
    """Checkpoint ``trainer`` (a ``loop._Trainer``): each rank writes its members' files, then
    rank 0 commits the position once every rank has (a barrier)."""
    directory = trainer.config.checkpoint_path()
    if directory is None:
        return
    own = {g: member_state(trainer, i) for i, g in enumerate(trainer.members)}
    save_members(directory, trainer.epoch, trainer.step, own)
    trainer.shard.barrier(f"checkpoint at epoch {trainer.epoch + 1} step {trainer.step}")
    if trainer.shard.is_main:
        commit(directory, run_state(trainer))


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse to resume when a setting that shapes training differs from the checkpoint's.

    Args:
        saved: the checkpoint's config (``TrainConfig.to_dict()``).
        current: the resuming run's config.
        where: the checkpoint path, for the message.

    Raises:
        InputError: naming every differing field.
    """
    keys = (set(saved) | set(current)) - RESUMABLE_CHANGES
    changed = sorted(k for k in keys if saved.get(k) != current.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise InputError(
            f"cannot resume from {where}: these settings differ from the checkpoint's: {detail}"
        )
