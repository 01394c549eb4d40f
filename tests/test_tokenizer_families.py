"""The engine's GGUF tokenizer against the HF tokenizer transformers builds from the same GGUF,
for each tokenizer family of llama.cpp's test vocabularies (`llama_vocabs` fixture, see
tests/test_llama_vocabs.py): LLaMA-2 / Mistral SentencePiece (llama-spm), Phi-3, LLaMA-3
(llama-bpe), Qwen2.5 / Qwen3 (qwen2), Qwen3.5 (qwen35), GPT-2, StarCoder, Falcon, DeepSeek-LLM,
DeepSeek-Coder; and Refact, Command-R, MPT where transformers can build them.

Corpus per family: a deterministic sample of 3000 benchmark strings (tests/corpus.py) and every
string of tests/data/tokenizer_edge_cases.json (scripts, combining marks, emoji and ZWJ
sequences, whitespace, digits, code, special-token-like text, the empty string). Ids are compared
with `add_special_tokens=True`, so BOS / EOS are checked, and decode is compared too.

The engine follows the model (llama.cpp, whose `.inp` / `.out` cases are the model's own HF
tokenizer). Where transformers' GGUF loader is known to deviate from it, the reference is
transformers' tokenizer with that one thing put back, `test_ids_match_the_reference` requires
every string to match it, and `test_transformers_differs_only_where_documented` checks that the
strings where unmodified transformers differs are only those the deviation explains:

* pre-tokenizer (starcoder, refact, command-r, falcon, deepseek-llm, deepseek-coder): transformers
  knows the splits of LLaMA-3, Qwen2 and Qwen3.5 only and gives every other `tokenizer.ggml.pre`
  GPT-2's regex. The reference applies llama.cpp's list of splits (`llm_tokenizer_bpe` in
  `src/llama-vocab.cpp`) with `tokenizers`' own regex engine; only strings whose pre-tokenized
  pieces differ between the two may differ.
* SentencePiece prefix (llama-spm): transformers uses `Metaspace(prepend_scheme="first")`, which
  adds no "▁" to text that already starts with a space, where SentencePiece's `add_dummy_prefix`
  and llama.cpp always add it (" Hello" is "▁" + "▁Hello", as in llama.cpp's cases). The
  reference uses the normalizer transformers itself uses for Phi-3 (prepend "▁", spaces to "▁");
  only strings starting with a space, or holding a special token's text (llama.cpp adds the
  prefix to the text after it: "<s>Hello" is `<s>` + "▁Hello"), may differ.
* BOS (llama-bpe): the file has no `add_bos_token`; llama.cpp adds BOS to LLaMA-3's pre-tokenizers
  (and LLaMA-3's own tokenizer.json adds `<|begin_of_text|>`), transformers adds none.
  (deepseek-*): BOS `<|begin▁of▁sentence|>` (its bars are U+FF5C) is written as plain text
  outside the byte alphabet, and transformers gives it a new id past the vocabulary (102401
  instead of 100000). The reference puts the file's BOS id first; only the first id may differ.
* ignore_merges (llama-bpe): LLaMA-3's tokenizer.json has `BPE(ignore_merges=true)` and llama.cpp
  sets it for the LLaMA-3 pre-tokenizers: a piece that is a vocabulary token is one token
  (" Việt"), though its merges stop short of it. transformers leaves it off; the reference sets
  it back. Only strings with such a piece may differ (found by the reference itself).
* tokens past the vocabulary (llama-bpe): transformers' `GPT2Tokenizer` adds its default
  `<|endoftext|>` as a new id (128256) where the vocabulary lacks it; the engine reads it as text.
  Strings containing one are left out of the reference comparison and may differ.
* plain-text added tokens (mpt, deepseek-*): llama.cpp's converter writes control / user-defined
  tokens as plain text (MPT's runs of 2-24 spaces, DeepSeek's `<|fim▁hole|>`); llama.cpp and the
  model's tokenizer match them whole, transformers skips those outside the byte alphabet. Only
  strings containing such a token's text may differ.

Run: `pytest tests/test_tokenizer_families.py -s` (slow: about 2 minutes; -s prints the counts).
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
from corpus import benchmark_strings, edge_cases, load_questions, sample

from lora_ens_rs._core import Tokenizer

pytestmark = pytest.mark.slow

SAMPLE = 3000

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
DEEPSEEK_CJK = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+"
# llama.cpp's DeepSeek-LLM letter class (src/llama-vocab.cpp), its characters as escapes.
DEEPSEEK_LETTERS = (
    r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}"
    r"\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}"
    r"\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}"
    r"\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}"
    r"\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}"
    r"\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}"
    r"\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}"
    r"\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}"
    r"\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}"
    r"\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}"
    r"\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}"
    r"\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}"
    r"\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}"
    r"\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}"
    r"\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+"
)


@dataclass(frozen=True)
class Family:
    """What transformers gets wrong for one vocabulary (see the module docstring)."""

    splits: tuple[str, ...] | None = None  # llama.cpp's pre-tokenizer, where transformers lacks it
    spm_prefix: bool = False  # SentencePiece's dummy prefix even before a leading space
    bos_first: bool = False  # the file's BOS id first (transformers adds none or a wrong one)
    ignore_merges: bool = False  # LLaMA-3's BPE(ignore_merges=true)


FAMILIES = {
    "llama-spm": Family(spm_prefix=True),
    "phi-3": Family(),
    "llama-bpe": Family(bos_first=True, ignore_merges=True),
    "qwen2": Family(),
    "qwen35": Family(),
    "gpt-2": Family(),
    "starcoder": Family(splits=(r"\p{N}", GPT2)),
    "refact": Family(splits=(r"\p{N}", GPT2)),
    "command-r": Family(splits=(r"\p{N}", GPT2)),
    "mpt": Family(),
    "falcon": Family(splits=(r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")),
    "deepseek-llm": Family(
        splits=(
            r"[\r\n]",
            DEEPSEEK_LETTERS,
            r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
            r"\s+$",
            DEEPSEEK_CJK,
            r"\p{N}+",
        ),
        bos_first=True,
    ),
    "deepseek-coder": Family(
        splits=(r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_CJK, r"\p{N}"),
        bos_first=True,
    ),
}


@functools.cache
def corpus() -> tuple[str, ...]:
    edges = [s for group in edge_cases().values() for s in group]
    return tuple(dict.fromkeys(sample(benchmark_strings(load_questions()), SAMPLE) + edges))


@functools.cache
def metadata(path: Path) -> dict:
    """BOS id and the plain-text added tokens (control / user-defined outside the byte
    alphabet) of a GGUF, read with gguf-py."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    tokens = [
        str(bytes(fields["tokenizer.ggml.tokens"].parts[i]), "utf-8")
        for i in fields["tokenizer.ggml.tokens"].data
    ]
    kinds = fields.get("tokenizer.ggml.token_type")
    kinds = [int(kinds.parts[i][0]) for i in kinds.data] if kinds else [1] * len(tokens)
    bos = fields.get("tokenizer.ggml.bos_token_id")
    is_bpe = str(bytes(fields["tokenizer.ggml.model"].parts[-1]), "utf-8") == "gpt2"
    alphabet = set(bytes_to_unicode().values())
    added = [t for t, k in zip(tokens, kinds, strict=True) if k in (3, 4)]
    user_defined = [t for t, k in zip(tokens, kinds, strict=True) if k == 4]
    plain = [t for t in added if is_bpe and not set(t) <= alphabet]
    return {
        "bos": int(bos.parts[-1][0]) if bos else None,
        "added": added,
        "user_defined": user_defined,
        "plain_added": plain,
        "n_tokens": len(tokens),
    }


