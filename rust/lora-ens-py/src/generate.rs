//! Bindings of `lora_ens::generate`: a generation result as a dict (text, token ids and the
//! ensemble's per-token probability, entropy, expected entropy and mutual information).

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `Generation` as a dict: `text`, `tokens` (list of int), `finish_reason` (`"eos"`,
/// `"stop"` or `"length"`) and float32 arrays `probs`, `entropy`, `expected_entropy`,
/// `mutual_information`, one entry per generated token.
pub(crate) fn generation_dict<'py>(
    py: Python<'py>,
    g: lora_ens::generate::Generation,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("text", g.text)?;
    d.set_item("tokens", g.tokens)?;
    d.set_item("finish_reason", g.finish_reason.as_str())?;
    d.set_item("probs", PyArray1::from_vec(py, g.probs))?;
    d.set_item("entropy", PyArray1::from_vec(py, g.entropy))?;
    d.set_item(
        "expected_entropy",
        PyArray1::from_vec(py, g.expected_entropy),
    )?;
    d.set_item(
        "mutual_information",
        PyArray1::from_vec(py, g.mutual_information),
    )?;
    Ok(d)
}
