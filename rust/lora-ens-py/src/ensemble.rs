//! Bindings of `lora_ens::ensemble`: `_core.Ensemble`, a base model with M LoRA members.
//! Every call releases the GIL, so several Python threads can score with one ensemble at
//! once. The friendly front end (`lora_ens_rs.Ensemble`, NumPy result objects, the default
//! model) is `python/lora_ens_rs/ensemble.py`.

use std::path::PathBuf;

use lora_ens::data::Question;
use lora_ens::generate::GenerateOptions;
use lora_ens::questions::{QuestionScores, Scoring, ScoringSpec};
use lora_ens::score::{Normalization, ScoreOptions};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::data::question_of;
use crate::error::call;
use crate::generate::Generation;
use crate::model::config_dict;
use crate::score::Scores;

/// A GGUF base model with M PEFT LoRA members run in one batched pass.
///
/// Args:
///     model: the GGUF file.
///     adapters: PEFT adapter directories and ensemble directories (with ``ensemble.json``),
///         in order; empty runs the base model alone (reported as one member).
///     device: ``"cpu"`` or ``"cuda:N"`` (CUDA builds).
///     threads: threads for this ensemble's calls (default: one per core).
#[pyclass(module = "lora_ens_rs._core", frozen)]
pub struct Ensemble {
    inner: lora_ens::ensemble::Ensemble,
}

