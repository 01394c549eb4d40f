//! Temperature scaling (Guo et al. 2017): one scalar T > 0 divides every logit before the
//! softmax, fitted on validation questions to minimise the negative log-likelihood of their
//! answers. T > 1 softens over-confident predictions and T < 1 sharpens under-confident
//! ones; the argmax, so the accuracy, never changes.
//! Test: `cargo test -p lora-ens --lib metrics`.

use crate::{Error, Result};

/// The bounds of the temperature [`fit_temperature`] searches, `[0.05, 20]`.
pub const TEMPERATURE_RANGE: (f64, f64) = (0.05, 20.0);

/// The search stops when the bracket on `ln T` is narrower than this.
const LOG_T_TOLERANCE: f64 = 1e-7;

/// (N, K) logits, row-major, where question i uses the first K_i slots.
struct Logits<'a> {
    logits: &'a [f64],
    k: usize,
    valid: Option<&'a [usize]>,
}

impl<'a> Logits<'a> {
    /// Checks the shape, every K_i and that each used logit is finite.
    fn new(logits: &'a [f64], k: usize, valid: Option<&'a [usize]>) -> Result<Self> {
        if k == 0 {
            return Err(Error::Input(
                "temperature: K = 0 options per question".to_owned(),
            ));
        }
        if logits.is_empty() || logits.len() % k != 0 {
            return Err(Error::Input(format!(
                "temperature: logits has {} values, expected N * K with N >= 1 and K = {k}",
                logits.len()
            )));
        }
        let n = logits.len() / k;
        if let Some(v) = valid.filter(|v| v.len() != n) {
            return Err(Error::Input(format!(
                "temperature: valid has {} entries, expected one per question (N = {n})",
                v.len()
            )));
        }
        let l = Self { logits, k, valid };
        for i in 0..n {
            let k_i = l.valid.map_or(k, |v| v[i]);
            if k_i == 0 || k_i > k {
                return Err(Error::Input(format!(
                    "temperature: valid[{i}] = {k_i}, expected 1 <= K_i <= K = {k}"
                )));
            }
            if let Some(j) = l.row(i).iter().position(|z| !z.is_finite()) {
                return Err(Error::Input(format!(
                    "temperature: logits[{i}, {j}] is {}, expected a finite logit",
                    l.row(i)[j]
                )));
            }
        }
        Ok(l)
    }

    fn n(&self) -> usize {
        self.logits.len() / self.k
    }

    /// The K_i logits of question i.
    fn row(&self, i: usize) -> &'a [f64] {
        let k_i = self.valid.map_or(self.k, |v| v[i]);
        &self.logits[i * self.k..i * self.k + k_i]
    }

    /// `ln sum_j exp(z_j / t)` of question i, stable.
    fn log_normaliser(&self, i: usize, t: f64) -> f64 {
        let row = self.row(i);
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z)) / t;
        m + row.iter().map(|&z| (z / t - m).exp()).sum::<f64>().ln()
    }

    /// Mean negative log-likelihood of the answers under `softmax(logits / t)`.
    fn nll(&self, answers: &[usize], t: f64) -> f64 {
        let total: f64 = answers
            .iter()
            .enumerate()
            .map(|(i, &a)| self.log_normaliser(i, t) - self.row(i)[a] / t)
            .sum();
        total / answers.len() as f64
    }
}

/// `Error::Input` unless `t` is a finite temperature > 0.
fn check_temperature(t: f64) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "temperature must be finite and > 0, got {t}"
        )))
    }
}

/// The temperature T in [`TEMPERATURE_RANGE`] that minimises the mean negative
/// log-likelihood of `answers` under `softmax(logits / T)` (exact log-softmax, no clamping).
///
/// `logits` is (N, K) row-major with N = `answers.len()`; `valid[i]` = K_i <= K is the
/// number of options of question i (default: all K), padding slots are ignored. The NLL is
/// convex in 1/T, so it has a single basin along `ln T`; a golden-section search on `ln T`
/// over `[ln 0.05, ln 20]` brackets the minimiser to within 1e-7 in `ln T` (a relative
/// 1e-7 in T). A minimum beyond the range gives (nearly) the nearest bound; logits whose NLL
/// does not depend on T (e.g. equal within each question) give some T in the range.
///
/// # Errors
///
/// [`Error::Input`] for empty logits, a length mismatch, a K_i out of range, a non-finite
/// logit or an answer index >= K_i, naming the argument.
///
/// ```
/// // Over-confident logits (right only half the time) are softened: T > 1.
/// let logits = [4.0, 0.0, 4.0, 0.0];
/// let t = lora_ens::metrics::fit_temperature(&logits, 2, None, &[0, 1]).unwrap();
/// assert!(t > 1.0);
/// ```
pub fn fit_temperature(
    logits: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    answers: &[usize],
) -> Result<f64> {
    let l = Logits::new(logits, k, valid)?;
    if answers.len() != l.n() {
        return Err(Error::Input(format!(
            "temperature: answers has {} entries, expected one per question (N = {})",
            answers.len(),
            l.n()
        )));
    }
    for (i, &a) in answers.iter().enumerate() {
        let k_i = l.row(i).len();
        if a >= k_i {
            return Err(Error::Input(format!(
                "temperature: answers[{i}] = {a} is out of range: question {i} has {k_i} options"
            )));
        }
    }
    let f = |x: f64| l.nll(answers, x.exp());
    // Golden-section search on x = ln T, keeping two interior points c < d.
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (TEMPERATURE_RANGE.0.ln(), TEMPERATURE_RANGE.1.ln());
    let (mut c, mut d) = (b - inv_phi * (b - a), a + inv_phi * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > LOG_T_TOLERANCE {
        if fc <= fd {
            (b, d, fd) = (d, c, fc);
            c = b - inv_phi * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + inv_phi * (b - a);
            fd = f(d);
        }
    }
    let t = ((a + b) / 2.0).exp();
    Ok(t.clamp(TEMPERATURE_RANGE.0, TEMPERATURE_RANGE.1))
}

/// `softmax(logits / t)` of each question over its K_i options, (N, K) row-major with zeros
/// in the padding slots. `t` = 1 is the plain softmax; the argmax never changes.
///
/// # Errors
///
/// [`Error::Input`] for a bad `logits` or `valid` (as [`fit_temperature`]) or a temperature
/// that is not finite and > 0.
///
/// ```
/// let p = lora_ens::metrics::apply_temperature(&[0.0, 2.0f64.ln()], 2, None, 1.0).unwrap();
/// assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12);
/// ```
pub fn apply_temperature(
    logits: &[f64],
    k: usize,
    valid: Option<&[usize]>,
    t: f64,
) -> Result<Vec<f64>> {
    check_temperature(t)?;
    let l = Logits::new(logits, k, valid)?;
    let mut probs = vec![0.0f64; logits.len()];
    for i in 0..l.n() {
        let lse = l.log_normaliser(i, t);
        for (p, &z) in probs[i * k..].iter_mut().zip(l.row(i)) {
            *p = (z / t - lse).exp();
        }
    }
    Ok(probs)
}
