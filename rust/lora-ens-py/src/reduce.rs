//! Bindings of `lora_ens::reduce`: `_core.reduce`, the reducer from member logits (N, M, K)
//! to the ensemble's probabilities, prediction and uncertainty, and `_core.Reduced`, its
//! result (NumPy arrays made once; `Scores` extends it).

use numpy::{
    AllowTypeChange, PyArray1, PyArray2, PyArray3, PyArrayLikeDyn, PyArrayMethods,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::error::call;

/// The ensemble's reduction of N questions by M members over K option slots.
///
/// Attributes:
///     member_probs: (N, M, K) float32, each member's softmax over the question's options.
///     probs: (N, K) float32, the ensemble's distribution (the mean of the members').
///     prediction: (N,) int64, argmax of ``probs`` (lowest index on ties).
///     confidence: (N,) float32, max of ``probs``.
///     entropy: (N,) float32, H[probs] in nats (total uncertainty).
///     expected_entropy: (N,) float32, the members' mean entropy (aleatoric part).
///     mutual_information: (N,) float32, ``entropy - expected_entropy`` (epistemic, >= 0).
///     member_predictions: (N, M) int64, each member's argmax.
///     agreement: (N,) float32, the fraction of members that predict ``prediction``.
#[pyclass(module = "lora_ens_rs._core", subclass, frozen)]
pub struct Reduced {
    member_probs: Py<PyArray3<f32>>,
    probs: Py<PyArray2<f32>>,
    prediction: Py<PyArray1<i64>>,
    confidence: Py<PyArray1<f32>>,
    entropy: Py<PyArray1<f32>>,
    expected_entropy: Py<PyArray1<f32>>,
    mutual_information: Py<PyArray1<f32>>,
    member_predictions: Py<PyArray2<i64>>,
    agreement: Py<PyArray1<f32>>,
}

impl Reduced {
    /// The arrays of `r`, one copy each (no per-element objects).
    pub(crate) fn arrays(py: Python<'_>, r: &lora_ens::reduce::Reduced) -> PyResult<Self> {
        let (n, m, k) = (r.n, r.n_members, r.k);
        let index = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        let vec = |v: &[f32]| PyArray1::from_slice(py, v).unbind();
        Ok(Self {
            member_probs: PyArray1::from_slice(py, &r.member_probs)
                .reshape([n, m, k])?
                .unbind(),
            probs: PyArray1::from_slice(py, &r.probs).reshape([n, k])?.unbind(),
            prediction: PyArray1::from_vec(py, index(&r.prediction)).unbind(),
            confidence: vec(&r.confidence),
            entropy: vec(&r.entropy),
            expected_entropy: vec(&r.expected_entropy),
            mutual_information: vec(&r.mutual_information),
            member_predictions: PyArray1::from_vec(py, index(&r.member_predictions))
                .reshape([n, m])?
                .unbind(),
            agreement: vec(&r.agreement),
        })
    }
}

#[pymethods]
impl Reduced {
    #[getter]
    fn member_probs(&self, py: Python<'_>) -> Py<PyArray3<f32>> {
        self.member_probs.clone_ref(py)
    }
    #[getter]
    fn probs(&self, py: Python<'_>) -> Py<PyArray2<f32>> {
        self.probs.clone_ref(py)
    }
    #[getter]
    fn prediction(&self, py: Python<'_>) -> Py<PyArray1<i64>> {
        self.prediction.clone_ref(py)
    }
    #[getter]
    fn confidence(&self, py: Python<'_>) -> Py<PyArray1<f32>> {
        self.confidence.clone_ref(py)
    }
    #[getter]
    fn entropy(&self, py: Python<'_>) -> Py<PyArray1<f32>> {
        self.entropy.clone_ref(py)
    }
    #[getter]
    fn expected_entropy(&self, py: Python<'_>) -> Py<PyArray1<f32>> {
        self.expected_entropy.clone_ref(py)
    }
    #[getter]
    fn mutual_information(&self, py: Python<'_>) -> Py<PyArray1<f32>> {
        self.mutual_information.clone_ref(py)
    }
    #[getter]
    fn member_predictions(&self, py: Python<'_>) -> Py<PyArray2<i64>> {
        self.member_predictions.clone_ref(py)
    }
    #[getter]
    fn agreement(&self, py: Python<'_>) -> Py<PyArray1<f32>> {
        self.agreement.clone_ref(py)
    }
}

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
///     ``Reduced``: ``member_probs``, ``probs``, ``prediction``, ``confidence``, ``entropy``,
///     ``expected_entropy``, ``mutual_information``, ``member_predictions``, ``agreement``.
///
/// Raises:
///     InputError: the array is not 3-D, M or K is 0, ``valid`` has the wrong length or an
///         entry outside 1..=K, a logit is NaN or +inf, or a member's logits are all -inf.
///
/// Example:
///     >>> import numpy as np
///     >>> r = reduce(np.array([[[0.0, 1.0], [1.0, 0.0]]], dtype=np.float32))
///     >>> r.probs, r.prediction
///     (array([[0.5, 0.5]], dtype=float32), array([0]))
#[pyfunction]
#[pyo3(signature = (member_logits, valid=None))]
fn reduce<'py>(
    py: Python<'py>,
    member_logits: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    valid: Option<Vec<usize>>,
) -> PyResult<Reduced> {
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
    Reduced::arrays(py, &r)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Reduced>()?;
    m.add_function(wrap_pyfunction!(reduce, m)?)
}
