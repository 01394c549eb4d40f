"""`Ensemble.score` and `Ensemble.score_choices` against PEFT on transformers' fp32 model of
the same GGUF: three members with random non-zero adapters (`peft_adapters.write_members`).

- label scoring: each member's softmax over the label tokens equals PEFT's (1e-3), and the
  ensemble arrays equal a NumPy reduction of the members' probabilities;
- choice scoring: each member's choice probabilities equal those computed from PEFT's
  full-sequence log-probabilities (context + choice in one pass, no cache), for the sum,
  per-token and per-byte normalisations, on ARC-Easy questions with 3-5 choices;
- no adapters: the base model's scores, reported as one member.

The reference is fed the engine tokenizer's ids, so this checks the scoring arithmetic
(tokenizer parity has its own test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from peft_adapters import write_members
from support import (
    DATA,
    NORMALIZATIONS,
    csqa_prompts,
    load_reference,
    numpy_reduction,
    peft_choice_scores,
    reference_last_logits,
    softmax,
)

import lora_ens_rs
from lora_ens_rs import _core


def arc_easy(n: int) -> tuple[list[str], list[list[str]]]:
    """Choice contexts and texts of `n` ARC-Easy test questions, in file order: the first ones
    with 3 or 5 choices (up to a quarter of `n`), the rest with 4."""
    path = DATA / "arc" / "ARC-Easy" / "ARC-Easy-Test.jsonl"
    odd, four = [], []
    with path.open() as f:
        for line in f:
            q = json.loads(line)["question"]
            (four if len(q["choices"]) == 4 else odd).append(q)
    picked = odd[: n // 4]
    picked += four[: n - len(picked)]
    contexts = [lora_ens_rs.choice_context(q["stem"]) for q in picked]
    choices = [[c["text"] for c in q["choices"]] for q in picked]
    return contexts, choices


def check_choices(ens, peft_model, tok, contexts, choices, atol: float) -> None:
    reference = peft_choice_scores(peft_model, tok, contexts, choices)
    for norm in NORMALIZATIONS:
        s = ens.score_choices(contexts, choices, normalization=norm, batch_size=7)
        want = softmax(reference[norm])
        diff = np.abs(s.member_probs - want)
        print(f"choices/{norm}: member probs vs PEFT max {diff.max():.2e} mean {diff.mean():.2e}")
        assert diff.max() < atol, norm
        assert (s.member_probs.argmax(-1) == want.argmax(-1)).mean() >= 0.99
        check_reduction(s, want, atol)


def check_reduction(s: lora_ens_rs.Scores, peft_probs: np.ndarray, atol: float) -> None:
    """The ensemble arrays: exactly the NumPy reduction of the engine's members, and that of
    PEFT's members within `atol`."""
    own = numpy_reduction(s.member_probs.astype(np.float64))
    ref = numpy_reduction(peft_probs)
    for key in ("probs", "confidence", "entropy", "expected_entropy", "mutual_information"):
        got = getattr(s, key)
        np.testing.assert_allclose(got, own[key], atol=1e-5, rtol=0, err_msg=key)
        worst = np.abs(got - ref[key]).max()
        print(f"  {key} vs NumPy on PEFT members: max {worst:.2e}")
        assert worst < atol, key
    np.testing.assert_array_equal(s.prediction, own["prediction"])


def check_labels(ens, peft_model, tok, prompts: list[str], atol: float) -> None:
    labels = ["A", "B", "C", "D", "E"]
    s = ens.score(prompts, labels, batch_size=7)
    tokens = [tok.encode(" " + label, add_special_tokens=False)[0] for label in labels]
    ids = [tok.encode(p) for p in prompts]
    want = []
    for m in range(3):
        peft_model.set_adapter(f"m{m}")
        want.append(softmax(reference_last_logits(peft_model, ids)[:, tokens]))
    want = np.stack(want, axis=1)
    diff = np.abs(s.member_probs - want)
    print(f"labels: member probs vs PEFT max {diff.max():.2e} mean {diff.mean():.2e}")
    assert diff.max() < atol
    assert (s.member_probs.argmax(-1) == want.argmax(-1)).mean() >= 0.99
    check_reduction(s, want, atol)
    assert s.members == ["m0", "m1", "m2"]


