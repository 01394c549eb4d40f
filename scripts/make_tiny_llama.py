"""Write a tiny random LLaMA (2 layers, hidden 64) as GGUF files plus its HF twin, for tests.

The GGUF files are laid out as llama.cpp's `convert_hf_to_gguf.py` lays out a LLaMA (Q/K rows
permuted, tied embeddings and Q8_0 `token_embd` like SmolLM2) and carry a 1024-token subset of
SmolLM2's byte-level BPE vocabulary. Same bytes on every run. Needs numpy, gguf, safetensors and
transformers (for the tokenizer files).

    python scripts/make_tiny_llama.py --out tests/fixtures/tiny [--source-gguf PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from safetensors.numpy import save_file

N_VOCAB = 1024  # SmolLM2's first 1024 tokens: 17 specials, its byte alphabet, first merges
SEED = 20240531
CONFIG = {
    "n_layer": 2,
    "hidden": 64,
    "n_head": 4,
    "n_kv_head": 2,
    "head_dim": 16,
    "intermediate": 128,
    "context_length": 512,
    "rope_theta": 100000.0,  # SmolLM2's rope.freq_base
    "rms_norm_eps": 1e-5,  # SmolLM2's layer_norm_rms_epsilon
    "vocab_size": N_VOCAB,
}
# file name -> (tied embeddings?, llama.cpp file type; `ggml_type` picks each tensor's type)
GGUF_FILES = {
    "tiny-f32.gguf": (True, gguf.LlamaFileType.ALL_F32),
    "tiny-q8_0.gguf": (True, gguf.LlamaFileType.MOSTLY_Q8_0),
    "tiny-q4_1.gguf": (True, gguf.LlamaFileType.MOSTLY_Q4_1),
    "tiny-untied-q8_0.gguf": (False, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# HF parameter name pieces -> GGUF tensor name pieces, as in gguf-py's tensor map for LLaMA
HF_TO_GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
HF_TO_GGUF_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
    if hf_name in HF_TO_GGUF_TOP:
        return HF_TO_GGUF_TOP[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def ggml_type(name: str, shape: tuple[int, ...], file_type: gguf.LlamaFileType) -> QT:
    """Norms stay F32; SmolLM2's Q4_1 file keeps `token_embd` in Q8_0, and so do we (and
    `output`, which only the untied Q8_0 file has)."""
    if len(shape) == 1 or file_type == gguf.LlamaFileType.ALL_F32:
        return QT.F32
    if file_type == gguf.LlamaFileType.MOSTLY_Q4_1 and name not in (
        "token_embd.weight",
        "output.weight",
    ):
        return QT.Q4_1
    return QT.Q8_0


def permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: each head's rows go from half-split RoPE order
    (x0..x7, y0..y7) to interleaved pairs (x0, y0, x1, y1, ...), which GGML's RoPE expects."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table; byte-level BPE vocabularies are spelled in it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


# GGUF metadata value type -> struct format; 8 is a string, 9 an array (see gguf.GGUFValueType)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}


def read_metadata(path: Path) -> dict:
    """A GGUF file's key/value metadata (not its tensors). `gguf.GGUFReader` reads the same but
    takes seconds over SmolLM2's 49k-entry token and merge arrays; this takes a fraction of one."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            (value,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            pos += n
            return buf[pos - n : pos].decode()

        def value(vtype: int):
            if vtype == 8:
                return string()
            if vtype == 9:
                item_type, count = take("<I"), take("<Q")
                return [value(item_type) for _ in range(count)]
            return take(SCALARS[vtype])

        assert take("<4s") == b"GGUF" and take("<I") == 3, f"{path} is not a GGUF v3 file"
        _, n_kv = take("<Q"), take("<Q")
        return {string(): value(take("<I")) for _ in range(n_kv)}


