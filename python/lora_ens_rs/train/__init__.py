"""Training of LoRA ensembles in torch: M adapters on one frozen base, exported for the engine.

    from lora_ens_rs.train import TrainConfig, train_ensemble
    result = train_ensemble(TrainConfig(data="train.jsonl", out="runs/arc", members=5,
                                        scoring="choices", layers="top8"))
    ens = lora_ens_rs.Ensemble(adapters="runs/arc")     # the engine serves what was trained

or ``lora-ens-rs train train.jsonl --out runs/arc --members 5 --scoring choices``.

Needs the ``train`` extra (torch, transformers, safetensors, tqdm). Modules: ``config``
(TrainConfig), ``base`` (the frozen base model from the GGUF, cached dequantized), ``lora``
(stacked multi-member LoRA layers), ``data`` (questions, tokenization, packing, batches),
``objective`` (label / choice losses, KL), ``model`` (trunk caching, forward, MC dropout),
``loop`` (train_ensemble), ``predictions`` (predict, mc_dropout_probs,
member_and_ensemble_metrics), ``export``
(PEFT directories + ensemble.json), ``checkpoint`` (resume), ``cli`` (``train`` subcommand).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_ens_rs.train.base import BaseModel, load_base
    from lora_ens_rs.train.config import TrainConfig, parse_layers
    from lora_ens_rs.train.data import Example, encode_questions, load_questions
    from lora_ens_rs.train.export import export_ensemble
    from lora_ens_rs.train.loop import TrainResult, train_ensemble
    from lora_ens_rs.train.lora import LoraStack, MultiLoraLinear
    from lora_ens_rs.train.model import EnsembleModel
    from lora_ens_rs.train.predictions import (
        mc_dropout_probs,
        member_and_ensemble_metrics,
        predict,
    )

# Names are imported on first use, so `lora-ens-rs train --help` and the config need no torch.
_WHERE = {
    "BaseModel": "base",
    "load_base": "base",
    "TrainConfig": "config",
    "parse_layers": "config",
    "Example": "data",
    "encode_questions": "data",
    "export_ensemble": "export",
    "LoraStack": "lora",
    "MultiLoraLinear": "lora",
    "TrainResult": "loop",
    "load_questions": "data",
    "mc_dropout_probs": "predictions",
    "member_and_ensemble_metrics": "predictions",
    "predict": "predictions",
    "train_ensemble": "loop",
    "EnsembleModel": "model",
}

__all__ = [
    "BaseModel",
    "EnsembleModel",
    "Example",
    "LoraStack",
    "MultiLoraLinear",
    "TrainConfig",
    "TrainResult",
    "encode_questions",
    "export_ensemble",
    "load_base",
    "load_questions",
    "mc_dropout_probs",
    "member_and_ensemble_metrics",
    "parse_layers",
    "predict",
    "train_ensemble",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"lora_ens_rs.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lora_ens_rs.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
