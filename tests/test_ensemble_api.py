"""The Python front end `lora_ens_rs.Ensemble` on the tiny model and its 3-member fixture
ensemble: result objects, exports, threads, errors. (Numbers against PEFT: test_score.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import csqa_prompts

import lora_ens_rs
from lora_ens_rs import _core


@pytest.fixture(scope="module")
def ens(tiny_dir: Path, tiny_ensemble: Path) -> lora_ens_rs.Ensemble:
    return lora_ens_rs.Ensemble(tiny_dir / "tiny-q8_0.gguf", tiny_ensemble, threads=2)


def test_properties_and_repr(ens: lora_ens_rs.Ensemble, tiny_dir: Path) -> None:
    assert ens.members == ["m0", "m1", "m2"]
    assert ens.n_members == 3
    assert ens.model_path == tiny_dir / "tiny-q8_0.gguf"
    assert ens.labels == ["A", "B", "C", "D", "E"]  # from ensemble.json
    assert ens.manifest is not None and ens.manifest.prompt_template == "qa-v1"
    assert ens.config["n_layer"] == 2
    assert [p.name for p in ens.member_paths] == ["m0", "m1", "m2"]
    text = repr(ens)
    assert "tiny-q8_0.gguf" in text and "M=3" in text and "m1" in text


def test_score_returns_numpy_arrays(ens: lora_ens_rs.Ensemble) -> None:
    prompts = csqa_prompts(5)
    labels = [["A", "B", "C", "D", "E"]] * 4 + [["1", "2", "3"]]
    s = ens.score(prompts, labels)
    assert len(s) == 5
    assert s.member_probs.shape == (5, 3, 5) and s.member_probs.dtype == np.float32
    assert s.probs.shape == (5, 5) and s.probs.dtype == np.float32
    for name in ("confidence", "entropy", "expected_entropy", "mutual_information", "agreement"):
        arr = getattr(s, name)
        assert isinstance(arr, np.ndarray) and arr.shape == (5,) and arr.dtype == np.float32
    assert s.prediction.dtype == np.int64 and s.member_predictions.shape == (5, 3)
    assert s.n_options.tolist() == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(s.probs[4, 3:], 0.0)
    np.testing.assert_allclose(s.probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(s.member_probs.mean(1), s.probs, atol=1e-6)
    assert s.prediction_labels[4] in {"1", "2", "3"}
    # A shared label list gives the same numbers as the same list per prompt.
    shared = ens.score(prompts[:4], ["A", "B", "C", "D", "E"])
    np.testing.assert_array_equal(shared.probs, s.probs[:4])


def test_records_and_json(ens: lora_ens_rs.Ensemble, tmp_path: Path) -> None:
    s = ens.score_choices(
        ["Question: Where do fish live?\nAnswer:", "Question: What is ice?\nAnswer:"],
        [["water", "trees", "the sky"], ["frozen water", "fire"]],
    )
    records = s.to_records(members=True)
    assert records[1]["labels"] == ["frozen water", "fire"]
    assert len(records[1]["probs"]) == 2 and len(records[1]["member_probs"]) == 3
    assert records[0]["prediction"] == records[0]["labels"][records[0]["prediction_index"]]
    assert records[0]["id"] == "0" and "answer" not in records[0]
    assert records[0]["probs"] == pytest.approx(s.probs[0, :3].tolist())
    out = tmp_path / "scores.json"
    text = s.to_json(out, members=True)
    assert json.loads(out.read_text()) == json.loads(text)
    assert json.loads(text)["members"] == ["m0", "m1", "m2"]
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]  # no temporary left


def test_threads_share_one_ensemble(ens: lora_ens_rs.Ensemble) -> None:
    prompts = csqa_prompts(24)
    want = ens.score(prompts, batch_size=5)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ens.score(prompts, batch_size=5), range(8)))
    for got in results:
        np.testing.assert_array_equal(got.member_probs, want.member_probs)
        np.testing.assert_array_equal(got.mutual_information, want.mutual_information)


#: Run in a child process: a Python thread writes ``payload`` into the named pipe ``pipe`` while
#: the main thread makes an engine call that reads the pipe and prints its result.
GIL_PROBE = """
import sys, threading
import lora_ens_rs
pipe, payload, call = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]

