//! Unit tests of the paired bootstrap, selective prediction and temperature scaling
//! ([`crate::metrics`]'s submodules), against direct computations written out here.
//! Test: `cargo test -p lora-ens --lib metrics`.

use crate::Result;
use crate::metrics::*;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-6, "{a} != {b}");
}

#[test]
fn bootstrap_indices_are_splitmix64() {
    // SplitMix64 from state 0 starts 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4,
    // 0x06C45D188009454F (the published reference stream); a draw x is index x * n >> 64.
    let n = 1_000_000usize;
    let idx = bootstrap_indices(n, 1, 0);
    for (i, x) in [
        0xE220_A839_7B1D_CDAFu64,
        0x6E78_9E6A_A1B9_65F4,
        0x06C4_5D18_8009_454F,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(idx[i] as u128, (u128::from(x) * n as u128) >> 64);
    }
    let a = bootstrap_indices(7, 50, 3);
    assert_eq!(a, bootstrap_indices(7, 50, 3));
    assert_ne!(a, bootstrap_indices(7, 50, 4));
    assert!(a.iter().all(|&i| i < 7));
    assert!((0..7).all(|i| a.contains(&i)));
}

/// Three predictors' worth of random-ish rows: (probs, answers) for N questions, K = 3.
fn rows_of(n: usize, shift: usize) -> (Vec<f64>, Vec<usize>) {
    let mut probs = Vec::new();
    for i in 0..n {
        let w = [
            (i * 7 + shift) % 5 + 1,
            (i * 3 + 2 * shift) % 4 + 1,
            (i + shift) % 3 + 1,
        ];
        let s: usize = w.iter().sum();
        probs.extend(w.iter().map(|&x| x as f64 / s as f64));
    }
    let answers = (0..n).map(|i| (i * 5 + 1) % 3).collect();
    (probs, answers)
}

#[test]
fn bootstrap_matches_a_direct_resampling() {
    let (a, answers) = rows_of(40, 0);
    let (b, _) = rows_of(40, 1);
    let (r, n) = (200, 40);
    let idx = bootstrap_indices(n, r, 11);
    let gather = |p: &[f64], s: &[usize]| -> Vec<f64> {
        s.iter()
            .flat_map(|&i| p[i * 3..i * 3 + 3].to_vec())
            .collect()
    };
    type F = fn(&[f64], usize, Option<&[usize]>, &[usize]) -> Result<f64>;
    let ece15: F = |p, k, v, a| ece(p, k, v, a, ECE_BINS);
    let cases: [(BootMetric, F); 4] = [
        (BootMetric::Accuracy, accuracy),
        (BootMetric::Nll, nll),
        (BootMetric::Brier, brier),
        (BootMetric::Ece, ece15),
    ];
    for (metric, f) in cases {
        let mut diffs: Vec<f64> = idx
            .chunks(n)
            .map(|s| {
                let ans: Vec<usize> = s.iter().map(|&i| answers[i]).collect();
                f(&gather(&a, s), 3, None, &ans).unwrap()
                    - f(&gather(&b, s), 3, None, &ans).unwrap()
            })
            .collect();
        diffs.sort_by(f64::total_cmp);
        // 90%: the 0.05 and 0.95 quantiles at positions 9.95 and 189.05 of 200.
        let lerp =
            |h: f64| diffs[h as usize] + h.fract() * (diffs[h as usize + 1] - diffs[h as usize]);
        let got = paired_bootstrap(&a, &b, 3, None, &answers, metric, r, 0.9, 11).unwrap();
        let full = f(&a, 3, None, &answers).unwrap() - f(&b, 3, None, &answers).unwrap();
        close(got.estimate, full);
        close(got.low, lerp(0.05 * 199.0));
        close(got.high, lerp(0.95 * 199.0));
        assert!(got.low <= got.high, "{metric:?}");
    }
}