def read_vocab(source: Path) -> dict:
    """The tokenizer metadata of the source GGUF, as plain Python values."""
    meta = read_metadata(source)
    assert meta["tokenizer.ggml.model"] == "gpt2", "expected a byte-level BPE (gpt2) vocabulary"
    ids = ("bos", "eos", "unknown", "padding")
    return {
        "tokens": meta["tokenizer.ggml.tokens"],
        "token_type": meta["tokenizer.ggml.token_type"],
        "merges": meta["tokenizer.ggml.merges"],
        "pre": meta["tokenizer.ggml.pre"],
        "ids": {key: meta[f"tokenizer.ggml.{key}_token_id"] for key in ids},
        "chat_template": meta["tokenizer.chat_template"],
    }


def subset_vocab(vocab: dict, n: int) -> dict:
    """The first `n` tokens, and the merges whose two parts and result all lie among them.

    Token ids, token types and merge order are unchanged, so a string the tiny vocabulary can spell
    tokenizes with SmolLM2's own rules. SmolLM2 itself lacks 21 of the 256 byte tokens (bytes that
    never occur in UTF-8 such as 0xC0, and control characters such as 0x04), so the check is that
    the subset keeps every byte token the source has.
    """
    tokens = vocab["tokens"][:n]
    kept = set(tokens)
    merges = [
        m for m in vocab["merges"] if m.replace(" ", "") in kept and set(m.split(" ")) <= kept
    ]
    byte_chars = bytes_to_unicode()
    in_source = set(vocab["tokens"])
    lost = [b for b, c in byte_chars.items() if c in in_source and c not in kept]
    assert not lost, f"byte tokens {lost} fall outside the first {n} tokens"
    assert all(i < n for i in vocab["ids"].values()), "a special token id falls outside the subset"
    absent = [b for b, c in byte_chars.items() if c not in in_source]
    return {
        **vocab,
        "tokens": tokens,
        "token_type": vocab["token_type"][:n],
        "merges": merges,
        "absent_bytes": absent,
    }


