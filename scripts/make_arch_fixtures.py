"""Write tiny random HF checkpoints of each supported architecture and their GGUF files, as
llama.cpp's own converter writes them, for the parity tests of tests/test_arch_parity.py.

    python scripts/make_arch_fixtures.py --out DIR [--arch llama2 llama3 qwen2 qwen3]

For each architecture, ``DIR/<arch>/`` gets:
- ``hf/``: a random transformers model with the family's real features (GQA everywhere; an
  untied head and a SentencePiece vocabulary with byte fallback on the LLaMA-2 / Mistral one;
  LLaMA-3.2's ``llama3`` rope scaling and tied head on the LLaMA-3 one; Q/K/V biases on
  Qwen2; per-head Q/K RMSNorm and ``head_dim != hidden / n_head`` on Qwen3), saved with its
  tokenizer;
- ``f32.gguf`` and ``q8_0.gguf``: written by llama.cpp's ``convert_hf_to_gguf.py`` from
  ``hf/`` (fetched from the llama-cpp-python sdist by scripts/fetch_llama_vocabs.py: the
  independent reference for tensor names, Q/K permutations, ``rope_freqs`` and metadata);
- ``q4_k.gguf``, ``q6_k.gguf``, ``q4_k_m.gguf``: ``f32.gguf`` re-encoded by
  scripts/kquants.py (gguf-py can read K-quants but not write them).

Vocabularies are small so the files are (about 2,000 tokens, 256-wide hidden states, which
K-quants need): the LLaMA-2 one is a SentencePiece BPE model trained here; the others are
byte-level BPE vocabularies trained here with the pre-tokenizer, normalizer and decoder of the
real one (llama.cpp's ``ggml-vocab-llama-bpe.gguf`` / ``ggml-vocab-qwen2.gguf`` read by
transformers). The converter recognizes a BPE pre-tokenizer by hashing the ids of a fixed
text, which only the full vocabulary reproduces, so it is told the pre-tokenizer's name
(``PRE_TOKENIZER``); everything else it does unchanged. The corpus is the CommonsenseQA train
questions in ../shared/data. Same files on every run; ``DIR/<arch>/manifest.json`` lists them
with their sha256 and the sha256 of this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
DATA = Path(os.environ.get("LORA_ENS_RS_DATA", REPO.parent / "shared" / "data"))
SEED = 20251130
VOCAB = 2000
BASE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
}
# LLaMA-3.2-1B's rope scaling (its config.json).
LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ARCHS: dict[str, dict] = {
    # LLaMA-2 / Mistral-7B style: SentencePiece, untied head, GQA (Mistral's).
    "llama2": {
        "model_type": "llama",
        "config": {"rope_theta": 10000.0, "tie_word_embeddings": False},
        "vocab": "spm",
    },
    # LLaMA-3.2 style: llama3 rope scaling (factor 32, as 3.2-1B), tied head, base 500000.
    "llama3": {
        "model_type": "llama",
        "config": {
            "rope_theta": 500000.0,
            "tie_word_embeddings": True,
            "max_position_embeddings": 131072,
            "rope_scaling": LLAMA3_ROPE_SCALING,
        },
        "vocab": "llama-bpe",
    },
    # Qwen2.5-7B style: untied head, Q/K/V biases.
    "qwen2": {
        "model_type": "qwen2",
        "config": {"rope_theta": 1000000.0, "tie_word_embeddings": False},
        "vocab": "qwen2",
    },
    # Qwen3-0.6B style: tied head, q/k norm, 8 heads of 64 on a 256-wide stream.
    "qwen3": {
        "model_type": "qwen3",
        "config": {"rope_theta": 1000000.0, "tie_word_embeddings": True, "head_dim": 64},
        "vocab": "qwen2",
    },
}
# The pre-tokenizer names llama.cpp's converter would detect on the full vocabularies.
PRE_TOKENIZER = {"llama-bpe": "llama-bpe", "qwen2": "qwen2"}
SPECIALS = {
    "llama-bpe": {
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "extra": ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
    },
    "qwen2": {"bos": None, "eos": "<|im_end|>", "extra": ["<|endoftext|>", "<|im_start|>"]},
}
CHAT_TEMPLATES = {
    "llama-bpe": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}"
    ),
    "qwen2": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}
QUANT_FILES = ("q4_k", "q6_k", "q4_k_m")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus() -> list[str]:
    """CommonsenseQA train questions and choices: the tokenizers' training text."""
    lines = []
    with open(DATA / "commonsenseqa" / "train_rand_split.jsonl") as f:
        for line in f:
            q = json.loads(line)["question"]
            lines.append(q["stem"])
            lines.extend(c["text"] for c in q["choices"])
    return lines


