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
    texts = [*csqa_prompts(200), "", " leading space", "tabs\tand\nnewlines  ", "Ünïcödé 漢字 🦙"]
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
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", *mlp]
        ),
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


# ---------------------------------------------------------------------------------------------
# Files the engine must refuse, each with a typed error naming what is wrong


def edit_gguf(src: Path, dst: Path, arch: str | None = None, drop=(), **values) -> Path:
    """Copy `src` to `dst` with `general.architecture` = `arch`, the keys in `values` set
    (`llama__rope__scaling__type` for `llama.rope.scaling.type`) and the tensors in `drop`
    left out."""
    import gguf

    reader = gguf.GGUFReader(src)
    old_arch = reader.get_field("general.architecture").contents()
    values = {k.replace("__", "."): v for k, v in values.items()}
    writer = gguf.GGUFWriter(dst, arch or old_arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        name = field.name
        if arch and name.startswith(old_arch + "."):
            name = arch + name[len(old_arch) :]
        if name in values:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for key, value in values.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint64(key, value)
    for t in reader.tensors:
        if t.name not in drop:
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def llama3_f32() -> Path:
    root = Path(os.environ.get("LORA_ENS_RS_ARCH_FIXTURES") or REPO / "tests/fixtures/arch")
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(root), "--arch", "llama3"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return root / "llama3" / "f32.gguf"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"arch": "gemma2"}, r"architecture `gemma2` \(this engine runs llama, qwen2, qwen3\)"),
        (
            {"llama__rope__scaling__type": "llama3", "drop": ["rope_freqs.weight"]},
            r"rope_freqs\.weight.*missing: `llama\.rope\.scaling\.type` says llama3",
        ),
        ({"llama__rope__scaling__type": "yarn"}, r"llama\.rope\.scaling\.type.*`yarn`"),
        ({"llama__attention__head_count_kv": 3}, r"3 KV heads do not divide 8 heads"),
        ({"llama__context_length": 2**32 - 1}, r"llama\.context_length.*outside"),
        ({"llama__embedding_length": 0}, r"llama\.embedding_length.*outside"),
        ({"llama__vocab_size": 1000}, r"tokenizer\.ggml\.tokens.*2005 tokens"),
        ({"llama__rope__dimension_count": 16}, r"partial rotary"),
    ],
)
def test_malformed_or_unsupported_files_are_refused(
    llama3_f32: Path, tmp_path: Path, edit: dict, message: str
) -> None:
    from lora_ens_rs import ModelLoadError

    bad = edit_gguf(llama3_f32, tmp_path / "bad.gguf", **edit)
    with pytest.raises(ModelLoadError, match=message):
        _core.Model(bad)
