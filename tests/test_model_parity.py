"""The engine's forward pass against transformers' fp32 forward on the same GGUF.

transformers dequantizes the GGUF (undoing llama.cpp's Q/K row permutation); the engine
keeps it quantized and uses interleaved RoPE. Both must give the same numbers: label-token
probabilities within 1e-3, full-vocabulary logits within 2e-2, identical greedy decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import csqa_prompts, label_ids, load_reference, reference_last_logits, softmax

from lora_ens_rs import _core

# ---------------------------------------------------------------------------------------------
# Tiny fixture model: every quantization type, tied and untied heads, ragged batches


@pytest.mark.parametrize(
    "name", ["tiny-f32.gguf", "tiny-q8_0.gguf", "tiny-q4_1.gguf", "tiny-untied-q8_0.gguf"]
)
def test_tiny_parity_ragged_batches(tiny_dir: Path, name: str) -> None:
    path = str(tiny_dir / name)
    tok, ref = load_reference(path)
    engine = _core.Model(path)
    # Short and long prompts mixed in one batch: each row has its own length.
    texts = [p[: 20 + 37 * i] for i, p in enumerate(csqa_prompts(12))]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len({len(i) for i in ids}) > 6
    want = reference_last_logits(ref, ids, batch_size=len(ids))
    for batch_size in (1, 5, 12):
        got = engine.logits(ids, batch_size=batch_size)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
    tokens = [3, 17, 600, 1000]
    got = engine.logits(ids, token_ids=tokens, batch_size=5)
    np.testing.assert_allclose(got, want[:, tokens], atol=2e-4, rtol=0)


def test_tiny_config_matches_reference(tiny_dir: Path) -> None:
    manifest = json.loads((tiny_dir / "manifest.json").read_text())["config"]
    config = _core.Model(str(tiny_dir / "tiny-q4_1.gguf")).config
    assert config["n_layer"] == manifest["n_layer"]
    assert config["hidden"] == manifest["hidden"]
    assert config["n_head"] == manifest["n_head"]
    assert config["n_kv_head"] == manifest["n_kv_head"]
    assert config["ffn"] == manifest["intermediate"]
    assert config["vocab_size"] == manifest["vocab_size"]
    assert config["rope_base"] == pytest.approx(manifest["rope_theta"])
    assert config["rms_eps"] == pytest.approx(manifest["rms_norm_eps"])


# ---------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct Q4_1


@pytest.fixture(scope="module")
def smollm2(default_model: str):
    tok, ref = load_reference(default_model)
    return tok, ref, _core.Model(default_model)


@pytest.mark.slow
def test_smollm2_label_probabilities(smollm2) -> None:
    tok, ref, engine = smollm2
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in csqa_prompts(200)]
    labels = label_ids(tok)
    want = softmax(reference_last_logits(ref, ids)[:, labels])
    got = softmax(engine.logits(ids, token_ids=labels, batch_size=16))
    diff = np.abs(got - want)
    print(f"label probs over {len(ids)} prompts: max diff {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() < 1e-3
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.slow
def test_smollm2_full_vocabulary_logits(smollm2) -> None:
    tok, ref, engine = smollm2
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in csqa_prompts(20)]
    want = reference_last_logits(ref, ids)
    got = engine.logits(ids, batch_size=8)
    diff = np.abs(got - want)
    print(f"full logits over {len(ids)} prompts: max diff {diff.max():.2e}, mean {diff.mean():.2e}")
    assert got.shape == (20, 49152)
    assert diff.max() < 2e-2


@pytest.mark.slow
def test_smollm2_greedy_generation(smollm2) -> None:
    tok, ref, engine = smollm2
    questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Explain what a neural network is in one sentence.",
        "List three prime numbers.",
        "How do I boil an egg?",
    ]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    stops = sorted({im_end, tok.eos_token_id})
    for question in questions:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = ref.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
        want = out[0, len(ids) :].tolist()
        got = engine.generate_greedy(ids, max_new_tokens=32, stop_ids=stops)
        assert got == want, (question, tok.decode(got), tok.decode(want))
