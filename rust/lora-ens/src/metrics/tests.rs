//! Unit tests of [`super`] on small cases computed by hand from the metrics' definitions.

use super::*;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-6, "{a} != {b}");
}

#[test]
fn accuracy_takes_the_first_maximum() {
    // Rows: right, wrong, a tie broken towards index 0 (right).
    let probs = [0.7, 0.2, 0.1, 0.1, 0.3, 0.6, 0.4, 0.4, 0.2];
    close(accuracy(&probs, 3, None, &[0, 1, 0]).unwrap(), 2.0 / 3.0);
    close(accuracy(&probs, 3, None, &[0, 2, 1]).unwrap(), 2.0 / 3.0);
}

#[test]
fn nll_is_the_mean_negative_log_of_the_answer() {
    let probs = [0.5, 0.5, 0.25, 0.75];
    let want = (-(0.5f64).ln() - (0.25f64).ln()) / 2.0;
    close(nll(&probs, 2, None, &[1, 0]).unwrap(), want);
    // A zero probability is clamped at 1e-12.
    close(nll(&[1.0, 0.0], 2, None, &[1]).unwrap(), -(1e-12f64).ln());
}

#[test]
fn brier_sums_over_the_classes() {
    // (0.6 - 1)^2 + 0.3^2 + 0.1^2 = 0.26; (0.2)^2 + (0.8 - 1)^2 + 0 = 0.08.
    let probs = [0.6, 0.3, 0.1, 0.2, 0.8, 0.0];
    close(
        brier(&probs, 3, None, &[0, 1]).unwrap(),
        (0.26 + 0.08) / 2.0,
    );
    close(brier(&[0.0, 1.0], 2, None, &[0]).unwrap(), 2.0);
}

#[test]
fn padding_slots_are_ignored() {
    // Question 0 has 2 options of K = 3; its third slot (padding) holds junk.
    let probs = [0.3, 0.7, 0.9, 0.2, 0.3, 0.5];
    let valid = [2, 3];
    close(accuracy(&probs, 3, Some(&valid), &[1, 2]).unwrap(), 1.0);
    let b0 = 0.3f64.powi(2) + 0.3f64.powi(2);
    let b1 = 0.2f64.powi(2) + 0.3f64.powi(2) + 0.5f64.powi(2);
    close(
        brier(&probs, 3, Some(&valid), &[1, 2]).unwrap(),
        (b0 + b1) / 2.0,
    );
    let err = accuracy(&probs, 3, Some(&valid), &[2, 0]).unwrap_err();
    assert!(
        err.to_string()
            .contains("answer 2 of question 0 is out of range")
    );
}

#[test]
fn ece_over_two_bins_with_known_counts() {
    // Confidence 0.9 (bin 13, (13/15, 14/15]): 3 questions, 2 right -> |2/3 - 0.9|.
    // Confidence 0.5 (bin 7, (7/15, 8/15]): 1 question, right -> |1 - 0.5|.
    let probs = [0.9, 0.1, 0.9, 0.1, 0.1, 0.9, 0.5, 0.5];
    let answers = [0, 0, 0, 0];
    let want = 3.0 / 4.0 * (2.0 / 3.0 - 0.9f64).abs() + 1.0 / 4.0 * 0.5;
    let got = ece(&probs, 2, None, &answers, 15).unwrap();
    assert!((got - want).abs() < 1e-6, "{got} != {want}");
    // One bin: |accuracy - mean confidence| = |0.75 - 0.8|.
    let one = ece(&probs, 2, None, &answers, 1).unwrap();
    assert!((one - 0.05).abs() < 1e-6, "{one}");
}

#[test]
fn ece_of_a_perfectly_calibrated_bin_is_zero() {
    // Two questions at confidence 0.5, one right: accuracy 0.5 = confidence.
    let got = ece(&[0.5, 0.5, 0.5, 0.5], 2, None, &[0, 1], 15).unwrap();
    assert!(got.abs() < 1e-12, "{got}");
}

#[test]
fn bins_are_closed_on_the_right() {
    assert_eq!(bin_of(0.0, 15), 0);
    assert_eq!(bin_of(1.0 / 15.0, 15), 0);
    assert_eq!(bin_of(1.0 / 15.0 + 1e-9, 15), 1);
    for b in 1..=15 {
        assert_eq!(bin_of(b as f64 / 15.0, 15), b - 1, "boundary {b}/15");
    }
    assert_eq!(bin_of(1.0, 15), 14);
    assert_eq!(bin_of(0.5, 2), 0);
    assert_eq!(bin_of(0.51, 2), 1);
}

