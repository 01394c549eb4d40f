"""Every supported architecture against transformers and PEFT, on GGUF files written by
llama.cpp's own converter (scripts/make_arch_fixtures.py): LLaMA-2 / Mistral style
(SentencePiece, untied head), LLaMA-3.2 style (llama3 rope scaling, tied head), Qwen2 (Q/K/V
biases, untied), Qwen3 (Q/K norm, head_dim != hidden / n_head, tied).

- F32 files: full-vocabulary logits and label probabilities of ragged batches (one prompt over
  300 tokens, where rope scaling matters) within 1e-4 of transformers' forward on the original
  HF checkpoint; greedy generation identical for 32 tokens.
- Q8_0, Q4_K, Q6_K and a Q4_K_M-style mix: within 1e-3 of transformers on the same file's
  weights as transformers dequantizes them (gguf-py), with the original HF config.
- Three random PEFT adapters per architecture (all seven projections; q/k/v/o with rsLoRA;
  MLP and k at rank 2), made on the HF model: each member's full-vocabulary logits within
  1e-3 of `peft.PeftModel` when the engine runs them on the converted GGUF.
- Token ids: the engine's tokenizer read from the GGUF equals the HF tokenizer saved beside the
  checkpoint (SentencePiece itself for the LLaMA-2 one), BOS included as the metadata says.

Run: `pytest tests/test_arch_parity.py` (the first run writes the fixtures: about 3 minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft_adapters import write_members
from support import csqa_prompts, reference_last_logits, softmax

from lora_ens_rs import _core

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make_arch_fixtures.py"
ARCHS = ["llama2", "llama3", "qwen2", "qwen3"]
QUANTIZED = ["q8_0.gguf", "q4_k.gguf", "q6_k.gguf", "q4_k_m.gguf"]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> Path:
    """The fixture directory of one architecture, written when missing or stale."""
    root = Path(os.environ.get("LORA_ENS_RS_ARCH_FIXTURES") or REPO / "tests/fixtures/arch")
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(root), "--arch", request.param],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return root / request.param


def hf_model(arch: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(arch / "hf", dtype=torch.float32).eval()


def dequantized_reference(arch: Path, name: str):
    """transformers' model with the original config and the GGUF's weights as transformers
    reads them (gguf-py dequantization, llama.cpp's Q/K permutation undone)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(arch / "hf")
    model = AutoModelForCausalLM.from_pretrained(
        arch, gguf_file=name, config=config, dtype=torch.float32
    )
    return model.eval()


def prompts(arch: Path) -> list[list[int]]:
    """Ragged prompts, BOS as the model's metadata says, one of them over 300 tokens."""
    tok = _core.Tokenizer.from_gguf(arch / "f32.gguf")
    texts = [p[: 40 + 53 * i] for i, p in enumerate(csqa_prompts(7))]
    texts.append(" ".join(csqa_prompts(40)))
    ids = [tok.encode(t, add_special_tokens=True) for t in texts]
    assert len(ids[-1]) > 300
    return [i[:320] for i in ids]


def test_tokenizer_matches_the_checkpoint(arch: Path) -> None:
    tok = _core.Tokenizer.from_gguf(arch / "f32.gguf")
    texts = csqa_prompts(200) + ["", " leading space", "tabs\tand\nnewlines  ", "Ünïcödé 漢字 🦙"]
    got = [tok.encode(t, add_special_tokens=True) for t in texts]
    if arch.name == "llama2":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(arch / "hf" / "tokenizer.model"))
        want = [[sp.bos_id(), *sp.encode(t)] for t in texts]
    else:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(arch / "hf")
        want = [hf(t)["input_ids"] for t in texts]
    assert got == want


def test_f32_matches_transformers(arch: Path) -> None:
    ids = prompts(arch)
    engine = _core.Model(arch / "f32.gguf")
    want = reference_last_logits(hf_model(arch), ids, batch_size=4)
    got = engine.logits(ids, batch_size=3)
    assert got.shape == want.shape
    print(f"{arch.name}: full-vocabulary logits max diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    labels = [5, 17, 300, 1200]
    np.testing.assert_allclose(
        softmax(engine.logits(ids, token_ids=labels)), softmax(want[:, labels]), atol=1e-4, rtol=0
    )


def test_f32_greedy_generation_matches_transformers(arch: Path) -> None:
    ids = prompts(arch)[2]
    engine = _core.Model(arch / "f32.gguf")
    got = engine.generate_greedy(ids, max_new_tokens=32, stop_ids=[])
    model = hf_model(arch)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )
    assert got == out[0, len(ids) :].tolist()


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_matches_transformers_on_its_weights(arch: Path, name: str) -> None:
    ids = prompts(arch)[:5]
    want = reference_last_logits(dequantized_reference(arch, name), ids, batch_size=5)
    got = _core.Model(arch / name).logits(ids, batch_size=5)
    print(f"{arch.name} {name}: logits max diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    np.testing.assert_allclose(softmax(got), softmax(want), atol=1e-4, rtol=0)


def member_configs() -> list[LoraConfig]:
    mlp = ["gate_proj", "up_proj", "down_proj"]
    return [
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", *mlp]),
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            use_rslora=True,
        ),
        LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj", *mlp]),
    ]


def test_peft_members_match_on_the_converted_gguf(arch: Path, tmp_path: Path) -> None:
    ids = prompts(arch)[:6]
    peft_model = write_members(hf_model(arch), tmp_path, scale=0.1, configs=member_configs())
    engine = _core.Model(arch / "f32.gguf")
    adapters = [_core.LoraAdapter.load(tmp_path / f"m{m}", engine) for m in range(3)]
    got = engine.member_logits(ids, adapters, batch_size=4)  # (N, M, vocab)
    base = engine.logits(ids)
    for m in range(3):
        peft_model.set_adapter(f"m{m}")
        want = reference_last_logits(peft_model, ids)
        diff = np.abs(got[:, m] - want).max()
        print(f"{arch.name} member {m}: logits max diff vs PEFT {diff:.2e}")
        # Logits within 1e-3 bound the probabilities' error by about 2e-3 relative.
        assert diff < 1e-3, m
        # The member really moves the logits (the check above could not pass by luck).
        assert np.abs(got[:, m] - base).max() > 0.1, m
