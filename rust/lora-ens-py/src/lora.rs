//! Bindings of `lora_ens::lora`: PEFT LoRA adapters and ensemble directories loaded for a
//! base [`Model`], with their per-module updates readable as NumPy arrays (for the parity
//! tests against PEFT in tests/test_lora_loading.py).

use std::path::PathBuf;

use lora_ens::{Error, LoraModule, Target};
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;

use crate::error::call;
use crate::handles::{LoraAdapter, Model};

/// Parse `target` (HF `q_proj` or GGUF `attn_q`) and find the module of `layer`.
fn module<'a>(
    a: &'a lora_ens::LoraAdapter,
    layer: usize,
    target: &str,
) -> lora_ens::Result<&'a LoraModule> {
    let t = Target::from_name(target).ok_or_else(|| {
        Error::Input(format!(
            "unknown target `{target}` (expected one of {})",
            Target::ALL.map(Target::hf_name).join(", ")
        ))
    })?;
    a.module(layer, t).ok_or_else(|| {
        Error::Input(format!(
            "adapter `{}` has no LoRA on `{}`",
            a.name,
            t.module_name(layer)
        ))
    })
}

#[pymethods]
impl LoraAdapter {
    /// Load the PEFT adapter in directory ``path`` for the base ``model``.
    ///
    /// Args:
    ///     path: a directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
    ///     model: the base model the adapter was trained on (shapes are checked against it).
    ///
    /// Raises:
    ///     MissingFileError: ``path`` does not exist.
    ///     AdapterError: the adapter is malformed, unsupported or made for another model.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf, model: PyRef<'_, Model>) -> PyResult<Self> {
        let base = model.llama_config().clone();
        let inner = call(py, || lora_ens::LoraAdapter::load(&path, &base))?;
        Ok(Self { inner })
    }

    /// The adapter's name (its directory's name).
    #[getter]
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// The adapter directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path.clone()
    }

    /// The adapted modules as ``(layer, target)`` pairs, sorted by layer then in GGUF order
    /// (``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``).
    #[getter]
    fn modules(&self) -> Vec<(usize, &'static str)> {
        self.inner
            .modules
            .keys()
            .map(|&(layer, t)| (layer, t.hf_name()))
            .collect()
    }

    /// The rank ``r`` of one module.
    fn rank(&self, py: Python<'_>, layer: usize, target: &str) -> PyResult<usize> {
        call(py, || module(&self.inner, layer, target).map(|m| m.r))
    }

    /// The ``scaling`` (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA) of one module.
    fn scaling(&self, py: Python<'_>, layer: usize, target: &str) -> PyResult<f32> {
        call(py, || module(&self.inner, layer, target).map(|m| m.scaling))
    }

    /// The update ``scaling * lora_B @ lora_A`` of one module, rows in GGUF order.
    ///
    /// Args:
    ///     layer: block index.
    ///     target: ``"q_proj"`` .. ``"down_proj"`` (or the GGUF ``"attn_q"`` .. ``"ffn_down"``).
    ///
    /// Returns:
    ///     float32 array of shape ``(out_features, in_features)``.
    fn delta<'py>(
        &self,
        py: Python<'py>,
        layer: usize,
        target: &str,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (out_dim, in_dim, delta) = call(py, || {
            let m = module(&self.inner, layer, target)?;
            Ok((m.out_dim, m.in_dim, m.delta()))
        })?;
        PyArray1::from_vec(py, delta).reshape([out_dim, in_dim])
    }

    fn __repr__(&self) -> String {
        format!(
            "LoraAdapter(name={:?}, modules={}, path={:?})",
            self.inner.name,
            self.inner.modules.len(),
            self.inner.path.display().to_string()
        )
    }
}

