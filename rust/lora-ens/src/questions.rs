//! Questions in, records out: the one path from multiple-choice [`Question`]s to the
//! ensemble's scores and the per-question [`Record`]s that `infer`, `eval`, the Python
//! `Scores.to_records` and a service all emit.
//!
//! A [`ScoringSpec`] (labels or choices, the choices' normalization) is resolved once:
//! an explicit request, else the ensemble manifest's `scoring`, else `choices` / `per_token`.
//! An explicit request that differs from the manifest wins; [`ScoringSpec::overrides`] names
//! what it overrode so front ends can say so.
//! Test: `cargo test -p lora-ens --lib questions` and `pytest tests/test_cli_infer.py`.

use serde::{Deserialize, Serialize};

use crate::config::Normalization;
pub use crate::config::Scoring;
use crate::data::Question;
use crate::lora::EnsembleManifest;
use crate::metrics::{self, Metrics};
use crate::score::Scores;
use crate::{Error, Result};

/// How one call scores its questions, with where each part came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoringSpec {
    /// Labels or choices.
    pub mode: Scoring,
    /// How `choices` scoring normalizes an answer's log-likelihood (unused for labels).
    pub normalization: Normalization,
    /// The manifest's mode when an explicit request replaced a different one.
    pub overridden_mode: Option<Scoring>,
    /// The manifest's normalization when an explicit request replaced a different one.
    pub overridden_normalization: Option<Normalization>,
}

impl Default for ScoringSpec {
    fn default() -> Self {
        Self {
            mode: Scoring::Choices,
            normalization: Normalization::PerToken,
            overridden_mode: None,
            overridden_normalization: None,
        }
    }
}

impl ScoringSpec {
    /// Resolve the spec: `mode` / `normalization` when given, else the manifest's
    /// `scoring`, else `choices` and `per_token`.
    pub fn resolve(
        mode: Option<Scoring>,
        normalization: Option<Normalization>,
        manifest: Option<&EnsembleManifest>,
    ) -> Self {
        let recorded = manifest.and_then(|m| m.scoring.as_ref());
        let m_mode = recorded.and_then(|s| s.mode);
        let m_norm = recorded.and_then(|s| s.normalization);
        let d = Self::default();
        Self {
            mode: mode.or(m_mode).unwrap_or(d.mode),
            normalization: normalization.or(m_norm).unwrap_or(d.normalization),
            overridden_mode: differs(mode, m_mode),
            overridden_normalization: differs(normalization, m_norm),
        }
    }

