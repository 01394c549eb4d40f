//! The two JSON Lines layouts of [`super::Format`]: CommonsenseQA / OpenBookQA / ARC records
//! (`question.stem`, `question.choices[{label, text}]`, `answerKey`) and generic records
//! (`question`, `choices`, `labels`, `answer`). One record per line; blank lines are skipped.
//! Test: `cargo test -p lora-ens --lib data`.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Format, Question, answer_index, check_choices, data_error};

/// A reason a record is refused (becomes an `Error::Data` with the file and line).
type Reason = String;

/// Parse up to `max` records of `format` (one of the JSONL formats) from `text`.
pub(super) fn parse(
    text: &str,
    source: &Path,
    format: Format,
    max: usize,
) -> crate::Result<Vec<Question>> {
    let stem = source
        .file_stem()
        .map_or_else(|| source.to_string_lossy(), |s| s.to_string_lossy())
        .into_owned();
    let mut questions = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        if questions.len() >= max {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        if line.len() > crate::io::MAX_LINE_BYTES {
            return Err(data_error(
                source,
                line_no,
                format!(
                    "line is {} bytes, more than the {} bytes a record may have",
                    line.len(),
                    crate::io::MAX_LINE_BYTES
                ),
            ));
        }
        let record = parse_line(line, format, &stem, line_no)
            .map_err(|reason| data_error(source, line_no, reason))?;
        questions.push(record);
    }
    Ok(questions)
}

/// One record, with `"{stem}-{line_no}"` as the id when it has none.
fn parse_line(line: &str, format: Format, stem: &str, line_no: usize) -> Result<Question, Reason> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(record) = value else {
        return Err(format!("expected a JSON object, found {}", kind(&value)));
    };
    let id = match record.get("id") {
        None | Some(Value::Null) => format!("{stem}-{line_no}"),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(other) => {
            return Err(format!(
                "field `id` must be a string or an integer, found {}",
                kind(other)
            ));
        }
    };
    let mut question = match format {
        Format::QaJsonl => qa_record(&record)?,
        _ => generic_record(&record)?,
    };
    question.id = id;
    question.line = line_no;
    Ok(question)
}

/// `{"question": {"stem", "choices": [{"label", "text"}]}, "answerKey"?}`.
fn qa_record(record: &Map<String, Value>) -> Result<Question, Reason> {
    let q = match record.get("question") {
        Some(Value::Object(q)) => q,
        Some(Value::String(_)) => {
            return Err(
                "field `question` is a string, not an object with `stem` and \
                        `choices`: use the generic JSONL format"
                    .into(),
            );
        }
        Some(other) => {
            return Err(format!(
                "field `question` must be an object, found {}",
                kind(other)
            ));
        }
        None => return Err("missing field `question`".into()),
    };
    let stem = string_field(q, "stem", "question.stem")?;
    let Some(choice_values) = q.get("choices") else {
        return Err("missing field `question.choices`".into());
    };
    let Value::Array(items) = choice_values else {
        return Err(format!(
            "field `question.choices` must be an array, found {}",
            kind(choice_values)
        ));
    };
    super::check_choice_count(items.len())?;
    let mut choices = Vec::with_capacity(items.len());
    let mut labels = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(choice) = item else {
            return Err(format!(
                "`question.choices[{i}]` must be an object with `label` and `text`, found {}",
                kind(item)
            ));
        };
        labels.push(string_field(
            choice,
            "label",
            &format!("question.choices[{i}].label"),
        )?);
        choices.push(string_field(
            choice,
            "text",
            &format!("question.choices[{i}].text"),
        )?);
    }
    check_choices(&choices, &labels)?;
    let answer = match record.get("answerKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(answer_index(key, &labels)?),
        Some(other) => {
            return Err(format!(
                "field `answerKey` must be a string, found {}",
                kind(other)
            ));
        }
    };
    Ok(Question {
        id: String::new(),
        question: stem,
        choices,
        labels,
        answer,
        subject: None,
        line: 0,
    })
}

/// `{"question": str, "choices": [str], "labels"?: [str], "answer"?: label | index,
/// "subject"?: str}`.
fn generic_record(record: &Map<String, Value>) -> Result<Question, Reason> {
    if let Some(Value::Object(_)) = record.get("question") {
        return Err(
            "field `question` is an object: that is the CommonsenseQA / OpenBookQA / \
                    ARC layout (format \"qa\"), not generic JSONL"
                .into(),
        );
    }
    let question = string_field(record, "question", "question")?;
    let choices = string_list(record, "choices")?.ok_or("missing field `choices`")?;
    super::check_choice_count(choices.len())?;
    let labels = match string_list(record, "labels")? {
        Some(labels) => labels,
        None => super::default_labels(choices.len())?,
    };
    check_choices(&choices, &labels)?;
    let answer = match record.get("answer") {
        None | Some(Value::Null) => None,
        Some(Value::String(label)) => Some(answer_index(label, &labels)?),
        Some(Value::Number(n)) => match n.as_u64().and_then(|i| usize::try_from(i).ok()) {
            Some(i) if i < choices.len() => Some(i),
            _ => {
                return Err(format!(
                    "answer index {n} is out of range for {} choices",
                    choices.len()
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "field `answer` must be a label or a 0-based index, found {}",
                kind(other)
            ));
        }
    };
    let subject = match record.get("subject") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "field `subject` must be a string, found {}",
                kind(other)
            ));
        }
    };
    Ok(Question {
        id: String::new(),
        question,
        choices,
        labels,
        answer,
        subject,
        line: 0,
    })
}

/// The string `key` of `object` (called `name` in messages).
fn string_field(object: &Map<String, Value>, key: &str, name: &str) -> Result<String, Reason> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field `{name}` must be a string, found {}",
            kind(other)
        )),
        None => Err(format!("missing field `{name}`")),
    }
}

/// The list of strings `key` of `object`, or `None` when absent or null.
fn string_list(object: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, Reason> {
    let items = match object.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "field `{key}` must be an array of strings, found {}",
                kind(other)
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!(
                "`{key}[{i}]` must be a string, found {}",
                kind(other)
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
