//! MMLU CSV files (`<subject>_{test,dev,val}.csv`): no header, six fields per row — question,
//! four choices, answer letter `A`-`D` — read with a small RFC 4180 reader (quoted fields may
//! hold commas, newlines and `""` escapes; rows end in LF or CRLF).
//! Test: `cargo test -p lora-ens --lib data`.

use std::path::Path;

use super::{Question, answer_index, check_choices, data_error};

/// The labels of MMLU's four choices.
const LABELS: [&str; 4] = ["A", "B", "C", "D"];

/// Parse up to `max` rows of an MMLU CSV; the subject comes from `source`'s file name.
pub(super) fn parse(text: &str, source: &Path, max: usize) -> crate::Result<Vec<Question>> {
    let subject = subject_of(source);
    let labels: Vec<String> = LABELS.iter().map(|l| (*l).to_owned()).collect();
    let mut reader = CsvReader::new(text);
    let mut questions = Vec::new();
    while questions.len() < max {
        let Some(row) = reader.next_row() else {
            break;
        };
        let (line, fields) = row.map_err(|(line, reason)| data_error(source, line, reason))?;
        let mut question = to_question(fields, &labels, &subject, questions.len() + 1)
            .map_err(|reason| data_error(source, line, reason))?;
        question.line = line;
        questions.push(question);
    }
    Ok(questions)
}

/// The subject of an MMLU file: its name without `_test.csv` / `_dev.csv` / `_val.csv`
/// (else without its extension).
pub(super) fn subject_of(source: &Path) -> String {
    let name = source
        .file_name()
        .map_or_else(|| source.to_string_lossy(), |n| n.to_string_lossy());
    for suffix in ["_test.csv", "_dev.csv", "_val.csv"] {
        if let Some(subject) = name.strip_suffix(suffix) {
            return subject.to_owned();
        }
    }
    source
        .file_stem()
        .map_or(name, |s| s.to_string_lossy())
        .into_owned()
}

/// One row as a question with id `"{subject}-{row}"`.
fn to_question(
    mut fields: Vec<String>,
    labels: &[String],
    subject: &str,
    row: usize,
) -> Result<Question, String> {
    if fields.len() != 6 {
        return Err(format!(
            "expected 6 fields (question, 4 choices, answer letter), found {}",
            fields.len()
        ));
    }
    let key = fields.pop().unwrap_or_default();
    let choices = fields.split_off(1);
    let question = fields.pop().unwrap_or_default();
    if question.trim().is_empty() {
        return Err("empty question text".into());
    }
    check_choices(&choices, labels)?;
    let answer = answer_index(key.trim(), labels)?;
    Ok(Question {
        id: format!("{subject}-{row}"),
        question,
        choices,
        labels: labels.to_vec(),
        answer: Some(answer),
        subject: Some(subject.to_owned()),
        line: 0,
    })
}

/// A row's fields and the line it starts on.
type Row = (usize, Vec<String>);

/// A malformed row: the line of the fault and the reason.
type Fault = (usize, String);

/// A comma-separated-values reader over text; fields are returned unquoted and unescaped.
struct CsvReader<'a> {
    text: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
    /// 1-based line number at `pos`.
    line: usize,
}

impl<'a> CsvReader<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// The next row and the line it starts on, skipping empty lines; `None` at the end.
    /// A malformed row gives the line of the fault and the reason.
    fn next_row(&mut self) -> Option<Result<Row, Fault>> {
        let bytes = self.text.as_bytes();
        loop {
            let rest = &bytes[self.pos..];
            if rest.starts_with(b"\r\n") {
                self.pos += 2;
            } else if rest.starts_with(b"\n") {
                self.pos += 1;
            } else if rest.is_empty() {
                return None;
            } else {
                break;
            }
            self.line += 1;
        }
        let start_line = self.line;
        let mut fields = Vec::new();
        loop {
            let field = if bytes[self.pos..].starts_with(b"\"") {
                match self.quoted_field(start_line) {
                    Ok(field) => field,
                    Err(fault) => return Some(Err(fault)),
                }
            } else {
                self.plain_field()
            };
            fields.push(field);
            // `pos` is now at a separator, a row end or the end of the text.
            let rest = &bytes[self.pos..];
            if rest.starts_with(b",") {
                self.pos += 1;
                continue;
            }
            if rest.starts_with(b"\r\n") {
                self.pos += 2;
                self.line += 1;
            } else if rest.starts_with(b"\n") {
                self.pos += 1;
                self.line += 1;
            } else if !rest.is_empty() {
                let reason = format!("field {} has text after its closing quote", fields.len());
                return Some(Err((self.line, reason)));
            }
            return Some(Ok((start_line, fields)));
        }
    }

    /// An unquoted field: everything up to the next comma or row end (a `"` inside is kept).
    fn plain_field(&mut self) -> String {
        let rest = &self.text[self.pos..];
        let mut end = rest.find([',', '\n']).unwrap_or(rest.len());
        if rest[..end].ends_with('\r') && (end == rest.len() || rest[end..].starts_with('\n')) {
            end -= 1;
        }
        self.pos += end;
        rest[..end].to_owned()
    }

    /// A quoted field starting at `pos` (on its opening quote); `""` inside is one quote.
    fn quoted_field(&mut self, start_line: usize) -> Result<String, Fault> {
        let mut field = String::new();
        self.pos += 1;
        loop {
            let rest = &self.text[self.pos..];
            let Some(close) = rest.find('"') else {
                let reason = format!("quoted field opened on line {start_line} is never closed");
                return Err((start_line, reason));
            };
            field.push_str(&rest[..close]);
            self.line += rest[..close].matches('\n').count();
            if rest[close + 1..].starts_with('"') {
                field.push('"');
                self.pos += close + 2;
            } else {
                self.pos += close + 1;
                return Ok(field);
            }
        }
    }
}
