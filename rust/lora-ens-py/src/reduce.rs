//! Bindings of `lora_ens::reduce`: the reducer from member logits (N, M, K) to the
//! ensemble's probabilities, prediction and uncertainty, as a dict of NumPy arrays.

use numpy::{AllowTypeChange, PyArray1, PyArrayLikeDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::call;

/// Reduce M ensemble members' logits to the ensemble's distribution and uncertainty.
///
/// Each member's logits become a softmax over the question's options (stable, in f64); the
/// ensemble distribution is the mean of those probabilities (a mixture, not averaged logits).
///
/// Args:
///     member_logits: array of shape ``(N, M, K)`` (converted to float32): N questions,
///         M >= 1 members, K option slots. ``-inf`` marks an impossible option.
///     valid: optional K_i <= K per question, the number of options it uses; logits beyond
///         K_i are padding (ignored) and get probability 0. ``None`` means all K.
///
/// Returns:
///     dict of NumPy arrays: ``member_probs`` (N, M, K) float32, ``probs`` (N, K) float32,
///     ``prediction`` (N,) int64 (argmax of ``probs``, lowest index on ties),
///     ``confidence`` (N,) float32 (max of ``probs``), ``entropy`` (N,) float32
///     (H[probs], nats), ``expected_entropy`` (N,) float32 (mean member entropy),
///     ``mutual_information`` (N,) float32 (entropy - expected_entropy, >= 0),
///     ``member_predictions`` (N, M) int64, ``agreement`` (N,) float32 (fraction of members
///     whose argmax is ``prediction``).
///
/// Raises:
///     InputError: the array is not 3-D, M or K is 0, ``valid`` has the wrong length or an
///         entry outside 1..=K, a logit is NaN or +inf, or a member's logits are all -inf.
///
/// Example:
///     >>> import numpy as np
///     >>> r = reduce(np.array([[[0.0, 1.0], [1.0, 0.0]]], dtype=np.float32))
///     >>> r["probs"], r["prediction"]
///     (array([[0.5, 0.5]], dtype=float32), array([0]))
#[pyfunction]
#[pyo3(signature = (member_logits, valid=None))]
fn reduce<'py>(
    py: Python<'py>,
    member_logits: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    valid: Option<Vec<usize>>,
) -> PyResult<Bound<'py, PyDict>> {
    let shape = member_logits.shape().to_vec();
    // Copied in logical (row-major) order, so strided and non-contiguous views also work.
    let logits: Vec<f32> = member_logits.as_array().iter().copied().collect();
    let r = call(py, || {
        let &[n, m, k] = shape.as_slice() else {
            return Err(lora_ens::Error::Input(format!(
                "member_logits must have shape (N, M, K), got shape {shape:?}"
            )));
        };
        lora_ens::reduce::reduce(&logits, n, m, k, valid.as_deref())
    })?;
    reduced_dict(py, r)
}

/// The reducer's arrays as a dict of NumPy arrays (one copy each, no per-element objects).
pub(crate) fn reduced_dict<'py>(
    py: Python<'py>,
    r: lora_ens::reduce::Reduced,
) -> PyResult<Bound<'py, PyDict>> {
    let (n, m, k) = (r.n, r.n_members, r.k);
    let index = |v: Vec<usize>| v.into_iter().map(|x| x as i64).collect::<Vec<i64>>();
    let d = PyDict::new(py);
    d.set_item(
        "member_probs",
        PyArray1::from_vec(py, r.member_probs).reshape([n, m, k])?,
    )?;
    d.set_item("probs", PyArray1::from_vec(py, r.probs).reshape([n, k])?)?;
    d.set_item("prediction", PyArray1::from_vec(py, index(r.prediction)))?;
    d.set_item("confidence", PyArray1::from_vec(py, r.confidence))?;
    d.set_item("entropy", PyArray1::from_vec(py, r.entropy))?;
    d.set_item(
        "expected_entropy",
        PyArray1::from_vec(py, r.expected_entropy),
    )?;
    d.set_item(
        "mutual_information",
        PyArray1::from_vec(py, r.mutual_information),
    )?;
    d.set_item(
        "member_predictions",
        PyArray1::from_vec(py, index(r.member_predictions)).reshape([n, m])?,
    )?;
    d.set_item("agreement", PyArray1::from_vec(py, r.agreement))?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(reduce, m)?)
}
