"""The training loop on the tiny fixture model: batching, regularisers, checkpoints.

- M members trained together equal M single-member runs with the same seeds and data orders;
  with the trunk cached or recomputed alike; whether a step runs in one pass or one per row
  (length buckets, each row routed to its member);
- weight decay shrinks the adapters as lambda grows (1e2 and 1e3 included), and
  ``lr * weight_decay >= 1`` is refused;
- a large KL weight keeps predictions at the base model's;
- early stopping restores each member's best epoch;
- resume: 1 epoch + resume to 2 equals 2 epochs straight, also after an interruption
  mid-epoch (with LoRA dropout, so the RNG state is restored too);
- MC dropout returns (N, T, K) samples;
- without validation data, the held-out questions are ``lora_ens_rs.data.split``'s.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from support import DATA

import lora_ens_rs
from lora_ens_rs.data import split
from lora_ens_rs.train import (
    TrainConfig,
    loop,
    mc_dropout_probs,
    parse_layers,
    predict,
    train_ensemble,
)
from lora_ens_rs.train.data import length_buckets, load_questions
from lora_ens_rs.train.model import EnsembleModel

# One thread: on a busy 2-core machine two torch threads ran about 10x slower per step.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def questions() -> tuple[list[dict], list[dict]]:
    path = DATA / "arc" / "ARC-Easy" / "ARC-Easy-Train.jsonl"
    q = lora_ens_rs.read_questions(path, limit=20)
    return q[:14], q[14:]


def config(tiny_dir: Path, **changes) -> TrainConfig:
    values = dict(
        model=str(tiny_dir / "tiny-q8_0.gguf"),
        members=3,
        scoring="choices",
        epochs=1,
        lr=1e-2,
        batch_size=4,
        layers="1",
        targets=["q_proj", "v_proj"],
        progress=False,
    )
    return TrainConfig(**{**values, **changes})


def run(tiny_dir: Path, questions, callback=None, **changes):
    train, val = questions
    return train_ensemble(config(tiny_dir, **changes), train=train, val=val, callback=callback)


def assert_same_adapters(a: dict, b: dict, atol: float = 0.0) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_batched_members_equal_separate_runs(tiny_dir: Path, questions) -> None:
    batched = run(tiny_dir, questions, seeds=[0, 5, 9], epochs=2).adapters()
    for m, seed in enumerate([0, 5, 9]):
        alone = run(tiny_dir, questions, members=1, seeds=[seed], epochs=2).adapters()
        for key, tensor in alone.items():
            torch.testing.assert_close(batched[key][m], tensor[0], atol=2e-6, rtol=0)
    # Different seeds: different initialisations and data orders.
    a = batched["1.q_proj.lora_A"]
    assert not torch.allclose(a[0], a[1])


@pytest.mark.parametrize("pass_cost", [0, 7, 40, 10**6])
def test_length_buckets_is_the_cheapest_split(pass_cost: int) -> None:
    rng = np.random.default_rng(pass_cost)
    for _ in range(20):
        lengths = rng.integers(1, 60, size=int(rng.integers(1, 9))).tolist()
        buckets = length_buckets(lengths, pass_cost)
        assert sorted(itertools.chain(*buckets)) == list(range(len(lengths)))

        def cost(parts: list[list[int]], lengths: list[int] = lengths) -> int:
            return sum(len(p) * max(lengths[i] for i in p) + pass_cost for p in parts)

        # Every split of the sorted rows into contiguous runs, by brute force.
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        best = min(
            cost([order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))])
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
        )
        assert cost(buckets) == best


def test_length_buckets_do_not_change_training(tiny_dir: Path, questions, monkeypatch) -> None:
    # One pass per row (every row routed to its member alone) vs one pass for the whole step.
    monkeypatch.setattr(loop, "PASS_COST_TOKENS", 0)
    per_row = run(tiny_dir, questions, epochs=2, dropout=0.0)
    monkeypatch.setattr(loop, "PASS_COST_TOKENS", 10**9)
    one_pass = run(tiny_dir, questions, epochs=2, dropout=0.0)
    assert_same_adapters(per_row.adapters(), one_pass.adapters(), atol=2e-6)
    losses = [h["train_loss"] for h in per_row.history]
    np.testing.assert_allclose(losses, [h["train_loss"] for h in one_pass.history], rtol=1e-5)


def test_trunk_cache_changes_nothing(tiny_dir: Path, questions) -> None:
    cached = run(tiny_dir, questions, members=2, layers="1")
    fresh = run(tiny_dir, questions, members=2, layers="1", trunk_cache=False)
    assert_same_adapters(cached.adapters(), fresh.adapters(), atol=2e-6)
    assert cached.model.first_layer == 1


def test_weight_decay_shrinks_adapters(tiny_dir: Path, questions) -> None:
    norms = []
    for wd in (0.0, 1e1, 1e2, 1e3):
        result = run(tiny_dir, questions, members=1, lr=5e-4, weight_decay=wd)
        norms.append(result.model.stack.norms()[0])
    assert all(a > b for a, b in itertools.pairwise(norms)), norms
    assert norms[-1] < 0.1 * norms[0], norms


def test_weight_decay_too_large_for_lr_is_refused(tiny_dir: Path, questions) -> None:
    with pytest.raises(lora_ens_rs.InputError, match="lr \\* weight_decay = 1 must be below 1"):
        run(tiny_dir, questions, lr=1e-3, weight_decay=1e3)
    with pytest.raises(lora_ens_rs.InputError, match="weight_decay"):
        TrainConfig(lr=0.02, weight_decay=100).validate()
    TrainConfig(lr=9e-4, weight_decay=1e3).validate()


def test_kl_keeps_predictions_at_the_base(tiny_dir: Path, questions) -> None:
    def shift(kl: float) -> float:
        """Largest change of a training question's probabilities from the base model's."""
        result = run(tiny_dir, questions, members=1, epochs=3, lr=1e-2, kl=kl)
        model: EnsembleModel = result.model
        probs = model.member_probs(result.train_examples)[:, 0]
        return float(np.abs(probs - model.base_probs(result.train_examples)).max())

    free, mild, tied = shift(0.0), shift(10.0), shift(100.0)
    assert free > 0.1, free
    assert free > mild > tied, (free, mild, tied)
    assert tied < free / 5, (free, tied)


def test_early_stopping_restores_each_members_best_epoch(tiny_dir: Path, questions) -> None:
    result = run(tiny_dir, questions, epochs=6, lr=5e-2, early_stopping=2)
    final = result.validation["members"]
    best_epochs = []
    for m in range(3):
        nlls = [h["val"][m]["nll"] for h in result.history]
        best = int(np.argmin(nlls)) + 1
        assert final[m]["best_epoch"] == best
        assert final[m]["nll"] == pytest.approx(min(nlls), abs=1e-9)
        best_epochs.append(best)
    # Restoration mattered: some member's best epoch is not the last one trained.
    assert min(best_epochs) < len(result.history), best_epochs
    # And the restored adapters are those of a run stopped at that epoch.
    m = int(np.argmin(best_epochs))
    short = run(tiny_dir, questions, epochs=best_epochs[m], lr=5e-2).adapters()
    for key, tensor in result.adapters().items():
        torch.testing.assert_close(tensor[m], short[key][m], atol=1e-6, rtol=0)


def test_resume_equals_an_uninterrupted_run(tiny_dir: Path, questions, tmp_path: Path) -> None:
    common = dict(epochs=2, dropout=0.1, checkpoint_every=2)
    straight = run(tiny_dir, questions, out=str(tmp_path / "straight"), **common).adapters()

    out = str(tmp_path / "resumed")
    run(tiny_dir, questions, out=out, **{**common, "epochs": 1})
    resumed = run(tiny_dir, questions, out=out, overwrite=True, resume=True, **common)
    assert_same_adapters(straight, resumed.adapters())
    assert [h["epoch"] for h in resumed.history] == [1, 2]

    class Interrupt(Exception):
        pass

    def stop_after_3(info: dict) -> None:
        if info["epoch"] == 1 and info["step"] == 3:
            raise Interrupt

    out = str(tmp_path / "interrupted")
    with pytest.raises(Interrupt):
        run(tiny_dir, questions, callback=stop_after_3, out=out, **common)
    assert not Path(out).exists()  # nothing exported, the checkpoint stays
    assert Path(out + ".checkpoint", "state.pt").is_file()
    resumed = run(tiny_dir, questions, out=out, resume=True, **common)
    assert_same_adapters(straight, resumed.adapters())
    assert lora_ens_rs.Ensemble(str(tiny_dir / "tiny-q8_0.gguf"), out).n_members == 3


def test_resume_refuses_changed_settings(tiny_dir: Path, questions, tmp_path: Path) -> None:
    out = str(tmp_path / "ens")
    with pytest.raises(lora_ens_rs.InputError, match="no checkpoint"):
        run(tiny_dir, questions, out=out, resume=True)
    run(tiny_dir, questions, out=out, members=1)
    with pytest.raises(lora_ens_rs.InputError, match=r"lr: 0\.01 -> 0\.02"):
        run(tiny_dir, questions, out=out, members=1, lr=2e-2, resume=True, overwrite=True)


def test_existing_output_is_not_overwritten(tiny_dir: Path, questions, tmp_path: Path) -> None:
    out = tmp_path / "ens"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(lora_ens_rs.LoraEnsIOError, match="already exists"):
        run(tiny_dir, questions, members=1, out=str(out))
    assert (out / "keep.txt").read_text() == "x"
    run(tiny_dir, questions, members=1, out=str(out), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "ensemble.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_mc_dropout_samples(tiny_dir: Path, questions) -> None:
    result = run(tiny_dir, questions, members=2, dropout=0.2, lr=3e-2)
    model = result.model
    samples = model.mc_dropout_probs(result.val_examples, samples=5, member=1, seed=3)
    assert samples.shape == (6, 5, 4)
    np.testing.assert_allclose(samples.sum(-1), 1.0, atol=1e-6)
    assert np.abs(samples - samples.mean(1, keepdims=True)).max() > 1e-4  # masks differ
    again = model.mc_dropout_probs(result.val_examples, samples=5, member=1, seed=3)
    np.testing.assert_array_equal(samples, again)
    # Dropout is off for ordinary predictions.
    plain = model.member_probs(result.val_examples)
    np.testing.assert_array_equal(plain, model.member_probs(result.val_examples))
    # The module-level functions take question dicts (encoded with the run's scoring).
    np.testing.assert_array_equal(predict(result, questions[1]), plain)
    np.testing.assert_array_equal(
        mc_dropout_probs(result, questions[1], 5, member=1, seed=3), samples
    )
    no_dropout = run(tiny_dir, questions, members=1).model
    with pytest.raises(lora_ens_rs.InputError, match="needs dropout"):
        no_dropout.mc_dropout_probs(result.val_examples, samples=2)


def test_label_scoring_with_full_vocabulary_learns(tiny_dir: Path) -> None:
    path = DATA / "commonsenseqa" / "train_rand_split.jsonl"
    q = lora_ens_rs.read_questions(path, limit=16)
    result = train_ensemble(
        config(tiny_dir, scoring="labels", full_vocabulary=True, epochs=3, lr=3e-2, members=1),
        train=q,
        val=q[:8],
    )
    losses = [h["train_loss"][0] for h in result.history]
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"members": 0}, "members must be a positive integer"),
        ({"scoring": "letters"}, "scoring must be one of"),
        ({"targets": ["qkv"]}, "unknown projections"),
        ({"layers": "top0"}, "topN needs N >= 1"),
        ({"layers": "x"}, "expected 'all', 'topN'"),
        ({"dropout": 1.0}, "dropout must lie in"),
        ({"seeds": [1, 1, 2]}, "must differ"),
        ({"full_vocabulary": True}, "label scoring only"),
        ({"early_stopping": 0}, "patience"),
    ],
)
def test_bad_settings_raise_input_error(changes: dict, match: str) -> None:
    values = {"members": 3, "scoring": "choices", **changes}
    with pytest.raises(lora_ens_rs.InputError, match=match):
        TrainConfig(**values).validate()


def test_layer_specs() -> None:
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("top2", 30) == [28, 29]
    assert parse_layers("20-22", 30) == [20, 21, 22]
    assert parse_layers("3, 1", 30) == [1, 3]
    assert parse_layers([5, 2], 30) == [2, 5]
    with pytest.raises(lora_ens_rs.InputError, match="layer 30 does not exist"):
        parse_layers("25-30", 30)


def test_missing_answers_are_a_data_error(tiny_dir: Path, questions) -> None:
    train = [dict(q) for q in questions[0]]
    train[2]["answer"] = None
    with pytest.raises(lora_ens_rs.DataError, match="no valid answer"):
        train_ensemble(config(tiny_dir), train=train, val=questions[1])


def test_validation_split_is_the_data_split() -> None:
    qs = [{"id": f"q{i}"} for i in range(50)]
    train, val = load_questions(TrainConfig(val_fraction=0.2, seed=7), train=qs)
    assert (train, val) == split(qs, 0.2)
    # The split that trained the published results: seed 20231001, round(N * fraction) held.
    held = sorted(np.random.default_rng(20231001).permutation(50)[:10].tolist())
    assert [q["id"] for q in val] == [f"q{i}" for i in held]
    with pytest.raises(lora_ens_rs.DataError, match="pass val"):
        load_questions(TrainConfig(), train=qs[:1])
