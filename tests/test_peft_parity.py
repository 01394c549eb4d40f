"""Ensemble members against PEFT: each member's label probabilities from the engine's
multi-adapter pass equal those of `peft.PeftModel` with that adapter active, on transformers'
fp32 model of the same GGUF; the engine's ensemble reduction equals a NumPy reduction of the
PEFT members' probabilities.

Adapters: three members with random non-zero A and B, different ranks and targets (k_proj and
o_proj among them, MLP projections, rank_pattern / alpha_pattern, rsLoRA on one), adapting
only upper layers so the lower ones are the shared trunk.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_model_parity import (
    csqa_prompts,
    label_ids,
    load_reference,
    reference_last_logits,
    softmax,
)

import lora_ens_rs
from lora_ens_rs import _core


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


def write_members(reference, out: Path, scale: float, seed: int = 0):
    """Add the three members to `reference` as PEFT adapters m0..m2 with random A and B, save
    them under `out/m0..m2`, and return the PEFT model."""
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
        out, selected_adapters=["m0", "m1", "m2"], save_embedding_layers=False
    )
    return peft_model.eval()


def peft_member_logits(peft_model, ids: list[list[int]], tokens: list[int]) -> np.ndarray:
    """(N, M, K) logits of each member (PEFT adapter m0..m2 active in turn)."""
    out = []
    for m in range(3):
        peft_model.set_adapter(f"m{m}")
        out.append(reference_last_logits(peft_model, ids)[:, tokens])
    return np.stack(out, axis=1)


def numpy_reduction(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    def entropy(p: np.ndarray) -> np.ndarray:
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)

    probs = member_probs.mean(axis=1)
    h = entropy(probs)
    eh = entropy(member_probs).mean(axis=1)
    return {
        "probs": probs,
        "prediction": probs.argmax(-1),
        "confidence": probs.max(-1),
        "entropy": h,
        "expected_entropy": eh,
        "mutual_information": h - eh,
    }


def check_members(engine, peft_model, adapter_dir: Path, ids, tokens, atol: float) -> None:
    adapters = [_core.LoraAdapter.load(adapter_dir / f"m{m}", engine) for m in range(3)]
    assert adapters[2].modules == [
        (engine.config["n_layer"] - 1, "k_proj"),
        (engine.config["n_layer"] - 1, "o_proj"),
    ]
    got_logits = engine.member_logits(ids, adapters, token_ids=tokens, batch_size=7)
    assert got_logits.shape == (len(ids), 3, len(tokens))
    want = softmax(peft_member_logits(peft_model, ids, tokens))
    got = softmax(got_logits)
    diff = np.abs(got - want)
    print(f"member probs vs PEFT, {len(ids)} prompts: max {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() < atol
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.99
    # The members really differ from each other and from the base.
    base = softmax(engine.logits(ids, token_ids=tokens))
    for m in range(3):
        assert np.abs(got[:, m] - base).max() > 5 * atol, m
    # Ensemble reduction of the engine's members vs NumPy on PEFT's members.
    reduced = _core.reduce(got_logits)
    reference = numpy_reduction(want)
    for key in ("probs", "confidence", "entropy", "expected_entropy", "mutual_information"):
        np.testing.assert_allclose(reduced[key], reference[key], atol=atol, rtol=0, err_msg=key)
    np.testing.assert_allclose(reduced.member_probs, got, atol=1e-6, rtol=0)
    agree = reduced.prediction == reference["prediction"]
    assert agree.mean() >= 0.99


def test_tiny_members_match_peft(tiny_dir: Path, tmp_path: Path) -> None:
    path = str(tiny_dir / "tiny-q8_0.gguf")
    tok, reference = load_reference(path)
    peft_model = write_members(reference, tmp_path, scale=0.2)
    texts = [p[: 30 + 41 * i] for i, p in enumerate(csqa_prompts(15))]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    check_members(_core.Model(path), peft_model, tmp_path, ids, [5, 300, 301, 700, 1000], 1e-4)


@pytest.mark.slow
def test_smollm2_members_match_peft(default_model: str, tmp_path: Path) -> None:
    tok, reference = load_reference(default_model)
    peft_model = write_members(reference, tmp_path, scale=0.06)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in csqa_prompts(100)]
    check_members(_core.Model(default_model), peft_model, tmp_path, ids, label_ids(tok), 1e-3)


def test_adapters_for_another_model_are_refused(
    tiny_dir: Path, default_model: str, tmp_path: Path
) -> None:
    _, reference = load_reference(str(tiny_dir / "tiny-q8_0.gguf"))
    write_members(reference, tmp_path, scale=0.1)
    with pytest.raises(lora_ens_rs.AdapterError, match="expected"):
        _core.LoraAdapter.load(tmp_path / "m0", _core.Model(default_model))
