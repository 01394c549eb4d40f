//! Tests of the dataset readers: each format on a small inline sample, CSV quoting, every
//! error path (message names file, line and reason), then every real benchmark file when the
//! data directory exists (`$LORA_ENS_RS_DATA`, else `../shared/data` beside the repository).
//! Test: `cargo test -p lora-ens --lib data -- --nocapture` (prints what it skips).

use std::path::{Path, PathBuf};

use super::*;

fn parse(text: &str, name: &str, format: Option<Format>) -> Result<Vec<Question>> {
    parse_questions(text, Path::new(name), format, None)
}

/// The message of the error that parsing `text` as file `name` gives.
fn error(text: &str, name: &str, format: Option<Format>) -> String {
    match parse(text, name, format) {
        Ok(qs) => panic!("no error for {text:?}: {qs:?}"),
        Err(e @ Error::Data { .. }) => e.to_string(),
        Err(e) => panic!("expected a data error, got {e:?}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

const QA: &str = concat!(
    r#"{"answerKey": "B", "id": "q1", "question": {"question_concept": "c", "choices": [{"label": "A", "text": "red"}, {"label": "B", "text": "blue"}], "stem": "Sky?"}}"#,
    "\n\n",
    r#"{"question":{"stem":"Count","choices":[{"text":"one","label":"1"},{"text":"two","label":"2"},{"text":"three","label":"3"}]}}"#,
    "\r\n",
);

#[test]
fn qa_jsonl_reads_labels_answers_and_default_ids() {
    let qs = parse(QA, "dir/arc.jsonl", None).unwrap();
    assert_eq!(qs.len(), 2);
    assert_eq!(qs[0].id, "q1");
    assert_eq!(qs[0].question, "Sky?");
    assert_eq!(qs[0].choices, strings(&["red", "blue"]));
    assert_eq!(qs[0].labels, strings(&["A", "B"]));
    assert_eq!((qs[0].answer, qs[0].answer_label()), (Some(1), Some("B")));
    assert_eq!(qs[0].subject, None);
    assert_eq!(qs[1].id, "arc-3");
    assert_eq!(qs[1].labels, strings(&["1", "2", "3"]));
    assert_eq!(qs[1].answer, None);
}

#[test]
fn generic_jsonl_takes_index_or_label_answers() {
    let text = concat!(
        r#"{"id": 7, "question": "2+2", "choices": ["3", "4"], "answer": 1}"#,
        "\n",
        r#"{"question": "Pick", "choices": ["x", "y", "z"], "labels": ["1", "2", "3"], "answer": "3", "subject": "toys"}"#,
        "\n",
        r#"{"question": "Open", "choices": ["a"], "answer": null}"#,
    );
    let qs = parse(text, "g.jsonl", None).unwrap();
    assert_eq!((qs[0].id.as_str(), qs[0].answer), ("7", Some(1)));
    assert_eq!(qs[0].labels, strings(&["A", "B"]));
    assert_eq!(qs[1].answer, Some(2));
    assert_eq!(qs[1].subject.as_deref(), Some("toys"));
    assert_eq!((qs[2].id.as_str(), qs[2].answer), ("g-3", None));
}

#[test]
fn mmlu_csv_handles_quoting_crlf_and_multiline_fields() {
    let text = concat!(
        "\"Find x, if \"\"x\"\" > 1.\",0,\"1,5\",2,3,B\r\n",
        "\"Two\nlines\",\"a\"\"b\",b,\"\",c,D\r\n", // an empty choice
    );
    let msg = error(text, "algebra_test.csv", None);
    assert!(msg.starts_with("algebra_test.csv:2: "), "{msg}");
    assert!(msg.contains("empty text for choice 2 (C)"), "{msg}");
    let text = concat!(
        "\"Find x, if \"\"x\"\" > 1.\",0,\"1,5\",2,3,B\r\n",
        "\"Two\r\nlines\",\"a\"\"b\",b,c,d,D\r\n",
        "\n",
        "plain \"quote\" inside,w,x,y,z, A",
    );
    let qs = parse(text, "mmlu/test/college_physics_test.csv", None).unwrap();
    assert_eq!(qs.len(), 3);
    assert_eq!(qs[0].question, "Find x, if \"x\" > 1.");
    assert_eq!(qs[0].choices, strings(&["0", "1,5", "2", "3"]));
    assert_eq!(qs[0].answer, Some(1));
    assert_eq!(qs[1].question, "Two\r\nlines");
    assert_eq!(qs[1].choices[0], "a\"b");
    assert_eq!(
        (qs[2].question.as_str(), qs[2].answer),
        ("plain \"quote\" inside", Some(0))
    );
    assert_eq!(qs[2].id, "college_physics-3");
    assert_eq!(qs[2].subject.as_deref(), Some("college_physics"));
    assert_eq!(qs[0].labels, strings(&["A", "B", "C", "D"]));
}

#[test]
fn mmlu_errors_name_the_first_line_of_the_row() {
    let two_line_row = "\"a\nb\",1,2,3,4,A\n";
    let msg = error(&format!("{two_line_row}q,1,2,3,A\n"), "x_dev.csv", None);
    assert_eq!(
        msg,
        "x_dev.csv:3: expected 6 fields (question, 4 choices, answer letter), found 5"
    );
    let msg = error(&format!("{two_line_row}q,1,2,3,4,E\n"), "x_val.csv", None);
    assert!(msg.starts_with("x_val.csv:3: answer \"E\" is not among the labels A, B, C, D"));
    let msg = error(&format!("{two_line_row}\"q\nnever closed,1"), "x.csv", None);
    assert!(msg.starts_with("x.csv:3: quoted field opened on line 3 is never closed"));
    let msg = error("q,\"1\"x,2,3,4,A\n", "x.csv", None);
    assert_eq!(msg, "x.csv:1: field 2 has text after its closing quote");
    let msg = error(" ,1,2,3,4,A\n", "x.csv", None);
    assert_eq!(msg, "x.csv:1: empty question text");
}

#[test]
fn jsonl_errors_name_file_line_and_reason() {
    let good = r#"{"question": {"stem": "s", "choices": [{"label": "A", "text": "a"}]}}"#;
    let cases = [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, found an array"),
        (r#"{"id": 1}"#, "missing field `question`"),
        (
            r#"{"question": {"stem": 3}}"#,
            "field `question.stem` must be a string",
        ),
        (
            r#"{"question": {"stem": "s"}}"#,
            "missing field `question.choices`",
        ),
        (
            r#"{"question": {"stem": "s", "choices": {}}}"#,
            "field `question.choices` must be an array",
        ),
        (
            r#"{"question": {"stem": "s", "choices": [{"text": "a"}]}}"#,
            "missing field `question.choices[0].label`",
        ),
        (
            r#"{"question": {"stem": "s", "choices": ["a"]}}"#,
            "`question.choices[0]` must be an object",
        ),
        (
            r#"{"question": {"stem": "s", "choices": []}}"#,
            "no choices",
        ),
        (
            r#"{"question": {"stem": "s", "choices": [{"label": "A", "text": "a"}, {"label": "A", "text": "b"}]}}"#,
            "duplicate label \"A\"",
        ),
        (
            r#"{"question": {"stem": "s", "choices": [{"label": "A", "text": " "}]}}"#,
            "empty text for choice 0 (A)",
        ),
        (
            r#"{"question": {"stem": "s", "choices": [{"label": "", "text": "a"}]}}"#,
            "empty label for choice 0",
        ),
        (
            r#"{"answerKey": "E", "question": {"stem": "s", "choices": [{"label": "A", "text": "a"}]}}"#,
            "answer \"E\" is not among the labels A",
        ),
        (
            r#"{"id": [], "question": {}}"#,
            "field `id` must be a string or an integer",
        ),
        (r#"{"question": "flat"}"#, "field `question` is a string"),
    ];
    for (bad, reason) in cases {
        let text = format!("{good}\n\n{bad}\n{good}\n");
        let msg = error(&text, "data/csqa.jsonl", Some(Format::QaJsonl));
        assert!(msg.starts_with("data/csqa.jsonl:3: "), "{msg}");
        assert!(msg.contains(reason), "{msg} lacks {reason}");
    }
}

#[test]
fn generic_jsonl_errors_name_file_line_and_reason() {
    let many: Vec<String> = (0..27).map(|i| format!("\"c{i}\"")).collect();
    let too_many = format!(r#"{{"question": "q", "choices": [{}]}}"#, many.join(","));
    let cases = [
        (r#"{"choices": ["a"]}"#, "missing field `question`"),
        (r#"{"question": "q"}"#, "missing field `choices`"),
        (
            r#"{"question": "q", "choices": "a"}"#,
            "field `choices` must be an array",
        ),
        (
            r#"{"question": "q", "choices": ["a", 2]}"#,
            "`choices[1]` must be a string",
        ),
        (
            r#"{"question": "q", "choices": ["a", "b"], "labels": ["A"]}"#,
            "1 labels for 2 choices",
        ),
        (
            r#"{"question": "q", "choices": ["a"], "answer": 1}"#,
            "answer index 1 is out of range",
        ),
        (
            r#"{"question": "q", "choices": ["a"], "answer": -1}"#,
            "answer index -1 is out of range",
        ),
        (
            r#"{"question": "q", "choices": ["a"], "answer": "B"}"#,
            "answer \"B\" is not among",
        ),
        (
            r#"{"question": "q", "choices": ["a"], "answer": true}"#,
            "field `answer` must be",
        ),
        (
            r#"{"question": "q", "choices": ["a"], "subject": 1}"#,
            "field `subject` must be",
        ),
        (
            r#"{"question": {"stem": "s"}, "choices": []}"#,
            "format \"qa\"",
        ),
        (
            too_many.as_str(),
            "27 choices but default labels go only from A to Z",
        ),
    ];
    for (bad, reason) in cases {
        let text = format!("{{\"question\": \"ok\", \"choices\": [\"a\"]}}\n{bad}\n");
        let msg = error(&text, "g.jsonl", Some(Format::Jsonl));
        assert!(msg.starts_with("g.jsonl:2: "), "{msg}");
        assert!(msg.contains(reason), "{msg} lacks {reason}");
    }
}

#[test]
fn format_names_and_detection() {
    for (name, format) in [
        ("qa", Format::QaJsonl),
        ("CSQA", Format::QaJsonl),
        ("obqa", Format::QaJsonl),
        ("arc", Format::QaJsonl),
        ("mmlu", Format::MmluCsv),
        ("jsonl", Format::Jsonl),
        ("generic", Format::Jsonl),
    ] {
        assert_eq!(Format::from_name(name).unwrap(), format);
        assert_eq!(Format::from_name(format.name()).unwrap(), format);
        assert_eq!(name.parse::<Format>().unwrap().to_string(), format.name());
    }
    let msg = Format::from_name("tsv").unwrap_err().to_string();
    assert!(msg.contains("\"tsv\"") && msg.contains("qa, csqa, obqa, arc, mmlu, jsonl, generic"));

    let detect = |text: &str, name: &str| detect_format(text, Path::new(name));
    assert_eq!(
        detect("{\"question\": 1}", "x.csv").unwrap(),
        Format::MmluCsv
    );
    assert_eq!(
        detect("\n  q,a,b,c,d,A", "<stdin>").unwrap(),
        Format::MmluCsv
    );
    assert_eq!(detect(QA, "<stdin>").unwrap(), Format::QaJsonl);
    assert_eq!(
        detect("\u{feff}{\"question\": \"q\"}", "x").unwrap(),
        Format::Jsonl
    );
    let msg = |text: &str, name: &str| detect(text, name).unwrap_err().to_string();
    assert_eq!(
        msg(" \n\n", "e.jsonl"),
        "e.jsonl: empty file: no questions to read"
    );
    assert!(msg("\n{oops", "b.jsonl").starts_with("b.jsonl:2: invalid JSON"));
    assert!(msg("q,a,b,c,d,A", "b.jsonl").starts_with("b.jsonl:1: invalid JSON"));
    assert!(msg("{\"stem\": 1}", "n.jsonl").contains("n.jsonl:1: cannot tell"));
    assert!(msg("{\"question\": 1}", "n.jsonl").contains("must be an object"));
}

#[test]
fn limit_stops_before_later_records() {
    let text = format!("{QA}\n{{broken\n");
    let qs = parse_questions(&text, Path::new("a.jsonl"), None, Some(2)).unwrap();
    assert_eq!(qs.len(), 2);
    let qs = parse_questions(&text, Path::new("a.jsonl"), None, Some(1)).unwrap();
    assert_eq!(qs[0].id, "q1");
    assert!(error(&text, "a.jsonl", None).starts_with("a.jsonl:5: invalid JSON"));
    let csv = "q,1,2,3,4,A\nbroken";
    let qs = parse_questions(csv, Path::new("s.csv"), None, Some(1)).unwrap();
    assert_eq!(qs.len(), 1);
    assert!(parse_questions("", Path::new("e.jsonl"), Some(Format::Jsonl), Some(0)).is_ok());
    let msg = error("\n\n", "e.jsonl", Some(Format::Jsonl));
    assert_eq!(msg, "e.jsonl: no questions in the file");
}

#[test]
fn read_questions_reports_missing_files_directories_and_bad_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    match read_questions(&missing, None, None) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    let msg = read_questions(dir.path(), None, None)
        .unwrap_err()
        .to_string();
    assert!(msg.ends_with(": is a directory; expected a dataset file (.jsonl or .csv)"));
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, b"q,1,2,3,4,A\nq\xff,1,2,3,4,A\n").unwrap();
    let msg = read_questions(&bad, None, None).unwrap_err().to_string();
    assert!(msg.contains("bad.csv:2: not UTF-8 text"), "{msg}");
    let good = dir.path().join("anatomy_test.csv");
    std::fs::write(&good, "q,1,2,3,4,C\n").unwrap();
    let qs = read_questions(&good, None, None).unwrap();
    assert_eq!((qs[0].id.as_str(), qs[0].answer), ("anatomy-1", Some(2)));
}

/// The benchmark data directory, when it exists.
fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LORA_ENS_RS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: no benchmark data at {}", dir.display());
        None
    }
}

fn read_all(dir: &Path, file: &str) -> Vec<Question> {
    read_questions(&dir.join(file), None, None).unwrap()
}

#[test]
fn real_qa_jsonl_files_parse() {
    let Some(dir) = data_dir() else { return };
    let dev = read_all(&dir, "commonsenseqa/dev_rand_split.jsonl");
    assert_eq!(dev.len(), 1221);
    assert!(
        dev.iter()
            .all(|q| q.choices.len() == 5 && q.answer.is_some())
    );
    let test = read_all(&dir, "commonsenseqa/test_rand_split_no_answers.jsonl");
    assert_eq!(test.len(), 1140);
    assert!(test.iter().all(|q| q.answer.is_none()));
    assert_eq!(
        read_all(&dir, "commonsenseqa/train_rand_split.jsonl").len(),
        9741
    );
    let obqa = read_all(&dir, "openbookqa/Main/dev.jsonl");
    assert_eq!(obqa.len(), 500);
    assert!(
        obqa.iter()
            .all(|q| q.choices.len() == 4 && q.answer.is_some())
    );
    for (file, rows) in [
        ("arc/ARC-Easy/ARC-Easy-Test.jsonl", 2376),
        ("arc/ARC-Challenge/ARC-Challenge-Test.jsonl", 1172),
        ("arc/ARC-Easy/ARC-Easy-Dev.jsonl", 570),
        ("arc/ARC-Challenge/ARC-Challenge-Dev.jsonl", 299),
    ] {
        let qs = read_all(&dir, file);
        assert_eq!(qs.len(), rows, "{file}");
        assert!(qs.iter().all(|q| q.answer.is_some()), "{file}");
        assert!(
            qs.iter().any(|q| q.labels[0] == "1"),
            "{file}: no 1-4 labels"
        );
        let sizes: std::collections::BTreeSet<usize> = qs.iter().map(|q| q.choices.len()).collect();
        assert!(
            sizes.contains(&3) && sizes.contains(&4) && sizes.contains(&5),
            "{file}"
        );
    }
}

#[test]
fn real_mmlu_files_parse() {
    let Some(dir) = data_dir() else { return };
    for (split, expected) in [("test", 14042), ("dev", 285), ("val", 1531)] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("mmlu").join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 57);
        let mut total = 0;
        for file in &files {
            let qs = read_questions(file, None, None).unwrap();
            let subject = qs[0].subject.clone().unwrap();
            assert!(file.ends_with(format!("{subject}_{split}.csv")));
            assert!(
                qs.iter()
                    .all(|q| q.choices.len() == 4 && q.answer.is_some())
            );
            total += qs.len();
        }
        assert_eq!(total, expected, "mmlu {split}");
    }
}