#[test]
fn evaluate_gathers_every_metric() {
    let probs = [0.8, 0.2, 0.6, 0.4];
    let m = evaluate(&probs, 2, None, &[0, 1]).unwrap();
    assert_eq!(m.n, 2);
    close(m.accuracy, 0.5);
    close(m.nll, (-(0.8f64).ln() - (0.4f64).ln()) / 2.0);
    close(m.brier, (0.08 + 0.72) / 2.0);
    // Two bins of one question each: |1 - 0.8| and |0 - 0.6|, half the weight each.
    close(m.ece, 0.5 * 0.2 + 0.5 * 0.6);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let msg = |r: Result<f64>| match r {
        Err(Error::Input(m)) => m,
        other => panic!("expected Error::Input, got {other:?}"),
    };
    assert!(msg(accuracy(&[], 2, None, &[])).contains("no questions"));
    assert!(msg(accuracy(&[0.5, 0.5], 2, None, &[0, 1])).contains("N * K = 2 * 2"));
    assert!(msg(nll(&[0.5, 0.5], 2, None, &[2])).contains("out of range"));
    assert!(msg(brier(&[0.5, 0.5], 2, Some(&[1, 1]), &[0])).contains("valid has 2"));
    assert!(msg(brier(&[0.5, 0.5], 2, Some(&[3]), &[0])).contains("valid[0] = 3"));
    assert!(msg(accuracy(&[f64::NAN, 0.5], 2, None, &[0])).contains("NaN"));
    assert!(msg(ece(&[0.5, 0.5], 2, None, &[0], 0)).contains("at least one bin"));
    assert!(msg(accuracy(&[], 0, None, &[0])).contains("K = 0"));
}

#[test]
fn auroc_counts_pairs_and_half_ties() {
    assert_eq!(ood_auroc(&[0.1, 0.2], &[0.3, 0.4]).unwrap(), 1.0);
    assert_eq!(ood_auroc(&[0.3, 0.4], &[0.1, 0.2]).unwrap(), 0.0);
    assert_eq!(ood_auroc(&[0.5, 0.5], &[0.5]).unwrap(), 0.5);
    // Pairs (in, out): (1,2) > , (1,0) <, (3,2) <, (3,0) <, (2,2) tie, (2,0) < -> 1.5 / 6.
    close(ood_auroc(&[1.0, 3.0, 2.0], &[2.0, 0.0]).unwrap(), 1.5 / 6.0);
    // The pairwise definition agrees on a larger set with many ties.
    let a: Vec<f64> = (0..37).map(|i| (i % 7) as f64).collect();
    let b: Vec<f64> = (0..23).map(|i| (i % 5) as f64 + 1.5).collect();
    let pairwise: f64 = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| (x, y)))
        .map(|(x, y)| match y.partial_cmp(x).unwrap() {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Equal => 0.5,
            std::cmp::Ordering::Less => 0.0,
        })
        .sum::<f64>()
        / (a.len() * b.len()) as f64;
    close(ood_auroc(&a, &b).unwrap(), pairwise);
}

#[test]
fn auroc_refuses_empty_sets_and_nan() {
    assert!(matches!(ood_auroc(&[], &[1.0]), Err(Error::Input(_))));
    assert!(matches!(ood_auroc(&[1.0], &[]), Err(Error::Input(_))));
    let err = ood_auroc(&[1.0], &[f64::NAN]).unwrap_err().to_string();
    assert!(err.contains("out_scores[0] is NaN"), "{err}");
}

#[test]
fn reliability_bins_hold_counts_and_means() {
    // Confidences 0.6, 0.6 (bin 8 of 15: 0.6 = 9/15 belongs to the lower bin) and 0.7 (bin 10).
    let probs = [0.6, 0.4, 0.6, 0.4, 0.7, 0.3];
    let r = reliability(&probs, 2, None, &[0, 1, 0], 15).unwrap();
    assert_eq!(r.count.iter().sum::<usize>(), 3);
    assert_eq!((r.count[8], r.count[10]), (2, 1));
    close(r.accuracy[8], 0.5);
    close(r.confidence[10], 0.7);
    assert!(r.accuracy[0].is_nan() && r.confidence[0].is_nan());
    close(r.ece(), ece(&probs, 2, None, &[0, 1, 0], 15).unwrap());
    close(r.ece(), 2.0 / 3.0 * 0.1 + 1.0 / 3.0 * 0.3);
}

#[test]
fn average_precision_steps_over_distinct_scores() {
    assert_eq!(ood_aupr(&[0.0, 0.1], &[0.5, 0.9]).unwrap(), 1.0);
    // Ranked 0.9 (out), 0.5 (in), 0.4 (out): precision 1 at recall 1/2, 2/3 at recall 1.
    close(
        ood_aupr(&[0.5], &[0.9, 0.4]).unwrap(),
        0.5 * 1.0 + 0.5 * 2.0 / 3.0,
    );
    // A tie of one in and one out at the top is one threshold: precision 1/2 at recall 1.
    close(ood_aupr(&[0.7], &[0.7]).unwrap(), 0.5);
    assert!(matches!(
        ood_aupr(&[f64::INFINITY], &[1.0]),
        Err(Error::Input(_))
    ));
}

mod tools;
