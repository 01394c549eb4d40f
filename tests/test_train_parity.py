"""Trained ensembles against PEFT and the engine, on the tiny fixture model.

Each exported member, loaded by ``peft.PeftModel`` on transformers' model of the same GGUF,
gives the training module's option probabilities (eval mode, 1e-5), and the engine
(``lora_ens_rs.Ensemble`` on the GGUF and the exported directory) gives them too (1e-3): for
label scoring and for choice scoring (sum / per-token / per-byte). The base model loaded for
training is the GGUF's dequantized weights, also from the cache on a second load.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from support import (
    DATA,
    NORMALIZATIONS,
    load_reference,
    peft_choice_scores,
    reference_last_logits,
    softmax,
)

import lora_ens_rs
from lora_ens_rs.train import TrainConfig, encode_questions, load_base, train_ensemble

# One thread: on a busy 2-core machine two torch threads ran about 10x slower per step.
torch.set_num_threads(1)


def gguf(tiny_dir: Path) -> str:
    return str(tiny_dir / "tiny-q8_0.gguf")


def csqa(split: str, n: int) -> list[dict]:
    return lora_ens_rs.read_questions(DATA / "commonsenseqa" / f"{split}_rand_split.jsonl", limit=n)


def arc(split: str, n: int) -> list[dict]:
    return lora_ens_rs.read_questions(
        DATA / "arc" / "ARC-Easy" / f"ARC-Easy-{split}.jsonl", limit=n
    )


def peft_members(model_path: str, out: Path, n: int):
    """transformers' model of the GGUF with the exported members m0..m{n-1} as PEFT adapters."""
    _, reference = load_reference(model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about layers_to_transform on some versions
        peft_model = PeftModel.from_pretrained(reference, out / "m0", adapter_name="m0")
        for m in range(1, n):
            peft_model.load_adapter(out / f"m{m}", adapter_name=f"m{m}")
    return peft_model.eval()


@pytest.fixture(scope="module")
def label_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("train-labels") / "ens"
    config = TrainConfig(
        model=gguf(tiny_dir),
        members=3,
        scoring="labels",
        epochs=1,
        lr=2e-2,
        batch_size=4,
        layers="all",
        targets=["q_proj", "v_proj", "down_proj"],
        rslora=True,
        out=str(out),
        progress=False,
    )
    return train_ensemble(config, train=csqa("train", 24), val=csqa("dev", 8))


@pytest.fixture(scope="module")
def choice_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("train-choices") / "ens"
    config = TrainConfig(
        model=gguf(tiny_dir),
        members=3,
        scoring="choices",
        normalization="per_byte",
        epochs=1,
        lr=2e-2,
        layers="1",
        targets=["k_proj", "o_proj", "up_proj"],
        out=str(out),
        progress=False,
    )
    return train_ensemble(config, train=arc("Train", 24), val=arc("Dev", 8))


def test_label_members_match_peft_and_the_engine(tiny_dir: Path, label_run) -> None:
    questions = csqa("dev", 12)
    tok = label_run.model.base.tokenizer
    mine = label_run.model.member_probs(encode_questions(questions, tok, "labels"))
    # The members were trained apart: they differ from each other.
    assert np.abs(mine - mine.mean(axis=1, keepdims=True)).max() > 1e-2

    prompts = [
        lora_ens_rs.label_prompt(q["question"], q["choices"], q["labels"]) for q in questions
    ]
    label_tokens = [tok.encode(" " + label)[0] for label in "ABCDE"]
    peft_model = peft_members(gguf(tiny_dir), label_run.out, 3)
    want = []
    for m in range(3):
        peft_model.set_adapter(f"m{m}")
        logits = reference_last_logits(peft_model, [tok.encode(p) for p in prompts])
        want.append(softmax(logits[:, label_tokens]))
    want = np.stack(want, axis=1)
    np.testing.assert_allclose(mine, want, atol=1e-5, rtol=0)

    ens = lora_ens_rs.Ensemble(gguf(tiny_dir), label_run.out)
    s = ens.score(prompts, [q["labels"] for q in questions])
    np.testing.assert_allclose(s.member_probs, mine, atol=1e-3, rtol=0)


def test_choice_members_match_peft_and_the_engine(tiny_dir: Path, choice_run) -> None:
    questions = arc("Test", 10)
    contexts = [lora_ens_rs.choice_context(q["question"]) for q in questions]
    choices = [q["choices"] for q in questions]
    assert len({len(c) for c in choices}) > 1 or len(choices[0]) == 4
    tok = choice_run.model.base.tokenizer
    peft_model = peft_members(gguf(tiny_dir), choice_run.out, 3)
    ens = lora_ens_rs.Ensemble(gguf(tiny_dir), choice_run.out)
    reference = peft_choice_scores(peft_model, tok, contexts, choices)
    for norm in NORMALIZATIONS:
        examples = encode_questions(questions, tok, "choices", norm)
        mine = choice_run.model.member_probs(examples)
        want = softmax(reference[norm])
        np.testing.assert_allclose(mine, want, atol=1e-5, rtol=0, err_msg=norm)
        s = ens.score_choices(contexts, choices, normalization=norm)
        np.testing.assert_allclose(s.member_probs, mine, atol=1e-3, rtol=0, err_msg=norm)


def test_manifest_records_the_run(tiny_dir: Path, choice_run) -> None:
    manifest = json.loads((choice_run.out / "ensemble.json").read_text())
    assert manifest["members"] == ["m0", "m1", "m2"]
    assert manifest["base_model"]["sha256"] == lora_ens_rs._core.sha256_file(gguf(tiny_dir))
    assert manifest["prompt_template"] == lora_ens_rs.TEMPLATE_NAME
    assert manifest["scoring"]["mode"] == "choices"
    assert manifest["scoring"]["normalization"] == "per_byte"
    assert manifest["training"]["lr"] == 2e-2
    assert manifest["training"]["layers_resolved"] == [1]
    assert manifest["seeds"] == [0, 1, 2]
    assert manifest["version"] == lora_ens_rs.__version__
    assert manifest["labels"][:3] == ["A", "B", "C"]
    members = manifest["validation"]["members"]
    assert len(members) == 3 and {"accuracy", "nll", "ece"} <= set(members[0])
    config = json.loads((choice_run.out / "m1" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == ["k_proj", "o_proj", "up_proj"]
    assert config["layers_to_transform"] == [1]
    assert config["use_dora"] is False and config["modules_to_save"] is None


def test_base_model_is_the_gguf_and_cached(tiny_dir: Path, tmp_path: Path) -> None:
    first = load_base(gguf(tiny_dir), cache_root=tmp_path)
    cached = list((tmp_path / "train-base").iterdir())
    assert [p.name for p in cached] == [first.sha256]
    second = load_base(gguf(tiny_dir), cache_root=tmp_path)
    _, reference = load_reference(gguf(tiny_dir))
    want = reference.state_dict()
    for model in (first.model, second.model):
        got = model.state_dict()
        assert set(got) == set(want)
        for key in want:
            assert torch.equal(got[key], want[key]), key
    tied = second.model.model.embed_tokens.weight
    assert second.model.lm_head.weight.data_ptr() == tied.data_ptr()
    assert not any(p.requires_grad for p in second.model.parameters())


def test_base_model_from_a_model_directory(tiny_dir: Path) -> None:
    base = load_base(tiny_dir / "hf")
    assert base.gguf is None and base.sha256 is None and base.n_layer == 2
    assert base.tokenizer.encode(" A") == lora_ens_rs.Tokenizer.from_gguf(gguf(tiny_dir)).encode(
        " A"
    )
    with pytest.raises(lora_ens_rs.MissingFileError, match="does not exist"):
        load_base(tiny_dir / "nope.gguf")


@pytest.mark.slow
def test_smollm2_trained_members_match_the_engine(default_model: str, tmp_path: Path) -> None:
    """A short top-layer run on the real model: the engine scores what torch trained."""
    out = tmp_path / "ens"
    config = TrainConfig(
        model=default_model,
        members=2,
        scoring="choices",
        epochs=1,
        lr=1e-3,
        batch_size=4,
        layers="top2",
        targets=["q_proj", "v_proj", "o_proj"],
        out=str(out),
        progress=False,
    )
    result = train_ensemble(config, train=arc("Train", 16), val=arc("Dev", 4))
    questions = arc("Test", 12)
    contexts = [lora_ens_rs.choice_context(q["question"]) for q in questions]
    choices = [q["choices"] for q in questions]
    mine = result.model.member_probs(
        encode_questions(questions, result.model.base.tokenizer, "choices", "per_token")
    )
    s = lora_ens_rs.Ensemble(default_model, out).score_choices(contexts, choices)
    assert np.abs(mine - mine.mean(axis=1, keepdims=True)).max() > 1e-4
    np.testing.assert_allclose(s.member_probs, mine, atol=1e-3, rtol=0)
