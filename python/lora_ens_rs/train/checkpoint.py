"""Training checkpoints: everything a resumed run needs to end with the same adapters.

    save_checkpoint("runs/arc.checkpoint", state)    # atomic: temp file + rename
    state = load_checkpoint("runs/arc.checkpoint")  # None if there is none

A checkpoint holds the stacked adapters, the AdamW state, torch's RNG state (LoRA dropout), the
position in training (epoch and the number of optimizer steps done in it; each member's data
order is a pure function of its seed and the epoch, see ``data.epoch_order``), the early-
stopping state (each member's best adapters, epoch and validation NLL, epochs without
improvement) and the per-epoch history, plus the config that produced it. It is one
``state.pt`` file in the checkpoint directory, loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lora_ens_rs.atomic import atomic_path
from lora_ens_rs.errors import InputError, LoraEnsIOError
from lora_ens_rs.train.config import RESUMABLE_CHANGES

FILE = "state.pt"
FORMAT = 1


def save_checkpoint(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically.

    Args:
        directory: the checkpoint directory (created if needed).
        state: tensors, numbers, strings, lists and dicts only.

    Returns:
        The file written.

    Raises:
        LoraEnsIOError: the file cannot be written.
    """
    directory = Path(directory)
    target = directory / FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            torch.save({"format": FORMAT, **state}, tmp)
    except OSError as e:
        raise LoraEnsIOError(f"cannot write checkpoint {str(target)!r}: {e}") from e
    return target


def load_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None if there is none.

    Raises:
        LoraEnsIOError: the file exists but cannot be read.
    """
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:
        raise LoraEnsIOError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise LoraEnsIOError(f"checkpoint {str(path)!r} has an unknown format")
    return state


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
