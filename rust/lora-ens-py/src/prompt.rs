//! Bindings of `lora_ens::prompt`: the one prompt template shared by training (Python) and
//! inference (Rust), so the two cannot drift. Test: `python -m pytest tests/test_data.py`.

use pyo3::prelude::*;

use crate::error::to_pyerr;

/// The lettered multiple-choice prompt, one ``{label}. {choice}`` line per choice.
///
/// The result is ``"Question: {question}\n{label}. {choice}\n...\nAnswer:"`` (text used
/// verbatim); the model's answer is the next token, scored as `label_continuation(label)`.
///
/// Args:
///     question: the question text.
///     choices: the answer choices.
///     labels: one label per choice (``"A"``-``"E"``, ``"1"``-``"4"``, ...).
///
/// Returns:
///     The prompt.
///
/// Raises:
///     InputError: no choices, ``choices`` and ``labels`` differ in length, or a label is
///         empty.
///
/// Example:
///     >>> label_prompt("Sky colour?", ["red", "blue"], ["A", "B"])
///     'Question: Sky colour?\nA. red\nB. blue\nAnswer:'
#[pyfunction]
fn label_prompt(question: &str, choices: Vec<String>, labels: Vec<String>) -> PyResult<String> {
    lora_ens::prompt::label_prompt(question, &choices, &labels).map_err(to_pyerr)
}

/// The text scored for a label after a `label_prompt`: ``LABEL_PREFIX + label``.
///
/// Example:
///     >>> label_continuation("A")
///     ' A'
#[pyfunction]
fn label_continuation(label: &str) -> String {
    lora_ens::prompt::label_continuation(label)
}

/// The context for choice-text scoring: ``"Question: {question}\nAnswer:"``.
///
/// Example:
///     >>> choice_context("Sky colour?")
///     'Question: Sky colour?\nAnswer:'
#[pyfunction]
fn choice_context(question: &str) -> String {
    lora_ens::prompt::choice_context(question)
}

/// The continuation scored for one choice after `choice_context`: a space, then the choice
/// trimmed of surrounding whitespace.
///
/// Example:
///     >>> choice_continuation(" blue\n")
///     ' blue'
#[pyfunction]
fn choice_continuation(choice: &str) -> String {
    lora_ens::prompt::choice_continuation(choice)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(label_prompt, m)?)?;
    m.add_function(wrap_pyfunction!(label_continuation, m)?)?;
    m.add_function(wrap_pyfunction!(choice_context, m)?)?;
    m.add_function(wrap_pyfunction!(choice_continuation, m)?)?;
    m.add("TEMPLATE_NAME", lora_ens::prompt::TEMPLATE_NAME)?;
    m.add("LABEL_PREFIX", lora_ens::prompt::LABEL_PREFIX)?;
    Ok(())
}
