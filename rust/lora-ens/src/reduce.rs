//! The ensemble reducer: M members' logits (or probabilities) over K options become the
//! ensemble's mixture distribution, its prediction and its uncertainty (total entropy,
//! expected entropy, mutual information), as in Lakshminarayanan et al. (2017). Work is in
//! f64, results in f32. Test: `cargo test -p lora-ens --lib reduce`.

use crate::{Error, Result};

/// The reduced ensemble output for N questions, M members and K options, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    /// Number of questions N.
    pub n: usize,
    /// Number of members M.
    pub n_members: usize,
    /// Number of option slots K (question i uses the first K_i of them).
    pub k: usize,
    /// (N, M, K): each member's softmax over its question's options; 0 beyond K_i.
    pub member_probs: Vec<f32>,
    /// (N, K): the mixture, the mean of `member_probs` over members (not averaged logits).
    pub probs: Vec<f32>,
    /// (N,): argmax of `probs`, lowest index on ties (as `numpy.argmax`).
    pub prediction: Vec<usize>,
    /// (N,): the largest entry of `probs`.
    pub confidence: Vec<f32>,
    /// (N,): total uncertainty `H[probs]`, in nats.
    pub entropy: Vec<f32>,
    /// (N,): aleatoric part, the members' mean entropy `mean_m H[p_m]`.
    pub expected_entropy: Vec<f32>,
    /// (N,): epistemic part, `entropy - expected_entropy` (>= 0; 0 exactly when members agree).
    pub mutual_information: Vec<f32>,
    /// (N, M): each member's argmax.
    pub member_predictions: Vec<usize>,
    /// (N,): the fraction of members whose argmax is the ensemble's prediction.
    pub agreement: Vec<f32>,
}

fn check_dims(what: &str, len: usize, n: usize, n_members: usize, k: usize) -> Result<()> {
    if n_members == 0 {
        return Err(Error::Input(format!(
            "{what}: an ensemble needs at least one member, got M = 0 \
             (run the base model as a single member)"
        )));
    }
    if k == 0 {
        return Err(Error::Input(format!("{what}: K = 0 options per question")));
    }
    let want = n.checked_mul(n_members).and_then(|x| x.checked_mul(k));
    if want != Some(len) {
        return Err(Error::Input(format!(
            "{what} has {len} values, expected N * M * K = {n} * {n_members} * {k}"
        )));
    }
    Ok(())
}

/// Reduce member logits, flat row-major with shape (N, M, K).
///
/// `valid[i]` = K_i <= K is the number of options of question i (default: all K); logits
/// beyond K_i are ignored (padding, any value) and get probability 0. A `-inf` logit is an
/// impossible option; NaN or `+inf` is an error, as is a member with no finite logit.
pub fn reduce(
    member_logits: &[f32],
    n: usize,
    n_members: usize,
    k: usize,
    valid: Option<&[usize]>,
) -> Result<Reduced> {
    check_dims("member_logits", member_logits.len(), n, n_members, k)?;
    if let Some(v) = valid.filter(|v| v.len() != n) {
        return Err(Error::Input(format!(
            "valid has {} entries, expected one per question (N = {n})",
            v.len()
        )));
    }
    let mut p64 = vec![0.0f64; member_logits.len()];
    for (row, (logits, out)) in member_logits
        .chunks_exact(k)
        .zip(p64.chunks_exact_mut(k))
        .enumerate()
    {
        let (q, member) = (row / n_members, row % n_members);
        let k_i = valid.map_or(k, |v| v[q]);
        if k_i == 0 || k_i > k {
            return Err(Error::Input(format!(
                "valid[{q}] = {k_i}, expected 1 <= K_i <= K = {k}"
            )));
        }
        let logits = &logits[..k_i];
        if let Some(j) = logits
            .iter()
            .position(|x| x.is_nan() || *x == f32::INFINITY)
        {
            return Err(Error::Input(format!(
                "member_logits[{q}, {member}, {j}] is {}, expected a finite value or -inf",
                logits[j]
            )));
        }
        // Max-subtraction: the largest term is exp(0) = 1, so nothing overflows and the
        // sum is >= 1; -inf logits give exp(-inf) = 0 exactly.
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |a, &x| a.max(f64::from(x)));
        if max == f64::NEG_INFINITY {
            return Err(Error::Input(format!(
                "member_logits[{q}, {member}]: every option is -inf"
            )));
        }
        for (o, &x) in out.iter_mut().zip(logits) {
            *o = (f64::from(x) - max).exp();
        }
        let sum: f64 = out.iter().sum();
        out.iter_mut().for_each(|o| *o /= sum);
    }
    Ok(finish(&p64, n, n_members, k))
}

