//! Selective prediction: answer only the questions the predictor is least uncertain about
//! (by an uncertainty score such as predictive entropy or mutual information) and measure
//! the error rate on them at every coverage: the risk-coverage curve, its area (AURC,
//! Geifman & El-Yaniv 2017), the area of the best possible ordering and their difference
//! (excess AURC, E-AURC; Geifman et al. 2019, Ding et al. 2020).
//! Test: `cargo test -p lora-ens --lib metrics`.

use super::Rows;
use crate::{Error, Result};

/// The risk-coverage curve of N questions.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskCoverage {
    /// Coverage `k / N` for k = 1..N.
    pub coverage: Vec<f64>,
    /// Selective risk at each coverage: the fraction answered wrong (argmax, lowest index on
    /// ties, differs from the answer) among the k questions with the lowest scores.
    pub risk: Vec<f64>,
}

impl RiskCoverage {
    /// The area under the curve: the mean risk over the coverages (see [`aurc`]).
    pub fn area(&self) -> f64 {
        self.risk.iter().sum::<f64>() / self.risk.len() as f64
    }
}

/// Risk at coverage k/N for k = 1..N of 0/1 errors taken in the order `order`.
fn curve(errors: &[f64], order: &[usize]) -> RiskCoverage {
    let n = order.len() as f64;
    let mut wrong = 0.0f64;
    let (coverage, risk) = order
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            wrong += errors[i];
            ((k + 1) as f64 / n, wrong / (k + 1) as f64)
        })
        .unzip();
    RiskCoverage { coverage, risk }
}

/// 1 for each question answered wrong, else 0.
fn errors(probs: &[f64], k: usize, valid: Option<&[usize]>, answers: &[usize]) -> Result<Vec<f64>> {
    let r = Rows::new(probs, k, valid, answers)?;
    Ok((0..r.n()).map(|i| 1.0 - r.correct(i)).collect())
}

/// Question indices by ascending score, ties in ascending question index (a stable sort).
fn ascending(scores: &[f64], n: usize) -> Result<Vec<usize>> {
    if scores.len() != n {
        return Err(Error::Input(format!(
            "selective prediction: scores has {} entries, expected one per question (N = {n})",
            scores.len()
        )));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::Input(format!(
            "selective prediction: scores[{i}] is {}, expected a finite uncertainty score",
            scores[i]
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    Ok(order)
}

/// The risk-coverage curve of answering only the questions with the lowest uncertainty
/// `scores` (one per question; lower = more certain): at coverage k/N (k = 1..N) the k
/// questions with the lowest scores are answered and the risk is the fraction of them whose
/// argmax (lowest index on ties) is wrong. Ties in the score are broken by question index,
/// the earlier question answered first, so the curve is deterministic; with many ties the
/// curve then depends on the order of the questions.
///
/// `probs`, `k`, `valid` and `answers` as for [`super::accuracy`].
///
/// # Errors
///
/// [`Error::Input`] as for [`super::accuracy`], or when `scores` does not have N entries or
/// one is not finite.
///
/// ```
/// // Question 1 (score 0.1) is answered first and is right; question 0 is wrong.
/// let rc = lora_ens::metrics::risk_coverage(&[0.4, 0.6, 0.9, 0.1], 2, None, &[0, 0], &[0.7, 0.1])
///     .unwrap();
/// assert_eq!(rc.coverage, [0.5, 1.0]);
/// assert_eq!(rc.risk, [0.0, 0.5]);
/// ```
pub fn risk_coverage(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
    scores: &[f64],
) -> Result<RiskCoverage> {
    let errors = errors(probs, k, valid, answers)?;
    let order = ascending(scores, answers.len())?;
    Ok(curve(&errors, &order))
}

/// Area under the risk-coverage curve: the mean selective risk over the coverages k/N,
/// k = 1..N, of [`risk_coverage`], `AURC = (1/N) sum_k risk(k/N)` (a right Riemann sum, as
/// Geifman & El-Yaniv 2017). 0 when every answer is right, 1 when every one is wrong;
/// lower is better. Arguments, tie-breaking and errors as [`risk_coverage`].
pub fn aurc(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
    scores: &[f64],
) -> Result<f64> {
    Ok(risk_coverage(probs, k, valid, answers, scores)?.area())
}

/// The AURC of the best ordering, every right answer before every wrong one: with C right
/// answers of N, `(1/N) sum_{k > C} (k - C) / k`. It is the least AURC any score can reach
/// on these predictions. Arguments and errors as [`super::accuracy`].
///
/// ```
/// // One right, one wrong: risks 0 and 1/2.
/// let best = lora_ens::metrics::optimal_aurc(&[0.9, 0.1, 0.8, 0.2], 2, None, &[0, 1]).unwrap();
/// assert_eq!(best, 0.25);
/// ```
pub fn optimal_aurc(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
) -> Result<f64> {
    let errors = errors(probs, k, valid, answers)?;
    let mut order: Vec<usize> = (0..errors.len()).collect();
    order.sort_by(|&a, &b| errors[a].total_cmp(&errors[b]));
    Ok(curve(&errors, &order).area())
}

/// Excess AURC (E-AURC): [`aurc`] minus [`optimal_aurc`], how far the score's ordering is
/// from the best one on these predictions; always >= 0, 0 for a perfect ordering.
/// Arguments and errors as [`risk_coverage`].
pub fn excess_aurc(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
    scores: &[f64],
) -> Result<f64> {
    // Each prefix of the optimal ordering has the fewest errors, so every risk is at most the
    // score's, and rounded sums in the same order keep that: the difference is >= 0.
    Ok(aurc(probs, k, valid, answers, scores)? - optimal_aurc(probs, k, valid, answers)?)
}
