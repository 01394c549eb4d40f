"""The tiny random LLaMA fixture vs its spec, its HF twin, transformers' GGUF loader and itself.

Tolerances: F32 tensors round-trip exactly; a Q8_0 / Q4_1 value is within half a quantization step
of the HF weight, plus what rounding the block's scale (and min) to f16 adds; the F32 GGUF and the
HF checkpoint give the same logits to 1e-5. Run: `pytest tests/test_fixture.py`.
"""

from __future__ import annotations

import functools
import hashlib
import random
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from safetensors.numpy import load_file

MAKE_TINY_LLAMA = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_llama.py"

N_LAYER, HIDDEN, N_HEAD, N_KV_HEAD, HEAD_DIM, INTER, N_VOCAB = 2, 64, 4, 2, 16, 128, 1024
SPECIALS = {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"}
# file -> (untied?, file_type, ggml type of token_embd, of the other 2-D weights); norms are F32
FILES = {
    "tiny-f32.gguf": (False, gguf.LlamaFileType.ALL_F32, QT.F32, QT.F32),
    "tiny-q8_0.gguf": (False, gguf.LlamaFileType.MOSTLY_Q8_0, QT.Q8_0, QT.Q8_0),
    "tiny-q4_1.gguf": (False, gguf.LlamaFileType.MOSTLY_Q4_1, QT.Q8_0, QT.Q4_1),
    "tiny-untied-q8_0.gguf": (True, gguf.LlamaFileType.MOSTLY_Q8_0, QT.Q8_0, QT.Q8_0),
}
# GGUF leaf -> (HF leaf, shape in GGUF order: ne0 = input features first)
BLOCK_TENSORS = {
    "attn_norm": ("input_layernorm", [HIDDEN]),
    "ffn_down": ("mlp.down_proj", [INTER, HIDDEN]),
    "ffn_gate": ("mlp.gate_proj", [HIDDEN, INTER]),
    "ffn_up": ("mlp.up_proj", [HIDDEN, INTER]),
    "ffn_norm": ("post_attention_layernorm", [HIDDEN]),
    "attn_k": ("self_attn.k_proj", [HIDDEN, N_KV_HEAD * HEAD_DIM]),
    "attn_output": ("self_attn.o_proj", [N_HEAD * HEAD_DIM, HIDDEN]),
    "attn_q": ("self_attn.q_proj", [HIDDEN, N_HEAD * HEAD_DIM]),
    "attn_v": ("self_attn.v_proj", [HIDDEN, N_KV_HEAD * HEAD_DIM]),
}
F16_EPS = 2.0**-11  # relative rounding error of a normal f16


def expected_tensors(untied: bool) -> dict[str, tuple[str, list[int]]]:
    """GGUF name -> (HF name, GGUF shape), in the order llama.cpp's converter writes them."""
    out = {"output.weight": ("lm_head.weight", [HIDDEN, N_VOCAB])} if untied else {}
    out["token_embd.weight"] = ("model.embed_tokens.weight", [HIDDEN, N_VOCAB])
    for i in range(N_LAYER):
        for leaf, (hf_leaf, shape) in BLOCK_TENSORS.items():
            out[f"blk.{i}.{leaf}.weight"] = (f"model.layers.{i}.{hf_leaf}.weight", shape)
    out["output_norm.weight"] = ("model.norm.weight", [HIDDEN])
    return out


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: interleaved RoPE pairs back to HF's half-split rows."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def hf_order(name: str, w: np.ndarray) -> np.ndarray:
    if ".attn_q." in name:
        return unpermute(w, N_HEAD)
    if ".attn_k." in name:
        return unpermute(w, N_KV_HEAD)
    return w


def error_bound(t) -> np.ndarray:
    """Per-element bound on |dequantized - original| for a Q8_0 / Q4_1 tensor, shaped like it.

    Q8_0: x = q * d with q = round(x / d): half a step, plus 127 times the f16 error of d.
    Q4_1: x = q * d + m with q in 0..15: half a step, plus 15 times d's f16 error, plus m's.
    """
    raw = np.asarray(t.data).reshape(-1, gguf.GGML_QUANT_SIZES[t.tensor_type][1])
    d = np.abs(raw[:, 0:2].copy().view(np.float16).astype(np.float32))
    if t.tensor_type == QT.Q8_0:
        bound = d * (0.5 + 128 * F16_EPS)
    else:
        m = np.abs(raw[:, 2:4].copy().view(np.float16).astype(np.float32))
        bound = d * (0.5 + 16 * F16_EPS) + 2 * F16_EPS * m
    rows = int(t.shape[1]) if len(t.shape) > 1 else 1
    return np.repeat(bound + 1e-7, 32, axis=1).reshape(rows, -1)


@functools.cache
def reader(path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)


def field(r: gguf.GGUFReader, key: str):
    return r.fields[key].contents()


def dequantized(path: Path) -> dict[str, np.ndarray]:
    """GGUF name -> f32 weight in HF layout ([out, in] rows, Q/K un-permuted)."""
    return {
        # a copy: an F32 tensor comes back as a read-only view of the memory-mapped file
        t.name: np.array(hf_order(t.name, gguf.quants.dequantize(t.data, t.tensor_type)))
        for t in reader(path).tensors
    }


@functools.cache
def load_gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )


