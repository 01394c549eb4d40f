//! Malformed model files and inputs each produce their documented, typed error (never a
//! panic). Uses the tiny fixture model written by `make fixtures`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is a failed test

mod common;

use std::fs;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value};
use lora_ens::{Error, KvCache, Llama, Logits};

use common::{fixture, max_diff};

fn load(path: &Path) -> lora_ens::Result<Llama> {
    Llama::open(path, &Device::Cpu)
}

/// Rewrite a GGUF with changed metadata and without some tensors.
fn rewrite(src: &Path, dst: &Path, set: &[(&str, Value)], drop: &[&str]) {
    let mut reader = fs::File::open(src).expect("open fixture");
    let content = gguf_file::Content::read(&mut reader).expect("read fixture");
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.extend(set.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = names
        .into_iter()
        .filter(|n| !drop.contains(&n.as_str()))
        .map(|n| {
            let t = content
                .tensor(&mut reader, n, &Device::Cpu)
                .expect("tensor");
            (n.clone(), t)
        })
        .collect();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = fs::File::create(dst).expect("create");
    gguf_file::write(&mut out, &md, &ts).expect("write gguf");
}

#[test]
fn fixture_loads() {
    let model = load(&fixture("tiny-q4_1.gguf")).expect("fixture loads");
    let c = model.config();
    assert_eq!((c.n_layer, c.hidden, c.n_head, c.n_kv_head), (2, 64, 4, 2));
    assert!(c.tied_embeddings);
    let untied = load(&fixture("tiny-untied-q8_0.gguf")).expect("untied fixture loads");
    assert!(!untied.config().tied_embeddings);
}

#[test]
fn missing_file() {
    let err = load(Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let mut bytes = fs::read(fixture("tiny-q8_0.gguf")).unwrap();
    bytes[..4].copy_from_slice(b"GGML");
    fs::write(&path, bytes).unwrap();
    let err = load(&path).unwrap_err();
    assert!(matches!(err, Error::InvalidGguf { .. }), "{err}");
    assert!(err.to_string().contains("bad magic"), "{err}");
    assert!(err.to_string().contains("bad.gguf"), "{err}");

    let text = dir.path().join("notes.txt");
    fs::write(&text, "hello").unwrap();
    let err = load(&text).unwrap_err();
    assert!(matches!(err, Error::InvalidGguf { .. }), "{err}");
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(fixture("tiny-q4_1.gguf")).unwrap();
    // Cut inside the tensor data, then inside the header.
    for (cut, what) in [(bytes.len() - 100, "truncated"), (200, "truncated")] {
        let path = dir.path().join("cut.gguf");
        fs::write(&path, &bytes[..cut]).unwrap();
        let err = load(&path).unwrap_err();
        // A cut in the data names a tensor it leaves incomplete.
        assert!(
            matches!(err, Error::InvalidGguf { .. } | Error::Tensor { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[test]
fn unknown_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("arch.gguf");
    rewrite(
        &fixture("tiny-q8_0.gguf"),
        &path,
        &[("general.architecture", Value::String("mamba".to_owned()))],
        &[],
    );
    let err = load(&path).unwrap_err();
    assert!(matches!(err, Error::UnsupportedModel { .. }), "{err}");
    assert!(err.to_string().contains("`mamba`"), "{err}");
}

#[test]
fn missing_tensor_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.gguf");
    rewrite(
        &fixture("tiny-q8_0.gguf"),
        &path,
        &[],
        &["blk.1.ffn_down.weight"],
    );
    let err = load(&path).unwrap_err();
    assert!(matches!(err, Error::Tensor { .. }), "{err}");
    assert!(err.to_string().contains("blk.1.ffn_down.weight"), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    let src = fixture("tiny-q8_0.gguf");
    let mut reader = fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    assert!(content.metadata.contains_key("llama.block_count"));
    let path = dir.path().join("nometa.gguf");
    rewrite(
        &src,
        &path,
        &[("llama.block_count", Value::String("two".to_owned()))],
        &[],
    );
    let err = load(&path).unwrap_err();
    assert!(matches!(err, Error::Metadata { .. }), "{err}");
    assert!(err.to_string().contains("llama.block_count"), "{err}");
}

#[test]
fn bad_inputs() {
    let model = load(&fixture("tiny-q8_0.gguf")).unwrap();
    let ctx = model.config().context_length;
    let long = vec![5u32; ctx + 1];
    let err = model
        .forward(&[&long], &mut [KvCache::default()], Logits::Full)
        .unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    assert!(err.to_string().contains("context length"), "{err}");

    let err = model
        .forward(&[&[]], &mut [KvCache::default()], Logits::Full)
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let vocab = model.config().vocab_size as u32;
    let err = model
        .forward(&[&[1, vocab]], &mut [KvCache::default()], Logits::Full)
        .unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// The KV cache continues a sequence exactly: prefill + one step == one longer prefill.
#[test]
fn kv_cache_matches_full_prefill() {
    let model = load(&fixture("tiny-q4_1.gguf")).unwrap();
    let seq: Vec<u32> = (10..30).collect();
    let mut cache = vec![KvCache::default()];
    model
        .forward(&[&seq[..15]], &mut cache, Logits::Full)
        .unwrap();
    assert_eq!(cache[0].len(), 15);
    let step = model
        .forward(&[&seq[15..]], &mut cache, Logits::Full)
        .unwrap();
    let full = model
        .forward(&[&seq], &mut [KvCache::default()], Logits::Full)
        .unwrap();
    let diff = max_diff(&step, &full);
    assert!(diff < 1e-4, "cache vs prefill max diff {diff}");
}
