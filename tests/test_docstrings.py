"""Every ``>>>`` example in the package's docstrings runs and prints what it shows.

The examples run in a fresh directory (also ``tmp_path``) and may use ``tiny_gguf`` (the tiny
fixture model), ``tiny_ensemble`` (its 3-member ensemble) and ``ens`` (the two loaded),
``tok`` (its tokenizer) and ``tiny_tokenizer_json`` (the HF tokenizer it was made from),
``csqa_train`` (the bundled CommonsenseQA training file), ``result`` (a
2-member ensemble trained on it with the tiny model, LoRA dropout 0.1), ``examples`` (its
encoded training questions), ``questions`` and ``answers`` (8 bundled dev questions).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lora_ens_rs

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: Modules whose examples are not run here, and why.
SKIPPED = {
    "lora_ens_rs.__main__": "runs the command line when imported",
    "lora_ens_rs.train.cli": "the example trains the default model on a file in the cwd",
}
#: Modules whose examples fetch or load the real default model.
SLOW = {"lora_ens_rs"}


def package_modules() -> list[str]:
    names = ["lora_ens_rs"]
    for info in pkgutil.walk_packages(lora_ens_rs.__path__, "lora_ens_rs."):
        names.append(info.name)
    return sorted(n for n in names if n not in SKIPPED)


def doctests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    found = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    return [t for t in found if t.examples]


MODULES = [n for n in package_modules() if doctests(n)]


def test_examples_are_found() -> None:
    assert {"lora_ens_rs.atomic", "lora_ens_rs.train.export", "lora_ens_rs.train.model"} <= set(
        MODULES
    )


@pytest.fixture(scope="module")
def namespace(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from lora_ens_rs import data
    from lora_ens_rs.train import train_ensemble

    tiny_gguf = str(tiny_dir / "tiny-q8_0.gguf")
    tiny_ensemble = str(tiny_dir / "ensemble")
    csqa_train = lora_ens_rs.datasets.path("commonsenseqa", "train")
    questions = data.load("csqa-mini", "dev", limit=8)
    result = train_ensemble(
        model=tiny_gguf,
        data=str(csqa_train),
        limit=24,
        members=2,
        scoring="choices",
        layers="top1",
        dropout=0.1,
        threads=1,
        progress=False,
    )
    return {
        "tiny_gguf": tiny_gguf,
        "tiny_ensemble": tiny_ensemble,
        "ens": lora_ens_rs.Ensemble(tiny_gguf, tiny_ensemble),
        "tok": lora_ens_rs.Tokenizer.from_gguf(tiny_gguf),
        "tiny_tokenizer_json": str(tiny_dir / "hf" / "tokenizer.json"),
        "csqa_train": str(csqa_train),
        "result": result,
        "examples": result.train_examples,
        "questions": questions,
        "answers": np.array([q["answer"] for q in questions]),
    }


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODULES]
)
def test_docstring_examples(
    name: str, namespace: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in doctests(name):
        test.globs.update(namespace, tmp_path=tmp_path)
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0
    assert results.failed == 0, f"{results.failed} example(s) of {name} failed (output above)"
