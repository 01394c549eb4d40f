//! `lora-ens-rs infer` refuses bad input with exit code 1 and a one-line message naming the
//! file (and the line, for a bad record), and leaves `--output` as it was: not created, or an
//! existing file unchanged.
//! Run: `cargo test -p lora-ens-cli --test errors` (after `make fixtures`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is a failed test

mod common;

use std::path::Path;

use common::{error_of, fixture, run, s};

const GOOD: &str = r#"{"id": "q1", "question": "2 + 2 =", "choices": ["3", "4"], "answer": 1}"#;

/// Run `infer INPUT --model tiny --output OUT [extra]` where OUT first does not exist, then
/// holds old content; check exit code 1 and OUT untouched both times. Returns the message.
fn fails(input: &Path, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let model = fixture("tiny-q8_0.gguf");
    let mut args = vec![
        "infer",
        s(input),
        "--model",
        s(&model),
        "-q",
        "--output",
        s(&out),
    ];
    args.extend_from_slice(extra);
    assert_eq!(run(&args), 1, "{args:?}");
    assert!(!out.exists(), "{} was created", out.display());
    std::fs::write(&out, "old\n").unwrap();
    assert_eq!(run(&args), 1, "{args:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "temporary files left beside the output");
    error_of(&args)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_malformed_line_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "bad.jsonl",
        &format!("{GOOD}\n{{\"question\": \n"),
    );
    let msg = fails(&input, &[]);
    assert!(
        msg.starts_with(&format!("{}:2: ", input.display())),
        "{msg}"
    );
}

#[test]
fn a_question_without_choices_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{GOOD}\n{GOOD}\n{{\"question\": \"q\", \"choices\": []}}\n");
    let input = write(dir.path(), "none.jsonl", &text);
    let msg = fails(&input, &[]);
    assert!(
        msg.starts_with(&format!("{}:3: ", input.display())),
        "{msg}"
    );
    assert!(msg.contains("no choices"), "{msg}");
}

#[test]
fn an_empty_label_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"{"question": "q", "choices": ["a", "b"], "labels": ["A", " "]}"#;
    let input = write(dir.path(), "label.jsonl", text);
    let msg = fails(&input, &["--scoring", "labels"]);
    assert!(
        msg.starts_with(&format!("{}:1: ", input.display())),
        "{msg}"
    );
    assert!(msg.contains("empty label"), "{msg}");
}

#[test]
fn an_unreadable_adapter_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "ok.jsonl", GOOD);
    let missing = dir.path().join("no-such-adapter");
    let msg = fails(&input, &["--adapters", s(&missing)]);
    assert!(msg.contains(s(&missing)), "{msg}");
    // A directory that is neither an ensemble nor an adapter.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let msg = fails(&input, &["--adapters", s(&empty)]);
    assert!(msg.contains(s(&empty)), "{msg}");
}

#[test]
fn a_bad_scoring_entry_in_the_manifest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "ok.jsonl", GOOD);
    let src = fixture("ensemble");
    let members: Vec<String> = ["m0", "m1", "m2"]
        .iter()
        .map(|m| s(&src.join(m)).to_owned())
        .collect();
    let ens = dir.path().join("ens");
    std::fs::create_dir(&ens).unwrap();
    let manifest = serde_json::json!({"members": members, "scoring": {"mode": "letters"}});
    write(&ens, "ensemble.json", &manifest.to_string());
    let msg = fails(&input, &["--adapters", s(&ens)]);
    assert!(
        msg.contains("ensemble.json") && msg.contains("scoring.mode"),
        "{msg}"
    );
}

#[test]
fn a_missing_input_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("missing.jsonl");
    let msg = fails(&input, &[]);
    assert!(msg.starts_with(&format!("{}: ", input.display())), "{msg}");
}

#[test]
fn an_output_in_a_missing_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "ok.jsonl", GOOD);
    let out = dir.path().join("no-dir").join("out.jsonl");
    let model = fixture("tiny-q8_0.gguf");
    let args = ["infer", s(&input), "--model", s(&model), "-o", s(&out)];
    assert_eq!(run(&args), 1);
    assert!(error_of(&args).starts_with(s(&out)));
    assert!(!out.exists());
}

#[test]
fn a_missing_model_fails_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "ok.jsonl", GOOD);
    let out = dir.path().join("out.jsonl");
    let args = [
        "infer",
        s(&input),
        "--model",
        "/nonexistent/m.gguf",
        "-o",
        s(&out),
    ];
    assert_eq!(run(&args), 1);
    assert!(error_of(&args).contains("/nonexistent/m.gguf"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
