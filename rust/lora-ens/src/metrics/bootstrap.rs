//! Paired bootstrap of a metric difference between two predictors on the same questions:
//! the questions are resampled with replacement (the same indices for both predictors), the
//! difference `metric(a) - metric(b)` is recomputed on every resample, and the percentile
//! interval of those differences is reported next to the difference on the full data. The
//! resample indices come from a SplitMix64 stream ([`bootstrap_indices`] exposes it), so a
//! seed gives the same interval on every machine.
//! Test: `cargo test -p lora-ens --lib metrics`.

use std::str::FromStr;

use super::{ECE_BINS, Rows};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// The metric whose difference [`paired_bootstrap`] resamples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMetric {
    /// Fraction of questions whose argmax (lowest index on ties) is the answer.
    Accuracy,
    /// Mean negative log-likelihood of the answer, as [`super::nll`].
    Nll,
    /// Multi-class Brier score, as [`super::brier`].
    Brier,
    /// Expected calibration error over [`ECE_BINS`] bins, as [`super::ece`].
    Ece,
}

impl FromStr for BootMetric {
    type Err = Error;

    /// `accuracy`, `nll`, `brier` or `ece`.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "accuracy" => Ok(Self::Accuracy),
            "nll" => Ok(Self::Nll),
            "brier" => Ok(Self::Brier),
            "ece" => Ok(Self::Ece),
            other => Err(Error::Input(format!(
                "metric must be one of accuracy, nll, brier, ece; got {other:?}"
            ))),
        }
    }
}

/// A point estimate with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// `metric(a) - metric(b)` on all the questions.
    pub estimate: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

/// The resample indices of [`paired_bootstrap`]: `n_resamples` rows of `n` question indices,
/// row-major. Resample r is draws `r * n .. (r + 1) * n` of one SplitMix64 stream whose state
/// starts at `seed`; a draw `x` maps to the index `floor(x * n / 2^64)`.
///
/// ```
/// let idx = lora_ens::metrics::bootstrap_indices(3, 2, 0);
/// assert_eq!(idx.len(), 6);
/// assert!(idx.iter().all(|&i| i < 3));
/// ```
pub fn bootstrap_indices(n: usize, n_resamples: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    (0..n * n_resamples).map(|_| rng.below(n)).collect()
}

/// What one predictor contributes to the metric.
struct Predictor<'a> {
    rows: Rows<'a>,
    /// The per-question value whose mean is the metric (unused for ECE).
    values: Vec<f64>,
}

impl<'a> Predictor<'a> {
    fn new(rows: Rows<'a>, metric: BootMetric) -> Self {
        let n = rows.n();
        let values = match metric {
            BootMetric::Accuracy => (0..n).map(|i| rows.correct(i)).collect(),
            BootMetric::Nll => (0..n).map(|i| rows.nll_of(i)).collect(),
            BootMetric::Brier => (0..n).map(|i| rows.brier_of(i)).collect(),
            BootMetric::Ece => Vec::new(),
        };
        Self { rows, values }
    }

    /// The metric on the questions `idx` (with repeats).
    fn on(&self, idx: &[usize], metric: BootMetric) -> f64 {
        match metric {
            BootMetric::Ece => self.rows.binned(idx.iter().copied(), ECE_BINS).ece(),
            _ => idx.iter().map(|&i| self.values[i]).sum::<f64>() / idx.len() as f64,
        }
    }
}

/// The `q`-quantile of sorted values, linearly interpolated between the two nearest order
/// statistics at position `q * (len - 1)` (NumPy's default `np.quantile` method).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = q * (sorted.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Paired bootstrap of `metric(a) - metric(b)` for two predictors on the same N questions.
///
/// `probs_a` and `probs_b` are (N, K) row-major with the same `k`, `valid` and `answers`
/// (their meaning as for [`super::accuracy`]). Each of `n_resamples` resamples draws N
/// question indices with replacement ([`bootstrap_indices`] with `seed`), the same for both
/// predictors, and recomputes the difference on them. The interval is the percentile
/// interval of those differences: their `(1 - confidence) / 2` and `(1 + confidence) / 2`
/// quantiles, interpolated as NumPy's default `np.quantile`. The estimate is the difference
/// on all N questions. Identical predictors give `[0, 0]`.
///
/// # Errors
///
/// [`Error::Input`] for a bad `probs_a` or `probs_b` (as [`super::accuracy`]), probabilities
/// of different lengths, `n_resamples` = 0 or `confidence` outside (0, 1).
///
/// ```
/// use lora_ens::metrics::{BootMetric, paired_bootstrap};
/// let a = [0.9, 0.1, 0.2, 0.8];
/// let b = [0.6, 0.4, 0.5, 0.5];
/// let d = paired_bootstrap(&a, &b, 2, None, &[0, 1], BootMetric::Accuracy, 100, 0.95, 0)
///     .unwrap();
/// assert_eq!(d.estimate, 0.5);
/// assert!(d.low <= d.estimate && d.estimate <= d.high);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn paired_bootstrap(
    probs_a: &[f64],
    probs_b: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
    metric: BootMetric,
    n_resamples: usize,
    confidence: f64,
    seed: u64,
) -> Result<Interval> {
    if probs_a.len() != probs_b.len() {
        return Err(Error::Input(format!(
            "paired_bootstrap: probs_a has {} values and probs_b {}; both predictors must score \
             the same questions",
            probs_a.len(),
            probs_b.len()
        )));
    }
    if n_resamples == 0 {
        return Err(Error::Input(
            "paired_bootstrap: n_resamples must be >= 1".to_owned(),
        ));
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(Error::Input(format!(
            "paired_bootstrap: confidence must lie in (0, 1), got {confidence}"
        )));
    }
    let a = Predictor::new(Rows::new(probs_a, k, valid, answers)?, metric);
    let b = Predictor::new(Rows::new(probs_b, k, valid, answers)?, metric);
    let n = answers.len();
    let all: Vec<usize> = (0..n).collect();
    let estimate = a.on(&all, metric) - b.on(&all, metric);
    let mut rng = SplitMix64(seed);
    let mut idx = vec![0usize; n];
    let mut diffs: Vec<f64> = (0..n_resamples)
        .map(|_| {
            idx.iter_mut().for_each(|i| *i = rng.below(n));
            a.on(&idx, metric) - b.on(&idx, metric)
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Ok(Interval {
        estimate,
        low: quantile(&diffs, tail),
        high: quantile(&diffs, 1.0 - tail),
    })
}
