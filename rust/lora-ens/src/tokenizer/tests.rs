//! Unit tests on a hand-made byte-level vocabulary: the 256 byte tokens, a few merges and
//! three added tokens. The real SmolLM2 vocabulary is checked against HF in
//! `tests/test_tokenizer_parity.py`.

use super::*;

const MERGES: &[(&str, &str)] = &[
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġ", "w"),
    ("o", "r"),
    ("Ġw", "or"),
    ("Ġ", "Ġ"),
];

/// Vocabulary: ids 0..=255 are the bytes, then the merge results, then the added tokens
/// `<|im_start|>` = 300, `<|im_end|>` = 301 (special), `<think>` = 302 (not special).
fn toy_parts(pre: &str, add_bos: bool) -> Parts {
    let b2c = bpe::byte_to_char();
    let mut vocab: Vec<(String, u32)> = (0..=255u8)
        .map(|b| (b2c[usize::from(b)].to_string(), u32::from(b)))
        .collect();
    for (i, (l, r)) in MERGES.iter().enumerate() {
        vocab.push((format!("{l}{r}"), 256 + i as u32));
    }
    let added = vec![
        AddedToken::plain("<|im_start|>".into(), 300, true),
        AddedToken::plain("<|im_end|>".into(), 301, true),
        AddedToken::plain("<think>".into(), 302, false),
    ];
    for t in &added {
        vocab.push((t.content.clone(), t.id));
    }
    Parts {
        vocab,
        merges: MERGES
            .iter()
            .map(|(l, r)| ((*l).into(), (*r).into()))
            .collect(),
        ignore_merges: false,
        pre: PreTokenizer::named(pre).expect("known pre-tokenizer"),
        add_prefix_space: false,
        added,
        spm: None,
        prefix: if add_bos { vec![300] } else { Vec::new() },
        suffix: Vec::new(),
        bos_id: Some(300),
        eos_id: Some(301),
        chat_template: Some("{{ messages }}".into()),
    }
}

fn toy(pre: &str) -> Tokenizer {
    Tokenizer::build(toy_parts(pre, false))
}

fn ids(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

#[test]
fn encodes_words_with_merges() {
    let tok = toy("gpt2");
    let hello = tok.token_to_id("hello").expect("merged token");
    let wor = tok.token_to_id("Ġwor").expect("merged token");
    assert_eq!(
        tok.encode("hello world", false).expect("encode"),
        [vec![hello, wor], ids("ld")].concat()
    );
    assert_eq!(tok.id_to_token(hello), Some("hello"));
    assert_eq!(tok.vocab_size(), 303);
}

#[test]
fn added_tokens_stay_whole() {
    let tok = toy("gpt2");
    let hello = tok.token_to_id("hello").expect("merged token");
    let got = tok
        .encode("<|im_start|>hello<think><|im_end|>", false)
        .expect("encode");
    assert_eq!(got, vec![300, hello, 302, 301]);
    assert_eq!(tok.decode(&got, true).expect("decode"), "hello<think>");
    assert!(tok.is_special(301) && !tok.is_special(302));
}

#[test]
fn add_special_tokens_adds_bos_only_when_asked() {
    let tok = toy("gpt2");
    assert_eq!(tok.encode("a", true).expect("encode"), ids("a"));
    let tok = Tokenizer::build(toy_parts("gpt2", true));
    assert_eq!(tok.encode("a", true).expect("encode"), vec![300, 97]);
    assert_eq!(tok.encode("a", false).expect("encode"), vec![97]);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(300), Some(301)));
    assert_eq!(tok.chat_template(), Some("{{ messages }}"));
}

#[test]
fn smollm_splits_digits_before_merging_spaces() {
    let tok = toy("smollm");
    let spaces = tok.token_to_id("ĠĠ").expect("merged token");
    // GPT-2's regex would give "  " + " 12"; the digit split leaves "   " to itself.
    assert_eq!(
        tok.encode("a   12", false).expect("encode"),
        [ids("a"), vec![spaces], ids(" 12")].concat()
    );
    let gpt2 = toy("gpt2");
    assert_eq!(
        gpt2.encode("a   12", false).expect("encode"),
        [ids("a"), vec![spaces], ids(" 12")].concat()
    );
}

