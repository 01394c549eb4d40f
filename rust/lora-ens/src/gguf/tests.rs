//! Tests of the GGUF reader on small files built here byte by byte: a valid file reads back,
//! then one malformed file per check (each asserting the typed error and that its message
//! names the field or tensor), then seeded random mutations and truncations of the tiny
//! fixture model, each of which must open (and build its tokenizer and model) or fail with a
//! typed error, never panic, within bounded time.
//! Test: `cargo test -p lora-ens --lib gguf`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use candle_core::quantized::GgmlDType;

use super::header::{self, MAX_ARRAY_DEPTH};
use super::*;

// GGUF value type ids.
const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
// ggml type ids.
const F32: u32 = 0;
const Q8_0: u32 = 8;

fn string_bytes(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

/// A tiny GGUF writer: metadata entries and directory entries as raw bytes, so tests can
/// write anything, valid or not.
struct Builder {
    version: u32,
    kvs: Vec<Vec<u8>>,
    infos: Vec<Vec<u8>>,
    data: Vec<u8>,
    /// Padding used between the header and the data (independent of `general.alignment`).
    pad: usize,
}

impl Builder {
    fn new() -> Self {
        Self {
            version: 3,
            kvs: Vec::new(),
            infos: Vec::new(),
            data: Vec::new(),
            pad: 32,
        }
    }

    fn kv_raw(mut self, key: &str, ty: u32, payload: &[u8]) -> Self {
        let mut e = Vec::new();
        string_bytes(&mut e, key.as_bytes());
        e.extend(ty.to_le_bytes());
        e.extend(payload);
        self.kvs.push(e);
        self
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv_raw(key, T_U32, &v.to_le_bytes())
    }

    fn kv_str(self, key: &str, v: &str) -> Self {
        let mut p = Vec::new();
        string_bytes(&mut p, v.as_bytes());
        self.kv_raw(key, T_STRING, &p)
    }

    fn kv_strings(self, key: &str, items: &[&str]) -> Self {
        let mut p = T_STRING.to_le_bytes().to_vec();
        p.extend((items.len() as u64).to_le_bytes());
        for s in items {
            string_bytes(&mut p, s.as_bytes());
        }
        self.kv_raw(key, T_ARRAY, &p)
    }

    /// A directory entry with `ne` in GGUF order (innermost first).
    fn info(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Self {
        let mut e = Vec::new();
        string_bytes(&mut e, name.as_bytes());
        e.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            e.extend(d.to_le_bytes());
        }
        e.extend(ty.to_le_bytes());
        e.extend(offset.to_le_bytes());
        self.infos.push(e);
        self
    }

    /// An F32 tensor: its directory entry and its data, at the next 32-byte offset.
    fn f32_tensor(mut self, name: &str, ne: &[u64], values: &[f32]) -> Self {
        let offset = self.data.len().next_multiple_of(32);
        self.data.resize(offset, 0);
        for v in values {
            self.data.extend(v.to_le_bytes());
        }
        self.info(name, ne, F32, offset as u64)
    }

    /// A tensor of any type: its directory entry and `bytes` zero bytes of data, at the
    /// next 32-byte offset.
    fn zero_tensor(mut self, name: &str, ne: &[u64], ty: u32, bytes: usize) -> Self {
        let offset = self.data.len().next_multiple_of(32);
        self.data.resize(offset + bytes, 0);
        self.info(name, ne, ty, offset as u64)
    }

    fn header(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.infos.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        self.kvs.iter().for_each(|e| out.extend(e));
        self.infos.iter().for_each(|e| out.extend(e));
        out
    }

    fn build(&self) -> Vec<u8> {
        let mut out = self.header();
        if !self.infos.is_empty() {
            out.resize(out.len().next_multiple_of(self.pad), 0);
            out.extend(&self.data);
        }
        out
    }
}

/// A valid file: a little metadata and two F32 tensors.
fn valid() -> Builder {
    Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv_strings("tokenizer.ggml.tokens", &["a", "b", "c"])
        .f32_tensor("w", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        .f32_tensor("v", &[4], &[0.5, -0.5, 0.25, -0.25])
}

fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.gguf");
    std::fs::write(&path, bytes).expect("write");
    (dir, path)
}

fn open_bytes(bytes: &[u8]) -> Result<GgufFile> {
    let (_dir, path) = write(bytes);
    GgufFile::open(path)
}

/// The `InvalidGguf` message that opening `bytes` gives.
fn invalid(bytes: &[u8]) -> String {
    match open_bytes(bytes) {
        Err(e @ Error::InvalidGguf { .. }) => e.to_string(),
        other => panic!("expected InvalidGguf, got {other:?}"),
    }
}

/// The `Tensor` error that opening `bytes` gives: (tensor named, message).
fn tensor_error(bytes: &[u8]) -> (String, String) {
    match open_bytes(bytes) {
        Err(e @ Error::Tensor { .. }) => {
            let msg = e.to_string();
            let Error::Tensor { tensor, .. } = e else {
                unreachable!()
            };
            (tensor, msg)
        }
        other => panic!("expected a Tensor error, got {other:?}"),
    }
}

#[test]
fn valid_file_reads_back() {
    let bytes = valid().build();
    let g = open_bytes(&bytes).expect("valid file");
    assert_eq!(g.version(), 3);
    assert_eq!(g.string("general.architecture").unwrap(), "llama");
    assert_eq!(g.u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap(), ["a", "b", "c"]);
    assert_eq!(g.data_offset() % 32, 0);
    let info = &g.tensor_infos()["w"];
    assert_eq!(info.dims(), [2, 4]);
    assert_eq!(
        (info.dtype(), info.offset, info.bytes),
        (Some(GgmlDType::F32), 0, 32)
    );
    assert_eq!(info.type_name(), "F32");
    let (dtype, dims, raw) = g.raw_tensor("w").unwrap();
    assert_eq!((dtype, dims), (GgmlDType::F32, vec![2, 4]));
    let floats: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    // The zero-copy view is the same bytes, inside the file.
    let (_, _, mapped) = g.mapped_tensor("w").unwrap();
    assert_eq!(&*mapped, &raw[..]);
    assert_eq!(&bytes[g.data_offset() as usize..][..32], &*mapped);
    let v = g.tensor("v", &Device::Cpu).unwrap();
    let v = v
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(v, [0.5, -0.5, 0.25, -0.25]);
    assert!(matches!(g.raw_tensor("nope"), Err(Error::Tensor { .. })));
}

#[test]
fn version_2_reads_and_other_versions_are_refused() {
    let mut b = valid();
    b.version = 2;
    assert_eq!(open_bytes(&b.build()).unwrap().version(), 2);
    for (version, want) in [(1, "version 1"), (4, "version 4"), (3 << 24, "big-endian")] {
        b.version = version;
        let msg = invalid(&b.build());
        assert!(msg.contains(want), "{msg}");
    }
    let mut bytes = valid().build();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(invalid(&bytes).contains("bad magic"));
    assert!(invalid(b"GGUF\x03\0\0\0").contains("truncated"));
    assert!(invalid(b"").contains("bad magic"));
}

#[test]
fn tensor_offset_that_wraps_around_is_refused() {
    let with_evil = |offset| valid().info("evil", &[4], F32, offset);
    let data_offset = with_evil(0).header().len().next_multiple_of(32) as u64;
    // The tester's offset, and one that wraps the absolute start exactly to byte 0.
    for offset in [u64::MAX - 28896 + 1, 0u64.wrapping_sub(data_offset)] {
        let (tensor, msg) = tensor_error(&with_evil(offset).build());
        assert_eq!(tensor, "evil", "{msg}");
        assert!(
            msg.contains("overflows") || msg.contains("past the end"),
            "{msg}"
        );
    }
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    for a in [0u32, 3, 48] {
        let msg = invalid(&valid().kv_u32("general.alignment", a).build());
        assert!(msg.contains("general.alignment"), "{msg}");
        assert!(msg.contains("power of two"), "{msg}");
    }
    let b = valid().kv_raw("general.alignment", T_U64, &32u64.to_le_bytes());
    let msg = invalid(&b.build());
    assert!(
        msg.contains("general.alignment") && msg.contains("u32"),
        "{msg}"
    );
    // A valid non-default alignment moves the data section.
    let mut b =
        Builder::new()
            .kv_u32("general.alignment", 64)
            .f32_tensor("v", &[4], &[1.0, 2.0, 3.0, 4.0]);
    b.pad = 64;
    let g = open_bytes(&b.build()).unwrap();
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.raw_tensor("v").unwrap().2.len(), 16);
    // Alignment 1 can leave tensors unaligned in memory: the candle path copies them.
    let build = |offset| {
        Builder::new()
            .kv_u32("general.alignment", 1)
            .info("x", &[2], F32, offset)
            .header()
    };
    let header_len = build(0).len() as u64;
    let offset = (1..8).find(|o| (header_len + o) % 8 != 0).unwrap();
    let mut bytes = build(offset);
    bytes.resize(bytes.len() + offset as usize, 0);
    bytes.extend([1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()));
    let g = open_bytes(&bytes).unwrap();
    assert_eq!(g.data_offset(), header_len);
    assert_ne!(g.mapped_tensor("x").unwrap().2.as_ptr() as usize % 8, 0);
    let t = g.tensor("x", &Device::Cpu).unwrap();
    let t = t
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(t, [1.5, -2.0]);
}