    /// A one-line note when an explicit request replaced the manifest's scoring, else `None`.
    pub fn overrides(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(m) = self.overridden_mode {
            parts.push(format!(
                "scoring `{}` replaces the ensemble's `{}`",
                self.mode.name(),
                m.name()
            ));
        }
        if let Some(n) = self.overridden_normalization {
            parts.push(format!(
                "normalization `{}` replaces the ensemble's `{}`",
                self.normalization.name(),
                n.name()
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The recorded value when an explicit one differs from it.
fn differs<T: PartialEq>(explicit: Option<T>, recorded: Option<T>) -> Option<T> {
    match (explicit, recorded) {
        (Some(a), Some(b)) if a != b => Some(b),
        _ => None,
    }
}

/// The version of the [`Record`] schema; bumped when a field changes meaning or goes away.
pub const RECORD_SCHEMA_VERSION: u32 = 1;

/// One question's result: the one record schema of `infer`'s JSONL, `Scores.to_records`,
/// `eval` and the server (field order is the JSON key order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The question's id (from the file, else `"{file stem}-{line}"`; `"{i}"` for bare prompts).
    pub id: String,
    /// The options' labels (`A`..`E`, `1`..`4`), one per option, in order.
    pub labels: Vec<String>,
    /// The ensemble's probability of each option (the members' mean), one per label.
    pub probs: Vec<f64>,
    /// The label with the largest probability (lowest index on ties).
    pub prediction: String,
    /// Its index into `labels`.
    pub prediction_index: usize,
    /// The largest probability.
    pub confidence: f64,
    /// Entropy of `probs` in nats (total uncertainty).
    pub entropy: f64,
    /// The members' mean entropy in nats (aleatoric part).
    pub expected_entropy: f64,
    /// `entropy - expected_entropy` in nats, >= 0 (the members' disagreement).
    pub mutual_information: f64,
    /// The fraction of members whose own prediction is `prediction`.
    pub agreement: f64,
    /// The correct label, when the question has an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Whether `prediction` is the answer, when the question has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// Each member's probabilities (M lists of one per label), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_probs: Option<Vec<Vec<f64>>>,
    /// [`RECORD_SCHEMA_VERSION`].
    pub schema_version: u32,
}

impl Record {
    /// The record as one line of JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::Input(format!("cannot write record {}: {e}", self.id)))
    }
}

/// Scores of N questions with what is needed to report them: ids, labels and answers.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionScores {
    /// The engine's arrays (member probabilities, mixture, uncertainty).
    pub scores: Scores,
    /// How the questions were scored.
    pub spec: ScoringSpec,
    /// One id per question.
    pub ids: Vec<String>,
    /// Each question's labels (K_i of them).
    pub labels: Vec<Vec<String>>,
    /// Each question's answer index, when known.
    pub answers: Vec<Option<usize>>,
}

impl QuestionScores {
    /// Wrap bare `scores` (from prompts, without questions): ids `"0"`, `"1"`, ... and the
    /// given per-question labels (one list shared by all, or one per question).
    pub fn from_scores(scores: Scores, spec: ScoringSpec, labels: &[Vec<String>]) -> Result<Self> {
        let n = scores.reduced.n;
        let labels: Vec<Vec<String>> = match labels.len() {
            1 => vec![labels[0].clone(); n],
            len if len == n => labels.to_vec(),
            len => {
                return Err(Error::Input(format!(
                    "{len} label lists for {n} questions: give one list per question, or one for all"
                )));
            }
        };
        if let Some(i) = (0..n).find(|&i| labels[i].len() != scores.n_options[i]) {
            return Err(Error::Input(format!(
                "question {i} has {} options but {} labels",
                scores.n_options[i],
                labels[i].len()
            )));
        }
        Ok(Self {
            ids: (0..n).map(|i| i.to_string()).collect(),
            answers: vec![None; n],
            scores,
            spec,
            labels,
        })
    }

    /// The number of questions N.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no questions.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The record of question `i`; with `members`, each member's probabilities too.
    /// Probabilities are the engine's f32 values, exactly, as f64.
    pub fn record(&self, i: usize, members: bool) -> Record {
        let r = &self.scores.reduced;
        let k_i = self.scores.n_options[i];
        let widen = |xs: &[f32]| xs.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let prediction = r.prediction[i];
        let labels = &self.labels[i];
        Record {
            id: self.ids[i].clone(),
            labels: labels.clone(),
            probs: widen(&r.probs[i * r.k..i * r.k + k_i]),
            prediction: labels[prediction].clone(),
            prediction_index: prediction,
            confidence: f64::from(r.confidence[i]),
            entropy: f64::from(r.entropy[i]),
            expected_entropy: f64::from(r.expected_entropy[i]),
            mutual_information: f64::from(r.mutual_information[i]),
            agreement: f64::from(r.agreement[i]),
            answer: self.answers[i].map(|a| labels[a].clone()),
            correct: self.answers[i].map(|a| a == prediction),
            member_probs: members.then(|| {
                (0..r.n_members)
                    .map(|m| {
                        let row = (i * r.n_members + m) * r.k;
                        widen(&r.member_probs[row..row + k_i])
                    })
                    .collect()
            }),
            schema_version: RECORD_SCHEMA_VERSION,
        }
    }

    /// Every question's record, in order.
    pub fn records(&self, members: bool) -> Vec<Record> {
        (0..self.len()).map(|i| self.record(i, members)).collect()
    }

    /// Accuracy, NLL, ECE and Brier over the questions that have an answer (`None` when none
    /// has).
    pub fn metrics(&self) -> Result<Option<Metrics>> {
        let r = &self.scores.reduced;
        let answered: Vec<usize> = (0..self.len())
            .filter(|&i| self.answers[i].is_some())
            .collect();
        if answered.is_empty() {
            return Ok(None);
        }
        let mut probs = Vec::with_capacity(answered.len() * r.k);
        for &i in &answered {
            probs.extend(
                r.probs[i * r.k..(i + 1) * r.k]
                    .iter()
                    .map(|&p| f64::from(p)),
            );
        }
        let valid: Vec<usize> = answered.iter().map(|&i| self.scores.n_options[i]).collect();
        let answers: Vec<usize> = answered.iter().filter_map(|&i| self.answers[i]).collect();
        metrics::evaluate(&probs, r.k, Some(&valid), &answers).map(Some)
    }
}

/// `accuracy 0.620  nll 1.234  ece 0.056  brier 0.512  (50 questions, 3 members)`.
pub fn summary(m: &Metrics, n_members: usize) -> String {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    format!(
        "accuracy {:.3}  nll {:.3}  ece {:.3}  brier {:.3}  ({} question{}, {} member{})",
        m.accuracy,
        m.nll,
        m.ece,
        m.brier,
        m.n,
        plural(m.n),
        n_members,
        plural(n_members),
    )
}

/// The prompts (labels mode) or contexts (choices mode) of `questions`, and the option texts
/// each is scored on; a question that cannot be laid out is named in the error.
pub(crate) fn layout(
    questions: &[Question],
    mode: Scoring,
) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    questions
        .iter()
        .map(|q| match mode {
            Scoring::Labels => crate::prompt::label_prompt(&q.question, &q.choices, &q.labels)
                .map(|p| (p, q.labels.clone()))
                .map_err(|e| Error::Input(format!("question {}: {e}", q.id))),
            Scoring::Choices => Ok((
                crate::prompt::choice_context(&q.question),
                q.choices.clone(),
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(|pairs| pairs.into_iter().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::reduce;

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
            line: 0,
        }
    }

    /// Two questions (3 and 2 options), two members.
    fn scored(questions: &[Question]) -> QuestionScores {
        let ninf = f32::NEG_INFINITY;
        let logits = [0.0, 1.0, 2.0, 0.5, 0.5, 0.5, 1.0, 0.0, ninf, 3.0, 0.0, ninf];
        let n_options = vec![3, 2];
        let reduced = reduce(&logits, 2, 2, 3, Some(&n_options)).unwrap();
        QuestionScores {
            scores: Scores {
                reduced,
                n_options,
                member_scores: logits.to_vec(),
            },
            spec: ScoringSpec::default(),
            ids: questions.iter().map(|q| q.id.clone()).collect(),
            labels: questions.iter().map(|q| q.labels.clone()).collect(),
            answers: questions.iter().map(|q| q.answer).collect(),
        }
    }

    #[test]
    fn records_hold_the_engine_numbers_in_order() {
        let s = scored(&[question("q0", None, 3), question("q1", Some(0), 2)]);
        let line = s.record(1, true).to_json().unwrap();
        let keys = [
            "id",
            "labels",
            "probs",
            "prediction",
            "prediction_index",
            "confidence",
            "entropy",
            "expected_entropy",
            "mutual_information",
            "agreement",
            "answer",
            "correct",
            "member_probs",
            "schema_version",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["prediction"], "A");
        assert_eq!(v["correct"], true);
        assert_eq!(v["probs"].as_array().unwrap().len(), 2);
        let r = &s.scores.reduced;
        assert_eq!(v["probs"][0].as_f64().unwrap(), f64::from(r.probs[3]));
        assert_eq!(
            v["member_probs"][1][0].as_f64().unwrap(),
            f64::from(r.member_probs[9])
        );
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, s.record(1, true));
    }

    #[test]
    fn records_without_answers_or_members_leave_the_keys_out() {
        let s = scored(&[question("q0", None, 3), question("q1", None, 2)]);
        let line = s.record(0, false).to_json().unwrap();
        assert!(
            !line.contains("answer") && !line.contains("correct"),
            "{line}"
        );
        assert!(!line.contains("member_probs"), "{line}");
    }

    #[test]
    fn metrics_cover_only_answered_questions() {
        let none = scored(&[question("a", None, 3), question("b", None, 2)]);
        assert_eq!(none.metrics().unwrap(), None);
        let one = scored(&[question("a", None, 3), question("b", Some(0), 2)]);
        let m = one.metrics().unwrap().unwrap();
        assert_eq!((m.n, m.accuracy), (1, 1.0));
        let p = f64::from(one.scores.reduced.probs[3]);
        assert!((m.nll + p.ln()).abs() < 1e-9);
        assert_eq!(
            summary(&m, 3),
            format!(
                "accuracy 1.000  nll {:.3}  ece {:.3}  brier {:.3}  (1 question, 3 members)",
                m.nll, m.ece, m.brier
            )
        );
    }

    #[test]
    fn explicit_scoring_wins_and_says_what_it_replaced() {
        let text = r#"{"members": ["m0"], "scoring": {"mode": "labels", "normalization": "sum"}}"#;
        let m = EnsembleManifest::from_json(text, std::path::Path::new("e/ensemble.json")).unwrap();
        let from_manifest = ScoringSpec::resolve(None, None, Some(&m));
        assert_eq!(
            (from_manifest.mode, from_manifest.normalization),
            (Scoring::Labels, Normalization::Sum)
        );
        assert_eq!(from_manifest.overrides(), None);
        let same = ScoringSpec::resolve(Some(Scoring::Labels), None, Some(&m));
        assert_eq!(same.overrides(), None);
        let other = ScoringSpec::resolve(
            Some(Scoring::Choices),
            Some(Normalization::PerByte),
            Some(&m),
        );
        assert_eq!(other.mode, Scoring::Choices);
        assert_eq!(
            other.overrides().unwrap(),
            "scoring `choices` replaces the ensemble's `labels`; \
             normalization `per_byte` replaces the ensemble's `sum`"
        );
        let default = ScoringSpec::resolve(None, None, None);
        assert_eq!(default, ScoringSpec::default());
    }

    #[test]
    fn layout_names_a_question_that_cannot_be_laid_out() {
        let mut q = question("bad", None, 2);
        q.labels.pop();
        let e = layout(&[q], Scoring::Labels).unwrap_err().to_string();
        assert!(e.contains("question bad"), "{e}");
        let (contexts, options) = layout(&[question("ok", None, 2)], Scoring::Choices).unwrap();
        assert_eq!(contexts, ["Question: q\nAnswer:"]);
        assert_eq!(options, [vec!["c0".to_owned(), "c1".to_owned()]]);
    }
}
