//! Seeded mutation fuzzing of the two readers that take files from anywhere: the adapter
//! reader (`adapter_model.safetensors`, through `LoraAdapter::load`) and the ensemble
//! manifest reader (`EnsembleManifest::from_json`). Starting from the tiny fixture's files,
//! each iteration truncates, flips bytes, writes huge or random header lengths, splices
//! huge numbers into the JSON, or duplicates spans; every input must load or give a typed
//! error, never panic. An input that panics is saved under `tests/regressions/` (and every
//! file kept there is replayed first). Iterations: 300 per reader by default,
//! `LORA_ENS_RS_FUZZ_ITERS=N` for longer runs (`LORA_ENS_RS_FUZZ_SECS=S` stops each reader after
//! S seconds); the seed is `LORA_ENS_RS_FUZZ_SEED` (default 1).
//! Test: `cargo test -p lora-ens --test fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use lora_ens::{EnsembleManifest, LlamaConfig, LoraAdapter};

use common::Rng;

fn iterations() -> usize {
    std::env::var("LORA_ENS_RS_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn seed() -> u64 {
    std::env::var("LORA_ENS_RS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

const HUGE: [&str; 6] = [
    "18446744073709551615",
    "9223372036854775807",
    "4294967296",
    "-1",
    "1e308",
    "99999999999999999999999",
];

/// One mutation of `input`.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        match rng.below(7) {
            0 => out.truncate(rng.below(out.len() + 1)),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    if !out.is_empty() {
                        let i = rng.below(out.len());
                        out[i] ^= 1 << rng.below(8);
                    }
                }
            }
            2 if out.len() >= 8 => {
                // The safetensors header length: huge, zero, just past the end, random.
                let len = out.len() as u64;
                let v = [u64::MAX, 0, len, len - 7, rng.next(), 1 << 40][rng.below(6)];
                out[..8].copy_from_slice(&v.to_le_bytes());
            }
            3 => {
                // A number in the text replaced by a huge one.
                let digits: Vec<usize> = (0..out.len())
                    .filter(|&i| out[i].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    let start = digits[rng.below(digits.len())];
                    let end = (start..out.len())
                        .find(|&i| !out[i].is_ascii_digit())
                        .unwrap_or(out.len());
                    let huge = HUGE[rng.below(HUGE.len())].as_bytes();
                    out.splice(start..end, huge.iter().copied());
                }
            }
            4 if !out.is_empty() => {
                let a = rng.below(out.len());
                let b = (a + rng.below(64)).min(out.len());
                let span = out[a..b].to_vec();
                let at = rng.below(out.len());
                out.splice(at..at, span);
            }
            5 if !out.is_empty() => {
                let i = rng.below(out.len());
                let bytes = [b'"', b'{', b'}', b'[', b']', b',', b':', 0, 0xff, b'\\'];
                out.insert(i, bytes[rng.below(bytes.len())]);
            }
            _ => {
                let a = rng.below(out.len() + 1);
                let b = (a + rng.below(32)).min(out.len());
                out.drain(a..b);
            }
        }
    }
    out
}

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions")
}

/// Run `check(input)`; on a panic save the input as `tests/regressions/<kind>-<hash>` and fail.
fn run_case(kind: &str, input: &[u8], check: impl Fn(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        // FNV-1a: a stable name for the input.
        let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let path = regressions().join(format!("{kind}-{hash:016x}"));
        std::fs::create_dir_all(regressions()).unwrap();
        std::fs::write(&path, input).unwrap();
        panic!("{kind}: input panicked; saved as {}", path.display());
    }
}

fn replay(kind: &str, check: &impl Fn(&[u8])) {
    let Ok(entries) = std::fs::read_dir(regressions()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{kind}-")) {
            run_case(kind, &std::fs::read(entry.path()).unwrap(), check);
        }
    }
}

fn base_config() -> LlamaConfig {
    let ens = lora_ens::Ensemble::load(
        common::fixture("tiny-q8_0.gguf"),
        &[] as &[PathBuf],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    ens.config().clone()
}

fn fuzz(kind: &str, seed_input: &[u8], check: impl Fn(&[u8])) {
    replay(kind, &check);
    run_case(kind, seed_input, &check);
    let mut rng = Rng(seed());
    let n = iterations();
    // `LORA_ENS_RS_FUZZ_SECS`: stop a long run after this many seconds per reader.
    let budget = std::env::var("LORA_ENS_RS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok());
    let start = std::time::Instant::now();
    let mut done = 0;
    while done < n && budget.is_none_or(|b| start.elapsed().as_secs_f64() < b) {
        let input = mutate(seed_input, &mut rng);
        run_case(kind, &input, &check);
        done += 1;
    }
    eprintln!(
        "fuzz {kind}: {done} inputs in {:.1} s (seed {}), no panic",
        start.elapsed().as_secs_f64(),
        seed()
    );
}

#[test]
fn adapter_weights_load_or_give_a_typed_error() {
    let base = base_config();
    let src = common::fixture("ensemble/m0");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let weights = dir.path().join("adapter_model.safetensors");
    let seed_input = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    fuzz("adapter", &seed_input, |input| {
        std::fs::write(&weights, input).unwrap();
        match LoraAdapter::load(dir.path(), &base) {
            Ok(_) | Err(lora_ens::Error::Adapter { .. }) => {}
            Err(other) => panic!("not an adapter error: {other:?}"),
        }
    });
}

#[test]
fn adapter_configs_load_or_give_a_typed_error() {
    let base = base_config();
    let src = common::fixture("ensemble/m0");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let config = dir.path().join("adapter_config.json");
    let seed_input = std::fs::read(src.join("adapter_config.json")).unwrap();
    fuzz("adapter-config", &seed_input, |input| {
        std::fs::write(&config, input).unwrap();
        match LoraAdapter::load(dir.path(), &base) {
            Ok(_) | Err(lora_ens::Error::Adapter { .. }) => {}
            Err(other) => panic!("not an adapter error: {other:?}"),
        }
    });
}

#[test]
fn manifests_load_or_give_a_typed_error() {
    let seed_input = std::fs::read(common::fixture("ensemble/ensemble.json")).unwrap();
    let file = common::fixture("ensemble/ensemble.json");
    fuzz("manifest", &seed_input, |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return; // the reader takes text; bytes that are not UTF-8 are refused before
        };
        match EnsembleManifest::from_json(text, &file) {
            Ok(_) | Err(lora_ens::Error::Adapter { .. }) => {}
            Err(other) => panic!("not an adapter error: {other:?}"),
        }
    });
}
