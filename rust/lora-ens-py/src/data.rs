//! Bindings of `lora_ens::data`: multiple-choice QA datasets (CommonsenseQA / OpenBookQA /
//! ARC JSONL, MMLU CSV, generic JSONL) read into lists of dicts, with the GIL released while
//! the file is parsed. Test: `python -m pytest tests/test_data.py`.

use std::path::PathBuf;

use lora_ens::data::{Format, Question};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::call;

/// One question as a dict with keys `id`, `question`, `choices`, `labels`, `answer`, `subject`.
fn to_dict(py: Python<'_>, q: Question) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", q.id)?;
    d.set_item("question", q.question)?;
    d.set_item("choices", q.choices)?;
    d.set_item("labels", q.labels)?;
    d.set_item("answer", q.answer)?;
    d.set_item("subject", q.subject)?;
    Ok(d)
}

fn to_dicts(py: Python<'_>, questions: Vec<Question>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    questions.into_iter().map(|q| to_dict(py, q)).collect()
}

/// The format called `name`, or None to detect it.
fn parse_format(name: Option<&str>) -> lora_ens::Result<Option<Format>> {
    name.map(Format::from_name).transpose()
}

/// Read the questions of one dataset file.
///
/// Args:
///     path: a `.jsonl` or MMLU `.csv` file.
///     format: ``"qa"`` (also ``"csqa"``, ``"obqa"``, ``"arc"``: ``{"id", "question":
///         {"stem", "choices": [{"label", "text"}]}, "answerKey"}``), ``"mmlu"`` (headerless
///         CSV: question, 4 choices, answer letter), ``"jsonl"`` / ``"generic"``
///         (``{"id"?, "question": str, "choices": [str], "labels"?, "answer"?: label or
///         index, "subject"?}``), or None to detect it from the name and first record.
///     limit: stop after this many questions (later records are not checked).
///
/// Returns:
///     One dict per question: ``id`` (str), ``question`` (str), ``choices`` (list[str]),
///     ``labels`` (list[str], one per choice), ``answer`` (index into ``choices``, or None
///     when the file has no answer), ``subject`` (the MMLU subject, or None).
///
/// Raises:
///     MissingFileError: the file does not exist.
///     DataError: the path is a directory, or a record is malformed (the message is
///         ``file:line: reason``).
///     InputError: ``format`` is not a known name.
///
/// Example:
///     >>> qs = read_questions(csqa_train, limit=2)     # a CommonsenseQA JSONL file
///     >>> len(qs), qs[0]["labels"], type(qs[0]["answer"]).__name__
///     (2, ['A', 'B', 'C', 'D', 'E'], 'int')
#[pyfunction]
#[pyo3(signature = (path, format=None, limit=None))]
fn read_questions<'py>(
    py: Python<'py>,
    path: PathBuf,
    format: Option<&str>,
    limit: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let questions = call(py, || {
        lora_ens::data::read_questions(&path, parse_format(format)?, limit)
    })?;
    to_dicts(py, questions)
}

/// Parse the questions of a dataset held in a string.
///
/// Args:
///     text: the file's text.
///     source: the name used in error messages and default ids; a ``*_test.csv`` name also
///         gives the MMLU subject.
///     format: as for `read_questions`; None detects it.
///     limit: stop after this many questions.
///
/// Returns:
///     One dict per question, as for `read_questions`.
///
/// Raises:
///     DataError: a record is malformed (the message is ``source:line: reason``).
///     InputError: ``format`` is not a known name.
///
/// Example:
///     >>> q = parse_questions('{"question": "2+2", "choices": ["3", "4"], "answer": 1}')[0]
///     >>> q["id"], q["labels"], q["answer"]
///     ('<string>-1', ['A', 'B'], 1)
#[pyfunction]
#[pyo3(
    signature = (text, source=PathBuf::from("<string>"), format=None, limit=None),
    text_signature = "(text, source='<string>', format=None, limit=None)"
)]
fn parse_questions<'py>(
    py: Python<'py>,
    text: &str,
    source: PathBuf,
    format: Option<&str>,
    limit: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let questions = call(py, || {
        lora_ens::data::parse_questions(text, &source, parse_format(format)?, limit)
    })?;
    to_dicts(py, questions)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_questions, m)?)?;
    m.add_function(wrap_pyfunction!(parse_questions, m)?)?;
    Ok(())
}

/// The engine's `Question` from a dict as `read_questions` returns it (`question`, `choices`;
/// optional `id` (default: the position `i`), `labels` (default `A`, `B`, ...), `answer`
/// (index) and `subject`). A malformed dict is an `InputError` naming the question and key.
pub(crate) fn question_of(q: &Bound<'_, PyAny>, i: usize) -> PyResult<Question> {
    let bad = |what: String| {
        crate::error::to_pyerr(lora_ens::Error::Input(format!("question {i}: {what}")))
    };
    let dict = q
        .cast::<PyDict>()
        .map_err(|_| bad("expected a dict".to_owned()))?;
    fn get<'py, T: FromPyObjectOwned<'py>>(
        d: &Bound<'py, PyDict>,
        key: &str,
        bad: &dyn Fn(String) -> PyErr,
    ) -> PyResult<Option<T>> {
        match d.get_item(key)? {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) => v
                .extract::<T>()
                .map(Some)
                .map_err(|_| bad(format!("`{key}` has the wrong type ({})", v.get_type()))),
        }
    }
    let question: String =
        get(dict, "question", &bad)?.ok_or_else(|| bad("`question` is missing".to_owned()))?;
    let choices: Vec<String> =
        get(dict, "choices", &bad)?.ok_or_else(|| bad("`choices` is missing".to_owned()))?;
    let labels: Vec<String> = match get(dict, "labels", &bad)? {
        Some(l) => l,
        None => lora_ens::data::default_labels(choices.len()).map_err(&bad)?,
    };
    lora_ens::data::check_choices(&choices, &labels).map_err(&bad)?;
    let answer: Option<usize> = get(dict, "answer", &bad)?;
    if let Some(a) = answer.filter(|&a| a >= choices.len()) {
        return Err(bad(format!(
            "`answer` {a} is out of range for {} choices",
            choices.len()
        )));
    }
    Ok(Question {
        id: get(dict, "id", &bad)?.unwrap_or_else(|| i.to_string()),
        question,
        choices,
        labels,
        answer,
        subject: get(dict, "subject", &bad)?,
        line: 0,
    })
}
