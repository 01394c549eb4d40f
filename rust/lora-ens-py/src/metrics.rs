//! Bindings of `lora_ens::metrics`: accuracy, NLL, Brier, ECE with its reliability bins,
//! OOD AUROC / average precision, the paired bootstrap of a metric difference, selective
//! prediction (risk-coverage, AURC) and temperature scaling, the one implementation
//! `lora_ens_rs.metrics` calls. Arrays arrive as float64 (N, K) probabilities (padding zeros)
//! or logits, and int answers. Test: `pytest tests/test_metrics.py`.

use numpy::{
    AllowTypeChange, PyArray1, PyArray2, PyArrayLike1, PyArrayLike2, PyArrayMethods,
    PyUntypedArrayMethods,
};
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

/// A risk-coverage curve as NumPy arrays: `(coverage, risk)`, each `(N,)`.
type Curve<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>);

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

/// ``(estimate, low, high)`` of ``metric(a) - metric(b)``: the difference on all questions
/// and its paired-bootstrap percentile interval (SplitMix64 resamples from ``seed``).
#[pyfunction]
#[pyo3(signature = (probs_a, probs_b, answers, metric, n_resamples=2000, confidence=0.95, seed=0))]
#[allow(clippy::too_many_arguments)]
fn paired_bootstrap(
    py: Python<'_>,
    probs_a: Probs<'_>,
    probs_b: Probs<'_>,
    answers: Vec<usize>,
    metric: &str,
    n_resamples: usize,
    confidence: f64,
    seed: u64,
) -> PyResult<(f64, f64, f64)> {
    let metric: lora_ens::metrics::BootMetric = call(py, || metric.parse())?;
    let ((a, k), (b, k_b)) = (rows(&probs_a), rows(&probs_b));
    if k != k_b {
        let msg = format!("paired_bootstrap: probs_a has K = {k} options and probs_b K = {k_b}");
        return call(py, || Err(lora_ens::Error::Input(msg)));
    }
    let i = call(py, || {
        lora_ens::metrics::paired_bootstrap(
            &a,
            &b,
            k,
            None,
            &answers,
            metric,
            n_resamples,
            confidence,
            seed,
        )
    })?;
    Ok((i.estimate, i.low, i.high))
}

/// The ``(n_resamples, n)`` question indices ``paired_bootstrap`` resamples with ``seed``.
#[pyfunction]
#[pyo3(signature = (n, n_resamples=2000, seed=0))]
fn bootstrap_indices(
    py: Python<'_>,
    n: usize,
    n_resamples: usize,
    seed: u64,
) -> PyResult<Bound<'_, PyArray2<i64>>> {
    let idx = lora_ens::metrics::bootstrap_indices(n, n_resamples, seed);
    let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    PyArray1::from_vec(py, idx).reshape([n_resamples, n])
}

/// ``(coverage, risk)``: the selective risk when answering the k lowest-score questions,
/// k = 1..N (ties by question index).
#[pyfunction]
fn risk_coverage<'py>(
    py: Python<'py>,
    probs: Probs<'py>,
    answers: Vec<usize>,
    scores: Scores1<'py>,
) -> PyResult<Curve<'py>> {
    let ((p, k), s) = (rows(&probs), scores.as_array().to_vec());
    let rc = call(py, || {
        lora_ens::metrics::risk_coverage(&p, k, None, &answers, &s)
    })?;
    Ok((
        PyArray1::from_vec(py, rc.coverage),
        PyArray1::from_vec(py, rc.risk),
    ))
}

/// Area under the risk-coverage curve: mean selective risk over coverages k/N.
#[pyfunction]
fn aurc(
    py: Python<'_>,
    probs: Probs<'_>,
    answers: Vec<usize>,
    scores: Scores1<'_>,
) -> PyResult<f64> {
    with_scores(py, &probs, &answers, &scores, lora_ens::metrics::aurc)
}

/// AURC of the best ordering (every right answer first).
#[pyfunction]
fn optimal_aurc(py: Python<'_>, probs: Probs<'_>, answers: Vec<usize>) -> PyResult<f64> {
    let (p, k) = rows(&probs);
    call(py, || {
        lora_ens::metrics::optimal_aurc(&p, k, None, &answers)
    })
}

/// Excess AURC: ``aurc - optimal_aurc`` (>= 0).
#[pyfunction]
fn excess_aurc(
    py: Python<'_>,
    probs: Probs<'_>,
    answers: Vec<usize>,
    scores: Scores1<'_>,
) -> PyResult<f64> {
    with_scores(
        py,
        &probs,
        &answers,
        &scores,
        lora_ens::metrics::excess_aurc,
    )
}

/// An engine metric of `(probs, k, valid, answers, scores)`.
type ScoredMetric = fn(&[f64], usize, Option<&[usize]>, &[usize], &[f64]) -> lora_ens::Result<f64>;

/// A [`ScoredMetric`] on dense (N, K) probabilities.
fn with_scores(
    py: Python<'_>,
    probs: &Probs<'_>,
    answers: &[usize],
    scores: &Scores1<'_>,
    metric: ScoredMetric,
) -> PyResult<f64> {
    let ((p, k), s) = (rows(probs), scores.as_array().to_vec());
    call(py, || metric(&p, k, None, answers, &s))
}

/// The temperature in [0.05, 20] minimising the NLL of ``softmax(logits / T)``; question i
/// uses its first ``n_options[i]`` logits (default: all).
#[pyfunction]
#[pyo3(signature = (logits, answers, n_options=None))]
fn fit_temperature(
    py: Python<'_>,
    logits: Probs<'_>,
    answers: Vec<usize>,
    n_options: Option<Vec<usize>>,
) -> PyResult<f64> {
    let (z, k) = rows(&logits);
    call(py, || {
        lora_ens::metrics::fit_temperature(&z, k, n_options.as_deref(), &answers)
    })
}

/// ``softmax(logits / temperature)`` as (N, K) float64, zeros in padding slots.
#[pyfunction]
#[pyo3(signature = (logits, temperature, n_options=None))]
fn apply_temperature<'py>(
    py: Python<'py>,
    logits: Probs<'py>,
    temperature: f64,
    n_options: Option<Vec<usize>>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let (z, k) = rows(&logits);
    let n = logits.shape()[0];
    let p = call(py, || {
        lora_ens::metrics::apply_temperature(&z, k, n_options.as_deref(), temperature)
    })?;
    PyArray1::from_vec(py, p).reshape([n, k])
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
    m.add_function(wrap_pyfunction!(ood_aupr, m)?)?;
    m.add_function(wrap_pyfunction!(paired_bootstrap, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_indices, m)?)?;
    m.add_function(wrap_pyfunction!(risk_coverage, m)?)?;
    m.add_function(wrap_pyfunction!(aurc, m)?)?;
    m.add_function(wrap_pyfunction!(optimal_aurc, m)?)?;
    m.add_function(wrap_pyfunction!(excess_aurc, m)?)?;
    m.add_function(wrap_pyfunction!(fit_temperature, m)?)?;
    m.add_function(wrap_pyfunction!(apply_temperature, m)?)
}
