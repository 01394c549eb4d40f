//! `lora-ens-rs infer` on the tiny fixture model and its 3-member ensemble: the records it
//! writes hold exactly the numbers of `Ensemble::score` / `Ensemble::score_choices` called
//! directly on the same prompts, in both scoring modes, and the manifest's `scoring` entry
//! picks the default mode. Runs on a small inline set, and on the first 50 CommonsenseQA dev
//! questions when the benchmark data is there.
//! Run: `cargo test -p lora-ens-cli --test infer` (after `make fixtures`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is a failed test

mod common;

use std::path::{Path, PathBuf};

use lora_ens::data::{Question, read_questions};
use lora_ens::ensemble::Ensemble;
use lora_ens::prompt;
use lora_ens::score::{Normalization, ScoreOptions, Scores};
use serde_json::Value;

use common::{data_file, fixture, run, s};

const INLINE: &str = r#"{"id": "sky", "question": "What colour is the sky?", "choices": ["blue", "green", "red"], "answer": 0}
{"id": "cat", "question": "What do you call a baby cat?", "choices": ["kitten", "puppy", "calf", "foal"], "answer": "A"}
{"id": "sun", "question": "Where does the sun rise?", "choices": ["west", "east"], "labels": ["1", "2"], "answer": "2"}
"#;

/// The question files: the inline set (questions with 2 to 4 choices, written to `dir`) and
/// the first 50 CommonsenseQA dev questions when the benchmark data is there.
fn inputs(dir: &Path) -> Vec<(PathBuf, usize)> {
    let inline = dir.join("inline.jsonl");
    std::fs::write(&inline, INLINE).unwrap();
    let mut files = vec![(inline, 3)];
    match data_file("commonsenseqa/dev_rand_split.jsonl") {
        Some(path) => files.push((path, 50)),
        None => eprintln!("benchmark data not found: CommonsenseQA is skipped"),
    }
    files
}

fn ensemble() -> Ensemble {
    let cpu = lora_ens::device::parse_device("cpu").unwrap();
    Ensemble::load(fixture("tiny-q8_0.gguf"), &[fixture("ensemble")], &cpu).unwrap()
}

/// Each line's text and its parsed value.
fn read_records(path: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| (l.to_owned(), serde_json::from_str(l).unwrap()))
        .collect()
}

/// A JSON list of numbers, as f32 (serde_json's parser may be 1 ulp off in f64; the f32
/// value it rounds to is exact).
fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Every record holds the engine's numbers for its question, exactly.
fn assert_records_match(records: &[(String, Value)], questions: &[Question], scores: &Scores) {
    let r = &scores.reduced;
    assert_eq!(records.len(), questions.len());
    for (i, ((line, rec), q)) in records.iter().zip(questions).enumerate() {
        let k_i = scores.n_options[i];
        let want = &r.probs[i * r.k..i * r.k + k_i];
        assert_eq!(rec["id"], q.id.as_str());
        assert_eq!(rec["labels"], serde_json::json!(q.labels));
        assert_eq!(floats(&rec["probs"]), want, "probs of {}", q.id);
        // Printed as the f32 values widened to f64, exactly.
        let wide: Vec<f64> = want.iter().map(|&p| f64::from(p)).collect();
        let text = format!("\"probs\":{}", serde_json::to_string(&wide).unwrap());
        assert!(line.contains(&text), "{line} lacks {text}");
        assert_eq!(rec["prediction"], q.labels[r.prediction[i]].as_str());
        let scalar = |key: &str, x: f32| {
            assert_eq!(rec[key].as_f64().map(|v| v as f32), Some(x), "{key}");
        };
        scalar("confidence", r.confidence[i]);
        scalar("entropy", r.entropy[i]);
        scalar("expected_entropy", r.expected_entropy[i]);
        scalar("mutual_information", r.mutual_information[i]);
        scalar("agreement", r.agreement[i]);
        let answer = q.answer.expect("the test questions have answers");
        assert_eq!(rec["answer"], q.labels[answer].as_str());
        assert_eq!(rec["correct"], answer == r.prediction[i]);
        let members = rec["member_probs"].as_array().unwrap();
        assert_eq!(members.len(), r.n_members);
        for (m, row) in members.iter().enumerate() {
            let at = (i * r.n_members + m) * r.k;
            let want = &r.member_probs[at..at + k_i];
            assert_eq!(floats(row), want, "member {m} of {}", q.id);
        }
    }
}

fn infer(input: &Path, n: usize, output: &Path, extra: &[&str]) {
    let limit = n.to_string();
    let (model, ens) = (fixture("tiny-q8_0.gguf"), fixture("ensemble"));
    let mut args = vec![
        "infer",
        s(input),
        "--model",
        s(&model),
        "--adapters",
        s(&ens),
        "--limit",
        &limit,
        "--members",
        "--quiet",
        "--output",
        s(output),
    ];
    args.extend_from_slice(extra);
    assert_eq!(run(&args), 0, "infer {args:?}");
}