@dataclass
class Encodings:
    name: str
    strings: tuple[str, ...]
    ours: list[list[int]]
    reference: list[list[int]]
    transformers: list[list[int]]
    explained: list[bool]  # where transformers may differ, by the documented deviation
    past_vocab: list[bool]  # holds a token transformers invented past the vocabulary
    hf: object
    tok: Tokenizer
    backend: object  # the reference: transformers' tokenizer with the deviations put back


@functools.cache
def encodings(directory: Path, name: str) -> Encodings:
    from tokenizers import Regex, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    family = FAMILIES[name]
    file = f"ggml-vocab-{name}.gguf"
    try:
        hf = AutoTokenizer.from_pretrained(directory, gguf_file=file)
    except ValueError as e:
        pytest.skip(
            f"transformers cannot build {file}'s tokenizer ({e}); checked by its cases only"
        )
    strings = corpus()
    tok = Tokenizer.from_gguf(directory / file)
    meta = metadata(directory / file)

    backend = HFTokenizer.from_str(hf.backend_tokenizer.to_str())
    raw_pre = backend.pre_tokenizer
    without_ignore_merges = HFTokenizer.from_str(hf.backend_tokenizer.to_str())
    if family.ignore_merges:
        backend.model.ignore_merges = True
        without_ignore_merges.pre_tokenizer = backend.pre_tokenizer
    invented = [t for t, i in hf.get_added_vocab().items() if i >= meta["n_tokens"]]
    if family.splits:
        splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in family.splits]
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    if family.spm_prefix:
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
        )
        backend.pre_tokenizer = None

    def reference(s: str) -> list[int]:
        if family.bos_first:
            return [meta["bos"], *backend.encode(s, add_special_tokens=False).ids]
        return backend.encode(s, add_special_tokens=True).ids

    def explained(s: str) -> bool:
        """Whether transformers may differ on `s` other than in BOS."""
        if any(t in s for t in [*meta["plain_added"], *invented]):
            return True
        if family.ignore_merges:
            plain = backend.encode(s, add_special_tokens=False).ids
            if plain != without_ignore_merges.encode(s, add_special_tokens=False).ids:
                return True
        if family.splits:
            pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(s)]
            return pieces != [p for p, _ in raw_pre.pre_tokenize_str(s)]
        if family.spm_prefix:
            return s.startswith(" ") or any(t in s for t in meta["added"])
        return False

    return Encodings(
        name=name,
        strings=strings,
        ours=tok.encode_batch(list(strings), True),
        reference=[reference(s) for s in strings],
        transformers=[hf(s, add_special_tokens=True)["input_ids"] for s in strings],
        explained=[explained(s) for s in strings],
        past_vocab=[any(t in s for t in invented) for s in strings],
        hf=hf,
        tok=tok,
        backend=backend,
    )


