//! Bindings of `lora_ens::weights`: one GGUF tensor dequantized by the engine's own kernels,
//! for tests that compare the engine's dequantization with gguf-py's.

use std::path::PathBuf;

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;

use crate::error::call;

/// Tensor ``name`` of the GGUF file at ``path``, dequantized by the engine's kernels.
///
/// Args:
///     path: the GGUF file.
///     name: the tensor's GGUF name (``blk.0.attn_q.weight``).
///
/// Returns:
///     float32 array shaped as the GGUF dims in row-major order: a matrix is
///     ``(rows, cols) = (ne1, ne0)``.
///
/// Raises:
///     ModelLoadError: the tensor is missing, or its type is not one the engine
///         dequantizes itself.
#[pyfunction]
fn read_tensor<'py>(
    py: Python<'py>,
    path: PathBuf,
    name: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (dims, values) = call(py, || lora_ens::read_tensor_f32(&path, name))?;
    PyArray1::from_vec(py, values).reshape(dims)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_tensor, m)?)
}
