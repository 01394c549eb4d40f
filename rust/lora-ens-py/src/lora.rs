//! Bindings of `lora_ens::lora`: PEFT LoRA adapters and ensemble directories loaded for a
//! base [`Model`], with their per-module updates readable as NumPy arrays (for the parity
//! tests against PEFT in tests/test_lora_loading.py).

use std::path::PathBuf;

use lora_ens::Error;
use lora_ens::lora::{self as engine, Target};
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;

use crate::error::call;
use crate::model::Model;

/// A PEFT LoRA adapter directory, validated against a base model.
///
/// Refused with ``AdapterError`` (message naming the file and feature): DoRA, bias,
/// modules_to_save, embedding / lm_head LoRA, fan_in_fan_out, unknown targets, shapes of
/// another model, non-finite values, missing or malformed files. q_proj / k_proj updates
/// are kept in the GGUF's (llama.cpp-permuted) row order.
///
/// Example:
///     >>> a = LoraAdapter.load("ens/m0", Model("base.gguf"))
///     >>> a.modules[:2]
///     [(0, 'q_proj'), (0, 'v_proj')]
#[pyclass(module = "lora_ens_rs._core", frozen)]
pub struct LoraAdapter {
    pub(crate) inner: engine::LoraAdapter,
}

/// Parse `target` (HF `q_proj` or GGUF `attn_q`) and find the module of `layer`.
fn module<'a>(
    a: &'a engine::LoraAdapter,
    layer: usize,
    target: &str,
) -> lora_ens::Result<&'a engine::LoraModule> {
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
        let inner = call(py, || engine::LoraAdapter::load(&path, &base))?;
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
///         is refused. ``None`` skips the check.
///
/// Returns:
///     the adapters, in order.
#[pyfunction]
#[pyo3(signature = (paths, model, base_sha256=None))]
fn load_adapters(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    model: PyRef<'_, Model>,
    base_sha256: Option<String>,
) -> PyResult<Vec<LoraAdapter>> {
    let base = model.llama_config().clone();
    let adapters = call(py, || {
        engine::load_adapters(&paths, &base, base_sha256.as_deref())
    })?;
    Ok(adapters
        .into_iter()
        .map(|inner| LoraAdapter { inner })
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoraAdapter>()?;
    m.add_function(wrap_pyfunction!(load_adapters, m)?)
}
