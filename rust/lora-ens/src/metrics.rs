//! Evaluation metrics of an ensemble's predictive distribution against known answers:
//! accuracy, mean negative log-likelihood, multi-class Brier score and expected calibration
//! error (15 equal-width confidence bins) with its reliability bins, plus the AUROC and
//! average precision of an uncertainty score at telling out-of-distribution questions from
//! in-distribution ones; and, in the submodules, the paired bootstrap of a metric difference,
//! selective prediction (risk-coverage, AURC) and temperature scaling. Work is in f64. This
//! is the one implementation: the CLI, the Python package (`lora_ens_rs.metrics`),
//! evaluation, experiments and training validation call it.
//! Test: `cargo test -p lora-ens --lib metrics`.

use crate::{Error, Result};

mod bootstrap;
mod selective;
mod temperature;

pub use bootstrap::{BootMetric, Interval, bootstrap_indices, paired_bootstrap};
pub use selective::{RiskCoverage, aurc, excess_aurc, optimal_aurc, risk_coverage};
pub use temperature::{TEMPERATURE_RANGE, apply_temperature, fit_temperature};

/// Probabilities below this are clamped before taking the log in [`nll`].
pub const NLL_FLOOR: f64 = 1e-12;

/// Number of equal-width confidence bins of [`ece`] in [`evaluate`].
pub const ECE_BINS: usize = 15;

/// Every metric of [`evaluate`] over N questions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Number of questions N.
    pub n: usize,
    /// Fraction of questions whose argmax (lowest index on ties) is the answer.
    pub accuracy: f64,
    /// Mean of `-ln max(p[answer], 1e-12)`, in nats.
    pub nll: f64,
    /// Mean over questions of `sum_j (p_j - onehot_j)^2` (0 is perfect, at most 2).
    pub brier: f64,
    /// Expected calibration error with [`ECE_BINS`] equal-width bins.
    pub ece: f64,
}

/// (N, K) probabilities, row-major, where question i uses the first K_i slots.
struct Rows<'a> {
    probs: &'a [f64],
    k: usize,
    valid: Option<&'a [usize]>,
    answers: &'a [usize],
}

impl<'a> Rows<'a> {
    fn new(
        probs: &'a [f64],
        k: usize,
        valid: Option<&'a [usize]>,
        answers: &'a [usize],
    ) -> Result<Self> {
        let n = answers.len();
        if n == 0 {
            return Err(Error::Input("metrics: no questions (N = 0)".to_owned()));
        }
        if k == 0 {
            return Err(Error::Input(
                "metrics: K = 0 options per question".to_owned(),
            ));
        }
        if n.checked_mul(k) != Some(probs.len()) {
            return Err(Error::Input(format!(
                "metrics: probs has {} values, expected N * K = {n} * {k}",
                probs.len()
            )));
        }
        if let Some(v) = valid.filter(|v| v.len() != n) {
            return Err(Error::Input(format!(
                "metrics: valid has {} entries, expected one per question (N = {n})",
                v.len()
            )));
        }
        let rows = Self {
            probs,
            k,
            valid,
            answers,
        };
        for (i, &answer) in answers.iter().enumerate() {
            let k_i = rows.k_i(i);
            if k_i == 0 || k_i > k {
                return Err(Error::Input(format!(
                    "metrics: valid[{i}] = {k_i}, expected 1 <= K_i <= K = {k}"
                )));
            }
            if answer >= k_i {
                return Err(Error::Input(format!(
                    "metrics: answer {answer} of question {i} is out of range: it has {k_i} options"
                )));
            }
            if let Some(j) = rows.row(i).iter().position(|p| !p.is_finite() || *p < 0.0) {
                return Err(Error::Input(format!(
                    "metrics: probs[{i}, {j}] is {}, expected a finite, non-negative probability",
                    rows.row(i)[j]
                )));
            }
        }
        Ok(rows)
    }