@pytest.fixture(scope="module")
def tiny_members(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    path = str(tiny_dir / "tiny-q8_0.gguf")
    out = tmp_path_factory.mktemp("tiny-members")
    _, reference = load_reference(path)
    peft_model = write_members(reference, out, scale=0.2)
    ens = lora_ens_rs.Ensemble(path, [out / f"m{m}" for m in range(3)])
    return ens, peft_model, _core.Tokenizer.from_gguf(path)


@pytest.fixture(scope="module")
def smollm2_members(default_model: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("smollm2-members")
    _, reference = load_reference(default_model)
    peft_model = write_members(reference, out, scale=0.06)
    ens = lora_ens_rs.Ensemble(default_model, [out / f"m{m}" for m in range(3)])
    return ens, peft_model, _core.Tokenizer.from_gguf(default_model)


def test_tiny_labels_match_peft(tiny_members) -> None:
    prompts = [p[: 30 + 41 * i] + "\nAnswer:" for i, p in enumerate(csqa_prompts(15))]
    check_labels(*tiny_members, prompts, atol=1e-4)


def test_tiny_choices_match_peft(tiny_members) -> None:
    check_choices(*tiny_members, *arc_easy(20), atol=1e-4)


@pytest.mark.slow
def test_smollm2_labels_match_peft(smollm2_members) -> None:
    check_labels(*smollm2_members, csqa_prompts(100), atol=1e-3)


@pytest.mark.slow
def test_smollm2_choices_match_peft(smollm2_members) -> None:
    contexts, choices = arc_easy(50)
    assert len({len(c) for c in choices}) > 1  # questions with 3, 4 and 5 choices mixed
    check_choices(*smollm2_members, contexts, choices, atol=1e-3)


def test_no_adapters_scores_the_base_model(tiny_dir: Path) -> None:
    path = str(tiny_dir / "tiny-q8_0.gguf")
    ens = lora_ens_rs.Ensemble(path)
    assert ens.n_members == 0
    _, reference = load_reference(path)
    prompts = [p + "\n" for p in csqa_prompts(6)]
    s = ens.score(prompts, ["A", "B", "C"])
    assert s.members == ["base"] and s.member_probs.shape == (6, 1, 3)
    engine_tok = _core.Tokenizer.from_gguf(path)
    tokens = [engine_tok.encode(" " + x, add_special_tokens=False)[0] for x in "ABC"]
    want = softmax(reference_last_logits(reference, [engine_tok.encode(p) for p in prompts]))
    np.testing.assert_allclose(s.probs, softmax(np.log(want[:, tokens])), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(s.mutual_information, 0.0)


def peft_mixture_greedy(peft_model, ids: list[int], members: list[str], n: int) -> list[int]:
    """Greedy decoding from the mean of the members' full-vocabulary softmax, each member a
    PEFT adapter run on the whole sequence at every step (no cache: the plainest reference)."""
    import torch

    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            mixture = 0
            for name in members:
                peft_model.set_adapter(name)
                logits = peft_model(torch.tensor([ids])).logits[0, -1].double()
                mixture = mixture + torch.softmax(logits, -1) / len(members)
            token = int(mixture.argmax())
            out.append(token)
            ids.append(token)
    return out


def check_greedy_mixture(ens, peft_model, tok, prompts: list[str], n: int) -> None:
    """The ensemble's greedy tokens (alone and batched) equal PEFT's mixture's, for the three
    members together and for one member alone (M=1)."""
    batch = ens.generate_batch(prompts, max_new_tokens=n)
    for prompt, batched in zip(prompts, batch, strict=True):
        want = peft_mixture_greedy(peft_model, tok.encode(prompt), ["m0", "m1", "m2"], n)
        got = ens.generate(prompt, max_new_tokens=n)
        # The engine stops at EOS; the reference runs on: compare what the engine produced.
        assert got.tokens == want[: len(got.tokens)], (prompt, got.tokens, want)
        assert batched.tokens == got.tokens
    single = lora_ens_rs.Ensemble(ens.model_path, [ens.member_paths[1]])
    for prompt in prompts[:2]:
        want = peft_mixture_greedy(peft_model, tok.encode(prompt), ["m1"], n)
        got = single.generate(prompt, max_new_tokens=n)
        assert got.tokens == want[: len(got.tokens)], (prompt, got.tokens, want)


def test_tiny_greedy_mixture_matches_peft(tiny_members) -> None:
    check_greedy_mixture(*tiny_members, csqa_prompts(4), n=12)


@pytest.mark.slow
def test_smollm2_greedy_mixture_matches_peft(smollm2_members) -> None:
    prompts = [
        "The capital of France is",
        "Once upon a time, a",
        "def fibonacci(n):",
        "1, 1, 2, 3,",
    ]
    check_greedy_mixture(*smollm2_members, prompts, n=24)