/// Load adapters for ``model`` from adapter and ensemble directories.
///
/// Args:
///     paths: each a PEFT adapter directory, or an ensemble directory whose ``ensemble.json``
///         lists member directories (relative to it); members come in manifest order.
///     model: the base model.
///     base_sha256: the sha256 of the base GGUF; an ensemble whose manifest records another
///         base is refused. ``None`` skips the check.
///     base_source_sha256: the content hash of the checkpoint the GGUF was converted from
///         (its ``lora_ens_rs.source.sha256``), which an ensemble trained on that checkpoint
///         accepts.
///
/// Returns:
///     the adapters, in order.
#[pyfunction]
#[pyo3(signature = (paths, model, base_sha256=None, base_source_sha256=None))]
fn load_adapters(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    model: PyRef<'_, Model>,
    base_sha256: Option<String>,
    base_source_sha256: Option<String>,
) -> PyResult<Vec<LoraAdapter>> {
    let base = model.llama_config().clone();
    let adapters = call(py, || {
        if paths.is_empty() {
            return Err(lora_ens::Error::Input("no adapter paths given".to_owned()));
        }
        let identity = || {
            Ok(lora_ens::BaseIdentity::new(
                base_sha256.as_deref().unwrap_or_default(),
                base_source_sha256.as_deref(),
            ))
        };
        let check: Option<&dyn Fn() -> lora_ens::Result<lora_ens::BaseIdentity>> =
            base_sha256.is_some().then_some(&identity);
        lora_ens::load_adapters(&paths, &base, check).map(|(adapters, _)| adapters)
    })?;
    Ok(adapters
        .into_iter()
        .map(|inner| LoraAdapter { inner })
        .collect())
}

/// An ensemble's ``ensemble.json``, typed: what the engine reads and training writes.
///
/// Build one to write it (``to_json``); the values are checked as a loaded manifest is
/// (known prompt template, scoring names, sha256 form).
///
/// Args:
///     members: member adapter directories, relative to the manifest's directory.
///     base_model_path, base_model_sha256: the base model the members were trained on (the
///         GGUF's sha256 when they were trained on a GGUF).
///     labels: the option labels (the default labels of label scoring).
///     prompt_template: the template's name (``TEMPLATE_NAME``).
///     scoring, normalization: how the members were trained to be scored.
///     training: the full training configuration (any JSON value).
///     seeds: each member's seed.
///     validation: validation metrics (any JSON value).
///     version: the package version that wrote it.
///     extra: other top-level keys to keep.
///     base_model_checkpoint_sha256: the content hash of the Hugging Face checkpoint the
///         members were trained on (``lora_ens_rs.checkpoint.checkpoint_sha256``).
///
/// Example:
///     >>> m = EnsembleManifest(["m0", "m1"], prompt_template="qa-v1", scoring="choices")
///     >>> m.scoring, m.members
///     ('choices', ['m0', 'm1'])
#[pyclass(module = "lora_ens_rs._core", frozen)]
pub struct EnsembleManifest {
    inner: lora_ens::EnsembleManifest,
}

impl From<lora_ens::EnsembleManifest> for EnsembleManifest {
    fn from(inner: lora_ens::EnsembleManifest) -> Self {
        Self { inner }
    }
}

/// A Python object as JSON text, through the `json` module.
fn json_of(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let text: String = py
        .import("json")?
        .call_method1("dumps", (value,))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| crate::error::to_pyerr(Error::Input(e.to_string())))
}

/// A JSON value as a Python object, through the `json` module.
fn py_of<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?
        .call_method1("loads", (value.to_string(),))
}