    fn n(&self) -> usize {
        self.answers.len()
    }

    fn k_i(&self, i: usize) -> usize {
        self.valid.map_or(self.k, |v| v[i])
    }

    /// The K_i probabilities of question i.
    fn row(&self, i: usize) -> &'a [f64] {
        &self.probs[i * self.k..i * self.k + self.k_i(i)]
    }

    /// (argmax, max) of question i's row, lowest index on ties.
    fn top(&self, i: usize) -> (usize, f64) {
        let mut best = (0, self.row(i)[0]);
        for (j, &p) in self.row(i).iter().enumerate().skip(1) {
            if p > best.1 {
                best = (j, p);
            }
        }
        best
    }

    /// 1 if question i's argmax is its answer, else 0.
    fn correct(&self, i: usize) -> f64 {
        f64::from(u8::from(self.top(i).0 == self.answers[i]))
    }

    /// `-ln max(p[answer], 1e-12)` of question i.
    fn nll_of(&self, i: usize) -> f64 {
        -self.row(i)[self.answers[i]].max(NLL_FLOOR).ln()
    }

    /// `sum_j (p_j - [j = answer])^2` over question i's options.
    fn brier_of(&self, i: usize) -> f64 {
        let onehot = |j: usize| f64::from(u8::from(j == self.answers[i]));
        self.row(i)
            .iter()
            .enumerate()
            .map(|(j, &p)| (p - onehot(j)).powi(2))
            .sum()
    }

    fn mean(&self, f: impl Fn(usize) -> f64) -> f64 {
        (0..self.n()).map(f).sum::<f64>() / self.n() as f64
    }

    /// The reliability bins of the questions `idx` (a question may come more than once).
    fn binned(&self, idx: impl Iterator<Item = usize>, n_bins: usize) -> Reliability {
        let mut count = vec![0usize; n_bins];
        let mut correct = vec![0.0f64; n_bins];
        let mut confidence = vec![0.0f64; n_bins];
        for i in idx {
            let (pred, conf) = self.top(i);
            let b = bin_of(conf, n_bins);
            count[b] += 1;
            correct[b] += f64::from(u8::from(pred == self.answers[i]));
            confidence[b] += conf;
        }
        let mean = |sums: Vec<f64>| -> Vec<f64> {
            sums.iter()
                .zip(&count)
                .map(|(&s, &c)| if c == 0 { f64::NAN } else { s / c as f64 })
                .collect()
        };
        Reliability {
            accuracy: mean(correct),
            confidence: mean(confidence),
            count,
        }
    }
}

/// Accuracy of the argmax of each row (lowest index on ties) against `answers`.
///
/// `probs` is (N, K) row-major with N = `answers.len()`; `valid[i]` = K_i <= K is the number
/// of options of question i (default: all K).
///
/// # Errors
///
/// [`Error::Input`] for empty input, a length mismatch, a K_i out of range, an answer
/// index >= K_i or a non-finite probability.
pub fn accuracy(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
) -> Result<f64> {
    let r = Rows::new(probs, k, valid, answers)?;
    Ok(r.mean(|i| r.correct(i)))
}

/// Mean negative log-likelihood of the answers, `-ln max(p, 1e-12)`, in nats.
/// Arguments and errors as for [`accuracy`].
pub fn nll(probs: &[f64], k: usize, valid: Option<&[usize]>, answers: &[usize]) -> Result<f64> {
    let r = Rows::new(probs, k, valid, answers)?;
    Ok(r.mean(|i| r.nll_of(i)))
}

/// Multi-class Brier score: the mean over questions of `sum_j (p_j - [j = answer])^2` over
/// the K_i options. Arguments and errors as for [`accuracy`].
pub fn brier(probs: &[f64], k: usize, valid: Option<&[usize]>, answers: &[usize]) -> Result<f64> {
    let r = Rows::new(probs, k, valid, answers)?;
    Ok(r.mean(|i| r.brier_of(i)))
}