#[test]
fn bootstrap_edge_cases() {
    let (a, answers) = rows_of(9, 2);
    for metric in [
        BootMetric::Accuracy,
        BootMetric::Nll,
        BootMetric::Brier,
        BootMetric::Ece,
    ] {
        let same = paired_bootstrap(&a, &a, 3, None, &answers, metric, 50, 0.95, 0).unwrap();
        assert_eq!((same.estimate, same.low, same.high), (0.0, 0.0, 0.0));
    }
    // One question: every resample is that question, so the interval is the point.
    let one = paired_bootstrap(
        &[0.8, 0.2],
        &[0.4, 0.6],
        2,
        None,
        &[0],
        BootMetric::Nll,
        30,
        0.95,
        5,
    )
    .unwrap();
    close(one.estimate, -(0.8f64).ln() + (0.4f64).ln());
    assert_eq!((one.low, one.high), (one.estimate, one.estimate));
    let msg = |r: Result<Interval>| r.unwrap_err().to_string();
    let m = BootMetric::Accuracy;
    assert!(
        msg(paired_bootstrap(
            &a,
            &a[..6],
            3,
            None,
            &answers,
            m,
            9,
            0.9,
            0
        ))
        .contains("probs_b")
    );
    assert!(msg(paired_bootstrap(&a, &a, 3, None, &answers, m, 0, 0.9, 0)).contains("n_resamples"));
    assert!(msg(paired_bootstrap(&a, &a, 3, None, &answers, m, 9, 1.0, 0)).contains("confidence"));
    assert!("auroc".parse::<BootMetric>().is_err());
    assert_eq!("ece".parse::<BootMetric>().unwrap(), BootMetric::Ece);
}

#[test]
fn risk_coverage_answers_the_lowest_scores_first() {
    // Right, wrong, right, wrong (argmax 0 each, answers alternate).
    let probs = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4];
    let answers = [0, 1, 0, 1];
    let rc = risk_coverage(&probs, 2, None, &answers, &[0.3, 0.1, 0.2, 0.4]).unwrap();
    assert_eq!(rc.coverage, [0.25, 0.5, 0.75, 1.0]);
    // Order 1 (wrong), 2 (right), 0 (right), 3 (wrong).
    assert_eq!(rc.risk, [1.0, 0.5, 1.0 / 3.0, 0.5]);
    close(
        aurc(&probs, 2, None, &answers, &[0.3, 0.1, 0.2, 0.4]).unwrap(),
        (1.0 + 0.5 + 1.0 / 3.0 + 0.5) / 4.0,
    );
    // Ties go by question index: all-equal scores answer 0, 1, 2, 3 in turn.
    let tied = risk_coverage(&probs, 2, None, &answers, &[1.0; 4]).unwrap();
    assert_eq!(tied.risk, [0.0, 0.5, 1.0 / 3.0, 0.5]);
    // The best ordering: 0 and 2 first -> risks 0, 0, 1/3, 1/2.
    close(
        optimal_aurc(&probs, 2, None, &answers).unwrap(),
        (1.0 / 3.0 + 0.5) / 4.0,
    );
    assert_eq!(
        aurc(&probs, 2, None, &[0; 4], &[0.5, 0.1, 0.2, 0.3]).unwrap(),
        0.0
    );
    assert_eq!(
        aurc(&probs, 2, None, &[1; 4], &[0.5, 0.1, 0.2, 0.3]).unwrap(),
        1.0
    );
}

#[test]
fn optimal_aurc_is_the_least_over_every_ordering() {
    let (probs, answers) = rows_of(6, 1);
    let best = optimal_aurc(&probs, 3, None, &answers).unwrap();
    let mut least = f64::INFINITY;
    // Every permutation of 6 questions as scores (Heap's algorithm would do; 6^6 maps with
    // repeats cover every permutation too, ties included).
    for code in 0..6usize.pow(6) {
        let scores: Vec<f64> = (0..6)
            .map(|d| ((code / 6usize.pow(d)) % 6) as f64)
            .collect();
        let a = aurc(&probs, 3, None, &answers, &scores).unwrap();
        let e = excess_aurc(&probs, 3, None, &answers, &scores).unwrap();
        assert!(a >= best && e >= 0.0, "{scores:?}: {a} < {best}");
        close(e, a - best);
        least = least.min(a);
    }
    close(least, best);
}

