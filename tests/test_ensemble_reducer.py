"""The Rust ensemble reducer (`_core.reduce`) against an independent NumPy reference.

Every output field is compared on random logits of several shapes, with per-question option
counts, extreme values, one member and identical members. Tolerance: 1e-5 (float32 output of
an f64 computation). Run: `pytest tests/test_ensemble_reducer.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

import lora_ens_rs
from lora_ens_rs import _core

TOL = 1e-5
FLOAT_FIELDS = [
    "member_probs",
    "probs",
    "confidence",
    "entropy",
    "expected_entropy",
    "mutual_information",
    "agreement",
]


def reference(logits: np.ndarray, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The reducer written directly from its definition, in float64 NumPy."""
    x = logits.astype(np.float64)
    n, _, k = x.shape
    k_i = np.full(n, k) if valid is None else np.asarray(valid)
    pad = np.arange(k)[None, None, :] >= k_i[:, None, None]
    x = np.where(pad, -np.inf, x)
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    member_probs = z / z.sum(axis=-1, keepdims=True)  # (N, M, K)
    probs = member_probs.mean(axis=1)  # (N, K)

    def entropy(p: np.ndarray) -> np.ndarray:
        logp = np.log(np.where(p > 0, p, 1.0))
        return -(p * logp).sum(axis=-1)

    h = entropy(probs)
    eh = entropy(member_probs).mean(axis=1)
    prediction = probs.argmax(axis=-1)
    member_predictions = member_probs.argmax(axis=-1)  # (N, M)
    return {
        "member_probs": member_probs,
        "probs": probs,
        "prediction": prediction,
        "confidence": probs.max(axis=-1),
        "entropy": h,
        "expected_entropy": eh,
        "mutual_information": np.maximum(h - eh, 0.0),
        "member_predictions": member_predictions,
        "agreement": (member_predictions == prediction[:, None]).mean(axis=1),
    }


def check(logits: np.ndarray, valid: np.ndarray | None = None) -> _core.Reduced:
    got = _core.reduce(logits, valid)
    want = reference(logits, valid)
    assert set(want) == {n for n in dir(got) if not n.startswith("_")}
    n = logits.shape[0]
    for name in FLOAT_FIELDS:
        assert getattr(got, name).dtype == np.float32, name
        assert getattr(got, name).shape == want[name].shape, name
        np.testing.assert_allclose(getattr(got, name), want[name], rtol=0, atol=TOL, err_msg=name)
    for name in ("prediction", "member_predictions"):
        assert getattr(got, name).dtype == np.int64, name
        assert getattr(got, name).shape == want[name].shape, name
    # The indices are the argmax of the returned arrays (lowest index on ties), and they pick
    # a maximal entry of the reference (immune to float32 rounding in near-ties).
    np.testing.assert_array_equal(got.prediction, got.probs.argmax(axis=-1))
    np.testing.assert_array_equal(got.member_predictions, got.member_probs.argmax(axis=-1))
    rows = np.arange(n)
    assert np.all(want["probs"][rows, got.prediction] >= want["confidence"] - TOL)
    picked = np.take_along_axis(want["member_probs"], got.member_predictions[..., None], -1)
    assert np.all(picked[..., 0] >= want["member_probs"].max(axis=-1) - TOL)
    assert np.all(got.mutual_information >= 0)
    return got