/// Per-bin data of a reliability diagram: `n_bins` equal-width bins of confidence (the
/// largest probability), bin b holding confidences in `(b / n_bins, (b + 1) / n_bins]`
/// (confidence 0 in the first bin).
#[derive(Debug, Clone, PartialEq)]
pub struct Reliability {
    /// Questions in each bin.
    pub count: Vec<usize>,
    /// Fraction answered right in each bin (NaN for an empty bin).
    pub accuracy: Vec<f64>,
    /// Mean confidence in each bin (NaN for an empty bin).
    pub confidence: Vec<f64>,
}

impl Reliability {
    /// Expected calibration error: `sum_b (n_b / N) |accuracy_b - confidence_b|`.
    pub fn ece(&self) -> f64 {
        let n: usize = self.count.iter().sum();
        (0..self.count.len())
            .filter(|&b| self.count[b] > 0)
            .map(|b| {
                self.count[b] as f64 / n as f64 * (self.accuracy[b] - self.confidence[b]).abs()
            })
            .sum()
    }
}

/// The reliability bins of the predictions; arguments and errors as for [`accuracy`], and
/// `n_bins` = 0 is an error too.
pub fn reliability(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
    n_bins: usize,
) -> Result<Reliability> {
    if n_bins == 0 {
        return Err(Error::Input(
            "metrics: n_bins must be >= 1 (ECE needs at least one bin)".to_owned(),
        ));
    }
    Ok(Rows::new(probs, k, valid, answers)?.binned(0..answers.len(), n_bins))
}

/// Expected calibration error over `n_bins` equal-width bins of confidence (the largest
/// probability): bin b holds confidences in `(b / n_bins, (b + 1) / n_bins]`, confidence 0
/// goes to the first bin. The result is `sum_b (n_b / N) |accuracy_b - mean confidence_b|`.
/// Other arguments and errors as for [`reliability`].
pub fn ece(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
    n_bins: usize,
) -> Result<f64> {
    reliability(probs, k, valid, answers, n_bins).map(|r| r.ece())
}

/// The bin of `conf` among `n_bins` right-closed bins `(b / n, (b + 1) / n]`, with 0 (and
/// anything below) in bin 0 and anything above 1 in the last bin. The boundaries are
/// compared exactly, so `conf = b / n` always lands in bin `b - 1`.
fn bin_of(conf: f64, n_bins: usize) -> usize {
    let n = n_bins as f64;
    let upper = |b: usize| (b + 1) as f64 / n;
    let mut b = ((conf * n).ceil().max(1.0) as usize - 1).min(n_bins - 1);
    while b > 0 && conf <= b as f64 / n {
        b -= 1;
    }
    while b + 1 < n_bins && conf > upper(b) {
        b += 1;
    }
    b
}

/// Accuracy, NLL, Brier score and ECE ([`ECE_BINS`] bins) in one call; arguments and errors
/// as for [`accuracy`].
///
/// ```
/// use lora_ens::metrics::evaluate;
/// // Two questions with two options; the first is right with 0.8, the second wrong with 0.6.
/// let m = evaluate(&[0.8, 0.2, 0.6, 0.4], 2, None, &[0, 1]).unwrap();
/// assert_eq!(m.accuracy, 0.5);
/// assert!((m.brier - (0.08 + 0.72) / 2.0).abs() < 1e-6);
/// ```
pub fn evaluate(
    probs: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
) -> Result<Metrics> {
    Ok(Metrics {
        n: answers.len(),
        accuracy: accuracy(probs, k, valid, answers)?,
        nll: nll(probs, k, valid, answers)?,
        brier: brier(probs, k, valid, answers)?,
        ece: ece(probs, k, valid, answers, ECE_BINS)?,
    })
}

