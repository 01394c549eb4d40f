//! What `infer` prints: one JSON object per question and, when the questions have answers,
//! a one-line summary of accuracy, NLL, ECE and Brier score ([`lora_ens::metrics`]).
//!
//! A record's keys, in order: `id`, `labels`, `probs` (the ensemble's probability of each
//! label), `prediction` (the label with the largest probability), `confidence` (that
//! probability), `entropy`, `expected_entropy`, `mutual_information` (nats), `agreement` (the
//! fraction of members predicting the same label); then `answer` (label) and `correct` when
//! the question has an answer, and `member_probs` (one list per member) when asked for.
//! Test: `cargo test -p lora-ens-cli --lib records`.

use lora_ens::data::Question;
use lora_ens::metrics::{self, Metrics};
use lora_ens::score::Scores;
use lora_ens::{Error, Result};
use serde::Serialize;

/// One output line.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub id: &'a str,
    pub labels: &'a [String],
    pub probs: Vec<f64>,
    pub prediction: &'a str,
    pub confidence: f64,
    pub entropy: f64,
    pub expected_entropy: f64,
    pub mutual_information: f64,
    pub agreement: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_probs: Option<Vec<Vec<f64>>>,
}

/// The record of question `i` of `scores` (`q` is that question); with `members`, the
/// members' probabilities too. Probabilities are the engine's f32 values, exactly, as f64.
pub fn record<'a>(q: &'a Question, scores: &Scores, i: usize, members: bool) -> Record<'a> {
    let r = &scores.reduced;
    let k_i = scores.n_options[i];
    let widen = |xs: &[f32]| xs.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let prediction = r.prediction[i];
    Record {
        id: &q.id,
        labels: &q.labels,
        probs: widen(&r.probs[i * r.k..i * r.k + k_i]),
        prediction: &q.labels[prediction],
        confidence: f64::from(r.confidence[i]),
        entropy: f64::from(r.entropy[i]),
        expected_entropy: f64::from(r.expected_entropy[i]),
        mutual_information: f64::from(r.mutual_information[i]),
        agreement: f64::from(r.agreement[i]),
        answer: q.answer_label(),
        correct: q.answer.map(|a| a == prediction),
        member_probs: members.then(|| {
            (0..r.n_members)
                .map(|m| {
                    let row = (i * r.n_members + m) * r.k;
                    widen(&r.member_probs[row..row + k_i])
                })
                .collect()
        }),
    }
}

/// The JSON text of a record, on one line.
pub fn to_line(record: &Record<'_>) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| Error::Input(format!("cannot write record {}: {e}", record.id)))
}

/// Metrics over the questions that have an answer (`None` when none has).
pub fn metrics(questions: &[Question], scores: &Scores) -> Result<Option<Metrics>> {
    let r = &scores.reduced;
    let answered: Vec<usize> = (0..questions.len())
        .filter(|&i| questions[i].answer.is_some())
        .collect();
    if answered.is_empty() {
        return Ok(None);
    }
    let mut probs = Vec::with_capacity(answered.len() * r.k);
    for &i in &answered {
        probs.extend_from_slice(&r.probs[i * r.k..(i + 1) * r.k]);
    }
    let valid: Vec<usize> = answered.iter().map(|&i| scores.n_options[i]).collect();
    let answers: Vec<usize> = answered
        .iter()
        .filter_map(|&i| questions[i].answer)
        .collect();
    metrics::evaluate(&probs, r.k, Some(&valid), &answers).map(Some)
}

/// `accuracy 0.620  nll 1.234  ece 0.056  brier 0.512  (50 questions, 3 members)`.
pub fn summary(m: &Metrics, n_members: usize) -> String {
    format!(
        "accuracy {:.3}  nll {:.3}  ece {:.3}  brier {:.3}  ({} question{}, {} member{})",
        m.accuracy,
        m.nll,
        m.ece,
        m.brier,
        m.n,
        if m.n == 1 { "" } else { "s" },
        n_members,
        if n_members == 1 { "" } else { "s" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_ens::reduce::reduce;

    fn question(id: &str, answer: Option<usize>, n: usize) -> Question {
        Question {
            id: id.to_owned(),
            question: "q".to_owned(),
            choices: (0..n).map(|i| format!("c{i}")).collect(),
            labels: ["A", "B", "C"][..n]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            answer,
            subject: None,
        }
    }

    /// Two questions (3 and 2 options), two members.
    fn scores() -> Scores {
        let ninf = f32::NEG_INFINITY;
        let logits = [0.0, 1.0, 2.0, 0.5, 0.5, 0.5, 1.0, 0.0, ninf, 3.0, 0.0, ninf];
        let n_options = vec![3, 2];
        let reduced = reduce(&logits, 2, 2, 3, Some(&n_options)).unwrap();
        Scores {
            reduced,
            n_options,
            member_scores: logits.to_vec(),
        }
    }

    #[test]
    fn records_hold_the_engine_numbers_in_order() {
        let s = scores();
        let q = question("q1", Some(0), 2);
        let rec = record(&q, &s, 1, true);
        let line = to_line(&rec).unwrap();
        let keys: Vec<&str> = [
            "\"id\"",
            "\"labels\"",
            "\"probs\"",
            "\"prediction\"",
            "\"confidence\"",
            "\"entropy\"",
            "\"expected_entropy\"",
            "\"mutual_information\"",
            "\"agreement\"",
            "\"answer\"",
            "\"correct\"",
            "\"member_probs\"",
        ]
        .to_vec();
        let at: Vec<usize> = keys.iter().map(|k| line.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["prediction"], "A");
        assert_eq!(v["correct"], true);
        assert_eq!(v["probs"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["probs"][0].as_f64().unwrap(),
            f64::from(s.reduced.probs[3])
        );
        assert_eq!(
            v["member_probs"][1][0].as_f64().unwrap(),
            f64::from(s.reduced.member_probs[9])
        );
    }

    #[test]
    fn records_without_answers_or_members_leave_the_keys_out() {
        let s = scores();
        let q = question("q0", None, 3);
        let line = to_line(&record(&q, &s, 0, false)).unwrap();
        assert!(
            !line.contains("answer") && !line.contains("correct"),
            "{line}"
        );
        assert!(!line.contains("member_probs"), "{line}");
    }

    #[test]
    fn metrics_cover_only_answered_questions() {
        let s = scores();
        let none = [question("a", None, 3), question("b", None, 2)];
        assert_eq!(metrics(&none, &s).unwrap(), None);
        let one = [question("a", None, 3), question("b", Some(0), 2)];
        let m = metrics(&one, &s).unwrap().unwrap();
        assert_eq!((m.n, m.accuracy), (1, 1.0));
        let p = f64::from(s.reduced.probs[3]);
        assert!((m.nll + p.ln()).abs() < 1e-9);
        assert_eq!(
            summary(&m, 3),
            format!(
                "accuracy 1.000  nll {:.3}  ece {:.3}  brier {:.3}  (1 question, 3 members)",
                m.nll, m.ece, m.brier
            )
        );
    }
}