@pytest.fixture(scope="module")
def source_vocab(default_model: str) -> dict:
    r = gguf.GGUFReader(default_model)
    keys = ("tokens", "token_type", "merges")
    vocab = {k: field(r, f"tokenizer.ggml.{k}") for k in keys}
    vocab["chat_template"] = field(r, "tokenizer.chat_template")
    return vocab


@pytest.fixture(scope="module")
def hf_weights(tiny_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {d: load_file(tiny_dir / d / "model.safetensors") for d in ("hf", "hf-untied")}


@pytest.mark.parametrize("name", FILES)
def test_gguf_metadata(tiny_dir: Path, source_vocab: dict, name: str) -> None:
    file_type = FILES[name][1]
    r = reader(tiny_dir / name)
    expected = {
        "general.architecture": "llama",
        "general.file_type": int(file_type),
        "general.quantization_version": 2,
        "llama.context_length": 512,
        "llama.embedding_length": HIDDEN,
        "llama.block_count": N_LAYER,
        "llama.feed_forward_length": INTER,
        "llama.rope.dimension_count": HEAD_DIM,
        "llama.attention.head_count": N_HEAD,
        "llama.attention.head_count_kv": N_KV_HEAD,
        "llama.vocab_size": N_VOCAB,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
    }
    assert {k: field(r, k) for k in expected} == expected
    assert field(r, "llama.rope.freq_base") == pytest.approx(1e5)
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(r, "general.name")

    tokens, types, merges = (
        field(r, f"tokenizer.ggml.{k}") for k in ("tokens", "token_type", "merges")
    )
    assert tokens == source_vocab["tokens"][:N_VOCAB]
    assert types == source_vocab["token_type"][:N_VOCAB]
    assert all(tokens[i] == s and types[i] == gguf.TokenType.CONTROL for i, s in SPECIALS.items())
    kept = set(tokens)
    assert merges == [
        m for m in source_vocab["merges"] if m.replace(" ", "") in kept and set(m.split()) <= kept
    ]
    assert len(merges) > 700
    # every byte token SmolLM2 has survives the cut (it has 235 of the 256; see SOURCE)
    byte_tokens = [t for t in source_vocab["tokens"] if len(t) == 1]
    assert len(byte_tokens) == 235 and set(byte_tokens) <= kept
    assert field(r, "tokenizer.chat_template") == source_vocab["chat_template"]


@pytest.mark.parametrize("name", FILES)
def test_gguf_tensors(tiny_dir: Path, default_model: str, name: str) -> None:
    untied, _, embd_type, weight_type = FILES[name]
    tensors = reader(tiny_dir / name).tensors
    expected = expected_tensors(untied)
    assert [t.name for t in tensors] == list(expected)
    for t in tensors:
        assert t.shape.tolist() == expected[t.name][1], t.name
        if len(t.shape) == 1:
            want = QT.F32
        elif t.name in ("token_embd.weight", "output.weight"):
            want = embd_type
        else:
            want = weight_type
        assert t.tensor_type == want, t.name
    # the same within-block order as SmolLM2's own file
    real = [t.name for t in reader(Path(default_model)).tensors if t.name.startswith("blk.0.")]
    assert [t.name for t in tensors if t.name.startswith("blk.0.")] == real


@pytest.mark.parametrize("name", FILES)
def test_gguf_weights_are_hf_weights(tiny_dir: Path, hf_weights, name: str) -> None:
    untied = FILES[name][0]
    hf = hf_weights["hf-untied" if untied else "hf"]
    assert set(hf) == {hf_name for hf_name, _ in expected_tensors(untied).values()}
    for t in reader(tiny_dir / name).tensors:
        stored = gguf.quants.dequantize(t.data, t.tensor_type)  # (out, in), GGUF row order
        got, want = hf_order(t.name, stored), hf[expected_tensors(untied)[t.name][0]]
        assert got.shape == want.shape, t.name
        if t.tensor_type == QT.F32:
            np.testing.assert_array_equal(got, want, err_msg=t.name)
        else:
            err = np.abs(got - want)
            bound = hf_order(t.name, error_bound(t))
            assert (err <= bound).all(), f"{t.name}: max excess {(err - bound).max():.3g}"
            assert err.max() > 0, f"{t.name} was not quantized"
        if ".attn_q." in t.name or ".attn_k." in t.name:  # the permutation is no identity
            assert np.abs(stored - want).max() > 0.1, t.name
    # the tied pair shares every weight; the untied one adds its own lm_head
    np.testing.assert_array_equal(
        hf_weights["hf"]["model.embed_tokens.weight"],
        hf_weights["hf-untied"]["model.embed_tokens.weight"],
    )


@pytest.mark.parametrize("name", FILES)
def test_transformers_loads_gguf_as_dequantized(tiny_dir: Path, name: str) -> None:
    """transformers un-permutes Q/K on load: its weights are ours, dequantized and un-permuted."""
    untied = FILES[name][0]
    model = load_gguf_model(tiny_dir / name)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (
        HIDDEN,
        INTER,
        N_LAYER,
    )
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (
        N_HEAD,
        N_KV_HEAD,
        HEAD_DIM,
    )
    assert cfg.vocab_size == N_VOCAB and cfg.tie_word_embeddings is not untied
    assert cfg.rope_parameters["rope_theta"] == pytest.approx(1e5)
    assert cfg.rms_norm_eps == pytest.approx(1e-5)
    state = model.state_dict()
    weights = dequantized(tiny_dir / name)
    if not untied:
        weights["output.weight"] = weights["token_embd.weight"]
    names = {g: h for g, (h, _) in expected_tensors(True).items()}
    assert set(state) == {names[g] for g in weights}
    for g, w in weights.items():
        assert torch.equal(state[names[g]], torch.from_numpy(w)), g


PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "Question: Which gas do plants absorb?\nAnswer: carbon dioxide",
    "a",
]


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # (seq_len, vocab)


