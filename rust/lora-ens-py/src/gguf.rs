//! Bindings of `lora_ens::gguf`: the header the engine's validating GGUF reader makes of a
//! file, for inspection and for checking it against other readers (gguf-py).
//! Test: `python -m pytest tests/test_gguf_malformed.py`.

use lora_ens::gguf::{GgufFile, Value};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::call;

fn value_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Value::U8(x) => x.into_bound_py_any(py),
        Value::I8(x) => x.into_bound_py_any(py),
        Value::U16(x) => x.into_bound_py_any(py),
        Value::I16(x) => x.into_bound_py_any(py),
        Value::U32(x) => x.into_bound_py_any(py),
        Value::I32(x) => x.into_bound_py_any(py),
        Value::U64(x) => x.into_bound_py_any(py),
        Value::I64(x) => x.into_bound_py_any(py),
        Value::F32(x) => x.into_bound_py_any(py),
        Value::F64(x) => x.into_bound_py_any(py),
        Value::Bool(x) => x.into_bound_py_any(py),
        Value::String(x) => x.into_bound_py_any(py),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            Ok(list.into_any())
        }
    }
}

/// The metadata and tensor directory of a GGUF file, as the engine reads them.
///
/// Args:
///     path: the GGUF file.
///
/// Returns:
///     ``(metadata, tensors)``: a dict of every metadata key to its value (ints, floats,
///     bools, strings and lists of them), and one ``(name, type, shape, offset)`` per tensor
///     in name order: llama.cpp's type name (``"Q4_1"``), the dims in GGUF order (innermost
///     first, as gguf-py's ``ReaderTensor.shape``) and the data's absolute offset in the file.
///
/// Raises:
///     MissingFileError: the file does not exist.
///     ModelLoadError: the file is not a valid GGUF (the message names the field or tensor).
#[pyfunction]
#[allow(clippy::type_complexity)] // the Python-facing tuple is the documented shape
fn gguf_header<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
) -> PyResult<(Bound<'py, PyDict>, Vec<(String, String, Vec<usize>, u64)>)> {
    let gguf = call(py, || GgufFile::open(&path))?;
    let metadata = PyDict::new(py);
    for (key, value) in gguf.metadata() {
        metadata.set_item(key, value_to_py(py, value)?)?;
    }
    let mut tensors: Vec<_> = gguf
        .tensor_infos()
        .iter()
        .map(|(name, info)| {
            let shape = info.dims().iter().rev().copied().collect();
            (name.clone(), info.type_name().to_owned(), shape, info.start)
        })
        .collect();
    tensors.sort();
    Ok((metadata, tensors))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gguf_header, m)?)
}
