//! `Tokenizer::from_gguf_file` on small GGUF files written with candle's `gguf_file::write`: the
//! metadata keys it reads, token types, special-token flags, and the typed errors for what
//! it refuses. Run with `cargo test -p lora-ens --test tokenizer`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is a failed test

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use lora_ens::{Error, Tokenizer};

/// GPT-2's spelling of a byte (printable Latin-1 as itself, the rest from U+0100 on).
fn byte_char(b: u8) -> char {
    let printable = |x: u8| (33..=126).contains(&x) || (161..=172).contains(&x) || x >= 174;
    if printable(b) {
        char::from(b)
    } else {
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + rank).expect("valid char")
    }
}

/// Ids: 0 `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>` (control), 3 `<x>` (user-defined),
/// 4..260 the bytes, then the merges' results.
fn tokens_and_merges() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<x>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3, 4];
    tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    types.extend(std::iter::repeat_n(1, 256));
    let merges = ["h i", "Ġ hi", "Ġ Ġ", "Ġ 4"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    (tokens, types, merges.map(String::from).to_vec())
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

/// Write a tokenizer-only GGUF; `edit` may change or drop any key first.
fn write_gguf(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> PathBuf {
    let (tokens, types, merges) = tokens_and_merges();
    let mut meta = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String("{{ x }}".into()),
        ),
    ];
    edit(&mut meta);
    let path = dir.join("tok.gguf");
    let mut file = std::fs::File::create(&path).expect("create gguf");
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &refs, &[]).expect("write gguf");
    path
}

fn set(meta: &mut [(String, Value)], key: &str, value: Value) {
    if let Some(slot) = meta.iter_mut().find(|(k, _)| k == key) {
        slot.1 = value;
    }
}

fn load(path: &Path) -> lora_ens::Result<Tokenizer> {
    Tokenizer::from_gguf_file(path)
}

fn byte_ids(text: &str) -> Vec<u32> {
    text.bytes().map(|b| 4 + u32::from(b)).collect()
}

#[test]
fn reads_vocab_merges_specials_and_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = load(&write_gguf(dir.path(), |_| {})).expect("load");
    let (hi, space_hi) = (260, 261);
    assert_eq!(tok.vocab_size(), 264);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.chat_template(), Some("{{ x }}"));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.id_to_token(space_hi), Some("Ġhi"));

    let text = "<|im_start|>hi hi<x> 42<|im_end|>";
    let ids = tok.encode(text, true).expect("encode");
    // smollm: " 42" is " " + "4" + "2", so the merge "Ġ 4" never applies; the user-defined
    // `<x>` stays whole too.
    let want = [vec![1, hi, space_hi, 3], byte_ids(" 42"), vec![2]].concat();
    assert_eq!(ids, want);
    assert_eq!(tok.decode(&ids, false).expect("decode"), text);
    // Control tokens are special; the user-defined `<x>` is not.
    assert_eq!(tok.decode(&ids, true).expect("decode"), "hi hi<x> 42");
}

#[test]
fn add_bos_token_controls_add_special_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_gguf(dir.path(), |m| {
        set(m, "tokenizer.ggml.add_bos_token", Value::Bool(true));
    });
    let tok = load(&path).expect("load");
    assert_eq!(tok.encode("hi", true).expect("encode"), vec![1, 260]);
    assert_eq!(tok.encode("hi", false).expect("encode"), vec![260]);
}

#[test]
fn add_bos_default_follows_llama_cpp_per_pre_tokenizer() {
    // llama.cpp adds BOS by default for LLaMA-3's BPE only (and for SentencePiece).
    for (pre, want) in [("llama-bpe", true), ("qwen2", false), ("smollm", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_gguf(dir.path(), |m| {
            set(m, "tokenizer.ggml.pre", Value::String(pre.into()));
            m.retain(|(k, _)| k != "tokenizer.ggml.add_bos_token");
        });
        let tok = load(&path).expect("load");
        assert_eq!(tok.add_bos_token(), want, "{pre}");
        let ids = tok.encode("hi", true).expect("encode");
        assert_eq!(ids.first() == Some(&1), want, "{pre}: {ids:?}");
        assert!(!tok.add_eos_token());
    }
}

#[test]
fn pre_tokenizer_follows_tokenizer_ggml_pre() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_gguf(dir.path(), |m| {
        set(m, "tokenizer.ggml.pre", Value::String("gpt2".into()));
    });
    let tok = load(&path).expect("load");
    // GPT-2's regex keeps " 42" as one piece, so "Ġ 4" merges (smollm: see above).
    assert_eq!(
        tok.encode("a 42", false).expect("encode"),
        [byte_ids("a"), vec![263], byte_ids("2")].concat()
    );
}

