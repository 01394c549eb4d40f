//! Multiple-choice QA datasets read into one record type, [`Question`]: CommonsenseQA /
//! OpenBookQA / ARC JSONL, MMLU CSV and a generic JSONL layout. Every bad record is an
//! [`Error::Data`] naming the file, the 1-based line and the reason.
//! Test: `cargo test -p lora-ens --lib data` (reads every file of the benchmark data directory
//! too when it exists: `$LORA_ENS_RS_DATA`, else `../shared/data` beside the repository).

mod jsonl;
mod mmlu;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::{Error, Result};

/// One multiple-choice question, whatever file format it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The record's id from the file, else `"{file stem}-{line}"` (JSONL) or
    /// `"{subject}-{row}"` (MMLU, rows counted from 1).
    pub id: String,
    /// The question text, verbatim.
    pub question: String,
    /// The answer choices, verbatim and in file order (never empty).
    pub choices: Vec<String>,
    /// One non-empty, distinct label per choice, as the file gives them (`A`-`E`, `1`-`4`).
    pub labels: Vec<String>,
    /// Index into `choices` of the correct answer, when the file has one.
    pub answer: Option<usize>,
    /// The MMLU subject (from the file name) or a generic record's `subject`, else `None`.
    pub subject: Option<String>,
    /// The 1-based line of the file the record starts on; 0 when not read from a file.
    pub line: usize,
}

impl Question {
    /// The label of the correct answer, when known.
    pub fn answer_label(&self) -> Option<&str> {
        self.answer.map(|i| self.labels[i].as_str())
    }
}

/// The file layouts [`read_questions`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CommonsenseQA / OpenBookQA / ARC JSONL:
    /// `{"id", "question": {"stem", "choices": [{"label", "text"}]}, "answerKey"?}`.
    QaJsonl,
    /// MMLU CSV: no header; question, 4 choices, answer letter (`A`-`D`).
    MmluCsv,
    /// Generic JSONL: `{"id"?, "question": str, "choices": [str], "labels"?: [str],
    /// "answer"?: label or 0-based index, "subject"?: str}`; labels default to `A`, `B`, ...
    Jsonl,
}

impl Format {
    /// Every name [`Format::from_name`] accepts.
    pub const NAMES: &'static [&'static str] =
        &["qa", "csqa", "obqa", "arc", "mmlu", "jsonl", "generic"];

    /// The format called `name` (case-insensitive): `qa`, `csqa`, `obqa`, `arc` → [`QaJsonl`],
    /// `mmlu` → [`MmluCsv`], `jsonl`, `generic` → [`Jsonl`].
    ///
    /// [`QaJsonl`]: Format::QaJsonl
    /// [`MmluCsv`]: Format::MmluCsv
    /// [`Jsonl`]: Format::Jsonl
    ///
    /// # Errors
    ///
    /// [`Error::Input`] for any other name, listing the accepted ones.
    pub fn from_name(name: &str) -> Result<Format> {
        match name.trim().to_ascii_lowercase().as_str() {
            "qa" | "csqa" | "obqa" | "arc" => Ok(Format::QaJsonl),
            "mmlu" => Ok(Format::MmluCsv),
            "jsonl" | "generic" => Ok(Format::Jsonl),
            _ => Err(Error::Input(format!(
                "unknown dataset format {name:?}: expected one of {}",
                Format::NAMES.join(", ")
            ))),
        }
    }

    /// The canonical name: `"qa"`, `"mmlu"` or `"jsonl"`.
    pub fn name(self) -> &'static str {
        match self {
            Format::QaJsonl => "qa",
            Format::MmluCsv => "mmlu",
            Format::Jsonl => "jsonl",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        Format::from_name(s)
    }
}

/// Read the questions of one dataset file.
///
/// `format` `None` detects it with [`detect_format`]; `limit` stops after that many questions
/// (later records are not checked).
///
/// # Errors
///
/// [`Error::Io`] when the file is missing or unreadable; [`Error::Data`] when `path` is a
/// directory, the file is not UTF-8, holds no questions, or has a bad record.
///
/// # Example
///
/// ```no_run
/// use lora_ens::data::{Format, read_questions};
/// let path = std::path::Path::new("commonsenseqa/dev_rand_split.jsonl");
/// let questions = read_questions(path, Some(Format::QaJsonl), Some(10)).unwrap();
/// assert_eq!(questions[0].labels, ["A", "B", "C", "D", "E"]);
/// ```
pub fn read_questions(
    path: &Path,
    format: Option<Format>,
    limit: Option<usize>,
) -> Result<Vec<Question>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(data_error(
            path,
            0,
            "is a directory; expected a dataset file (.jsonl or .csv)",
        ));
    }
    let refuse = |reason: String| data_error(path, 0, reason);
    let bytes = crate::io::read_file(path, crate::io::MAX_QUESTION_FILE_BYTES, &refuse)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        data_error(path, line, format!("not UTF-8 text: {}", e.utf8_error()))
    })?;
    parse_questions(&text, path, format, limit)
}

