"""Write a 3-member LoRA ensemble of the tiny fixture model for tests and doc examples.

    python scripts/make_tiny_ensemble.py --fixtures tests/fixtures/tiny

Members are real PEFT adapters (``peft.get_peft_model`` + ``save_pretrained``) with random
non-zero A and B under fixed seeds, different targets and ranks (one rsLoRA member, one on
k/o only in the last layer), saved as ``<fixtures>/ensemble/m{0,1,2}`` with an
``ensemble.json`` that records the base GGUF's sha256 (``tiny-q8_0.gguf``).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from peft_adapters import write_adapter

from lora_ens_rs import TEMPLATE_NAME
from lora_ens_rs._core import EnsembleManifest

BASE = "tiny-q8_0.gguf"
MEMBERS = [
    {"seed": 0, "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    {
        "seed": 1,
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": True,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
    },
    {
        "seed": 2,
        "r": 16,
        "lora_alpha": 16,
        "target_modules": ["k_proj", "o_proj"],
        "layers_to_transform": [1],
    },
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, required=True, help="the tiny model's directory")
    args = parser.parse_args(argv)
    fixtures: Path = args.fixtures
    out = fixtures / "ensemble"
    partial = fixtures / "ensemble.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = []
    for i, spec in enumerate(MEMBERS):
        spec = dict(spec)
        seed = spec.pop("seed")
        name = f"m{i}"
        write_adapter(fixtures / "hf", partial / name, seed=seed, **spec)
        names.append(name)
    # The engine's typed manifest, as training writes it.
    manifest = EnsembleManifest(
        names,
        base_model_path=BASE,
        base_model_sha256=sha256(fixtures / BASE),
        labels=["A", "B", "C", "D", "E"],
        prompt_template=TEMPLATE_NAME,
        extra={"note": "random adapters for tests (scripts/make_tiny_ensemble.py)"},
    )
    (partial / "ensemble.json").write_text(manifest.to_json())
    # Swap in the finished directory only once it is complete.
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    print(f"wrote {len(names)} members to {out}")


if __name__ == "__main__":
    main()
