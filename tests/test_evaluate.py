"""`lora-ens-rs eval` on the tiny model and its 3-member fixture ensemble: every field of
metrics.json recomputed directly (engine scores + scikit-learn / NumPy), the report files, and
the error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
from support import DATA, loop_ece

import lora_ens_rs

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")
CSQA = DATA / "commonsenseqa" / "dev_rand_split.jsonl"
OBQA = DATA / "openbookqa" / "Main" / "test.jsonl"


def direct(probs: np.ndarray, answers: np.ndarray) -> dict[str, float]:
    k = probs.shape[1]
    onehot = np.eye(k)[answers]
    return {
        "accuracy": accuracy_score(answers, probs.argmax(1)),
        "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(answers)), answers], 1e-12)))),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, 1))),
        "ece": loop_ece(probs, answers, 15),
    }


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def entropy(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)


@pytest.mark.parametrize("scoring", ["choices", "labels"])
def test_eval_metrics_match_a_direct_computation(
    tmp_path: Path, tiny_dir: Path, tiny_ensemble: Path, scoring: str
) -> None:
    model = tiny_dir / "tiny-q8_0.gguf"
    report = tmp_path / "report"
    args = [SCRIPT, "eval", "--model", str(model), "--adapters", str(tiny_ensemble)]
    args += ["--data", str(CSQA), "--ood", str(OBQA), "--limit", "40", "--scoring", scoring]
    args += ["--report", str(report), "-q"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "| **ensemble (M=3)** |" in proc.stdout
    got = json.loads((report / "metrics.json").read_text())
    assert {p.name for p in report.iterdir()} == {
        "metrics.json",
        "report.md",
        "reliability.png",
        "confidence_when_wrong.png",
        "risk_coverage.png",
    }
    for png in ("reliability.png", "confidence_when_wrong.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same questions scored directly through the Python API.
    questions = lora_ens_rs.read_questions(CSQA, limit=40)
    ood = lora_ens_rs.read_questions(OBQA, limit=40)
    answers = np.array([q["answer"] for q in questions])
    ens = lora_ens_rs.Ensemble(model, tiny_ensemble)
    base = lora_ens_rs.Ensemble(model)
    s = ens.score_questions(questions, scoring)
    b = base.score_questions(questions, scoring)
    o = ens.score_questions(ood, scoring)
    ob = base.score_questions(ood, scoring)

    assert got["n_questions"] == 40 and got["n_bins"] == 15
    assert got["scoring"]["mode"] == scoring
    assert got["members_names"] == ["m0", "m1", "m2"]
    assert_close(got["ensemble"], direct(s.probs.astype(np.float64), answers))
    assert_close(got["base"], direct(b.probs.astype(np.float64), answers))
    members = [direct(s.member_probs[:, m].astype(np.float64), answers) for m in range(3)]
    for g, w in zip(got["members"], members, strict=True):
        assert_close(g, w)
    assert_close(got["member_mean"], {k: np.mean([m[k] for m in members]) for k in members[0]})
    d = got["disagreement"]
    votes = s.member_probs.argmax(2) == s.probs.argmax(1)[:, None]
    assert d["mean_agreement"] == pytest.approx(votes.mean(), abs=1e-6)
    ent = entropy(s.probs)
    exp_ent = np.mean([entropy(s.member_probs[:, m]) for m in range(3)], axis=0)
    assert d["mean_entropy"] == pytest.approx(ent.mean(), abs=1e-5)
    assert d["mean_expected_entropy"] == pytest.approx(exp_ent.mean(), abs=1e-5)
    assert d["mean_mutual_information"] == pytest.approx((ent - exp_ent).mean(), abs=1e-5)

    # OOD: in-distribution = 0, OOD = 1; higher score = more OOD.
    y = np.r_[np.zeros(40), np.ones(40)]

    # Entropy and MI are divided by ln K (CSQA has 5 options, OBQA 4).
    k_in, k_out = np.log(5.0), np.log(4.0)

    def ood_pair(in_p: np.ndarray, out_p: np.ndarray, name: str) -> dict[str, float]:
        if name == "max_probability":
            x = np.r_[1 - in_p.max(1), 1 - out_p.max(1)].astype(np.float64)
        else:
            x = np.r_[entropy(in_p) / k_in, entropy(out_p) / k_out]
        return {"auroc": roc_auc_score(y, x), "aupr": average_precision_score(y, x)}

    assert got["ood"]["n_questions"] == 40
    for who, (ip, op) in {
        "ensemble": (s.probs, o.probs),
        "one_member": (s.member_probs[:, 0], o.member_probs[:, 0]),
        "base": (b.probs, ob.probs),
    }.items():
        for name in ("max_probability", "entropy"):
            assert_close(got["ood"][who][name], ood_pair(ip, op, name))
        assert "mutual_information" not in got["ood"][who] or who == "ensemble"
    x = np.r_[s.mutual_information / k_in, o.mutual_information / k_out].astype(np.float64)
    assert_close(
        got["ood"]["ensemble"]["mutual_information"],
        {"auroc": roc_auc_score(y, x), "aupr": average_precision_score(y, x)},
    )
    report_md = (report / "report.md").read_text()
    assert "member m2" in report_md and "Out-of-distribution" in report_md


def test_eval_needs_answers(tmp_path: Path, tiny_dir: Path, tiny_ensemble: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "Is it?", "choices": ["yes", "no"]}) + "\n")
    args = [SCRIPT, "eval", "--model", str(tiny_dir / "tiny-q8_0.gguf")]
    args += ["--adapters", str(tiny_ensemble), "--data", str(data), "--report", str(tmp_path / "r")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "no answer" in proc.stderr and proc.stderr.startswith("error: ")
    assert not (tmp_path / "r").exists()