def describe(e: Encodings, got, want, limit=5) -> str:
    """The first strings where `got` and `want` (per string of `e.strings`) differ."""
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    lines = [f"{e.name}: {len(bad)} of {len(e.strings)} strings differ; first {limit}:"]
    for i in bad[:limit]:
        lines.append(f"  {e.strings[i][:100]!r}\n    ours {got[i][:16]}\n    want {want[i][:16]}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_ids_match_the_reference(llama_vocabs, name):
    e = encodings(llama_vocabs, name)
    differ = sum(a != b for a, b in zip(e.ours, e.transformers, strict=True))
    print(
        f"\n{name}: {len(e.strings)} strings, reference mismatches "
        f"{sum(a != b for a, b in zip(e.ours, e.reference, strict=True))}, "
        f"unmodified transformers differs on {differ}"
    )
    assert sum(e.past_vocab) <= 5
    got = [[] if past else ids for ids, past in zip(e.ours, e.past_vocab, strict=True)]
    want = [[] if past else ids for ids, past in zip(e.reference, e.past_vocab, strict=True)]
    assert got == want, describe(e, got, want)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_transformers_differs_only_where_documented(llama_vocabs, name):
    e = encodings(llama_vocabs, name)
    ours, theirs = e.ours, e.transformers
    if FAMILIES[name].bos_first:
        # BOS: ours is the file's BOS id, transformers' none (llama-bpe) or its own (deepseek).
        bos = e.tok.bos_id
        assert all(ids[:1] == [bos] for ids in ours)
        hf_bos = [e.hf.bos_token_id] if e.hf.bos_token_id != bos else []
        assert all(ids[: len(hf_bos)] == hf_bos for ids in theirs), "transformers' BOS changed"
        ours, theirs = [ids[1:] for ids in ours], [ids[len(hf_bos) :] for ids in theirs]
    got = [[] if ok else ids for ids, ok in zip(ours, e.explained, strict=True)]
    want = [[] if ok else ids for ids, ok in zip(theirs, e.explained, strict=True)]
    assert got == want, describe(e, got, want)
    differ = sum(a != b for a, b in zip(ours, theirs, strict=True))
    print(f"\n{name}: transformers differs on {differ} strings besides BOS, all explained")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bos_as_the_file_says(llama_vocabs, name):
    e = encodings(llama_vocabs, name)
    first = {ids[0] for ids in e.ours if ids}
    if e.tok.add_bos_token:
        assert first == {metadata(llama_vocabs / f"ggml-vocab-{name}.gguf")["bos"]}
    else:
        assert e.ours[e.strings.index("")] == []


@pytest.mark.parametrize("name", list(FAMILIES))
def test_decode_matches_transformers(llama_vocabs, name):
    """transformers decodes the engine's ids to the same text. With special tokens skipped,
    two known differences are left out: a BOS transformers does not know as special (deepseek:
    see the module docstring), and user-defined tokens (Phi-3's `</s>`), which llama.cpp and the
    engine keep (they are not special) and transformers drops."""
    e = encodings(llama_vocabs, name)
    user_defined = metadata(llama_vocabs / f"ggml-vocab-{name}.gguf")["user_defined"]
    for skip in [False, True]:
        keep = [
            i
            for i, s in enumerate(e.strings)
            if not skip or not (FAMILIES[name].bos_first or any(t in s for t in user_defined))
        ]
        got = [e.tok.decode(e.ours[i], skip) for i in keep]
        want = [e.hf.decode(e.ours[i], skip_special_tokens=skip) for i in keep]
        bad = [(e.strings[i], g, w) for i, g, w in zip(keep, got, want, strict=True) if g != w]
        assert not bad, f"{name} (skip={skip}): {len(bad)} differ, e.g. {bad[:3]!r}"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_decode_round_trips(llama_vocabs, name):
    """decode(encode(s)) == s wherever the reference round-trips too: not where s holds an
    added token's text (SentencePiece puts a prefix space after it that decode keeps: "<s>Hello"
    decodes as "<s> Hello"), nor where the vocabulary lacks a byte (Falcon has no token for
    U+000B, which the BPE drops, as `tokenizers` does)."""
    e = encodings(llama_vocabs, name)
    added = metadata(llama_vocabs / f"ggml-vocab-{name}.gguf")["added"]
    strings = [
        s
        for s in e.strings
        if not any(t in s for t in added)
        and e.backend.decode(e.backend.encode(s, add_special_tokens=False).ids) == s
    ]
    assert len(strings) > len(e.strings) - 60
    plain = [e.tok.encode(s, False) for s in strings]
    bad = [s for s, ids in zip(strings, plain, strict=True) if e.tok.decode(ids, False) != s]
    assert not bad, f"{name}: {len(bad)} do not round-trip, e.g. {bad[:3]!r}"


def test_edge_cases_cover_what_they_claim():
    groups = edge_cases()
    strings = [s for g in groups.values() for s in g]
    assert "" in strings and "\r\n" in strings and any("\u200d" in s for s in strings)
    assert any(unicodedata.category(c) == "Mn" for s in strings for c in s)
    assert {"cjk", "arabic_hebrew", "vietnamese", "emoji", "whitespace", "special_like"} <= set(
        groups
    )
