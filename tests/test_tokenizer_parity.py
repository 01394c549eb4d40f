"""The engine's tokenizer against the HF tokenizer transformers builds from the same GGUF.

Corpus: every question stem and answer choice of every file in the benchmark data
(CommonsenseQA, OpenBookQA, ARC-Easy/Challenge, MMLU; about 140k distinct strings), the
"Question: ...\\nA. ...\\nAnswer:" prompts built from the dev/val splits, chat-template renderings
with <|im_start|>/<|im_end|>, and hand-written digit, unicode and whitespace cases. Checked: the
token ids are identical for every string, decode(encode(s)) == s, and decode matches HF.

One known difference is stated, not hidden: SmolLM2's `tokenizer.ggml.pre = smollm` splits every
number character on its own before GPT-2's regex, so numbers are tokenized digit by digit
(llama.cpp does this, and SmolLM2's own tokenizer.json has `Digits(individual_digits=True)`),
but transformers 5.x keeps only ByteLevel's regex when it builds the tokenizer from a GGUF. The
engine follows the model, so the reference is transformers' tokenizer with that `Digits` step
put back, and `test_only_the_digit_split_differs_from_transformers` checks that the strings
where the engine and unmodified transformers disagree are exactly those the digit split changes.
Run: `pytest tests/test_tokenizer_parity.py` (slow: loads the real model, about a minute).
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from corpus import benchmark_strings, load_questions, prompt

import lora_ens_rs
from lora_ens_rs import MissingFileError, ModelLoadError, Tokenizer, TokenizerError

# ---------------------------------------------------------------------------------------------
# Corpus


HAND_WRITTEN = [
    # digits and numbers
    *"0123456789",
    "12345678901234567890",
    " 2024",
    "in 1897  24%",
    "3.14159 -0.5 +7 1e-9 0x1F",
    "1,000,000 and 10 000",
    "x=42;y=-7",
    "\n 2 1 4 8\n",
    "٣٤٥ ½ ¼ ² ³ Ⅻ ①",
    "m² and 10⁻³",
    # unicode
    "日本語のテキストと中文文本",
    "한국어 문장",
    "emoji 🎉👍🏽👨‍👩‍👧 ❤️",
    "café naïve résumé Ångström",
    unicodedata.normalize("NFD", "café naïve"),
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีครับ",
    "Ελληνικά Русский",
    "zero\u200bwidth\u200djoiner",
    "\ufeffBOM",
    # whitespace
    " ",
    "  ",
    " " * 9,
    "\t",
    "\t\t x",
    "\n",
    "\n\n\n",
    "\r\n",
    "a\r\nb\r\n",
    "trailing   ",
    "   leading",
    "mixed \t \n \r\n  end ",
    "nbsp\u00a0\u00a0x",
    "ideographic\u3000space",
    "thin\u2009space\u2028line",
    # contractions and punctuation
    "I'm sure it's theirs, they'll say; we'd've known. DON'T!",
    "'s 't 're 've 'm 'll 'd",
    "...?!--()[]{}<>@#$%^&*_+=|\\/~`",
    # special tokens
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|><|im_end|><|endoftext|>",
    "text<|endoftext|>text",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start partial <|im_end| and <|im_start|",
    " <|im_start|> spaced <|im_end|> ",
    "<repo_name>x<file_sep>y<filename>z<gh_stars>10",
    "",
]


def chat_texts(hf, questions) -> list[str]:
    """Conversations rendered with the model's own chat template."""
    texts = []
    for stem, choices, _ in questions[:: max(1, len(questions) // 150)]:
        user = {"role": "user", "content": prompt(stem, choices)}
        answer = {"role": "assistant", "content": f"A. {choices[0]}"}
        system = {"role": "system", "content": "Answer with one letter.\n"}
        texts.append(hf.apply_chat_template([user, answer], tokenize=False))
        texts.append(
            hf.apply_chat_template([system, user], tokenize=False, add_generation_prompt=True)
        )
    return texts


@pytest.fixture(scope="module")
def hf(default_model):
    from transformers import AutoTokenizer

    path = Path(default_model)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def reference(hf):
    """transformers' tokenizer with SmolLM2's `Digits(individual_digits=True)` step put back."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    backend = HFTokenizer.from_str(hf.backend_tokenizer.to_str())
    assert json.loads(backend.to_str())["pre_tokenizer"]["type"] == "ByteLevel", (
        "transformers' GGUF tokenizer changed its pre-tokenizer: revisit the module docstring"
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return backend


@pytest.fixture(scope="module")
def ours(default_model) -> Tokenizer:
    return Tokenizer.from_gguf(default_model)


@pytest.fixture(scope="module")
def corpus(hf) -> list[str]:
    questions = load_questions()
    strings = benchmark_strings(questions) + chat_texts(hf, questions) + HAND_WRITTEN
    return list(dict.fromkeys(strings))  # distinct, in order


@pytest.fixture(scope="module")
def encodings(corpus, hf, reference, ours) -> dict[str, list[list[int]]]:
    def hf_ids(tokenizer) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch(corpus, add_special_tokens=False)]

    return {
        "ours": ours.encode_batch(corpus),
        "reference": hf_ids(reference),
        "transformers": hf_ids(hf.backend_tokenizer),
    }


def describe(corpus, got, want, limit=5) -> str:
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    lines = [f"{len(bad)} of {len(corpus)} strings differ; first {min(limit, len(bad))}:"]
    for i in bad[:limit]:
        at = next(
            (k for k, (a, b) in enumerate(zip(got[i], want[i], strict=False)) if a != b), None
        )
        at = min(len(got[i]), len(want[i])) if at is None else at
        lines.append(
            f"  {corpus[i][:120]!r}\n    from token {at}: ours {got[i][at : at + 8]}"
            f" hf {want[i][at : at + 8]}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Parity


@pytest.mark.slow
def test_corpus_covers_all_data(corpus):
    assert len(corpus) > 100_000
    assert any("<|im_start|>" in s for s in corpus)


@pytest.mark.slow
def test_ids_match_hf(corpus, encodings):
    got, want = encodings["ours"], encodings["reference"]
    assert got == want, describe(corpus, got, want)


@pytest.mark.slow
def test_only_the_digit_split_differs_from_transformers(corpus, encodings):
    ours, ref, raw = encodings["ours"], encodings["reference"], encodings["transformers"]
    differ = {i for i, (a, b) in enumerate(zip(ours, raw, strict=True)) if a != b}
    split_matters = {i for i, (a, b) in enumerate(zip(ref, raw, strict=True)) if a != b}
    assert differ == split_matters, describe(corpus, ours, raw)
    assert all(any(unicodedata.category(c).startswith("N") for c in corpus[i]) for i in differ)
    assert len(differ) < len(corpus) // 1000  # a handful: see the module docstring


@pytest.mark.slow
@pytest.mark.parametrize("which", ["reference", "transformers"])
def test_from_file_matches_hf_on_the_same_tokenizer_json(
    tmp_path, corpus, encodings, hf, reference, which
):
    """The `tokenizer.json` path: both HF tokenizers saved to JSON, read back by the engine."""
    backend = reference if which == "reference" else hf.backend_tokenizer
    path = tmp_path / "tokenizer.json"
    path.write_text(backend.to_str())
    tok = Tokenizer.from_file(path)
    sample = corpus[::7]
    got = tok.encode_batch(sample)
    assert got == encodings[which][::7], describe(sample, got, encodings[which][::7])
    assert tok.vocab_size == 49152 and tok.token_to_id("<|im_end|>") == 2


@pytest.mark.slow
def test_decode_round_trips(corpus, encodings, ours):
    bad = [s for s, ids in zip(corpus, encodings["ours"], strict=True) if ours.decode(ids) != s]
    assert not bad, f"{len(bad)} strings do not round-trip, e.g. {bad[:3]!r}"


@pytest.mark.slow
@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches_hf(corpus, encodings, ours, reference, skip):
    sample = [*encodings["ours"][::97], [1, 28120, 2, 0, 216, 33], [4093, 198, 36, 2]]
    got = [ours.decode(ids, skip_special_tokens=skip) for ids in sample]
    want = [reference.decode(ids, skip_special_tokens=skip) for ids in sample]
    assert got == want


@pytest.mark.slow
def test_chat_template_ids_match_transformers(hf, ours):
    conversation = [
        {"role": "user", "content": "What is 12 + 7?\nA. 19\nB. 20"},
        {"role": "assistant", "content": "A"},
    ]
    want = hf.apply_chat_template(conversation, tokenize=True)["input_ids"]
    text = hf.apply_chat_template(conversation, tokenize=False)
    assert ours.encode(text, add_special_tokens=True) == want
    assert ours.chat_template == hf.chat_template


@pytest.mark.slow
def test_metadata_matches_transformers(hf, ours):
    assert ours.vocab_size == len(hf) == 49152
    assert (ours.bos_id, ours.eos_id) == (hf.bos_token_id, hf.eos_token_id) == (1, 2)
    for token in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "Ġthe", "Question"]:
        assert ours.token_to_id(token) == hf.convert_tokens_to_ids(token)
        assert ours.id_to_token(ours.token_to_id(token)) == token
    assert ours.token_to_id("not a token at all") is None
    assert ours.id_to_token(10**6) is None
    assert repr(ours) == "Tokenizer(vocab_size=49152, bos_id=1, eos_id=2)"


@pytest.mark.slow
def test_decode_of_an_unknown_id_is_a_tokenizer_error(ours):
    with pytest.raises(TokenizerError, match=r"cannot decode id 49152: not in the vocabulary"):
        ours.decode([1, 49152])


# ---------------------------------------------------------------------------------------------
# Errors (no model needed)


def test_missing_file_raises_missing_file_error(tmp_path):
    with pytest.raises(MissingFileError, match=r"absent\.gguf"):
        Tokenizer.from_gguf(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")


def test_not_a_gguf_raises_model_load_error(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="bad magic"):
        Tokenizer.from_gguf(path)


def test_unsupported_tokenizer_json_raises_tokenizer_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    spec = {
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
        "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
    }
    path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=r"normalizer `NFC` is not supported"):
        Tokenizer.from_file(path)
    spec["normalizer"] = None
    spec["pre_tokenizer"] = {"type": "Metaspace"}
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"pre-tokenizer `Metaspace` is not supported"):
        Tokenizer.from_file(path)


def test_tokenizer_is_exported():
    assert lora_ens_rs.Tokenizer is Tokenizer
    assert "Tokenizer" in lora_ens_rs.__all__