#[test]
fn label_scoring_matches_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let ens = ensemble();
    for (input, n) in inputs(dir.path()) {
        let out = dir.path().join("labels.jsonl");
        infer(&input, n, &out, &["--scoring", "labels"]);

        let questions = read_questions(&input, None, Some(n)).unwrap();
        let prompts: Vec<String> = questions
            .iter()
            .map(|q| prompt::label_prompt(&q.question, &q.choices, &q.labels).unwrap())
            .collect();
        let labels: Vec<Vec<String>> = questions.iter().map(|q| q.labels.clone()).collect();
        let scores = ens
            .score(&prompts, &labels, &ScoreOptions::default())
            .unwrap();
        assert_records_match(&read_records(&out), &questions, &scores);
    }
}

#[test]
fn choice_scoring_matches_the_engine_for_each_normalization() {
    let dir = tempfile::tempdir().unwrap();
    let ens = ensemble();
    for (input, n) in inputs(dir.path()) {
        let questions = read_questions(&input, None, Some(n)).unwrap();
        let contexts: Vec<String> = questions
            .iter()
            .map(|q| prompt::choice_context(&q.question))
            .collect();
        let choices: Vec<Vec<String>> = questions.iter().map(|q| q.choices.clone()).collect();
        // No flag: choices scoring, per-token normalization (the manifest has no `scoring`).
        for (flags, norm) in [
            (&[][..], Normalization::PerToken),
            (
                &["--scoring", "choices", "--normalization", "sum"][..],
                Normalization::Sum,
            ),
            (&["--normalization", "per_byte"][..], Normalization::PerByte),
        ] {
            let out = dir.path().join(format!("{}.jsonl", norm.name()));
            infer(&input, n, &out, flags);
            let scores = ens
                .score_choices(&contexts, &choices, norm, &ScoreOptions::default())
                .unwrap();
            assert_records_match(&read_records(&out), &questions, &scores);
        }
    }
}

/// An ensemble directory listing the fixture's members, with `scoring` set to `scoring`.
fn ensemble_with_scoring(dir: &Path, scoring: Value) -> PathBuf {
    let src = fixture("ensemble");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("ensemble.json")).unwrap()).unwrap();
    manifest["scoring"] = scoring;
    let ens = dir.join("ens");
    // Members live inside the ensemble directory: copy the fixture's.
    for m in ["m0", "m1", "m2"] {
        std::fs::create_dir_all(ens.join(m)).unwrap();
        for f in std::fs::read_dir(src.join(m)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, ens.join(m).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(ens.join("ensemble.json"), manifest.to_string()).unwrap();
    ens
}

#[test]
fn the_manifest_sets_the_default_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = inputs(dir.path()).pop().unwrap();
    let ens = ensemble_with_scoring(
        dir.path(),
        serde_json::json!({"mode": "labels", "normalization": "sum"}),
    );
    let model = fixture("tiny-q8_0.gguf");
    let common = [
        "infer",
        s(&input),
        "--model",
        s(&model),
        "--limit",
        "5",
        "-q",
    ];
    let by_manifest = dir.path().join("manifest.jsonl");
    let by_flag = dir.path().join("flag.jsonl");
    let choices = dir.path().join("choices.jsonl");
    fn with<'a>(common: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [common, extra].concat()
    }
    assert_eq!(
        run(&with(
            &common,
            &["--adapters", s(&ens), "-o", s(&by_manifest)]
        )),
        0
    );
    assert_eq!(
        run(&with(
            &common,
            &[
                "--adapters",
                s(&fixture("ensemble")),
                "--scoring",
                "labels",
                "-o",
                s(&by_flag)
            ]
        )),
        0
    );
    // A flag overrides the manifest.
    assert_eq!(
        run(&with(
            &common,
            &[
                "--adapters",
                s(&ens),
                "--scoring",
                "choices",
                "-o",
                s(&choices)
            ]
        )),
        0
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&by_manifest), read(&by_flag));
    assert_ne!(read(&choices), read(&by_flag));
}

#[test]
fn the_base_model_alone_is_one_member() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = inputs(dir.path()).pop().unwrap();
    let out = dir.path().join("base.jsonl");
    let model = fixture("tiny-q8_0.gguf");
    let args = [
        "infer",
        s(&input),
        "--model",
        s(&model),
        "--limit",
        "4",
        "--members",
        "-q",
        "-o",
        s(&out),
    ];
    assert_eq!(run(&args), 0);
    for (_, rec) in read_records(&out) {
        let members = rec["member_probs"].as_array().unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0], rec["probs"]);
        assert_eq!(rec["mutual_information"].as_f64(), Some(0.0));
        assert_eq!(rec["agreement"].as_f64(), Some(1.0));
    }
}
