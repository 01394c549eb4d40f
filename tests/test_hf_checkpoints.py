"""Training on a Hugging Face checkpoint and serving it quantized, on the tiny checkpoints of
each architecture (scripts/make_arch_fixtures.py: LLaMA-2 / Mistral style, LLaMA-3.2 style,
Qwen2, Qwen3).

- ``lora-ens-rs convert`` against llama.cpp's own ``convert_hf_to_gguf.py`` on the same
  checkpoint: same tensor names, shapes and types, bit-identical data for f32, f16, bf16 and
  q8_0, every metadata key and value equal (tokenizer arrays included) except the recorded
  source; the K-quant files equal the fixture's re-encoding of llama.cpp's f32 file.
- The checkpoint's content hash: independent of file split and key order, sensitive to a byte.
- The ids training feeds the model (checkpoint directory and GGUF alike) equal the ids the
  engine's scorer builds (context with the model's special tokens, choices without).
- Members trained by ``lora-ens-rs train --model HF_DIR`` (2 members, 2 steps): the engine's
  member probabilities on the converted F32 GGUF equal ``peft.PeftModel`` on the checkpoint,
  and on a Q8_0 conversion equal PEFT on transformers' dequantization of that file (1e-3).
- Members trained on a GGUF of each architecture equal PEFT (1e-3); llama3 RoPE factors that
  match no known setting are refused for training.
- Base identity: an ensemble trained on the checkpoint loads on its conversions and is refused
  on other files (both identities named) unless LORA_ENS_RS_ALLOW_BASE_MISMATCH=1; one
  trained on a GGUF loads on that file only.

Run: `pytest tests/test_hf_checkpoints.py` (about two minutes on two cores once the fixtures
exist).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from support import right_padded

import lora_ens_rs
from lora_ens_rs import _core
from lora_ens_rs.checkpoint import HASH_HEADER, Checkpoint, canonical_json, checkpoint_sha256
from lora_ens_rs.convert import SOURCE_KEY, convert

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make_arch_fixtures.py"
ARCHS = ["llama2", "llama3", "qwen2", "qwen3"]
CSQA = REPO / "python" / "lora_ens_rs" / "datasets" / "commonsenseqa" / "train.jsonl"
PRE = {"llama3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}


def fixture_root() -> Path:
    return Path(os.environ.get("LORA_ENS_RS_ARCH_FIXTURES") or REPO / "tests/fixtures/arch")


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> Path:
    """The fixture directory of one architecture, written when missing or stale."""
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(fixture_root()), "--arch", request.param],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return fixture_root() / request.param


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-checkpoints")


def converted(arch: Path, work: Path, out_type: str) -> Path:
    """``lora-ens-rs convert`` of the architecture's checkpoint (once per module)."""
    out = work / arch.name / f"ours-{out_type}.gguf"
    if not out.is_file():
        convert(arch / "hf", out, out_type)
    return out


def llama_cpp(arch: Path, work: Path, out_type: str) -> Path:
    """llama.cpp's convert_hf_to_gguf.py on the checkpoint: the fixtures hold f32 and q8_0;
    f16 and bf16 are written here, both in one child process."""
    if out_type in ("f32", "q8_0"):
        return arch / f"{out_type}.gguf"
    outs = {t: work / arch.name / f"llama-cpp-{t}.gguf" for t in ("f16", "bf16")}
    if not outs[out_type].is_file():
        sys.path.insert(0, str(SCRIPT.parent))
        from fetch_llama_vocabs import fetch

        converter = fetch() / "convert_hf_to_gguf.py"
        code = f"import runpy, sys\nsys.path.insert(0, {str(converter.parent)!r})\n"
        if arch.name in PRE:  # the name llama.cpp would detect on the full vocabulary
            code += (
                "import conversion.base as base\n"
                f"base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {PRE[arch.name]!r}\n"
            )
        for t, out in outs.items():
            code += (
                f"sys.argv = ['convert_hf_to_gguf.py', {str(arch / 'hf')!r}, '--outfile', "
                f"{str(out)!r}, '--outtype', {t!r}]\n"
                f"runpy.run_path({str(converter)!r}, run_name='__main__')\n"
            )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    return outs[out_type]


def fields(reader: gguf.GGUFReader) -> dict[str, tuple[str, object]]:
    return {
        f.name: (f.types[0].name, f.contents())
        for f in reader.fields.values()
        if not f.name.startswith("GGUF.")
    }


# ---------------------------------------------------------------------------------------------
# convert


