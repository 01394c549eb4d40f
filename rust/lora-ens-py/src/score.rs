//! Bindings of `lora_ens::score` and `lora_ens::questions`: `_core.Scores`, the typed result
//! of every scoring call (NumPy arrays made once, per-question ids, labels and answers), whose
//! `to_records` is the engine's one record schema, the same as `lora-ens-rs infer` writes.

use std::path::PathBuf;

use lora_ens::questions::QuestionScores;
use numpy::{PyArray1, PyArray3, PyArrayMethods};
use pyo3::prelude::*;

use crate::error::call;
use crate::reduce::Reduced;

/// Scores of N questions by M members over up to K options each (padding: probability 0).
///
/// Attributes (besides the reducer's, see ``Reduced``):
///     n_options: (N,) int64, the options of each question; slots beyond are padding.
///     member_scores: (N, M, K) float32, what each member's softmax was taken over (label
///         logits or normalized choice log-likelihoods; ``-inf`` in padding).
///     options: each question's labels (label scoring of prompts: the labels; choices: the
///         answer texts for bare contexts, the questions' labels for dataset questions).
///     ids: each question's id (``"0"``, ``"1"``, ... for bare prompts).
///     answers: each question's answer index, or None.
///     members: the members' names (``["base"]`` for the base model alone).
///     scoring, normalization: how the questions were scored.
#[pyclass(module = "lora_ens_rs._core", extends = Reduced, frozen)]
pub struct Scores {
    inner: QuestionScores,
    members: Vec<String>,
    n_options: Py<PyArray1<i64>>,
    member_scores: Py<PyArray3<f32>>,
}

impl Scores {
    /// The Python object of `s`, with `members` as the member names.
    pub(crate) fn into_py(
        py: Python<'_>,
        s: QuestionScores,
        members: Vec<String>,
    ) -> PyResult<Py<Self>> {
        let r = &s.scores.reduced;
        let (n, m, k) = (r.n, r.n_members, r.k);
        let n_options: Vec<i64> = s.scores.n_options.iter().map(|&x| x as i64).collect();
        let n_options = PyArray1::from_vec(py, n_options).unbind();
        let member_scores = PyArray1::from_slice(py, &s.scores.member_scores)
            .reshape([n, m, k])?
            .unbind();
        let base = Reduced::arrays(py, &s.scores.reduced)?;
        let init = PyClassInitializer::from(base).add_subclass(Self {
            inner: s,
            members,
            n_options,
            member_scores,
        });
        Py::new(py, init)
    }
}

#[pymethods]
impl Scores {
    #[getter]
    fn n_options(&self, py: Python<'_>) -> Py<PyArray1<i64>> {
        self.n_options.clone_ref(py)
    }

    #[getter]
    fn member_scores(&self, py: Python<'_>) -> Py<PyArray3<f32>> {
        self.member_scores.clone_ref(py)
    }

    #[getter]
    fn options(&self) -> Vec<Vec<String>> {
        self.inner.labels.clone()
    }

    #[getter]
    fn ids(&self) -> Vec<String> {
        self.inner.ids.clone()
    }

    #[getter]
    fn answers(&self) -> Vec<Option<usize>> {
        self.inner.answers.clone()
    }

    #[getter]
    fn members(&self) -> Vec<String> {
        self.members.clone()
    }

    #[getter]
    fn scoring(&self) -> &'static str {
        self.inner.spec.mode.name()
    }

    #[getter]
    fn normalization(&self) -> &'static str {
        self.inner.spec.normalization.name()
    }

    /// The predicted option (label or choice text) of each question.
    #[getter]
    fn prediction_labels(&self) -> Vec<String> {
        let r = &self.inner.scores.reduced;
        (0..self.inner.len())
            .map(|i| self.inner.labels[i][r.prediction[i]].clone())
            .collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// One record per question, the schema of ``lora-ens-rs infer``'s JSONL (see the README).
    ///
    /// Args:
    ///     members: include ``member_probs`` (M lists of K_i probabilities).
    ///
    /// Returns:
    ///     list of dicts with ``id``, ``labels``, ``probs``, ``prediction``,
    ///     ``prediction_index``, ``confidence``, ``entropy``, ``expected_entropy``,
    ///     ``mutual_information``, ``agreement``, ``answer`` / ``correct`` (questions with an
    ///     answer), ``member_probs`` (with ``members``) and ``schema_version``.
    #[pyo3(signature = (members=false))]
    fn to_records<'py>(&self, py: Python<'py>, members: bool) -> PyResult<Bound<'py, PyAny>> {
        let text = call(py, || records_json(&self.inner, members))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The records as JSON: ``{"members": [...], "questions": [records]}``.
    ///
    /// Args:
    ///     path: also write it there, atomically (a temporary file beside it, then a rename).
    ///     members: include each member's probabilities.
    ///
    /// Returns:
    ///     The JSON text.
    #[pyo3(signature = (path=None, members=false))]
    fn to_json(&self, py: Python<'_>, path: Option<PathBuf>, members: bool) -> PyResult<String> {
        call(py, || {
            let records = records_json(&self.inner, members)?;
            let names = serde_json::to_string(&self.members)
                .map_err(|e| lora_ens::Error::Input(format!("member names: {e}")))?;
            let text = format!("{{\"members\": {names}, \"questions\": {records}}}");
            if let Some(path) = &path {
                lora_ens::atomic::write_file(path, text.as_bytes())?;
            }
            Ok(text)
        })
    }

    /// Accuracy, NLL, ECE and Brier over the questions with an answer (engine metrics), as a
    /// dict with ``n`` too; None when no question has an answer.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let m = call(py, || self.inner.metrics())?;
        m.map(|m| crate::metrics::metrics_dict(py, &m)).transpose()
    }

    fn __repr__(&self) -> String {
        let r = &self.inner.scores.reduced;
        format!(
            "Scores(n={}, members={}, k={}, scoring={:?})",
            r.n,
            r.n_members,
            r.k,
            self.inner.spec.mode.name()
        )
    }
}

/// The records as a JSON list.
fn records_json(s: &QuestionScores, members: bool) -> lora_ens::Result<String> {
    serde_json::to_string(&s.records(members))
        .map_err(|e| lora_ens::Error::Input(format!("cannot write records: {e}")))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Scores>()
}