#[test]
fn decode_round_trips_any_text() {
    let tok = toy("smollm");
    for text in [
        "",
        "hello world",
        "héllo wörld ½ 123",
        "日本語のテキスト 🎉👍🏽",
        "مرحبا بالعالم",
        " \t\n\r\n  trailing  ",
        "<|im_start|>user\nhi<|im_end|>\n",
    ] {
        let got = tok.encode(text, false).expect("encode");
        assert_eq!(tok.decode(&got, false).expect("decode"), text);
    }
    let batch = tok
        .encode_batch(&["hello", "<think>", ""], false)
        .expect("batch");
    assert_eq!(batch, vec![vec![259], vec![302], vec![]]);
}

#[test]
fn decode_rejects_unknown_ids_and_repairs_cut_characters() {
    let tok = toy("gpt2");
    let err = tok.decode(&[5000], false).expect_err("out of range");
    assert!(matches!(err, Error::Tokenizer(_)));
    assert!(err.to_string().contains("id 5000"), "{err}");
    // The first byte of "é" alone is not UTF-8.
    assert_eq!(tok.decode(&[0xc3], false).expect("decode"), "\u{fffd}");
}

fn write(dir: &Path, name: &str, json: &serde_json::Value) {
    std::fs::write(dir.join(name), json.to_string()).expect("write json");
}

fn toy_json() -> serde_json::Value {
    let b2c = bpe::byte_to_char();
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(b2c[usize::from(b)].to_string(), u32::from(b).into());
    }
    for (i, (l, r)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{l}{r}"), (256 + i).into());
    }
    serde_json::json!({
        "normalizer": null,
        "added_tokens": [
            {"id": 300, "content": "<s>", "special": true, "lstrip": false, "rstrip": false,
             "single_word": false, "normalized": false},
        ],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        ]},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": null, "vocab": vocab,
                  "merges": MERGES.iter().map(|(l, r)| format!("{l} {r}")).collect::<Vec<_>>()},
    })
}

#[test]
fn from_file_reads_tokenizer_json_and_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "tokenizer.json", &toy_json());
    write(
        dir.path(),
        "tokenizer_config.json",
        &serde_json::json!({"eos_token": {"content": "<s>"}, "chat_template": "T"}),
    );
    let tok = Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("load");
    assert_eq!(
        tok.encode("hello 42", true).expect("encode"),
        [vec![300, 259], ids(" 42")].concat()
    );
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(300), Some(300)));
    assert_eq!(tok.chat_template(), Some("T"));
}

#[test]
fn from_file_refuses_what_it_cannot_reproduce() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    let cases = [
        (
            "/normalizer",
            serde_json::json!({"type": "NFC"}),
            "normalizer `NFC`",
        ),
        (
            "/model/type",
            serde_json::json!("WordPiece"),
            "model type `WordPiece`",
        ),
        (
            "/model/byte_fallback",
            serde_json::json!(true),
            "byte_fallback",
        ),
        (
            "/pre_tokenizer",
            serde_json::json!({"type": "Metaspace"}),
            "`Metaspace`",
        ),
    ];
    for (pointer, value, expected) in cases {
        let mut json = toy_json();
        if let Some(slot) = json.pointer_mut(pointer) {
            *slot = value;
        } else if let Some((parent, key)) = pointer.rsplit_once('/') {
            json.pointer_mut(parent)
                .and_then(serde_json::Value::as_object_mut)
                .expect("parent object")
                .insert(key.to_owned(), value);
        }
        write(dir.path(), "tokenizer.json", &json);
        let err = Tokenizer::from_file(&path).expect_err(expected);
        assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(expected) && msg.contains("tokenizer.json"),
            "{msg}"
        );
    }
    let missing = Tokenizer::from_file(dir.path().join("absent.json")).expect_err("missing");
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
}