def random_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """HF-named f32 weights; `lm_head.weight` is drawn last, for the untied twin only.

    Projections have std 0.08 and norms 1 + N(0, 0.1), so activations stay near unit scale and the
    logits (std ~0.6) give a spread-out but not uniform next-token distribution.
    """
    c = CONFIG
    h, inter, d = c["hidden"], c["intermediate"], c["head_dim"]

    def normal(*shape: int, std: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + rng.standard_normal(h) * 0.1).astype(np.float32)

    w = {"model.embed_tokens.weight": normal(N_VOCAB, h)}
    for i in range(c["n_layer"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = normal(c["n_head"] * d, h)
        w[p + "self_attn.k_proj.weight"] = normal(c["n_kv_head"] * d, h)
        w[p + "self_attn.v_proj.weight"] = normal(c["n_kv_head"] * d, h)
        w[p + "self_attn.o_proj.weight"] = normal(h, c["n_head"] * d)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = normal(inter, h)
        w[p + "mlp.up_proj.weight"] = normal(inter, h)
        w[p + "mlp.down_proj.weight"] = normal(h, inter)
    w["model.norm.weight"] = norm()
    w["lm_head.weight"] = normal(N_VOCAB, h)
    return w


def hf_config(vocab: dict, tied: bool) -> dict:
    """config.json of LlamaForCausalLM; `rope_theta` for transformers 4, `rope_parameters` for 5."""
    c = CONFIG
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": N_VOCAB,
        "hidden_size": c["hidden"],
        "intermediate_size": c["intermediate"],
        "num_hidden_layers": c["n_layer"],
        "num_attention_heads": c["n_head"],
        "num_key_value_heads": c["n_kv_head"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": c["context_length"],
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "rope_parameters": {"rope_theta": c["rope_theta"], "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": vocab["ids"]["bos"],
        "eos_token_id": vocab["ids"]["eos"],
        "pad_token_id": vocab["ids"]["padding"],
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": "float32",
    }


def write_hf(out: Path, weights: dict[str, np.ndarray], config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


def write_gguf(path: Path, weights: dict[str, np.ndarray], vocab: dict, file_type) -> None:
    """Metadata keys in the order SmolLM2's GGUF has them; tensors in sorted HF-name order."""
    c = CONFIG
    w = gguf.GGUFWriter(path, "llama")
    w.add_type("model")
    w.add_name("Tiny Random Llama")
    w.add_block_count(c["n_layer"])
    w.add_context_length(c["context_length"])
    w.add_embedding_length(c["hidden"])
    w.add_feed_forward_length(c["intermediate"])
    w.add_head_count(c["n_head"])
    w.add_head_count_kv(c["n_kv_head"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_file_type(file_type)
    w.add_vocab_size(N_VOCAB)
    w.add_rope_dimension_count(c["head_dim"])
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["token_type"])
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(vocab["ids"]["bos"])
    w.add_eos_token_id(vocab["ids"]["eos"])
    w.add_unk_token_id(vocab["ids"]["unknown"])
    w.add_pad_token_id(vocab["ids"]["padding"])
    w.add_chat_template(vocab["chat_template"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for hf_name in sorted(weights):
        name = gguf_name(hf_name)
        data = weights[hf_name]
        if name.endswith("attn_q.weight"):
            data = permute(data, c["n_head"], c["n_head"])
        elif name.endswith("attn_k.weight"):
            data = permute(data, c["n_head"], c["n_kv_head"])
        qtype = ggml_type(name, data.shape, file_type)
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_tokenizer(out: Path, gguf_file: str, targets: list[Path]) -> None:
    """Save the tokenizer transformers builds from the GGUF, so both give the same ids.

    transformers 5.x has no split rule for `pre = smollm` and falls back to plain GPT-2 byte-level
    splitting, without SmolLM2's one-digit-at-a-time split (llama.cpp's): the two differ when two
    or more whitespace characters precede a digit ("  1" -> Ġ Ġ 1 here, ĠĠ 1 in llama.cpp).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out, gguf_file=gguf_file)
    tok.save_pretrained(targets[0])
    config_path = targets[0] / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("name_or_path", "is_local", "local_files_only"):
        config.pop(key, None)  # how this run loaded it (the path makes the bytes path-dependent)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    for target in targets[1:]:
        for f in sorted(targets[0].iterdir()):
            if f.name not in ("config.json", "model.safetensors"):
                shutil.copyfile(f, target / f.name)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--source-gguf", type=Path, help="GGUF to take the vocabulary from")
    args = parser.parse_args(argv)
    source = args.source_gguf
    if source is None:
        import lora_ens_rs

        source = Path(lora_ens_rs.default_model_path())
    source_sha256 = sha256(source)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # written last: its absence marks a partial run

    vocab = subset_vocab(read_vocab(source), N_VOCAB)
    weights = random_weights(np.random.default_rng(SEED))
    tied = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    write_hf(out / "hf", tied, hf_config(vocab, tied=True))
    write_hf(out / "hf-untied", weights, hf_config(vocab, tied=False))
    for name, (is_tied, file_type) in GGUF_FILES.items():
        write_gguf(out / name, tied if is_tied else weights, vocab, file_type)
    write_tokenizer(out, "tiny-f32.gguf", [out / "hf", out / "hf-untied"])

    (out / "SOURCE").write_text(
        "Tiny random LLaMA written by scripts/make_tiny_llama.py (numpy seed "
        f"{SEED}); do not edit, rerun the script.\nVocabulary: the first {N_VOCAB} tokens of "
        f"{source.name} (sha256 {source_sha256}), {len(vocab['merges'])} merges.\n"
        f"Byte values absent from that vocabulary (and so from this one): {vocab['absent_bytes']}\n"
    )
    # The LoRA ensemble under `ensemble/` is written afterwards by make_tiny_ensemble.py.
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.json" and p.relative_to(out).parts[0] != "ensemble"
    )
    manifest = {
        "script_sha256": sha256(Path(__file__)),
        "seed": SEED,
        "config": CONFIG,
        "gguf": {name: {"tied": t, "file_type": ft.name} for name, (t, ft) in GGUF_FILES.items()},
        "source_gguf": {"name": source.name, "sha256": source_sha256},
        "absent_bytes": vocab["absent_bytes"],
        "files": {p.relative_to(out).as_posix(): sha256(p) for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(files) + 1} files to {out}")


if __name__ == "__main__":
    main()
