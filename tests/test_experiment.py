"""`lora-ens-rs experiment --preset smoke` end to end on the tiny model: every table and plot
file is written and the rows cover every (task, scoring, setting, model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from support import DATA

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")


def test_smoke_preset_writes_every_table_and_plot(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "exp"
    args = [SCRIPT, "experiment", "--preset", "smoke", "--out", str(out)]
    args += ["--model", str(tiny_dir / "tiny-q8_0.gguf")]
    env = {**os.environ, "LORA_ENS_RS_DATA": str(DATA)}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    models = {(r["scoring"], r["setting"], r["model"]) for r in results["rows"]}
    for scoring in ("labels", "choices"):
        assert (scoring, "-", "zero-shot base") in models
        assert (scoring, "none", "MC dropout (T=2)") in models
        for setting in ("none", "wd=1e2"):
            assert (scoring, setting, "one LoRA (mean of members)") in models
            assert (scoring, setting, "ensemble (M=2)") in models
            assert (scoring, setting, "one LoRA + temperature (mean of members)") in models
    for r in results["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["nll"] > 0 and 0 <= r["ece"] <= 1
        assert 0 <= r["aurc"] <= 1
    ens_rows = [r for r in results["rows"] if r["model"].startswith("ensemble")]
    assert all("mutual_information" in r["ood"]["obqa"] for r in ens_rows)
    for r in ens_rows:  # every ensemble-vs-member difference comes with its interval
        for g in r["gains"].values():
            assert np.isfinite(g["estimate"]) and g["low"] <= g["high"]
    scores = np.load(out / "scores" / "csqa-choices-none.npz")
    assert scores["members"].shape == scores["scaled_members"].shape == (8, 2, 5)
    md = (out / "results.md").read_text()
    for scoring in ("labels", "choices"):
        kinds = ("reliability", "wrong-confidence", "risk-coverage", "accuracy-vs-ece", "training")
        for kind in kinds:
            png = out / f"{kind}-csqa-{scoring}.png"
            assert png.read_bytes()[:4] == b"\x89PNG", png
            assert f"({png.name})" in md
    # Each trained ensemble is a directory the engine loads.
    assert (out / "runs" / "csqa-choices-none" / "ensemble.json").is_file()