def feed():
    with open(pipe, "wb") as f:  # waits for the engine to open the pipe
        f.write(payload)

threading.Thread(target=feed, daemon=True).start()
print(eval(call))
"""


# Question files and adapter weights must be regular files (a FIFO is refused, see
# test_malformed_inputs.py), so only the hash reads a pipe; every binding releases the GIL
# through the same helper (`error::call`).
@pytest.mark.parametrize("call", ["sha256_file"])
def test_engine_calls_release_the_gil(
    call: str, tiny_dir: Path, tiny_ensemble: Path, tmp_path: Path
) -> None:
    """An engine call that reads a named pipe cannot return before a Python thread has written
    the pipe's contents, and that thread runs Python code only while the call does not hold
    the GIL: a call that kept it would wait forever (the child process is then killed), so
    passing does not depend on timing. Every binding releases the GIL through the same helper;
    these three calls reach it from a free function, a hash and the Ensemble constructor."""
    if call == "read_questions":
        pipe = tmp_path / "questions.jsonl"
        payload = json.dumps({"question": "Ice is", "choices": ["cold", "hot"]}).encode()
        expr, want = f"lora_ens_rs.read_questions({str(pipe)!r})[0]['choices']", "['cold', 'hot']"
    elif call == "sha256_file":
        pipe = tmp_path / "model.gguf"
        payload = np.random.default_rng(0).bytes(3 << 20)  # a pipe holds 64 KiB: many hand-offs
        expr = f"lora_ens_rs._core.sha256_file({str(pipe)!r})"
        want = hashlib.sha256(payload).hexdigest()
    else:  # member m0's weights come through the pipe
        member = tmp_path / "m0"
        shutil.copytree(tiny_ensemble / "m0", member)
        pipe = member / "adapter_model.safetensors"
        payload = pipe.read_bytes()
        pipe.unlink()
        model = str(tiny_dir / "tiny-q8_0.gguf")
        expr, want = f"lora_ens_rs.Ensemble({model!r}, {str(member)!r}).members", "['m0']"
    os.mkfifo(pipe)
    source = tmp_path / "payload"
    source.write_bytes(payload)
    try:
        done = subprocess.run(
            [sys.executable, "-c", GIL_PROBE, str(pipe), str(source), expr],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} held the GIL while waiting for the pipe: the writer never ran")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == want


def test_progress_callback(ens: lora_ens_rs.Ensemble) -> None:
    # One call per pass; with M = 3 members a pass takes 2 * batch_size // 3 questions.
    seen: list[tuple[int, int]] = []
    ens.score(csqa_prompts(10), batch_size=6, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(4, 10), (8, 10), (10, 10)]
    seen.clear()
    ens.score(csqa_prompts(10), batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 10), (4, 10), (6, 10), (8, 10), (10, 10)]


def test_generate(ens: lora_ens_rs.Ensemble) -> None:
    g = ens.generate("Once upon a time", max_new_tokens=6)
    assert isinstance(g, lora_ens_rs.Generation)
    assert len(g.tokens) == len(g.entropy) == len(g.mutual_information) <= 6
    assert g.finish_reason in {"eos", "length"}
    assert np.all(g.mutual_information >= 0) and np.all(g.probs <= 1)
    a, b = (
        ens.generate("Once upon a time", max_new_tokens=6, temperature=0.8, seed=3)
        for _ in range(2)
    )
    assert (a.tokens, a.text) == (b.tokens, b.text)
    np.testing.assert_array_equal(a.entropy, b.entropy)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "seed": 5, "top_p": 0.9}])
def test_generate_batch_equals_one_by_one(ens: lora_ens_rs.Ensemble, sampling: dict) -> None:
    # Prompts of different lengths: the batch is ragged, and sequences finish at different steps.
    prompts = ["Once upon a time", "The capital of France is", "Ice", "1, 2, 3, 4, 5, 6, 7,"]
    batch = ens.generate_batch(prompts, max_new_tokens=12, stop=["zz"], **sampling)
    assert len(batch) == len(prompts)
    for prompt, b in zip(prompts, batch, strict=True):
        one = ens.generate(prompt, max_new_tokens=12, stop=["zz"], **sampling)
        assert (b.tokens, b.text, b.finish_reason) == (one.tokens, one.text, one.finish_reason)
        for name in ("probs", "entropy", "expected_entropy", "mutual_information"):
            np.testing.assert_allclose(getattr(b, name), getattr(one, name), atol=1e-5, rtol=1e-4)
    assert all(len(g.tokens) <= 1 for g in ens.generate_batch(prompts, max_new_tokens=1))
    assert ens.generate_batch([], max_new_tokens=4) == []


def test_generate_batch_names_the_bad_prompt(ens: lora_ens_rs.Ensemble) -> None:
    too_long = "word " * 100_000
    with pytest.raises(lora_ens_rs.InputError, match=r"prompt 1: the prompt is \d+ tokens"):
        ens.generate_batch(["fine", too_long], max_new_tokens=4)
    with pytest.raises(lora_ens_rs.InputError, match=r"prompts\[1\] must be a str"):
        ens.generate_batch(["fine", 3], max_new_tokens=4)


def test_errors(ens: lora_ens_rs.Ensemble, tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(lora_ens_rs.MissingFileError, match=r"nope\.gguf"):
        lora_ens_rs.Ensemble(tmp_path / "nope.gguf")
    with pytest.raises(lora_ens_rs.MissingFileError):
        lora_ens_rs.Ensemble(tiny_dir / "tiny-q8_0.gguf", tmp_path / "no-such-adapter")
    with pytest.raises(lora_ens_rs.InputError, match="3 lists of labels for 2 prompts"):
        ens.score(["a", "b"], [["A"], ["B"], ["C"]])
    with pytest.raises(lora_ens_rs.LabelError, match="empty"):
        ens.score(["a"], ["A", ""])
    with pytest.raises(lora_ens_rs.InputError, match="normalization"):
        ens.score_choices(["a"], ["x", "y"], normalization="mean")
    with pytest.raises(lora_ens_rs.InputError, match="top_p"):
        ens.generate("a", top_p=0.0)
    with pytest.raises(lora_ens_rs.InputError, match="must be a str"):
        ens.score(["a"], [["A", 3]])  # type: ignore[list-item]


def test_manifest_of_another_base_is_refused(
    tiny_dir: Path, tiny_ensemble: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, copy)
    with pytest.raises(lora_ens_rs.AdapterError, match="sha256"):
        lora_ens_rs.Ensemble(tiny_dir / "tiny-q4_1.gguf", copy)


def test_base_model_alone(tiny_dir: Path) -> None:
    base = lora_ens_rs.Ensemble(tiny_dir / "tiny-q8_0.gguf")
    s = base.score(csqa_prompts(3))
    assert s.members == ["base"] and s.member_probs.shape == (3, 1, 5)
    model = _core.Model(tiny_dir / "tiny-q8_0.gguf")
    tok = _core.Tokenizer.from_gguf(tiny_dir / "tiny-q8_0.gguf")
    ids = [tok.encode(" " + x, add_special_tokens=False)[0] for x in "ABCDE"]
    logits = model.logits([tok.encode(p) for p in csqa_prompts(3)], token_ids=ids)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(s.probs, e / e.sum(-1, keepdims=True), atol=1e-6)