/// Parse the questions of a dataset held in memory; `source` names it in errors and ids
/// (e.g. `"<stdin>"`, or the file it came from) and gives the MMLU subject.
///
/// # Errors
///
/// [`Error::Data`] as for [`read_questions`].
///
/// # Example
///
/// ```
/// use std::path::Path;
/// let text = r#"{"question": "2 + 2 =", "choices": ["3", "4"], "answer": 1}"#;
/// let qs = lora_ens::data::parse_questions(text, Path::new("<string>"), None, None).unwrap();
/// assert_eq!((qs[0].labels.join(""), qs[0].answer), ("AB".to_owned(), Some(1)));
/// ```
pub fn parse_questions(
    text: &str,
    source: &Path,
    format: Option<Format>,
    limit: Option<usize>,
) -> Result<Vec<Question>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let format = match format {
        Some(f) => f,
        None => detect_format(text, source)?,
    };
    let max = limit.unwrap_or(usize::MAX);
    let questions = match format {
        Format::QaJsonl | Format::Jsonl => jsonl::parse(text, source, format, max)?,
        Format::MmluCsv => mmlu::parse(text, source, max)?,
    };
    if questions.is_empty() && max > 0 {
        return Err(data_error(source, 0, "no questions in the file"));
    }
    Ok(questions)
}

/// Tell a dataset's format from its name and first record: a `.csv` extension, or a first
/// non-blank line that is not a JSON object, means [`Format::MmluCsv`] (except for a `.json` /
/// `.jsonl` name); a JSON line whose `"question"` is an object means [`Format::QaJsonl`], a
/// string [`Format::Jsonl`].
///
/// # Errors
///
/// [`Error::Data`] naming `source` (and the line) when the text is empty, the first JSON line
/// is invalid, or its `"question"` is neither an object nor a string.
pub fn detect_format(text: &str, source: &Path) -> Result<Format> {
    let ext = source
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if ext.as_deref() == Some("csv") {
        return Ok(Format::MmluCsv);
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some((line_no, line)) = text
        .split('\n')
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())
    else {
        return Err(data_error(source, 0, "empty file: no questions to read"));
    };
    let line_no = line_no + 1;
    let is_json_name = matches!(ext.as_deref(), Some("jsonl" | "json"));
    if !line.trim_start().starts_with('{') && !is_json_name {
        return Ok(Format::MmluCsv);
    }
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| data_error(source, line_no, format!("invalid JSON: {e}")))?;
    match value.get("question") {
        Some(serde_json::Value::Object(_)) => Ok(Format::QaJsonl),
        Some(serde_json::Value::String(_)) => Ok(Format::Jsonl),
        Some(_) => Err(data_error(
            source,
            line_no,
            "cannot tell the dataset format: `question` must be an object (CommonsenseQA / \
             OpenBookQA / ARC) or a string (generic JSONL)",
        )),
        None => Err(data_error(
            source,
            line_no,
            "cannot tell the dataset format: the first record has no `question` field",
        )),
    }
}

/// An [`Error::Data`] for `source` at `line` (1-based; 0 = the whole file).
fn data_error(source: &Path, line: usize, reason: impl Into<String>) -> Error {
    Error::Data {
        path: source.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Checks shared by every format: at least one choice, no blank choice text, one non-empty
/// label per choice, no label twice.
/// The labels `A`, `B`, ... of a question with `n` choices that names none (at most 26).
pub fn default_labels(n: usize) -> std::result::Result<Vec<String>, String> {
    if n > 26 {
        return Err(format!(
            "{n} choices but default labels go only from A to Z: give `labels`"
        ));
    }
    Ok((b'A'..=b'Z')
        .take(n)
        .map(|b| char::from(b).to_string())
        .collect())
}

/// Checks a question's choices and labels: one non-empty, distinct label per choice.
pub fn check_choices(choices: &[String], labels: &[String]) -> std::result::Result<(), String> {
    check_choice_count(choices.len())?;
    if labels.len() != choices.len() {
        return Err(format!(
            "{} labels for {} choices",
            labels.len(),
            choices.len()
        ));
    }
    if let Some(i) = choices.iter().position(|c| c.trim().is_empty()) {
        return Err(format!("empty text for choice {} ({})", i, labels[i]));
    }
    if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
        return Err(format!("empty label for choice {i}"));
    }
    if let Some(i) = labels.iter().position(|l| !is_visible(l)) {
        return Err(format!(
            "label {:?} of choice {i} has no visible character (only zero-width or \
             control characters)",
            labels[i]
        ));
    }
    // A set, not a scan of the labels before each one: linear in the number of choices.
    let mut seen = std::collections::HashSet::with_capacity(labels.len());
    if let Some(label) = labels.iter().find(|l| !seen.insert(l.as_str())) {
        return Err(format!("duplicate label {label:?}"));
    }
    Ok(())
}

/// At least one and at most [`crate::io::MAX_CHOICES`] choices.
pub fn check_choice_count(n: usize) -> std::result::Result<(), String> {
    if n == 0 {
        return Err("no choices".into());
    }
    if n > crate::io::MAX_CHOICES {
        return Err(format!(
            "{n} choices, more than the {} a question may have",
            crate::io::MAX_CHOICES
        ));
    }
    Ok(())
}

/// Whether `text` has a character that shows: not white space, not a control character and
/// not a zero-width / invisible formatting character (U+200B..U+200F, U+2028..U+202E,
/// U+2060..U+2064, U+FEFF, U+00AD, U+180E).
fn is_visible(text: &str) -> bool {
    text.chars().any(|c| {
        !(c.is_whitespace()
            || c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}'))
    })
}

/// The index of answer `label` among `labels`, or the reason it is not there.
fn answer_index(label: &str, labels: &[String]) -> std::result::Result<usize, String> {
    labels.iter().position(|l| l == label).ok_or_else(|| {
        format!(
            "answer {label:?} is not among the labels {}",
            labels.join(", ")
        )
    })
}