#[test]
fn duplicate_tensor_and_duplicate_key_are_refused() {
    let b = valid().info("w", &[4], F32, 64);
    let (tensor, msg) = tensor_error(&b.build());
    assert_eq!(tensor, "w");
    assert!(msg.contains("listed twice"), "{msg}");
    let msg = invalid(&valid().kv_u32("llama.block_count", 3).build());
    assert!(msg.contains("`llama.block_count` appears twice"), "{msg}");
}

#[test]
fn overlapping_and_misaligned_tensors_are_refused() {
    // `w` holds 32 bytes at offset 0; a 16-byte tensor at offset 0 overlaps it.
    let (tensor, msg) = tensor_error(
        &Builder::new()
            .f32_tensor("w", &[8], &[0.0; 8])
            .info("x", &[4], F32, 0)
            .build(),
    );
    assert!(msg.contains("overlaps"), "{msg}");
    assert!(tensor == "x" || tensor == "w", "{msg}");
    let (tensor, msg) = tensor_error(&valid().info("odd", &[1], F32, 4).build());
    assert_eq!(tensor, "odd");
    assert!(msg.contains("alignment 32"), "{msg}");
}

#[test]
fn huge_string_lengths_are_refused_before_allocating() {
    // The first key's length.
    let mut bytes = valid().build();
    bytes[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let msg = invalid(&bytes);
    assert!(
        msg.contains("metadata entry 0") && msg.contains("truncated"),
        "{msg}"
    );
    // A string value's length.
    let mut p = (u64::MAX - 3).to_le_bytes().to_vec();
    p.extend(b"abc");
    let msg = invalid(&Builder::new().kv_raw("general.name", T_STRING, &p).build());
    assert!(msg.contains("`general.name`"), "{msg}");
    // A tensor name's length.
    let mut bytes = Builder::new().info("t", &[4], F32, 0).build();
    let at = 24; // no metadata: the directory starts right after the counts
    bytes[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let msg = invalid(&bytes);
    assert!(msg.contains("tensor directory entry 0"), "{msg}");
}

#[test]
fn huge_array_counts_and_deep_nesting_are_refused() {
    for (elem, count) in [(T_U8, 1u64 << 60), (T_STRING, u64::MAX), (T_ARRAY, 1 << 33)] {
        let mut p = elem.to_le_bytes().to_vec();
        p.extend(count.to_le_bytes());
        p.extend([0u8; 64]);
        let msg = invalid(&Builder::new().kv_raw("big", T_ARRAY, &p).build());
        assert!(msg.contains("`big`") && msg.contains("cannot fit"), "{msg}");
    }
    // An array nested one level deeper than allowed.
    let mut p = Vec::new();
    for _ in 0..MAX_ARRAY_DEPTH {
        p.extend(T_ARRAY.to_le_bytes());
        p.extend(1u64.to_le_bytes());
    }
    p.extend(T_U8.to_le_bytes());
    p.extend(1u64.to_le_bytes());
    p.push(7);
    let msg = invalid(&Builder::new().kv_raw("deep", T_ARRAY, &p).build());
    assert!(msg.contains("`deep`") && msg.contains("nested"), "{msg}");
    // An unknown value type.
    let msg = invalid(&Builder::new().kv_raw("odd", 13, &[0; 8]).build());
    assert!(
        msg.contains("`odd`") && msg.contains("unknown value type 13"),
        "{msg}"
    );
    // Counts in the fixed header that the file cannot hold.
    let mut bytes = valid().build();
    bytes[8..16].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(invalid(&bytes).contains("cannot fit"));
}

#[test]
fn unknown_and_unsupported_tensor_types_are_named() {
    let (tensor, msg) = tensor_error(&valid().info("q", &[256], 99, 64).build());
    assert_eq!(tensor, "q");
    assert!(msg.contains("unknown ggml type id 99"), "{msg}");
    // Types llama.cpp defines but the engine does not run: the file opens (its metadata and
    // other tensors stay readable) and reading that tensor names it and its type.
    for (id, name, bytes) in [
        (16, "IQ2_XXS", 66),
        (19, "IQ1_S", 50),
        (23, "IQ4_XS", 136),
        (34, "TQ1_0", 54),
        (35, "TQ2_0", 66),
        (39, "MXFP4", 8 * 17),
        (9, "Q8_1", 8 * 36),
    ] {
        let t = "blk.0.ffn_up.weight";
        let b = valid().zero_tensor(t, &[256], id, bytes as usize);
        let g = open_bytes(&b.build()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = &g.tensor_infos()[t];
        assert_eq!(
            (info.type_name(), info.dtype(), info.bytes),
            (name, None, bytes)
        );
        assert!(g.raw_tensor("w").is_ok());
        let errors = [
            g.raw_tensor(t).map(drop),
            g.mapped_tensor(t).map(drop),
            g.tensor(t, &Device::Cpu).map(drop),
            g.tensor_dtype(t).map(drop),
        ];
        for err in errors {
            let msg = match err {
                Err(e @ Error::Tensor { .. }) => e.to_string(),
                other => panic!("{name}: expected a tensor error, got {other:?}"),
            };
            assert!(msg.contains(&format!("`{t}`")), "{msg}");
            assert!(
                msg.contains(&format!("ggml type {name} (id {id}) is not supported")),
                "{msg}"
            );
            assert!(msg.contains("Q4_K"), "lists the supported types: {msg}");
        }
    }
}

#[test]
fn supported_types_match_candles_block_layout() {
    for id in 0..64 {
        let Some(t) = header::ggml_type(id) else {
            continue;
        };
        if let Some(dtype) = t.dtype {
            assert_eq!(t.name, format!("{dtype:?}").replace("K", "_K"));
            assert_eq!(t.block as usize, dtype.block_size(), "{}", t.name);
            assert_eq!(t.block_bytes as usize, dtype.type_size(), "{}", t.name);
        }
    }
}

#[test]
fn bad_dimensions_are_refused() {
    for n in [0usize, 5] {
        let ne = vec![1u64; n];
        let (tensor, msg) = tensor_error(&valid().info("d", &ne, F32, 64).build());
        assert_eq!(tensor, "d");
        assert!(msg.contains(&format!("n_dims is {n}")), "{msg}");
    }
    let (tensor, msg) = tensor_error(&valid().info("z", &[4, 0], F32, 64).build());
    assert_eq!(tensor, "z");
    assert!(msg.contains("dimension 1") && msg.contains("zero"), "{msg}");
    let huge = 1u64 << 32;
    let (_, msg) = tensor_error(&valid().info("o", &[huge, huge, huge], F32, 64).build());
    assert!(msg.contains("overflows"), "{msg}");
    // Q8_0 rows are whole blocks of 32.
    let (_, msg) = tensor_error(&valid().info("q", &[16, 2], Q8_0, 64).build());
    assert!(
        msg.contains("row length 16") && msg.contains("Q8_0"),
        "{msg}"
    );
}

#[test]
fn truncated_tensor_data_is_refused_at_open() {
    let bytes = valid().build();
    for cut in [bytes.len() - 1, bytes.len() - 20] {
        let (_, msg) = tensor_error(&bytes[..cut]);
        assert!(
            msg.contains("truncated") && msg.contains("past the end"),
            "{msg}"
        );
    }
    // Cut inside the header: the field being read is named.
    let header = valid().header();
    let msg = invalid(&header[..150]);
    assert!(
        msg.contains("truncated") && msg.contains("`tokenizer.ggml.tokens`"),
        "{msg}"
    );
    // Cut so short that the listed counts cannot fit.
    let msg = invalid(&header[..60]);
    assert!(
        msg.contains("truncated") && msg.contains("3 metadata entries"),
        "{msg}"
    );
}

#[test]
fn vocabulary_only_file_opens_without_data_padding() {
    let b = Builder::new()
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_strings("tokenizer.ggml.tokens", &["x", "yz"]);
    let bytes = b.build();
    assert_ne!(bytes.len() % 32, 0, "the file ends before the padding");
    let g = open_bytes(&bytes).unwrap();
    assert!(g.tensor_infos().is_empty());
    assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap(), ["x", "yz"]);
}

use crate::test_support::Rng;

/// Open `path`, read every tensor both ways, then build the tokenizer and the model from
/// it; any outcome but a panic is acceptable.
fn exercise(path: &Path) -> std::result::Result<usize, Error> {
    let g = GgufFile::open(path)?;
    let mut names: Vec<&String> = g.tensor_infos().keys().collect();
    names.sort();
    for name in names {
        let (_, _, bytes) = g.mapped_tensor(name)?;
        let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        std::hint::black_box(sum);
        g.tensor(name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
    }
    for key in ["general.architecture", "tokenizer.ggml.tokens"] {
        let _ = g.optional(key, GgufFile::string);
        let _ = g.optional(key, GgufFile::strings);
    }
    // What the engine builds from the header must not panic either.
    let tokenizer = crate::tokenizer::Tokenizer::from_gguf(&g);
    let model = crate::model::Llama::load(&mut { g }, &Device::Cpu);
    Ok(usize::from(tokenizer.is_ok()) + usize::from(model.is_ok()))
}

#[test]
fn random_mutations_and_truncations_never_panic() {
    let src = crate::test_support::fixture("tiny-q8_0.gguf");
    let original = std::fs::read(&src).unwrap();
    let header_end = {
        let g = GgufFile::open(&src).unwrap();
        g.data_offset() as usize
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let interesting = [
        0u64,
        1,
        31,
        32,
        u64::MAX,
        1 << 63,
        u64::MAX - 28895,
        1 << 32,
    ];
    // `LORA_ENS_RS_FUZZ_ITERS` runs longer (as for the adapter and manifest readers).
    let iterations = std::env::var("LORA_ENS_RS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(200);
    // `LORA_ENS_RS_FUZZ_SECS` stops a long run after that many seconds.
    let budget = std::env::var("LORA_ENS_RS_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let (mut opened, mut refused) = (0, 0);
    for seed in 0..iterations {
        if budget.is_some_and(|b| started.elapsed() > b) {
            break;
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let mut bytes = original.clone();
        match seed % 4 {
            // Flip a few bytes of the header.
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(header_end);
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            // Overwrite a header word with a boundary value.
            1 => {
                let at = rng.below(header_end - 8);
                let v = interesting[rng.below(interesting.len())];
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            // Truncate anywhere.
            2 => bytes.truncate(rng.below(original.len())),
            // Random bytes anywhere in the file, then maybe truncate.
            _ => {
                for _ in 0..1 + rng.below(32) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
                if rng.below(2) == 0 {
                    bytes.truncate(header_end + rng.below(original.len() - header_end));
                }
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let one = Instant::now();
        match exercise(&path) {
            Ok(_) => opened += 1,
            Err(
                Error::InvalidGguf { .. }
                | Error::Tensor { .. }
                | Error::Metadata { .. }
                | Error::UnsupportedModel { .. }
                | Error::Tokenizer(_)
                | Error::Candle(_),
            ) => refused += 1,
            Err(other) => panic!("seed {seed}: unexpected error kind {other:?}"),
        }
        assert!(
            one.elapsed() < Duration::from_secs(10),
            "seed {seed} took {:?}",
            one.elapsed()
        );
    }
    eprintln!(
        "{opened} mutated files opened, {refused} refused in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}