#[test]
fn refuses_what_it_does_not_implement_with_typed_errors() {
    let cases: [(&str, Option<Value>, &str); 3] = [
        (
            "tokenizer.ggml.model",
            Some(Value::String("bert".into())),
            "`bert` is not supported; supported: `gpt2` (byte-level BPE), `llama`",
        ),
        (
            "tokenizer.ggml.pre",
            Some(Value::String("mystery".into())),
            "pre-tokenizer `mystery`",
        ),
        ("tokenizer.ggml.merges", None, "needs tokenizer.ggml.merges"),
    ];
    for (key, value, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_gguf(dir.path(), |m| match value {
            Some(v) => set(m, key, v),
            None => m.retain(|(k, _)| k != key),
        });
        let err = load(&path).expect_err(expected);
        assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(expected) && msg.contains("tok.gguf"), "{msg}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_gguf(dir.path(), |m| {
        m.retain(|(k, _)| k != "tokenizer.ggml.tokens")
    });
    let err = load(&path).expect_err("no tokens");
    assert!(
        matches!(&err, Error::Metadata { key, .. } if key == "tokenizer.ggml.tokens"),
        "{err:?}"
    );
}

#[test]
fn vocab_only_file_without_alignment_padding_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_gguf(dir.path(), |m| {
        m.push(("general.name".into(), Value::String("vocab".into())));
    });
    // candle pads the header to the data alignment; llama.cpp's vocabulary-only files end
    // right after the last metadata value (here the non-zero "vocab").
    let bytes = std::fs::read(&path).expect("read");
    let end = bytes.iter().rposition(|&b| b != 0).expect("not all zeros") + 1;
    assert!(end < bytes.len(), "the writer left no padding to cut");
    std::fs::write(&path, &bytes[..end]).expect("write");
    let tok = load(&path).expect("a vocabulary-only file without padding loads");
    assert_eq!(tok.vocab_size(), 264);
}

/// A SentencePiece (`llama`) vocabulary: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3..259 the byte
/// tokens, then scored pieces.
fn write_spm_gguf(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> PathBuf {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend(std::iter::repeat_n(6, 256));
    let mut scores = vec![0.0f32; tokens.len()];
    for (piece, score) in [
        ("▁", -1.0),
        ("h", -2.0),
        ("i", -2.0),
        ("▁h", -3.0),
        ("▁hi", -4.0),
    ] {
        tokens.push(piece.into());
        types.push(1);
        scores.push(score);
    }
    write_gguf(dir, |m| {
        m.retain(|(k, _)| k != "tokenizer.ggml.merges" && k != "tokenizer.ggml.pre");
        set(m, "tokenizer.ggml.model", Value::String("llama".into()));
        set(m, "tokenizer.ggml.tokens", strings(&tokens));
        let types = types.into_iter().map(Value::I32).collect();
        set(m, "tokenizer.ggml.token_type", Value::Array(types));
        m.retain(|(k, _)| k != "tokenizer.ggml.add_bos_token");
        m.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ));
        edit(m);
    })
}

#[test]
fn sentencepiece_vocabulary_with_prefix_space_bos_and_byte_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = load(&write_spm_gguf(dir.path(), |_| {})).expect("load");
    let (space, hi) = (259, 263);
    assert_eq!(tok.id_to_token(hi), Some("▁hi"));
    // No add_bos_token: BOS is added, as llama.cpp does for SentencePiece vocabularies.
    assert_eq!(tok.encode("hi", true).expect("encode"), vec![1, hi]);
    // "é" has no piece: its UTF-8 bytes C3 A9 as <0xC3> <0xA9> (ids 3 + byte).
    let ids = tok.encode("hi é</s>", false).expect("encode");
    assert_eq!(ids, vec![hi, space, 3 + 0xC3, 3 + 0xA9, 2]);
    assert_eq!(tok.decode(&ids, false).expect("decode"), "hi é</s>");
    assert_eq!(tok.decode(&ids, true).expect("decode"), "hi é");
    // Only the first piece loses the prefix space: " hi" is "▁" + "▁hi".
    let ids = tok.encode(" hi", false).expect("encode");
    assert_eq!(ids, vec![space, hi]);
    assert_eq!(tok.decode(&ids, false).expect("decode"), " hi");

    let path = write_spm_gguf(dir.path(), |m| {
        m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
        m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    });
    let tok = load(&path).expect("load");
    assert_eq!(tok.encode("hi", true).expect("encode"), vec![260, 261]);
    assert_eq!(tok.decode(&[260, 261], false).expect("decode"), "hi");
}
