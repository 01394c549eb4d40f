"""Ensemble members against PEFT: each member's label probabilities from the engine's
multi-adapter pass equal those of `peft.PeftModel` with that adapter active, on transformers'
fp32 model of the same GGUF; the engine's ensemble reduction equals a NumPy reduction of the
PEFT members' probabilities.

Adapters: three members with random non-zero A and B, different ranks and targets (k_proj and
o_proj among them, MLP projections, rank_pattern / alpha_pattern, rsLoRA on one), adapting
only upper layers so the lower ones are the shared trunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from peft_adapters import write_members
from support import (
    csqa_prompts,
    label_ids,
    load_reference,
    numpy_reduction,
    reference_last_logits,
    softmax,
)

import lora_ens_rs
from lora_ens_rs import _core


def peft_member_logits(peft_model, ids: list[list[int]], tokens: list[int]) -> np.ndarray:
    """(N, M, K) logits of each member (PEFT adapter m0..m2 active in turn)."""
    out = []
    for m in range(3):
        peft_model.set_adapter(f"m{m}")
        out.append(reference_last_logits(peft_model, ids)[:, tokens])
    return np.stack(out, axis=1)


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
        np.testing.assert_allclose(
            getattr(reduced, key), reference[key], atol=atol, rtol=0, err_msg=key
        )
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