@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
def test_convert_equals_llama_cpp(arch: Path, work: Path, out_type: str) -> None:
    ref = gguf.GGUFReader(llama_cpp(arch, work, out_type))
    got = gguf.GGUFReader(converted(arch, work, out_type))
    want_fields, got_fields = fields(ref), fields(got)
    assert got_fields.pop(SOURCE_KEY) == ("STRING", checkpoint_sha256(arch / "hf"))
    assert "tokenizer.ggml.tokens" in want_fields
    assert got_fields == want_fields
    want = {t.name: t for t in ref.tensors}
    have = {t.name: t for t in got.tensors}
    assert sorted(have) == sorted(want)
    for name, t in want.items():
        u = have[name]
        assert (u.tensor_type, u.shape.tolist()) == (t.tensor_type, t.shape.tolist()), name
        assert np.array_equal(np.asarray(u.data).view(np.uint8), np.asarray(t.data).view(np.uint8))
    if arch.name == "llama3":
        assert "rope_freqs.weight" in have


def test_convert_k_quants(arch: Path, work: Path) -> None:
    """q4_k and q6_k equal the fixture's re-encoding of llama.cpp's f32 file; q4_k_m follows
    the recipe (Q6_K head, or embedding when tied); the engine loads every type."""
    for out_type in ("q4_k", "q6_k"):
        want = {t.name: t for t in gguf.GGUFReader(arch / f"{out_type}.gguf").tensors}
        have = {t.name: t for t in gguf.GGUFReader(converted(arch, work, out_type)).tensors}
        assert sorted(have) == sorted(want)
        for name, t in want.items():
            assert have[name].tensor_type == t.tensor_type, name
            assert np.array_equal(np.asarray(have[name].data), np.asarray(t.data)), name
    mix = {t.name: t.tensor_type for t in gguf.GGUFReader(converted(arch, work, "q4_k_m")).tensors}
    head = "output.weight" if "output.weight" in mix else "token_embd.weight"
    assert mix[head] == gguf.GGMLQuantizationType.Q6_K
    assert mix["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_K
    ids = [[5, 17, 300, 1200, 7]]
    base = _core.Model(converted(arch, work, "f32")).logits(ids)
    for out_type in ("q4_k_m", "q4_0", "q5_1"):
        got = _core.Model(converted(arch, work, out_type)).logits(ids)
        assert np.abs(got - base).max() < 1.0, out_type


def test_convert_command_line(tmp_path: Path) -> None:
    arch = fixture_root() / "qwen3"
    if not (arch / "hf").is_dir():
        pytest.skip("the qwen3 fixture is written by test_convert_equals_llama_cpp")
    out = tmp_path / "m.gguf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_ens_rs",
            "convert",
            str(arch / "hf"),
            str(out),
            "--type",
            "q8_0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary left
    bad = subprocess.run(
        [sys.executable, "-m", "lora_ens_rs", "convert", str(tmp_path), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "config.json" in bad.stderr, bad.stderr


def test_checkpoint_hash_definition(tmp_path: Path) -> None:
    """The hash as documented, computed here from the bytes; independent of file split and key
    order; any changed byte changes it."""
    import hashlib

    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float16)
    config = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 4, "b": [1, 2]}
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    save_file({"x.weight": a, "y.bias": b}, str(one / "model.safetensors"))
    save_file({"y.bias": b}, str(two / "model-00001-of-00002.safetensors"))
    save_file({"x.weight": a}, str(two / "model-00002-of-00002.safetensors"))
    (one / "config.json").write_text(json.dumps(config))
    (two / "config.json").write_text(json.dumps(dict(reversed(config.items())), indent=3))
    h = hashlib.sha256(HASH_HEADER)
    h.update(b"x.weight\tF32\t3,4\t48\n" + a.tobytes())
    h.update(b"y.bias\tF16\t5\t10\n" + b.tobytes())
    h.update(b"config.json\n" + canonical_json(config))
    assert checkpoint_sha256(one) == checkpoint_sha256(two) == h.hexdigest()
    a[1, 2] = np.nextafter(a[1, 2], np.float32(np.inf))
    save_file({"x.weight": a}, str(two / "model-00002-of-00002.safetensors"))
    assert checkpoint_sha256(two) != checkpoint_sha256(one)
    assert Checkpoint.open(one).arch == "qwen2"


# ---------------------------------------------------------------------------------------------
# Training


def questions(n: int = 6) -> list[dict]:
    return lora_ens_rs.read_questions(str(CSQA))[:n]


def test_training_ids_equal_the_engine_scorers(arch: Path, work: Path) -> None:
    from lora_ens_rs.train.base import load_base
    from lora_ens_rs.train.data import encode_questions

    qs = questions()
    engine_tok = _core.Tokenizer.from_gguf(arch / "f32.gguf")  # llama.cpp's file
    # The engine's scorer (score.rs, encode_options): the context with the model's special
    # tokens, each choice continuation without.
    want = []
    for q in qs:
        ids = engine_tok.encode(lora_ens_rs.choice_context(q["question"]), add_special_tokens=True)
        for c in q["choices"]:
            ids = ids + engine_tok.encode(lora_ens_rs.choice_continuation(c))
        want.append(tuple(ids))
    for source in (arch / "hf", converted(arch, work, "q8_0")):
        base = load_base(source, cache_root=work / "cache")
        got = [e.tokens for e in encode_questions(qs, base.tokenizer, "choices")]
        assert got == want, source
    bos = engine_tok.encode("x", add_special_tokens=True)[0]
    assert (want[0][0] == bos) == (arch.name in ("llama2", "llama3"))


def train(model: Path, out: Path) -> Path:
    """``lora-ens-rs train --model MODEL``: 2 members, 2 steps of choice scoring."""
    from lora_ens_rs.train import cli

    code = cli.main(
        [str(CSQA), "--model", str(model), "--out", str(out), "--members", "2", "--limit", "9",
         "--val-fraction", "0.1", "--epochs", "1", "--batch-size", "4", "--lr", "3e-2",
         "--scoring", "choices", "--targets", "q_proj,v_proj,down_proj", "--quiet"]
    )  # fmt: skip
    assert code == 0
    return out


def peft_member_probs(hf_model, ens: Path, tok, qs: list[dict]) -> np.ndarray:
    """(N, M, K) per-token-normalised choice probabilities from PEFT's members on
    ``hf_model``: full passes of context (with the model's special tokens) + choice."""
    from peft import PeftModel

    manifest = json.loads((ens / "ensemble.json").read_text())
    members = manifest["members"]
    peft = PeftModel.from_pretrained(hf_model, ens / members[0], adapter_name=members[0])
    for m in members[1:]:
        peft.load_adapter(ens / m, adapter_name=m)
    peft.eval()
    seqs, where = [], []
    for i, q in enumerate(qs):
        ctx = tok.encode(lora_ens_rs.choice_context(q["question"]), add_special_tokens=True)
        for j, c in enumerate(q["choices"]):
            cont = tok.encode(lora_ens_rs.choice_continuation(c))
            seqs.append(ctx + cont)
            where.append((i, j, len(ctx), len(cont)))
    scores = np.full((len(qs), len(members), 5), -np.inf)
    for m, name in enumerate(members):
        peft.set_adapter(name)
        ids, mask = right_padded(seqs)
        with torch.no_grad():
            logp = torch.log_softmax(peft(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for r, (i, j, n_ctx, n_cont) in enumerate(where):
            pos = torch.arange(n_ctx - 1, n_ctx - 1 + n_cont)
            total = logp[r, pos, torch.tensor(seqs[r][n_ctx:])].double().sum().item()
            scores[i, m, j] = total / n_cont
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def engine_member_probs(model: Path, ens: Path, qs: list[dict]) -> np.ndarray:
    engine = lora_ens_rs.Ensemble(model, ens)
    contexts = [lora_ens_rs.choice_context(q["question"]) for q in qs]
    s = engine.score_choices(contexts, [q["choices"] for q in qs], normalization="per_token")
    return s.member_probs


def hf_model(arch: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(arch / "hf", dtype=torch.float32).eval()


def test_members_trained_on_the_checkpoint(arch: Path, work: Path, monkeypatch) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.setenv("LORA_ENS_RS_CACHE", str(work / "cache"))
    ens = train(arch / "hf", work / arch.name / "ens-hf")
    manifest = json.loads((ens / "ensemble.json").read_text())
    assert manifest["base_model"]["checkpoint_sha256"] == checkpoint_sha256(arch / "hf")
    assert manifest["base_model"]["sha256"] is None
    qs = questions(8)
    tok = _core.Tokenizer.from_gguf(arch / "f32.gguf")

    f32 = converted(arch, work, "f32")
    got = engine_member_probs(f32, ens, qs)
    want = peft_member_probs(hf_model(arch), ens, tok, qs)
    print(f"{arch.name}: engine on the F32 conversion vs PEFT {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert np.abs(got[:, 0] - got[:, 1]).max() > 1e-3  # the members differ

    q8 = converted(arch, work, "q8_0")
    config = AutoConfig.from_pretrained(arch / "hf")
    dequantized = AutoModelForCausalLM.from_pretrained(
        q8.parent, gguf_file=q8.name, config=config, dtype=torch.float32
    ).eval()
    got8 = engine_member_probs(q8, ens, qs)
    want8 = peft_member_probs(dequantized, ens, tok, qs)
    print(f"{arch.name}: engine on the Q8_0 conversion vs PEFT {np.abs(got8 - want8).max():.2e}")
    np.testing.assert_allclose(got8, want8, atol=1e-3, rtol=0)

    # Identity: llama.cpp's file of the same checkpoint records no source: refused, naming
    # both identities; accepted with the override.
    other = arch / "f32.gguf"
    with pytest.raises(lora_ens_rs.AdapterError) as refused:
        lora_ens_rs.Ensemble(other, ens)
    message = str(refused.value)
    assert checkpoint_sha256(arch / "hf") in message
    assert _core.sha256_file(str(other)) in message
    assert "LORA_ENS_RS_ALLOW_BASE_MISMATCH" in message
    monkeypatch.setenv("LORA_ENS_RS_ALLOW_BASE_MISMATCH", "1")
    assert len(lora_ens_rs.Ensemble(other, ens).members) == 2


def test_members_trained_on_a_gguf(arch: Path, work: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORA_ENS_RS_CACHE", str(work / "cache"))
    gguf_file = arch / "f32.gguf"  # llama.cpp's conversion
    ens = train(gguf_file, work / arch.name / "ens-gguf")
    manifest = json.loads((ens / "ensemble.json").read_text())
    assert manifest["base_model"]["sha256"] == _core.sha256_file(str(gguf_file))
    qs = questions(8)
    tok = _core.Tokenizer.from_gguf(gguf_file)
    got = engine_member_probs(gguf_file, ens, qs)
    want = peft_member_probs(hf_model(arch), ens, tok, qs)
    print(f"{arch.name}: trained on the GGUF, engine vs PEFT {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    # Trained on that file: another file, even a conversion of the same checkpoint, is refused.
    with pytest.raises(lora_ens_rs.AdapterError, match=manifest["base_model"]["sha256"]):
        lora_ens_rs.Ensemble(converted(arch, work, "f32"), ens)


def test_unknown_llama3_rope_factors_are_refused_for_training(tmp_path: Path) -> None:
    from lora_ens_rs.train.base import hf_config_from_gguf

    src = fixture_root() / "llama3" / "f32.gguf"
    if not src.is_file():
        pytest.skip("the llama3 fixture is written by the tests above")
    config = hf_config_from_gguf(src)
    assert config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert hf_config_from_gguf(fixture_root() / "qwen3" / "f32.gguf")["head_dim"] == 64
    reader = gguf.GGUFReader(src)
    out = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(out, "llama")
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.name == "rope_freqs.weight":
            data = data * np.float32(1.5)  # a setting no LLaMA-3 uses
        writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(lora_ens_rs.ModelLoadError, match=r"rope_freqs.*HF_DIR"):
        hf_config_from_gguf(out)


def test_training_in_bfloat16(tmp_path: Path, monkeypatch) -> None:
    """``--dtype bfloat16``: the frozen base computes in bf16, the adapters stay fp32, and the
    engine loads and scores the members on a conversion of the checkpoint."""
    from lora_ens_rs.train.base import load_base

    monkeypatch.setenv("LORA_ENS_RS_CACHE", str(tmp_path / "cache"))
    hf = fixture_root() / "qwen3" / "hf"
    if not hf.is_dir():
        pytest.skip("the qwen3 fixture is written by the tests above")
    base = load_base(hf, dtype="bfloat16", cache_root=tmp_path / "cache")
    assert {p.dtype for p in base.model.parameters()} == {torch.bfloat16}
    from lora_ens_rs.train import cli

    out = tmp_path / "ens"
    code = cli.main(
        [str(CSQA), "--model", str(hf), "--out", str(out), "--members", "2", "--limit", "9",
         "--epochs", "1", "--batch-size", "4", "--scoring", "choices", "--dtype", "bfloat16",
         "--quiet"]
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "ensemble.json").read_text())
    assert manifest["training"]["dtype"] == "bfloat16"
    probs = engine_member_probs(convert(hf, tmp_path / "m.gguf", "f32"), out, questions(4))
    assert np.isfinite(probs).all()