#[test]
fn selective_scores_are_checked() {
    let probs = [0.9, 0.1, 0.8, 0.2];
    let err = |s: &[f64]| aurc(&probs, 2, None, &[0, 0], s).unwrap_err().to_string();
    assert!(err(&[0.1]).contains("scores has 1 entries"));
    assert!(err(&[0.1, f64::NAN]).contains("scores[1] is NaN"));
}

#[test]
fn apply_temperature_is_a_softmax_keeping_the_argmax() {
    let logits = [1.0, 3.0, -2.0, 0.5, 0.0, 0.0, 7.0, -1.0, 2.0];
    let p1 = apply_temperature(&logits, 3, None, 1.0).unwrap();
    for (i, row) in logits.chunks(3).enumerate() {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        for j in 0..3 {
            close(p1[i * 3 + j], row[j].exp() / z);
        }
    }
    for t in [0.1, 0.7, 3.0, 50.0] {
        let p = apply_temperature(&logits, 3, None, t).unwrap();
        for (q, z) in p.chunks(3).zip(logits.chunks(3)) {
            close(q.iter().sum(), 1.0);
            let am = |v: &[f64]| (0..3).fold(0, |b, j| if v[j] > v[b] { j } else { b });
            assert_eq!(am(q), am(z), "t = {t}");
        }
    }
    // Padding slots come back as zeros and are never read (here: infinite junk).
    let p = apply_temperature(&[0.0, 0.0, f64::INFINITY], 3, Some(&[2]), 2.0).unwrap();
    assert_eq!(p, [0.5, 0.5, 0.0]);
}

#[test]
fn fitted_temperature_minimises_the_nll() {
    // Logits 4x too sharp for answers drawn so that row i is right 3 times in 4.
    let mut logits = Vec::new();
    let mut answers = Vec::new();
    for i in 0..64 {
        let z = [
            (i % 5) as f64 * 0.4,
            1.5 + (i % 3) as f64 * 0.3,
            (i % 7) as f64 * 0.2,
        ];
        logits.extend(z.map(|x| 4.0 * x));
        answers.push(if i % 4 == 0 { (i / 4) % 3 } else { 1 });
    }
    let t = fit_temperature(&logits, 3, None, &answers).unwrap();
    assert!(t > 1.0, "{t}");
    let nll_at = |t: f64| {
        let p = apply_temperature(&logits, 3, None, t).unwrap();
        nll(&p, 3, None, &answers).unwrap()
    };
    let at = nll_at(t);
    assert!(at <= nll_at(t * 1.001) && at <= nll_at(t * 0.999), "{t}");
    let grid_best = (0..=2000)
        .map(|s| 0.05 * (400f64).powf(s as f64 / 2000.0))
        .map(nll_at)
        .fold(f64::INFINITY, f64::min);
    assert!(at <= grid_best + 1e-12, "{at} > {grid_best}");
}

#[test]
fn temperature_inputs_are_checked() {
    let err = |r: Result<f64>| r.unwrap_err().to_string();
    assert!(err(fit_temperature(&[], 2, None, &[])).contains("logits has 0 values"));
    assert!(err(fit_temperature(&[0.0, f64::NAN], 2, None, &[0])).contains("logits[0, 1] is NaN"));
    assert!(err(fit_temperature(&[0.0, 1.0], 2, None, &[2])).contains("answers[0] = 2"));
    assert!(err(fit_temperature(&[0.0, 1.0], 2, Some(&[1]), &[1])).contains("answers[0] = 1"));
    assert!(err(fit_temperature(&[0.0, 1.0], 2, None, &[0, 1])).contains("answers has 2"));
    let bad_t = |t: f64| {
        apply_temperature(&[0.0, 1.0], 2, None, t)
            .unwrap_err()
            .to_string()
    };
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(
            bad_t(t).contains("temperature must be finite and > 0"),
            "{t}"
        );
    }
}