/// -sum p ln p in nats, with 0 ln 0 = 0.
fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f64>()
}

/// First index of the largest value (numpy.argmax's tie rule).
fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (j, &x) in p.iter().enumerate() {
        if x > p[best] {
            best = j;
        }
    }
    best
}

/// The mixture of `m` member distributions over `k` outcomes (`members`: (M, K), checked)
/// written into `mean`, and (entropy of the mixture, the members' mean entropy, mutual
/// information), in nats. Shared by scoring and generation.
pub(crate) fn mixture(members: &[f64], m: usize, k: usize, mean: &mut [f64]) -> (f64, f64, f64) {
    // mean = p_0 + mean_m (p_m - p_0): the same mixture, but exactly p_0 when every
    // member equals p_0, so identical members give MI = 0 and probs = member exactly.
    let first = &members[..k];
    for (j, mu) in mean.iter_mut().enumerate() {
        let spread: f64 = members.chunks_exact(k).map(|p| p[j] - first[j]).sum();
        *mu = (first[j] + spread / m as f64).max(0.0);
    }
    // MI as mean_m KL(p_m || mean) rather than H[mean] - mean_m H[p_m]: equal in exact
    // arithmetic, but without cancellation when members nearly agree (small MI).
    let mut expected = 0.0;
    let mut mi = 0.0;
    for p in members.chunks_exact(k) {
        expected += entropy(p);
        let kl: f64 = p
            .iter()
            .zip(mean.iter())
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, mu)| x * (x / mu).ln())
            .sum();
        mi += kl.max(0.0);
    }
    (entropy(mean), expected / m as f64, mi / m as f64)
}