#[pymethods]
impl EnsembleManifest {
    #[new]
    #[pyo3(signature = (members, base_model_path=None, base_model_sha256=None, labels=None,
        prompt_template=None, scoring=None, normalization=None, training=None, seeds=None,
        validation=None, version=None, extra=None, base_model_checkpoint_sha256=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        py: Python<'_>,
        members: Vec<String>,
        base_model_path: Option<String>,
        base_model_sha256: Option<String>,
        labels: Option<Vec<String>>,
        prompt_template: Option<String>,
        scoring: Option<String>,
        normalization: Option<String>,
        training: Option<Bound<'_, PyAny>>,
        seeds: Option<Vec<u64>>,
        validation: Option<Bound<'_, PyAny>>,
        version: Option<String>,
        extra: Option<Bound<'_, PyAny>>,
        base_model_checkpoint_sha256: Option<String>,
    ) -> PyResult<Self> {
        let opaque = |v: Option<Bound<'_, PyAny>>| v.map(|v| json_of(py, &v)).transpose();
        let mut value = serde_json::json!({
            "members": members,
            "base_model": {"path": base_model_path, "sha256": base_model_sha256,
                           "checkpoint_sha256": base_model_checkpoint_sha256},
            "labels": labels,
            "prompt_template": prompt_template,
            "scoring": {"mode": scoring, "normalization": normalization},
            "training": opaque(training)?,
            "seeds": seeds,
            "validation": opaque(validation)?,
            "version": version,
        });
        if let (Some(serde_json::Value::Object(more)), serde_json::Value::Object(o)) =
            (opaque(extra)?, &mut value)
        {
            for (k, v) in more {
                o.entry(k).or_insert(v);
            }
        }
        let text = value.to_string();
        let inner = call(py, || {
            lora_ens::EnsembleManifest::from_json(
                &text,
                std::path::Path::new(lora_ens::MANIFEST_FILE),
            )
        })?;
        Ok(Self { inner })
    }

    /// Read ``path``: an ensemble directory or its ``ensemble.json``.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        call(py, || lora_ens::EnsembleManifest::load(&path)).map(Self::from)
    }

    /// The ``ensemble.json`` file it was read from (``ensemble.json`` when built in memory).
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path.clone()
    }
    /// Member directories as written in the manifest.
    #[getter]
    fn members(&self) -> Vec<String> {
        self.inner.member_entries.clone()
    }
    /// Member directories resolved against the manifest's directory.
    #[getter]
    fn member_paths(&self) -> Vec<PathBuf> {
        self.inner.members.clone()
    }
    #[getter]
    fn base_model_path(&self) -> Option<String> {
        self.inner.base_model_path.clone()
    }
    #[getter]
    fn base_model_sha256(&self) -> Option<String> {
        self.inner.base_model_sha256.clone()
    }
    /// The content hash of the Hugging Face checkpoint the members were trained on, or None.
    #[getter]
    fn base_model_checkpoint_sha256(&self) -> Option<String> {
        self.inner.base_model_checkpoint_sha256.clone()
    }
    #[getter]
    fn labels(&self) -> Option<Vec<String>> {
        self.inner.labels.clone()
    }
    #[getter]
    fn prompt_template(&self) -> Option<String> {
        self.inner.prompt_template.clone()
    }
    /// ``"labels"``, ``"choices"`` or None.
    #[getter]
    fn scoring(&self) -> Option<&'static str> {
        self.inner.scoring.and_then(|s| s.mode).map(|m| m.name())
    }
    /// ``"sum"``, ``"per_token"``, ``"per_byte"`` or None.
    #[getter]
    fn normalization(&self) -> Option<&'static str> {
        self.inner
            .scoring
            .and_then(|s| s.normalization)
            .map(|n| n.name())
    }
    #[getter]
    fn training<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .training
            .as_ref()
            .map(|v| py_of(py, v))
            .transpose()
    }
    #[getter]
    fn seeds(&self) -> Option<Vec<u64>> {
        self.inner.seeds.clone()
    }
    #[getter]
    fn validation<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .validation
            .as_ref()
            .map(|v| py_of(py, v))
            .transpose()
    }
    #[getter]
    fn version(&self) -> Option<String> {
        self.inner.version.clone()
    }

    /// The manifest as indented JSON text, as written to ``ensemble.json``.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// The manifest as a dict (the JSON object).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py_of(py, &self.inner.to_value())
    }

    fn __repr__(&self) -> String {
        format!(
            "EnsembleManifest(members={:?}, scoring={:?})",
            self.inner.member_entries,
            self.scoring()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoraAdapter>()?;
    m.add_class::<EnsembleManifest>()?;
    m.add_function(wrap_pyfunction!(load_adapters, m)?)
}