/// Run `f` with the scoring options of one call: `batch_size`, and `progress(done, total)`
/// called from the engine thread (taking the GIL only for the call).
fn with_options<T>(
    batch_size: usize,
    progress: Option<Py<PyAny>>,
    f: impl FnOnce(&ScoreOptions<'_>) -> T,
) -> T {
    let report = progress.map(|cb| {
        move |done: usize, total: usize| {
            Python::attach(|py| {
                // A failing progress callback must not abort the scoring: report and go on.
                if let Err(e) = cb.call1(py, (done, total)) {
                    e.write_unraisable(py, None);
                }
            });
        }
    });
    f(&ScoreOptions {
        batch_size,
        progress: report.as_ref().map(|r| r as &(dyn Fn(usize, usize) + Sync)),
    })
}

impl Ensemble {
    /// The members' names for results: `["base"]` for the base model alone.
    fn member_labels(&self) -> Vec<String> {
        let names = self.inner.member_names();
        if names.is_empty() {
            vec!["base".to_owned()]
        } else {
            names
        }
    }
}

#[pymethods]
impl Ensemble {
    #[new]
    #[pyo3(signature = (model, adapters, device="cpu", threads=None))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        adapters: Vec<PathBuf>,
        device: &str,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let inner = call(py, || {
            let device = lora_ens::device::parse_device(device)?;
            let ens = lora_ens::ensemble::Ensemble::load(&model, &adapters, &device)?;
            match threads {
                Some(t) => ens.with_threads(t),
                None => Ok(ens),
            }
        })?;
        Ok(Self { inner })
    }

    /// Score prompts over label tokens (see ``lora_ens_rs.Ensemble.score``).
    #[pyo3(signature = (prompts, labels, batch_size=16, progress=None))]
    fn score(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        labels: Vec<Vec<String>>,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<Scores>> {
        let s = with_options(batch_size, progress, |opts| {
            call(py, || {
                let s = self.inner.score(&prompts, &labels, opts)?;
                let spec = ScoringSpec {
                    mode: Scoring::Labels,
                    ..ScoringSpec::default()
                };
                QuestionScores::from_scores(s, spec, &labels)
            })
        })?;
        Scores::into_py(py, s, self.member_labels())
    }

    /// Score answer texts as continuations (see ``lora_ens_rs.Ensemble.score_choices``).
    #[pyo3(signature = (contexts, choices, normalization="per_token", batch_size=16, progress=None))]
    fn score_choices<'py>(
        &self,
        py: Python<'py>,
        contexts: Vec<String>,
        choices: Vec<Vec<String>>,
        normalization: &str,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<Scores>> {
        let s = with_options(batch_size, progress, |opts| {
            call(py, || {
                let norm = Normalization::from_name(normalization)?;
                let s = self.inner.score_choices(&contexts, &choices, norm, opts)?;
                let spec = ScoringSpec {
                    normalization: norm,
                    ..ScoringSpec::default()
                };
                QuestionScores::from_scores(s, spec, &choices)
            })
        })?;
        Scores::into_py(py, s, self.member_labels())
    }

    /// Score dataset questions (see ``lora_ens_rs.Ensemble.score_questions``): the scoring
    /// resolved from the arguments, else the ensemble manifest, else choices / per_token.
    #[pyo3(signature = (questions, scoring=None, normalization=None, batch_size=16, progress=None))]
    fn score_questions(
        &self,
        py: Python<'_>,
        questions: Vec<Bound<'_, PyAny>>,
        scoring: Option<&str>,
        normalization: Option<&str>,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<Scores>> {
        let questions: Vec<Question> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| question_of(q, i))
            .collect::<PyResult<_>>()?;
        let s = with_options(batch_size, progress, |opts| {
            call(py, || {
                let mode = scoring.map(Scoring::from_name).transpose()?;
                let norm = normalization.map(Normalization::from_name).transpose()?;
                let spec = ScoringSpec::resolve(mode, norm, self.inner.manifest());
                self.inner.score_questions(&questions, &spec, opts)
            })
        })?;
        Scores::into_py(py, s, self.member_labels())
    }

    /// (mode, normalization) this ensemble scores with when a call names neither: its
    /// manifest's ``scoring``, else ``("choices", "per_token")``.
    fn scoring_defaults(&self) -> (&'static str, &'static str) {
        let spec = ScoringSpec::resolve(None, None, self.inner.manifest());
        (spec.mode.name(), spec.normalization.name())
    }

    /// Generate with the members' averaged next-token distribution; a dict.
    #[pyo3(signature = (prompt, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0, stop=None, chat=false))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        chat: bool,
    ) -> PyResult<Generation> {
        let opts = generate_options(max_new_tokens, temperature, top_p, seed, stop);
        let g = call(py, || self.inner.generate(&prompt, chat, &opts))?;
        Ok(Generation::new(py, g))
    }

    /// ``generate`` for several prompts in one batched decode; a list of results, in order.
    #[pyo3(signature = (prompts, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0, stop=None, chat=false))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn generate_batch(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        chat: bool,
    ) -> PyResult<Vec<Generation>> {
        let opts = generate_options(max_new_tokens, temperature, top_p, seed, stop);
        let gs = call(py, || self.inner.generate_batch(&prompts, chat, &opts))?;
        Ok(gs.into_iter().map(|g| Generation::new(py, g)).collect())
    }

    /// The members' names (their directory names), in order.
    #[getter]
    fn member_names(&self) -> Vec<String> {
        self.inner.member_names()
    }

    /// The members' adapter directories, in order.
    #[getter]
    fn member_paths(&self) -> Vec<PathBuf> {
        self.inner
            .members()
            .iter()
            .map(|m| m.path.clone())
            .collect()
    }

    /// The GGUF file of the base model.
    #[getter]
    fn model_path(&self) -> PathBuf {
        self.inner.model_path().to_path_buf()
    }

    /// The first ``ensemble.json`` loaded, or ``None``.
    #[getter]
    fn manifest_path(&self) -> Option<PathBuf> {
        self.inner.manifest().map(|m| m.path.clone())
    }

    /// The first ``ensemble.json`` loaded (typed), or ``None``.
    #[getter]
    fn manifest(&self) -> Option<crate::lora::EnsembleManifest> {
        self.inner
            .manifest()
            .cloned()
            .map(crate::lora::EnsembleManifest::from)
    }

    /// The base model's hyper-parameters as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        config_dict(py, self.inner.config())
    }

    /// Bytes held by the base model's quantized weights.
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.inner.model().weight_bytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "Ensemble(model={:?}, members={:?})",
            self.inner.model_path().display().to_string(),
            self.inner.member_names()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Ensemble>()
}

/// The engine's decoding options from `generate`'s keyword arguments.
fn generate_options(
    max_new_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
    stop: Option<Vec<String>>,
) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        temperature,
        top_p,
        seed,
        stop: stop.unwrap_or_default(),
        top_logprobs: 0,
    }
}