/// The reductions, from f64 member probabilities (N, M, K) that are already checked.
fn finish(p64: &[f64], n: usize, n_members: usize, k: usize) -> Reduced {
    let m = n_members;
    let mut r = Reduced {
        n,
        n_members: m,
        k,
        member_probs: p64.iter().map(|&x| x as f32).collect(),
        probs: Vec::with_capacity(n * k),
        prediction: Vec::with_capacity(n),
        confidence: Vec::with_capacity(n),
        entropy: Vec::with_capacity(n),
        expected_entropy: Vec::with_capacity(n),
        mutual_information: Vec::with_capacity(n),
        member_predictions: Vec::with_capacity(n * m),
        agreement: Vec::with_capacity(n),
    };
    let mut mean = vec![0.0f64; k];
    for (q, members) in p64.chunks_exact(m * k).enumerate() {
        let (h, expected, mi) = mixture(members, m, k, &mut mean);
        let probs: Vec<f32> = mean.iter().map(|&x| x as f32).collect();
        let pred = argmax(&probs);
        let member_probs = &r.member_probs[q * m * k..(q + 1) * m * k];
        let mut agree = 0usize;
        for p in member_probs.chunks_exact(k) {
            let mp = argmax(p);
            agree += usize::from(mp == pred);
            r.member_predictions.push(mp);
        }
        r.prediction.push(pred);
        r.confidence.push(probs[pred]);
        r.entropy.push(h as f32);
        r.expected_entropy.push(expected as f32);
        r.mutual_information.push(mi as f32);
        r.agreement.push((agree as f64 / m as f64) as f32);
        r.probs.extend(probs);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    #[test]
    fn two_members_by_hand() -> Result<()> {
        // Member 0: logits (0, ln 3) -> (1/4, 3/4); member 1: (ln 3, 0) -> (3/4, 1/4).
        let l3 = 3f32.ln();
        let r = reduce(&[0.0, l3, l3, 0.0], 1, 2, 2, None)?;
        assert!(close(r.member_probs[0], 0.25) && close(r.member_probs[1], 0.75));
        assert!(close(r.probs[0], 0.5) && close(r.probs[1], 0.5));
        assert_eq!(r.prediction, vec![0]); // a tie: the lowest index
        assert_eq!(r.member_predictions, vec![1, 0]);
        assert!(close(r.agreement[0], 0.5));
        let h_member = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        assert!(close(r.entropy[0], 2f64.ln()));
        assert!(close(r.expected_entropy[0], h_member));
        assert!(close(r.mutual_information[0], 2f64.ln() - h_member));
        Ok(())
    }

    #[test]
    fn one_member_has_zero_mutual_information() -> Result<()> {
        let r = reduce(&[1.0, -2.0, 0.5, 3.0, 3.0, 3.0], 2, 1, 3, None)?;
        assert_eq!(r.mutual_information, vec![0.0, 0.0]);
        assert_eq!(r.probs, r.member_probs);
        assert_eq!(r.entropy, r.expected_entropy);
        assert_eq!(r.prediction, vec![0, 0]);
        assert!(close(r.entropy[1], 3f64.ln()));
        assert_eq!(r.agreement, vec![1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn identical_members_equal_the_member() -> Result<()> {
        let row = [0.3f32, -1.7, 2.2, 0.1];
        let logits: Vec<f32> = row.iter().cycle().take(7 * 4).copied().collect();
        let many = reduce(&logits, 1, 7, 4, None)?;
        let one = reduce(&row, 1, 1, 4, None)?;
        assert_eq!(many.probs, one.probs);
        assert_eq!(many.entropy, one.entropy);
        assert_eq!(many.mutual_information, vec![0.0]);
        assert_eq!(many.prediction, vec![2]);
        assert_eq!(many.agreement, vec![1.0]);
        Ok(())
    }

    #[test]
    fn extreme_logits_stay_finite() -> Result<()> {
        let ninf = f32::NEG_INFINITY;
        let r = reduce(&[1e4, -1e4, ninf, -1e4, ninf, 1e4], 1, 2, 3, None)?;
        assert_eq!(r.member_probs, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(r.probs, vec![0.5, 0.0, 0.5]);
        assert_eq!(r.prediction, vec![0]);
        assert_eq!(r.expected_entropy, vec![0.0]);
        assert!(close(r.entropy[0], 2f64.ln()));
        assert!(close(r.mutual_information[0], 2f64.ln()));
        let all = [
            &r.entropy,
            &r.expected_entropy,
            &r.mutual_information,
            &r.probs,
        ];
        assert!(all.iter().all(|v| v.iter().all(|x| x.is_finite())));
        Ok(())
    }

    #[test]
    fn per_question_option_counts() -> Result<()> {
        // Question 0 uses 2 of 3 slots (the NaN is padding); question 1 uses all 3.
        let r = reduce(&[0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0], 2, 1, 3, Some(&[2, 3]))?;
        assert_eq!(r.probs[..3], [0.5, 0.5, 0.0]);
        assert!(close(r.entropy[0], 2f64.ln()) && close(r.entropy[1], 3f64.ln()));
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() {
        let msg = |r: Result<Reduced>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(reduce(&[], 2, 0, 3, None)).contains("at least one member"));
        assert!(msg(reduce(&[0.0; 5], 1, 2, 3, None)).contains("expected N * M * K"));
        assert!(msg(reduce(&[0.0; 3], 1, 1, 3, Some(&[4]))).contains("valid[0] = 4"));
        assert!(msg(reduce(&[0.0; 3], 1, 1, 3, Some(&[3, 3]))).contains("valid has 2"));
        assert!(msg(reduce(&[f32::NAN, 0.0], 1, 1, 2, None)).contains("[0, 0, 0] is NaN"));
        let ninf = [f32::NEG_INFINITY; 2];
        assert!(msg(reduce(&ninf, 1, 1, 2, None)).contains("every option is -inf"));
    }
}
