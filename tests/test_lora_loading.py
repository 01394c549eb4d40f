"""PEFT LoRA adapters and ensemble directories loaded by the engine, held against PEFT itself.

Adapters are written by PEFT for the tiny LLaMA (tests/peft_adapters.py) with random A and B;
the engine's ``delta(layer, target)`` must equal PEFT's ``scaling * B @ A`` (rows permuted as
llama.cpp permutes q_proj / k_proj) within 1e-6. Every refusal is checked by exception type
and message. Run: ``pytest tests/test_lora_loading.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft_adapters import Adapter, edit_config, edit_tensors, llama_cpp_permute, write_adapter
from safetensors.torch import load_file

import lora_ens_rs
from lora_ens_rs import _core

TOL = 1e-6  # f32 storage of an f64 product of f32 factors

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]

# name -> LoraConfig kwargs (PEFT's TEST_CASES style).
CASES: dict[str, dict[str, Any]] = {
    "q-v": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "all-rslora": {"r": 4, "lora_alpha": 8, "target_modules": ATTN + MLP, "use_rslora": True},
    "patterns": {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "k_proj", "o_proj", *MLP],
        "rank_pattern": {"k_proj": 2, "model.layers.1.mlp.down_proj": 3},
        "alpha_pattern": {"o_proj": 5, "layers.0.self_attn.q_proj": 7},
    },
    "top-layer": {
        "r": 6,
        "lora_alpha": 3,
        "target_modules": ["k_proj", "o_proj", "gate_proj"],
        "layers_to_transform": [1],
    },
    "regex": {"r": 2, "lora_alpha": 4, "target_modules": r".*\.0\.(self_attn\.k|mlp\.up)_proj"},
}


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> _core.Model:
    return _core.Model(tiny_dir / "tiny-q8_0.gguf")


@pytest.fixture(scope="module")
def adapters(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Adapter]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: write_adapter(tiny_dir / "hf", root / name, seed=i, **kwargs)
        for i, (name, kwargs) in enumerate(CASES.items())
    }


def assert_matches_peft(loaded: _core.LoraAdapter, ref: Adapter) -> None:
    assert sorted(loaded.modules) == sorted(ref.deltas)
    assert repr(loaded).startswith(f'LoraAdapter(name="{loaded.name}"')
    for (layer, target), want in ref.deltas.items():
        got = loaded.delta(layer, target)
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"{layer} {target}")
        assert loaded.rank(layer, target) == ref.ranks[(layer, target)]
        assert loaded.scaling(layer, target) == pytest.approx(ref.scalings[(layer, target)])


def test_reference_permutation_is_the_one_in_the_gguf(tiny_dir: Path) -> None:
    """The test's llama.cpp permutation reproduces the fixture GGUF's own Q / K rows."""
    from gguf import GGUFReader

    hf = load_file(tiny_dir / "hf" / "model.safetensors")
    tensors = {t.name: t for t in GGUFReader(tiny_dir / "tiny-f32.gguf").tensors}
    for proj, stem, n_head in [("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2)]:
        w = hf[f"model.layers.1.self_attn.{proj}.weight"].numpy()
        gguf_w = np.asarray(tensors[f"blk.1.{stem}.weight"].data).reshape(w.shape)
        np.testing.assert_array_equal(gguf_w, llama_cpp_permute(w, n_head))
        assert not np.array_equal(gguf_w, w)


@pytest.mark.parametrize("case", CASES)
def test_deltas_match_peft(case: str, adapters: dict[str, Adapter], model: _core.Model) -> None:
    ref = adapters[case]
    loaded = _core.LoraAdapter.load(ref.path, model)
    assert loaded.name == case
    assert loaded.path == ref.path
    assert len(loaded.modules) == len(ref.deltas)
    assert_matches_peft(loaded, ref)


def test_expected_modules_per_case(adapters: dict[str, Adapter], model: _core.Model) -> None:
    def modules(case: str) -> list[tuple[int, str]]:
        return _core.LoraAdapter.load(adapters[case].path, model).modules

    assert modules("top-layer") == [(1, "k_proj"), (1, "o_proj"), (1, "gate_proj")]
    assert modules("regex") == [(0, "k_proj"), (0, "up_proj")]
    assert len(modules("all-rslora")) == 14
    loaded = _core.LoraAdapter.load(adapters["patterns"].path, model)
    assert loaded.rank(0, "k_proj") == 2 and loaded.rank(1, "attn_k") == 2
    assert loaded.rank(1, "down_proj") == 3 and loaded.rank(0, "down_proj") == 8
    assert loaded.scaling(0, "o_proj") == 5 / 8 and loaded.scaling(0, "q_proj") == 7 / 8
    assert loaded.scaling(1, "q_proj") == 2.0
    with pytest.raises(
        lora_ens_rs.InputError, match=r"has no LoRA on `model\.layers\.0\.self_attn\.v_proj`"
    ):
        loaded.delta(0, "v_proj")
    with pytest.raises(lora_ens_rs.InputError, match="unknown target `w_proj`"):
        loaded.delta(0, "w_proj")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_other_key_spellings(
    dtype: torch.dtype, adapters: dict[str, Adapter], model: _core.Model, tmp_path: Path
) -> None:
    """F16 / BF16 tensors, keys without `base_model.model.` and with the `.default` infix."""
    ref = adapters["patterns"]
    path = tmp_path / "half"
    shutil.copytree(ref.path, path)

    def rewrite(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in tensors.items():
            k = k.removeprefix("base_model.model.").replace(".weight", ".default.weight")
            out[k] = v.to(dtype)
        return out

    edit_tensors(path, rewrite)
    loaded = _core.LoraAdapter.load(path, model)
    half = load_file(path / "adapter_model.safetensors")
    heads = {"q_proj": 4, "k_proj": 2}
    for (layer, target), scaling in ref.scalings.items():
        name = f"model.layers.{layer}.{'mlp' if target in MLP else 'self_attn'}.{target}"
        a, b = (half[f"{name}.lora_{s}.default.weight"].double().numpy() for s in "AB")
        want = scaling * b @ a
        if target in heads:
            want = llama_cpp_permute(want, heads[target])
        got = loaded.delta(layer, target)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"{layer} {target}")


def test_ensemble_directory_and_base_hash(
    tiny_dir: Path, model: _core.Model, tmp_path: Path
) -> None:
    ens = tmp_path / "ens"
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "down_proj"]}
    refs = [write_adapter(tiny_dir / "hf", ens / f"m{i}", seed=10 + i, **kwargs) for i in range(2)]
    sha = hashlib.sha256((tiny_dir / "tiny-q8_0.gguf").read_bytes()).hexdigest()
    manifest = {
        "members": ["m0", "m1"],
        "base_model": {"path": "tiny-q8_0.gguf", "sha256": sha},
        "labels": ["A", "B"],
    }
    (ens / "ensemble.json").write_text(json.dumps(manifest))
    loaded = _core.load_adapters([ens], model, base_sha256=sha)
    assert [a.name for a in loaded] == ["m0", "m1"]
    for a, ref in zip(loaded, refs, strict=True):
        assert_matches_peft(a, ref)
    # An ensemble and a single adapter together, no hash check.
    both = _core.load_adapters([ens, refs[0].path], model)
    assert [a.name for a in both] == ["m0", "m1", "m0"]

    other = "0" * 64
    with pytest.raises(lora_ens_rs.AdapterError) as e:
        _core.load_adapters([ens], model, base_sha256=other)
    assert sha in str(e.value) and other in str(e.value) and "ensemble.json" in str(e.value)

    edit_config(ens / "m1", use_dora=True)
    with pytest.raises(lora_ens_rs.AdapterError, match=r"member 2 of 2 .*DoRA is not supported"):
        _core.load_adapters([ens], model)
    (ens / "ensemble.json").write_text(json.dumps({"members": ["m0", "gone"]}))
    with pytest.raises(lora_ens_rs.AdapterError, match=r"gone: member 2 of 2.*does not exist"):
        _core.load_adapters([ens], model)


def test_members_outside_the_ensemble_directory_are_refused(
    tiny_dir: Path, model: _core.Model, tmp_path: Path
) -> None:
    ens = tmp_path / "ens"
    ens.mkdir()
    write_adapter(tiny_dir / "hf", tmp_path / "elsewhere", seed=3, r=2, target_modules=["q_proj"])
    (ens / "ensemble.json").write_text(json.dumps({"members": ["../elsewhere"]}))
    with pytest.raises(lora_ens_rs.AdapterError, match="outside the ensemble directory") as e:
        lora_ens_rs.Ensemble(tiny_dir / "tiny-q8_0.gguf", ens)
    assert "LORA_ENS_RS_ALLOW_OUTSIDE_MEMBERS" in str(e.value)
    # The opt-in is the user's, in the environment; the manifest cannot grant it.
    code = "import sys, lora_ens_rs; print(lora_ens_rs.Ensemble(sys.argv[1], sys.argv[2]).members)"
    env = {**os.environ, "LORA_ENS_RS_ALLOW_OUTSIDE_MEMBERS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_dir / "tiny-q8_0.gguf"), str(ens)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "['elsewhere']"


def smollm2_q(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layer 0's q_proj pair in SmolLM2-135M's dims (hidden 576)."""
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    r = tensors[f"{prefix}.lora_A.weight"].shape[0]
    tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, 576)
    tensors[f"{prefix}.lora_B.weight"] = torch.randn(576, r)
    return tensors