def write_spm(out: Path, text: list[str]) -> None:
    """A LLaMA-2-style SentencePiece BPE model (byte fallback, <unk>=0 <s>=1 </s>=2)."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.txt"
        src.write_text("\n".join(text))
        spm.SentencePieceTrainer.train(
            input=str(src),
            model_prefix=str(Path(tmp) / "tokenizer"),
            model_type="bpe",
            vocab_size=VOCAB,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            num_threads=1,
            seed_sentencepiece_size=100000,
            minloglevel=2,
        )
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "tokenizer.model", out / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")


def write_bpe(out: Path, name: str, text: list[str]) -> None:
    """A byte-level BPE vocabulary trained on `text` with the real `name` tokenizer's
    normalizer, pre-tokenizer and decoder, plus its special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    sys.path.insert(0, str(SCRIPTS))
    from fetch_llama_vocabs import fetch

    real = AutoTokenizer.from_pretrained(fetch(), gguf_file=f"ggml-vocab-{name}.gguf")
    spec = json.loads(real.backend_tokenizer.to_str())
    specials = SPECIALS[name]
    tokens = [t for t in [specials["bos"], specials["eos"], *specials["extra"]] if t]
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.train_from_iterator(text, trainer=trainer)
    trained = json.loads(tok.to_str())
    # The real pipeline around the trained model; specials appended after the vocabulary.
    for key in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        trained[key] = spec.get(key)
    trained["model"]["ignore_merges"] = spec["model"].get("ignore_merges", False)
    trained["added_tokens"] = [
        {
            "id": VOCAB + i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(tokens)
    ]
    if trained["post_processor"] and specials["bos"]:
        # LLaMA-3's TemplateProcessing names the BOS id; point it at ours.
        trained["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": specials["bos"], "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": specials["bos"], "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                specials["bos"]: {
                    "id": specials["bos"],
                    "ids": [VOCAB],
                    "tokens": [specials["bos"]],
                }
            },
        }
    else:
        trained["post_processor"] = None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(trained)),
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        add_bos_token=specials["bos"] is not None,
    )
    fast.chat_template = CHAT_TEMPLATES[name]
    fast.save_pretrained(out)


def write_hf(out: Path, arch: str) -> None:
    """The random HF model and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = ARCHS[arch]
    if spec["vocab"] == "spm":
        write_spm(out, corpus())
    else:
        write_bpe(out, spec["vocab"], corpus())
    if spec["vocab"] == "spm":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        n_vocab, bos, eos = sp.vocab_size(), sp.bos_id(), sp.eos_id()
    else:
        tok = AutoTokenizer.from_pretrained(out)
        n_vocab, bos, eos = len(tok), tok.bos_token_id, tok.eos_token_id
    config = AutoConfig.for_model(
        spec["model_type"],
        vocab_size=n_vocab,
        bos_token_id=bos,
        eos_token_id=eos,
        **{**BASE, **spec["config"]},
    )
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Norm weights away from 1 so a missing or misplaced norm shows.
                p.copy_(1.0 + 0.2 * torch.randn(p.shape))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape))
    model.save_pretrained(out)


def convert(hf: Path, out: Path, outtype: str, pre: str | None) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py (in a child process) on `hf`."""
    sys.path.insert(0, str(SCRIPTS))
    from fetch_llama_vocabs import fetch

    converter = fetch() / "convert_hf_to_gguf.py"
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(converter.parent)!r})\n"
        f"sys.argv = ['convert_hf_to_gguf.py', {str(hf)!r}, '--outfile', {str(out)!r},"
        f" '--outtype', {outtype!r}]\n"
    )
    if pre is not None:
        code += (
            "import conversion.base as base\n"
            f"base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}\n"
        )
    code += f"runpy.run_path({str(converter)!r}, run_name='__main__')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf}:\n{done.stderr[-3000:]}")


def quantize(src: Path, dst: Path, kind: str) -> None:
    """Re-encode `src` as `kind` (q4_k, q6_k or the Q4_K_M-style mix) with scripts/kquants.py."""
    sys.path.insert(0, str(SCRIPTS))
    import gguf
    import kquants

    n_layer = BASE["num_hidden_layers"]
    qt = gguf.GGMLQuantizationType

    def type_for(name: str, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
        if kind == "q4_k_m":
            return kquants.q4_k_m_type(name, shape, n_layer)
        if len(shape) == 1 or name == "rope_freqs.weight":
            return qt.F32
        return qt.Q4_K if kind == "q4_k" else qt.Q6_K

    kquants.requantize_gguf(src, dst, type_for)


def make(out: Path, arch: str) -> None:
    """Write (or rewrite) the fixtures of one architecture into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    hf = out / "hf"
    write_hf(hf, arch)
    pre = PRE_TOKENIZER.get(ARCHS[arch]["vocab"])
    convert(hf, out / "f32.gguf", "f32", pre)
    convert(hf, out / "q8_0.gguf", "q8_0", pre)
    for kind in QUANT_FILES:
        quantize(out / "f32.gguf", out / f"{kind}.gguf", kind)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "script_sha256": sha256(Path(__file__)),
        "arch": arch,
        "files": {str(p.relative_to(out)): sha256(p) for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def is_fresh(out: Path) -> bool:
    """Whether `out` holds every file its manifest lists, written by this script."""
    path = out / "manifest.json"
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    if manifest.get("script_sha256") != sha256(Path(__file__)):
        return False
    return all((out / n).is_file() and sha256(out / n) == d for n, d in manifest["files"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    args = parser.parse_args()
    for arch in args.arch:
        if not is_fresh(args.out / arch):
            make(args.out / arch, arch)
        print(args.out / arch)


if __name__ == "__main__":
    main()
