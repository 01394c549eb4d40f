//! Evaluation metrics of an ensemble's predictive distribution against known answers:
//! accuracy, mean negative log-likelihood, multi-class Brier score and expected calibration
//! error (15 equal-width confidence bins), plus the AUROC of an uncertainty score at telling
//! out-of-distribution questions from in-distribution ones. Work is in f64.
//! Test: `cargo test -p lora-ens --lib metrics`.

use crate::{Error, Result};

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
    probs: &'a [f32],
    k: usize,
    valid: Option<&'a [usize]>,
    answers: &'a [usize],
}

impl<'a> Rows<'a> {
    fn new(
        probs: &'a [f32],
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
            if let Some(j) = rows.row(i).iter().position(|p| !p.is_finite()) {
                return Err(Error::Input(format!(
                    "metrics: probs[{i}, {j}] is {}, expected a finite probability",
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
    fn row(&self, i: usize) -> &'a [f32] {
        &self.probs[i * self.k..i * self.k + self.k_i(i)]
    }

    /// (argmax, max) of question i's row, lowest index on ties.
    fn top(&self, i: usize) -> (usize, f64) {
        let mut best = (0, f64::from(self.row(i)[0]));
        for (j, &p) in self.row(i).iter().enumerate().skip(1) {
            if f64::from(p) > best.1 {
                best = (j, f64::from(p));
            }
        }
        best
    }

    fn mean(&self, f: impl Fn(usize) -> f64) -> f64 {
        (0..self.n()).map(f).sum::<f64>() / self.n() as f64
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
    probs: &[f32],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
) -> Result<f64> {
    let r = Rows::new(probs, k, valid, answers)?;
    Ok(r.mean(|i| f64::from(u8::from(r.top(i).0 == answers[i]))))
}

/// Mean negative log-likelihood of the answers, `-ln max(p, 1e-12)`, in nats.
/// Arguments and errors as for [`accuracy`].
pub fn nll(probs: &[f32], k: usize, valid: Option<&[usize]>, answers: &[usize]) -> Result<f64> {
    let r = Rows::new(probs, k, valid, answers)?;
    Ok(r.mean(|i| -f64::from(r.row(i)[answers[i]]).max(NLL_FLOOR).ln()))
}

/// Multi-class Brier score: the mean over questions of `sum_j (p_j - [j = answer])^2` over
/// the K_i options. Arguments and errors as for [`accuracy`].
pub fn brier(probs: &[f32], k: usize, valid: Option<&[usize]>, answers: &[usize]) -> Result<f64> {
    let r = Rows::new(probs, k, valid, answers)?;
    Ok(r.mean(|i| {
        r.row(i)
            .iter()
            .enumerate()
            .map(|(j, &p)| (f64::from(p) - f64::from(u8::from(j == answers[i]))).powi(2))
            .sum()
    }))
}

/// Expected calibration error over `n_bins` equal-width bins of confidence (the largest
/// probability): bin b holds confidences in `(b / n_bins, (b + 1) / n_bins]`, confidence 0
/// goes to the first bin. The result is `sum_b (n_b / N) |accuracy_b - mean confidence_b|`.
/// Other arguments and errors as for [`accuracy`]; `n_bins` = 0 is an error too.
pub fn ece(
    probs: &[f32],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
    n_bins: usize,
) -> Result<f64> {
    if n_bins == 0 {
        return Err(Error::Input(
            "metrics: ECE needs at least one bin".to_owned(),
        ));
    }
    let r = Rows::new(probs, k, valid, answers)?;
    let mut count = vec![0usize; n_bins];
    let mut correct = vec![0.0f64; n_bins];
    let mut confidence = vec![0.0f64; n_bins];
    for (i, &answer) in answers.iter().enumerate() {
        let (pred, conf) = r.top(i);
        let b = bin_of(conf, n_bins);
        count[b] += 1;
        correct[b] += f64::from(u8::from(pred == answer));
        confidence[b] += conf;
    }
    let n = r.n() as f64;
    Ok((0..n_bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (correct[b] - confidence[b]).abs() / n)
        .sum())
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
    probs: &[f32],
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
/// [`Error::Input`] when either set is empty or a score is NaN.
///
/// ```
/// let auroc = lora_ens::metrics::ood_auroc(&[0.1, 0.2], &[0.3, 0.2]).unwrap();
/// assert_eq!(auroc, (1.0 + 1.0 + 1.0 + 0.5) / 4.0);
/// ```
pub fn ood_auroc(in_scores: &[f32], out_scores: &[f32]) -> Result<f64> {
    if in_scores.is_empty() || out_scores.is_empty() {
        return Err(Error::Input(format!(
            "OOD AUROC needs scores on both sides: {} in-distribution, {} out-of-distribution",
            in_scores.len(),
            out_scores.len()
        )));
    }
    let nan = |what: &str, s: &[f32]| {
        s.iter()
            .position(|x| x.is_nan())
            .map(|i| Error::Input(format!("OOD AUROC: {what}[{i}] is NaN")))
    };
    if let Some(e) = nan("in_scores", in_scores).or_else(|| nan("out_scores", out_scores)) {
        return Err(e);
    }
    // Sum of the out-of-distribution scores' ranks (1-based, ties get their mean rank).
    let mut all: Vec<(f32, bool)> = in_scores
        .iter()
        .map(|&s| (s, false))
        .chain(out_scores.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0f64;
    let mut start = 0;
    while start < all.len() {
        let mut end = start + 1;
        while end < all.len() && all[end].0 == all[start].0 {
            end += 1;
        }
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let outs = all[start..end].iter().filter(|x| x.1).count();
        rank_sum += mean_rank * outs as f64;
        start = end;
    }
    let (n_in, n_out) = (in_scores.len() as f64, out_scores.len() as f64);
    let u = rank_sum - n_out * (n_out + 1.0) / 2.0;
    Ok(u / (n_in * n_out))
}

#[cfg(test)]
mod tests;