def extra_layer(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for k in list(tensors):
        if ".layers.1." in k:
            tensors[k.replace(".layers.1.", ".layers.5.")] = tensors[k].clone()
    return tensors


def nan_in_b(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"][3, 1] = float("nan")
    return tensors


def remove(name: str) -> Callable[[Path], None]:
    return lambda path: (path / name).unlink()


# id -> (LoraConfig kwargs over the q/v base, or an edit of a saved q/v adapter; message fragment)
REFUSALS: dict[str, tuple[dict[str, Any] | Callable[[Path], None], str]] = {
    "dora": ({"use_dora": True}, "adapter_config.json: DoRA is not supported"),
    "bias": ({"bias": "all"}, 'bias = "all" is not supported'),
    "modules-to-save": ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    "lm-head": (
        {"target_modules": ["q_proj", "lm_head"]},
        "LoRA on the embedding or lm_head (`lm_head`) is not supported",
    ),
    "embed-tokens": ({"target_modules": ["embed_tokens"]}, "(`embed_tokens`) is not supported"),
    "embedding-tensor": (
        {"target_modules": ["v_proj", "embed_tokens"], "_config": {"target_modules": ["v_proj"]}},
        "tensor `base_model.model.model.embed_tokens.",
    ),
    "unknown-target": (
        lambda p: edit_config(p, target_modules=["q_proj", "c_attn"]),
        "unknown target module `c_attn`",
    ),
    "fan-in-fan-out": (lambda p: edit_config(p, fan_in_fan_out=True), "fan_in_fan_out"),
    "not-lora": (lambda p: edit_config(p, peft_type="IA3"), "peft_type `IA3` is not supported"),
    "smollm2-shapes": (
        lambda p: edit_tensors(p, smollm2_q),
        "adapter_model.safetensors: lora_A of `model.layers.0.self_attn.q_proj` is [8, 576], "
        "expected [8, 64] (trained for another model?)",
    ),
    "rank": (
        lambda p: edit_config(p, r=16),
        "lora_A of `model.layers.0.self_attn.q_proj` is [8, 64], expected [16, 64] "
        "(r = 16 in adapter_config.json)",
    ),
    "extra-layer": (lambda p: edit_tensors(p, extra_layer), "layer 5 but the base model has 2"),
    "nan": (
        lambda p: edit_tensors(p, nan_in_b),
        "tensor `base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight` holds a "
        "non-finite value (NaN",
    ),
    "missing-weights": (
        remove("adapter_model.safetensors"),
        "adapter_model.safetensors: file is missing",
    ),
    "missing-config": (remove("adapter_config.json"), "adapter_config.json: file is missing"),
    "bad-json": (
        lambda p: (p / "adapter_config.json").write_text('{"peft_type": "LORA",'),
        "adapter_config.json: malformed JSON",
    ),
    "bad-safetensors": (
        lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}"),
        "not a valid safetensors file",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_are_typed_and_named(
    case: str, tiny_dir: Path, model: _core.Model, tmp_path: Path
) -> None:
    change, fragment = REFUSALS[case]
    path = tmp_path / case
    base = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    if callable(change):
        write_adapter(tiny_dir / "hf", path, **base)
        change(path)
    else:
        kwargs = {k: v for k, v in change.items() if not k.startswith("_")}
        write_adapter(tiny_dir / "hf", path, **{**base, **kwargs})
        edit_config(path, **change.get("_config", {}))
    with pytest.raises(lora_ens_rs.AdapterError) as e:
        _core.LoraAdapter.load(path, model)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)


def test_missing_directory_is_a_missing_file(model: _core.Model, tmp_path: Path) -> None:
    with pytest.raises(lora_ens_rs.MissingFileError) as e:
        _core.LoraAdapter.load(tmp_path / "nowhere", model)
    assert isinstance(e.value, FileNotFoundError)
    assert str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(lora_ens_rs.MissingFileError):
        _core.load_adapters([tmp_path / "nowhere"], model)