SHAPES = [(1, 1, 2), (1, 10, 6), (50, 1, 3), (50, 10, 2), (7, 3, 5), (23, 5, 4), (50, 4, 6)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_logits_match_numpy(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for scale in (0.1, 1.0, 10.0):
        check((scale * rng.standard_normal(shape)).astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_per_question_option_counts(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(100 + sum(shape))
    n, _, k = shape
    logits = (3 * rng.standard_normal(shape)).astype(np.float32)
    valid = rng.integers(1, k + 1, size=n)
    # Padding may hold anything, even NaN: the reducer must not read it.
    pad = np.broadcast_to(np.arange(k)[None, None, :] >= valid[:, None, None], shape)
    logits[pad] = np.nan
    got = check(logits, valid)
    assert np.all(got.probs[np.arange(k)[None, :] >= valid[:, None]] == 0)
    # A list works as well as an array.
    list_got = _core.reduce(logits, [int(v) for v in valid])
    np.testing.assert_array_equal(list_got.probs, got.probs)


def test_extreme_logits_stay_finite() -> None:
    rng = np.random.default_rng(7)
    logits = rng.choice(np.array([-1e4, 1e4, 0.0, -np.inf], dtype=np.float32), (40, 6, 5))
    logits[..., 0] = rng.choice(np.array([-1e4, 1e4], dtype=np.float32), (40, 6))
    got = check(logits)
    for name in FLOAT_FIELDS:
        assert np.all(np.isfinite(getattr(got, name))), name
    # A -inf logit is an impossible option.
    assert np.all(got.member_probs[np.isneginf(logits)] == 0)


def test_one_member_has_zero_mutual_information() -> None:
    rng = np.random.default_rng(1)
    logits = (2 * rng.standard_normal((30, 1, 4))).astype(np.float32)
    got = check(logits)
    assert np.all(got.mutual_information == 0)
    np.testing.assert_array_equal(got.entropy, got.expected_entropy)
    np.testing.assert_array_equal(got.probs, got.member_probs[:, 0])
    assert np.all(got.agreement == 1)


def test_identical_members_equal_the_member() -> None:
    rng = np.random.default_rng(2)
    one = (2 * rng.standard_normal((20, 1, 5))).astype(np.float32)
    many = np.repeat(one, 7, axis=1)
    got_one, got_many = _core.reduce(one), check(many)
    assert np.all(got_many.mutual_information == 0)
    np.testing.assert_array_equal(got_many.probs, got_one.probs)
    np.testing.assert_array_equal(got_many.entropy, got_one.entropy)
    np.testing.assert_array_equal(got_many.prediction, got_one.prediction)
    assert np.all(got_many.agreement == 1)


def test_ties_pick_the_lowest_index() -> None:
    logits = np.array([[[0.0, 2.0, 2.0], [2.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    got = check(logits.astype(np.float32))
    np.testing.assert_array_equal(got.member_predictions, [[1, 0], [0, 0]])
    np.testing.assert_array_equal(got.prediction, [0, 0])


def test_float64_input_is_converted() -> None:
    logits = np.random.default_rng(3).standard_normal((4, 3, 2))
    np.testing.assert_array_equal(
        _core.reduce(logits).probs, _core.reduce(logits.astype(np.float32)).probs
    )


@pytest.mark.parametrize(
    ("logits", "valid", "message"),
    [
        (np.zeros((3, 0, 4)), None, "at least one member, got M = 0"),
        (np.zeros((3, 4)), None, "must have shape (N, M, K), got shape [3, 4]"),
        (np.zeros((1, 2, 3, 4)), None, "must have shape (N, M, K)"),
        (np.zeros((3, 2, 4)), [4, 4], "valid has 2 entries, expected one per question (N = 3)"),
        (np.zeros((2, 2, 4)), [4, 5], "valid[1] = 5, expected 1 <= K_i <= K = 4"),
        (np.zeros((2, 2, 4)), [0, 4], "valid[0] = 0"),
        (np.full((1, 2, 2), np.nan), None, "member_logits[0, 0, 0] is NaN"),
        (np.full((1, 1, 2), np.inf), None, "expected a finite value or -inf"),
        (np.full((1, 1, 2), -np.inf), None, "member_logits[0, 0]: every option is -inf"),
    ],
)
def test_bad_input_raises_input_error(
    logits: np.ndarray, valid: list[int] | None, message: str
) -> None:
    with pytest.raises(lora_ens_rs.InputError) as info:
        _core.reduce(logits.astype(np.float32), valid)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
