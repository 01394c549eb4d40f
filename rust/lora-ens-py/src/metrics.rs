//! Bindings of `lora_ens::metrics`: accuracy, NLL, Brier, ECE with its reliability bins and
//! OOD AUROC / average precision, the one implementation `lora_ens_rs.metrics` calls.
//! Arrays arrive as float64 (N, K) probabilities (padding zeros) and int answers.

use numpy::{AllowTypeChange, PyArray1, PyArrayLike1, PyArrayLike2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::call;

type Probs<'py> = PyArrayLike2<'py, f64, AllowTypeChange>;
type Scores1<'py> = PyArrayLike1<'py, f64, AllowTypeChange>;

/// (row-major values, K) of an (N, K) array.
fn rows(probs: &Probs<'_>) -> (Vec<f64>, usize) {
    let k = probs.shape()[1];
    (probs.as_array().iter().copied().collect(), k)
}

/// The engine's accuracy / nll / brier: `(probs (N, K), K, valid, answers) -> value`.
type Metric = fn(&[f64], usize, Option<&[usize]>, &[usize]) -> lora_ens::Result<f64>;

/// Reliability bins as NumPy arrays: `(count, accuracy, confidence)`, each `(n_bins,)`.
type Bins<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

/// `name(probs, answers)` for one of accuracy / nll / brier.
fn scalar(py: Python<'_>, probs: Probs<'_>, answers: Vec<usize>, f: Metric) -> PyResult<f64> {
    let (p, k) = rows(&probs);
    call(py, || f(&p, k, None, &answers))
}

/// Fraction of questions whose argmax (lowest index on ties) is the answer.
#[pyfunction]
fn accuracy(py: Python<'_>, probs: Probs<'_>, answers: Vec<usize>) -> PyResult<f64> {
    scalar(py, probs, answers, lora_ens::metrics::accuracy)
}

/// Mean negative log-probability of the answer (nats), probabilities clamped at 1e-12.
#[pyfunction]
fn nll(py: Python<'_>, probs: Probs<'_>, answers: Vec<usize>) -> PyResult<f64> {
    scalar(py, probs, answers, lora_ens::metrics::nll)
}

/// Multi-class Brier score: mean over questions of ``sum_k (p_k - onehot_k)^2``.
#[pyfunction]
fn brier(py: Python<'_>, probs: Probs<'_>, answers: Vec<usize>) -> PyResult<f64> {
    scalar(py, probs, answers, lora_ens::metrics::brier)
}

/// Reliability bins: ``(count, accuracy, confidence)`` arrays of length ``n_bins`` (NaN means
/// in empty bins); bin b holds confidences in ``(b / n_bins, (b + 1) / n_bins]``.
#[pyfunction]
#[pyo3(signature = (probs, answers, n_bins=15))]
fn reliability<'py>(
    py: Python<'py>,
    probs: Probs<'py>,
    answers: Vec<usize>,
    n_bins: usize,
) -> PyResult<Bins<'py>> {
    let (p, k) = rows(&probs);
    let r = call(py, || {
        lora_ens::metrics::reliability(&p, k, None, &answers, n_bins)
    })?;
    let count: Vec<i64> = r.count.iter().map(|&c| c as i64).collect();
    Ok((
        PyArray1::from_vec(py, count),
        PyArray1::from_vec(py, r.accuracy),
        PyArray1::from_vec(py, r.confidence),
    ))
}

/// Expected calibration error over ``n_bins`` equal-width confidence bins.
#[pyfunction]
#[pyo3(signature = (probs, answers, n_bins=15))]
fn ece(py: Python<'_>, probs: Probs<'_>, answers: Vec<usize>, n_bins: usize) -> PyResult<f64> {
    let (p, k) = rows(&probs);
    call(py, || lora_ens::metrics::ece(&p, k, None, &answers, n_bins))
}

/// AUROC of a higher-is-OOD score at telling ``out_scores`` from ``in_scores`` (ties 1/2).
#[pyfunction]
fn ood_auroc(py: Python<'_>, in_scores: Scores1<'_>, out_scores: Scores1<'_>) -> PyResult<f64> {
    let (a, b) = (
        in_scores.as_array().to_vec(),
        out_scores.as_array().to_vec(),
    );
    call(py, || lora_ens::metrics::ood_auroc(&a, &b))
}

/// Average precision of a higher-is-OOD score (step-wise, as scikit-learn's).
#[pyfunction]
fn ood_aupr(py: Python<'_>, in_scores: Scores1<'_>, out_scores: Scores1<'_>) -> PyResult<f64> {
    let (a, b) = (
        in_scores.as_array().to_vec(),
        out_scores.as_array().to_vec(),
    );
    call(py, || lora_ens::metrics::ood_aupr(&a, &b))
}

/// The engine's `Metrics` as a dict (`n`, `accuracy`, `nll`, `brier`, `ece`).
pub(crate) fn metrics_dict<'py>(
    py: Python<'py>,
    m: &lora_ens::metrics::Metrics,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    d.set_item("n", m.n)?;
    d.set_item("accuracy", m.accuracy)?;
    d.set_item("nll", m.nll)?;
    d.set_item("brier", m.brier)?;
    d.set_item("ece", m.ece)?;
    Ok(d.into_any())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(accuracy, m)?)?;
    m.add_function(wrap_pyfunction!(nll, m)?)?;
    m.add_function(wrap_pyfunction!(brier, m)?)?;
    m.add_function(wrap_pyfunction!(reliability, m)?)?;
    m.add_function(wrap_pyfunction!(ece, m)?)?;
    m.add_function(wrap_pyfunction!(ood_auroc, m)?)?;
    m.add_function(wrap_pyfunction!(ood_aupr, m)?)
}
