//! Bindings of `lora_ens::score`: a scoring result as a dict of NumPy arrays (the reducer's
//! arrays plus the number of options per question and the members' raw scores).

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::reduce::reduced_dict;

/// `Scores` as a dict: the reducer's arrays, `n_options` (N,) int64 and `member_scores`
/// (N, M, K) float32 (what each member's softmax was taken over; `-inf` in padding).
pub(crate) fn scores_dict<'py>(
    py: Python<'py>,
    s: lora_ens::score::Scores,
) -> PyResult<Bound<'py, PyDict>> {
    let (n, m, k) = (s.reduced.n, s.reduced.n_members, s.reduced.k);
    let d = reduced_dict(py, s.reduced)?;
    let n_options: Vec<i64> = s.n_options.iter().map(|&x| x as i64).collect();
    d.set_item("n_options", PyArray1::from_vec(py, n_options))?;
    d.set_item(
        "member_scores",
        PyArray1::from_vec(py, s.member_scores).reshape([n, m, k])?,
    )?;
    Ok(d)
}
