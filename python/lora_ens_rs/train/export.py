"""Write a trained ensemble: one PEFT adapter directory per member plus ``ensemble.json``.

    >>> out = export_ensemble("runs/csqa", result.model.stack, base_path=tiny_gguf,
    ...                       base_sha256=None, alpha=16.0, dropout=0.1, rslora=False,
    ...                       seeds=[0, 1], labels=["A", "B", "C", "D", "E"],
    ...                       scoring={"mode": "choices", "normalization": "per_token"},
    ...                       training=result.config.to_dict(), validation=None)
    >>> sorted(p.name for p in out.iterdir()), sorted(p.name for p in (out / "m0").iterdir())
    (['ensemble.json', 'm0', 'm1'], ['adapter_config.json', 'adapter_model.safetensors'])
    >>> lora_ens_rs.Ensemble(tiny_gguf, out).members
    ['m0', 'm1']

Each member directory (``m0``, ``m1``, ...) holds ``adapter_config.json`` and
``adapter_model.safetensors`` with PEFT's keys
(``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` [r, in], ``lora_B``
[out, r]) in transformers' row order, so ``peft.PeftModel.from_pretrained`` loads it on
transformers' model of the GGUF and ``lora_ens_rs.Ensemble`` on the GGUF itself. The whole
directory is written into a temporary directory beside the target and renamed into place
(:func:`lora_ens_rs.atomic.atomic_directory`); an existing target is only replaced with
``overwrite=True``. Under torchrun rank 0 opens the temporary directory, every rank writes its
own members into it, and after a barrier rank 0 writes ``ensemble.json`` and renames it into
place (``--out`` must then be on a file system every node sees).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import lora_ens_rs
from lora_ens_rs import _core
from lora_ens_rs.atomic import atomic_directory, write_file
from lora_ens_rs.errors import LoraEnsIOError
from lora_ens_rs.train.distributed import Shard
from lora_ens_rs.train.lora import PARENT, LoraStack

MANIFEST = "ensemble.json"


def peft_key(layer: int, target: str, matrix: str) -> str:
    """PEFT's tensor name: ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight``."""
    return f"base_model.model.model.layers.{layer}.{PARENT[target]}.{target}.{matrix}.weight"


def member_tensors(stack: LoraStack, m: int) -> dict[str, torch.Tensor]:
    """Member ``m``'s adapter tensors under PEFT's names (contiguous fp32 copies)."""
    out = {}
    for (layer, target), module in sorted(stack.modules.items()):
        out[peft_key(layer, target, "lora_A")] = module.lora_A[m].detach().float().contiguous()
        out[peft_key(layer, target, "lora_B")] = module.lora_B[m].detach().float().contiguous()
    return out


def adapter_config(
    stack: LoraStack, *, alpha: float, dropout: float, rslora: bool, base_model: str
) -> dict[str, Any]:
    """The ``adapter_config.json`` of a member (PEFT LoRA, CAUSAL_LM)."""
    rank = next(iter(stack.modules.values())).rank
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": stack.targets,
        "layers_to_transform": stack.layers,
        "layers_pattern": None,
        "lora_dropout": dropout,
        "bias": "none",
        "use_rslora": rslora,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "revision": None,
    }


def check_writable(target: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse an existing ``target`` unless ``overwrite``.

    Raises:
        LoraEnsIOError: it exists and ``overwrite`` is False, or it is a file.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise LoraEnsIOError(
            f"output directory {str(target)!r} already exists; pass overwrite=True "
            "(--overwrite) to replace it"
        )
    if target.exists() and not target.is_dir():
        raise LoraEnsIOError(f"output {str(target)!r} exists and is not a directory")


def export_ensemble(
    out: str | os.PathLike[str],
    stack: LoraStack,
    *,
    base_path: str,
    base_sha256: str | None,
    base_checkpoint_sha256: str | None = None,
    alpha: float,
    dropout: float,
    rslora: bool,
    seeds: Sequence[int],
    labels: Sequence[str],
    scoring: dict[str, Any],
    training: dict[str, Any],
    validation: dict[str, Any] | None,
    overwrite: bool = False,
    shard: Shard | None = None,
) -> Path:
    """Write the ensemble directory ``out`` (members ``m0..`` and ``ensemble.json``).

    Args:
        out: target directory.
        stack: the trained adapters.
        base_path: the base model's path (GGUF), recorded in the manifest and adapters.
        base_sha256: the GGUF's sha256 when the members were trained on a GGUF (the engine
            then loads them on that file only).
        base_checkpoint_sha256: the HF checkpoint's content hash when they were trained on a
            checkpoint (the engine then loads them on any GGUF converted from it).
        alpha: LoRA alpha.
        dropout: LoRA dropout used in training.
        rslora: rank-stabilised scaling.
        seeds: each member's seed.
        labels: option labels (the engine's default labels for :meth:`Ensemble.score`).
        scoring: ``{"mode": "labels" | "choices", "normalization": ...}``.
        training: the full training config.
        validation: per-member and ensemble validation metrics.
        overwrite: replace an existing ``out``.
        shard: under torchrun, this rank's place: ``stack`` holds the members
            ``shard.members`` of ``shard.n_members`` (None: ``stack`` holds them all).

    Returns:
        The directory written.

    Raises:
        LoraEnsIOError: ``out`` exists without ``overwrite``, or writing fails.
    """
    shard = shard or Shard(n_members=stack.n_members, members=list(range(stack.n_members)))
    members = [f"m{m}" for m in range(shard.n_members)]
    config = adapter_config(
        stack, alpha=alpha, dropout=dropout, rslora=rslora, base_model=base_path
    )
    # The engine's typed manifest checks the values as a load would, and writes the JSON.
    manifest = _core.EnsembleManifest(
        members,
        base_model_path=base_path,
        base_model_sha256=base_sha256,
        labels=list(labels),
        prompt_template=lora_ens_rs.TEMPLATE_NAME,
        scoring=scoring.get("mode"),
        normalization=scoring.get("normalization"),
        training=training,
        seeds=list(seeds),
        validation=validation,
        version=lora_ens_rs.__version__,
        base_model_checkpoint_sha256=base_checkpoint_sha256,
    )
    check_writable(out, overwrite=overwrite)
    try:
        with ExitStack() as scope:
            tmp = (
                scope.enter_context(atomic_directory(out, replace=overwrite))
                if shard.is_main
                else None
            )
            tmp = Path(shard.broadcast(str(tmp) if tmp else None, "starting the export"))
            for i, m in enumerate(shard.members):
                member_dir = tmp / members[m]
                member_dir.mkdir()
                save_file(
                    member_tensors(stack, i),
                    str(member_dir / "adapter_model.safetensors"),
                    metadata={"format": "pt"},
                )
                config_text = json.dumps(config, indent=2) + "\n"
                (member_dir / "adapter_config.json").write_text(config_text)
            shard.barrier("exporting the members")
            if shard.is_main:
                write_file(tmp / MANIFEST, manifest.to_json())
        shard.barrier("renaming the ensemble directory into place")
    except OSError as e:
        check_writable(out, overwrite=overwrite)  # ``out`` appeared while writing
        raise LoraEnsIOError(f"cannot write {str(out)!r}: {e}") from e
    return Path(out)
