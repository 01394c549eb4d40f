"""Real PEFT LoRA adapters of the tiny LLaMA for tests, and PEFT's own deltas to hold the
engine's against. A and B are random and non-zero (PEFT zero-initialises B), under a seed.

    adapter = write_adapter(tiny_dir / "hf", out_dir, seed=0, r=8, target_modules=["q_proj"])
    adapter.deltas[(0, "q_proj")]   # scaling * B @ A, float64, rows in GGUF order
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

MODULE = re.compile(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)$")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's HF-to-GGUF row permutation of q_proj / k_proj (``n_head`` = KV heads for k)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@dataclass
class Adapter:
    path: Path
    # (layer, target) -> scaling * B @ A in float64, GGUF row order for q_proj / k_proj.
    deltas: dict[tuple[int, str], np.ndarray]
    ranks: dict[tuple[int, str], int]
    scalings: dict[tuple[int, str], float]


def write_adapter(hf_dir: Path, out: Path, seed: int = 0, **lora: Any) -> Adapter:
    """PEFT model from ``LoraConfig(**lora)`` with random A and B, saved to ``out``."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    n_head = model.config.num_attention_heads
    heads = {"q_proj": n_head, "k_proj": model.config.num_key_value_heads}
    with warnings.catch_warnings():
        # Refusal fixtures (lm_head on tied embeddings, ...) make PEFT warn; they are the point.
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(**lora))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        peft_model.save_pretrained(out)
    deltas, ranks, scalings = {}, {}, {}
    for name, module in peft_model.base_model.model.named_modules():
        m = MODULE.fullmatch(name)
        if m is None or not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        key = (int(m.group(1)), m.group(2))
        a = module.lora_A["default"].weight.detach().double().numpy()
        b = module.lora_B["default"].weight.detach().double().numpy()
        delta = module.scaling["default"] * b @ a
        if key[1] in heads:
            delta = llama_cpp_permute(delta, heads[key[1]])
        deltas[key] = delta
        ranks[key] = a.shape[0]
        scalings[key] = module.scaling["default"]
    return Adapter(out, deltas, ranks, scalings)


def edit_config(adapter_dir: Path, **changes: Any) -> None:
    """Overwrite keys of ``adapter_config.json``."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=2))


def edit_tensors(
    adapter_dir: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
) -> None:
    """Rewrite ``adapter_model.safetensors`` with ``edit(tensors)``."""
    path = adapter_dir / "adapter_model.safetensors"
    tensors = edit(load_file(path))
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def member_configs(n_layer: int) -> list[LoraConfig]:
    top = n_layer // 2
    return [
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            layers_to_transform=list(range(top, n_layer)),
            use_rslora=True,
        ),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
            rank_pattern={"down_proj": 2},
            alpha_pattern={"gate_proj": 3},
            layers_to_transform=list(range(top + 1, n_layer)),
        ),
        LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["k_proj", "o_proj"],
            layers_to_transform=[n_layer - 1],
        ),
    ]


def write_members(
    reference, out: Path, scale: float, seed: int = 0, configs: list[LoraConfig] | None = None
):
    """Add the members (`configs`, default `member_configs`) to `reference` as PEFT adapters
    m0, m1, .. with random A and B, save them under `out/m0..`, and return the PEFT model."""
    if configs is None:
        configs = member_configs(reference.config.num_hidden_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about layers_to_transform on some versions
        peft_model = get_peft_model(reference, configs[0], adapter_name="m0")
        for i, config in enumerate(configs[1:], start=1):
            peft_model.add_adapter(f"m{i}", config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=generator))
    # No embedding LoRA here: skip PEFT's check for a changed vocabulary (it asks the hub).
    peft_model.save_pretrained(
        out,
        selected_adapters=[f"m{i}" for i in range(len(configs))],
        save_embedding_layers=False,
    )
    return peft_model.eval()