def test_f32_gguf_logits_match_hf(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_dir / "hf", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_dir / "hf")
    model = load_gguf_model(tiny_dir / "tiny-f32.gguf")
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        want = logits(hf, ids)
        assert torch.isfinite(want).all()
        assert 0.1 < want.std().item() < 5.0, "activations out of the sane range"
        torch.testing.assert_close(logits(model, ids), want, atol=1e-5, rtol=0)


def test_untied_gguf_logits_match_hf_untied(tiny_dir: Path) -> None:
    """No F32 untied file: the Q8_0 one is within its noise (<= 0.07 seen, logits std ~0.6) of
    `hf-untied/`, and far from the tied model, so its own `output.weight` is what it uses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    untied = AutoModelForCausalLM.from_pretrained(tiny_dir / "hf-untied", dtype=torch.float32)
    tied = AutoModelForCausalLM.from_pretrained(tiny_dir / "hf", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_dir / "hf-untied")
    model = load_gguf_model(tiny_dir / "tiny-untied-q8_0.gguf")
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        got, want = logits(model, ids), logits(untied, ids)
        torch.testing.assert_close(got, want, atol=0.15, rtol=0)
        assert (got - logits(tied, ids)).abs().max() > 1.0


WORDS = ["the", " quick", "Brown", " fox", "'s", " don't", " A", "B)", "A.", "!?", "...", " -"]
NUMBERS = ["12", " 345", "  7", "3.14159", "1e-5", "0123456789", "   1   22   333"]
SPACES = ["\t", "\n", "\n\n", "\r\n", "    ", "  ", "\u00a0"]
CODE = ["def f(x):", " return x**2", "{}", "[1, 2]"]
UNICODE = ["é", "ñandú", "中文", "日本語", "😀", "Ω≈ç√", "ﬁ"]
MARKUP = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im_start", "im_end|>"]


def tokenizer_strings() -> list[str]:
    """A few hundred strings: prose, digits after runs of spaces, code, unicode, chat markup."""
    rng = random.Random(0)
    pieces = [*WORDS, *NUMBERS, *SPACES, *CODE, *UNICODE, *MARKUP]
    out = [*pieces, "", " "]
    return out + ["".join(rng.choices(pieces, k=rng.randint(2, 12))) for _ in range(300)]


def test_tokenizer_matches_gguf(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    from_gguf = AutoTokenizer.from_pretrained(tiny_dir, gguf_file="tiny-f32.gguf")
    for hf_dir in ("hf", "hf-untied"):
        saved = AutoTokenizer.from_pretrained(tiny_dir / hf_dir)
        strings = tokenizer_strings()
        chats = [
            [{"role": "user", "content": s}, {"role": "assistant", "content": t}]
            for s, t in zip(strings[::7], strings[1::7], strict=False)
        ]
        for tok in (from_gguf, saved):
            strings += [tok.apply_chat_template(c, tokenize=False) for c in chats]
        for s in strings:
            ids = from_gguf(s)["input_ids"]
            assert saved(s)["input_ids"] == ids, repr(s)
            assert all(0 <= i < N_VOCAB for i in ids)
        assert from_gguf.apply_chat_template(chats[0], tokenize=False) == saved.apply_chat_template(
            chats[0], tokenize=False
        )
    assert from_gguf("<|im_start|>user\n")["input_ids"][0] == 1  # special tokens stay whole
    assert from_gguf.decode(from_gguf("naïve café, 42!")["input_ids"]) == "naïve café, 42!"


def test_script_is_deterministic(tmp_path: Path, default_model: str) -> None:
    """Two runs (side by side, to keep this quick) write the same bytes."""
    outs = [tmp_path / "a", tmp_path / "b"]
    cmd = [sys.executable, str(MAKE_TINY_LLAMA), "--source-gguf", default_model, "--out"]
    runs = [subprocess.Popen([*cmd, str(out)], stdout=subprocess.DEVNULL) for out in outs]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]

    def digests(root: Path) -> dict[str, str]:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files
        }

    a, b = (digests(out) for out in outs)
    assert a == b
    assert {"manifest.json", "SOURCE", "hf/model.safetensors", "hf/tokenizer.json"} <= set(a)
    assert set(FILES) <= set(a)
