//! `lora-ens-rs generate` (the built binary) on the tiny fixture model and its ensemble: the
//! text is `Ensemble::generate`'s, plain output is the text alone, and `--uncertainty` adds a
//! table with one row per generated token holding the engine's numbers.
//! Run: `cargo test -p lora-ens-cli --test generate` (after `make fixtures`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is a failed test

mod common;

use std::process::{Command, Output};

use lora_ens::ensemble::Ensemble;
use lora_ens::generate::GenerateOptions;

use common::{fixture, s};

fn lora_ens_rs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-ens-rs"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn ensemble() -> Ensemble {
    let cpu = lora_ens::device::parse_device("cpu").unwrap();
    Ensemble::load(fixture("tiny-q8_0.gguf"), &[fixture("ensemble")], &cpu).unwrap()
}

#[test]
fn greedy_text_is_the_engines() {
    let model = fixture("tiny-q8_0.gguf");
    let ens_dir = fixture("ensemble");
    let args = ["generate", "--model", s(&model), "--adapters", s(&ens_dir)];
    let out = lora_ens_rs(&[&args[..], &["--max-new-tokens", "8", "The sun is"]].concat());
    let opts = GenerateOptions {
        max_new_tokens: 8,
        ..GenerateOptions::default()
    };
    let want = ensemble().generate("The sun is", false, &opts).unwrap();
    assert_eq!(stdout(&out), format!("{}\n", want.text));
}

#[test]
fn sampling_flags_reach_the_engine() {
    let model = fixture("tiny-q8_0.gguf");
    let ens_dir = fixture("ensemble");
    let flags = [
        "--temperature",
        "0.9",
        "--top-p",
        "0.8",
        "--seed",
        "7",
        "--max-new-tokens",
        "12",
        "--stop",
        "e",
        "--stop",
        "zz",
    ];
    let args = ["generate", "--model", s(&model), "--adapters", s(&ens_dir)];
    let out = lora_ens_rs(&[&args[..], &flags, &["Once upon a time"]].concat());
    let opts = GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.9,
        top_p: 0.8,
        seed: 7,
        stop: vec!["e".to_owned(), "zz".to_owned()],
        top_logprobs: 0,
    };
    let want = ensemble()
        .generate("Once upon a time", false, &opts)
        .unwrap();
    assert_eq!(stdout(&out), format!("{}\n", want.text));
}

#[test]
fn uncertainty_adds_one_row_per_token() {
    let model = fixture("tiny-q8_0.gguf");
    let ens_dir = fixture("ensemble");
    let args = [
        "generate",
        "--model",
        s(&model),
        "--adapters",
        s(&ens_dir),
        "--max-new-tokens",
        "5",
        "--uncertainty",
        "Hello",
    ];
    let text = stdout(&lora_ens_rs(&args));
    let opts = GenerateOptions {
        max_new_tokens: 5,
        ..GenerateOptions::default()
    };
    let ens = ensemble();
    let want = ens.generate("Hello", false, &opts).unwrap();
    let (head, table) = text
        .split_once("\n\n")
        .expect("a blank line before the table");
    assert_eq!(head, want.text);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), want.tokens.len() + 1);
    let header: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(header, ["token", "p", "entropy", "mi"]);
    for (i, row) in rows[1..].iter().enumerate() {
        // The token is a JSON string (it may hold spaces); the numbers follow it.
        let token = ens.tokenizer().decode(&want.tokens[i..=i], false).unwrap();
        let quoted = serde_json::to_string(&token).unwrap();
        let rest = row
            .strip_prefix(&quoted)
            .expect("row starts with the token");
        let nums: Vec<f32> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let want_nums = [want.probs[i], want.entropy[i], want.mutual_information[i]];
        for (got, want) in nums.iter().zip(want_nums) {
            assert!((got - want).abs() <= 5e-5, "{row}: {got} vs {want}");
        }
        assert_eq!(nums.len(), 3, "{row}");
    }
}

#[test]
fn a_bad_option_is_one_error_line() {
    let model = fixture("tiny-q8_0.gguf");
    let out = lora_ens_rs(&["generate", "--model", s(&model), "--top-p", "0", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("top_p"), "{err}");
}