/// AUROC of an uncertainty score (higher = more out-of-distribution) at separating
/// `out_scores` from `in_scores`: the probability that a random out-of-distribution score
/// exceeds a random in-distribution one, ties counting 1/2 (the Mann–Whitney U statistic
/// divided by `n_in * n_out`). 1 is perfect separation, 0.5 chance.
///
/// # Errors
///
/// [`Error::Input`] when either set is empty or a score is not finite.
///
/// ```
/// let auroc = lora_ens::metrics::ood_auroc(&[0.1, 0.2], &[0.3, 0.2]).unwrap();
/// assert_eq!(auroc, (1.0 + 1.0 + 1.0 + 0.5) / 4.0);
/// ```
pub fn ood_auroc(in_scores: &[f64], out_scores: &[f64]) -> Result<f64> {
    check_ood(in_scores, out_scores)?;
    // Sum of the out-of-distribution scores' ranks (1-based, ties get their mean rank).
    let mut rank_sum = 0.0f64;
    let mut start = 0;
    for (size, outs) in tied_runs(in_scores, out_scores, false) {
        let end = start + size;
        rank_sum += (start + 1 + end) as f64 / 2.0 * outs as f64;
        start = end;
    }
    let (n_in, n_out) = (in_scores.len() as f64, out_scores.len() as f64);
    let u = rank_sum - n_out * (n_out + 1.0) / 2.0;
    Ok(u / (n_in * n_out))
}

/// Both score sets pooled and sorted (ascending, or descending), cut into runs of equal
/// scores: (run length, out-of-distribution scores in it), in sorted order.
fn tied_runs(in_scores: &[f64], out_scores: &[f64], descending: bool) -> Vec<(usize, usize)> {
    let mut all: Vec<(f64, bool)> = in_scores
        .iter()
        .map(|&s| (s, false))
        .chain(out_scores.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| {
        let order = a.0.total_cmp(&b.0);
        if descending { order.reverse() } else { order }
    });
    let mut runs = Vec::new();
    let mut start = 0;
    while start < all.len() {
        let mut end = start + 1;
        while end < all.len() && all[end].0 == all[start].0 {
            end += 1;
        }
        runs.push((end - start, all[start..end].iter().filter(|x| x.1).count()));
        start = end;
    }
    runs
}

/// Both sets non-empty and finite.
fn check_ood(in_scores: &[f64], out_scores: &[f64]) -> Result<()> {
    if in_scores.is_empty() || out_scores.is_empty() {
        return Err(Error::Input(format!(
            "OOD detection needs at least one in- and one out-of-distribution score, got {} \
             and {}",
            in_scores.len(),
            out_scores.len()
        )));
    }
    for (what, s) in [("in_scores", in_scores), ("out_scores", out_scores)] {
        if let Some(i) = s.iter().position(|x| !x.is_finite()) {
            return Err(Error::Input(format!(
                "OOD scores must be finite: {what}[{i}] is {}",
                s[i]
            )));
        }
    }
    Ok(())
}

/// Average precision of an uncertainty score (higher = more out-of-distribution) at
/// detecting `out_scores` (positives) among `in_scores`: step-wise, as scikit-learn's
/// `average_precision_score`, each distinct score one threshold. Errors as [`ood_auroc`].
///
/// ```
/// let ap = lora_ens::metrics::ood_aupr(&[0.0, 0.1], &[0.5, 0.9]).unwrap();
/// assert_eq!(ap, 1.0);
/// ```
pub fn ood_aupr(in_scores: &[f64], out_scores: &[f64]) -> Result<f64> {
    check_ood(in_scores, out_scores)?;
    // Highest score first; a run of equal scores is one threshold.
    let n_out = out_scores.len() as f64;
    let (mut tp, mut seen, mut ap, mut last_recall) = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for (size, outs) in tied_runs(in_scores, out_scores, true) {
        tp += outs as f64;
        seen += size;
        let recall = tp / n_out;
        ap += (recall - last_recall) * (tp / seen as f64);
        last_recall = recall;
    }
    Ok(ap)
}

#[cfg(test)]
mod tests;
