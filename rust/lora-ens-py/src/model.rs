//! Bindings of `lora_ens::model`: the base LLaMA model and its raw forward pass (logits),
//! used by the parity tests and by code that needs logits rather than ensemble scores.

use std::path::PathBuf;

use lora_ens::gguf::GgufFile;
use lora_ens::model::{KvCache, Llama, Logits};
use lora_ens::multi_lora::MultiLora;
use numpy::{PyArray2, PyArray3, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::call;
use crate::lora::LoraAdapter;

/// A LLaMA-family model loaded from a GGUF file (weights stay quantized).
///
/// Args:
///     path: the GGUF file.
///     device: ``"cpu"`` (default) or ``"cuda:N"`` in CUDA builds.
///
/// Example:
///     >>> m = Model(tiny_gguf)                       # a GGUF file
///     >>> m.logits([[1, 2, 3]], token_ids=[330, 331]).shape
///     (1, 2)
#[pyclass(module = "lora_ens_rs._core", frozen)]
pub struct Model {
    inner: Llama,
    path: PathBuf,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, device="cpu"))]
    fn new(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        let inner = call(py, || {
            let device = lora_ens::device::parse_device(device)?;
            let mut gguf = GgufFile::open(&path)?;
            Llama::load(&mut gguf, &device)
        })?;
        Ok(Self { inner, path })
    }

    /// The model's hyper-parameters as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        config_dict(py, self.inner.config())
    }

    /// The GGUF file the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Bytes held by the (quantized) weight matrices.
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }

    /// Last-position logits of each prompt.
    ///
    /// Args:
    ///     prompts: token ids, one list per prompt (lengths may differ).
    ///     token_ids: vocabulary ids whose logits to return (only those rows of the lm_head
    ///         are computed); ``None`` returns the full vocabulary.
    ///     batch_size: prompts per forward pass.
    ///
    /// Returns:
    ///     float32 array of shape ``(len(prompts), len(token_ids) or vocab_size)``.
    #[pyo3(signature = (prompts, token_ids=None, batch_size=16))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Vec<u32>>,
        token_ids: Option<Vec<u32>>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let width = token_ids
            .as_ref()
            .map_or(self.inner.config().vocab_size, Vec::len);
        let n = prompts.len();
        let flat = call(py, || {
            if batch_size == 0 {
                return Err(lora_ens::Error::Input(
                    "batch_size must be at least 1".to_owned(),
                ));
            }
            let mut flat = Vec::with_capacity(n * width);
            for chunk in prompts.chunks(batch_size) {
                let seqs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                let mut caches = vec![KvCache::default(); seqs.len()];
                let want = token_ids.as_deref().map_or(Logits::Full, Logits::Tokens);
                let out = self.inner.forward(&seqs, &mut caches, want)?;
                flat.extend(out.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(flat)
        })?;
        let arr = numpy::PyArray1::from_vec(py, flat);
        arr.reshape([n, width])
    }

    /// Last-position logits of each prompt for each ensemble member: the base model with
    /// each adapter's LoRA updates, all members in one batched pass over the shared base.
    ///
    /// Args:
    ///     prompts: token ids, one list per prompt (lengths may differ).
    ///     adapters: the members (:class:`LoraAdapter`, loaded for this model); an empty
    ///         list runs the base model as the only member.
    ///     token_ids: vocabulary ids whose logits to return; ``None`` for the full vocabulary.
    ///     batch_size: prompts per forward pass (each runs for every member).
    ///
    /// Returns:
    ///     float32 array of shape ``(len(prompts), M, len(token_ids) or vocab_size)``.
    #[pyo3(signature = (prompts, adapters, token_ids=None, batch_size=16))]
    fn member_logits<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Vec<u32>>,
        adapters: Vec<PyRef<'py, LoraAdapter>>,
        token_ids: Option<Vec<u32>>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let config = self.inner.config();
        let width = token_ids.as_ref().map_or(config.vocab_size, Vec::len);
        let members: Vec<&lora_ens::lora::LoraAdapter> =
            adapters.iter().map(|a| &a.inner).collect();
        let lora = if members.is_empty() {
            None
        } else {
            Some(
                MultiLora::from_adapters(&members, config.n_layer, self.inner.device())
                    .map_err(crate::error::to_pyerr)?,
            )
        };
        let n_members = members.len().max(1);
        let n = prompts.len();
        let flat = call(py, || {
            if batch_size == 0 {
                return Err(lora_ens::Error::Input(
                    "batch_size must be at least 1".to_owned(),
                ));
            }
            let mut flat = vec![0f32; n * n_members * width];
            for (c, chunk) in prompts.chunks(batch_size).enumerate() {
                let seqs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                let mut caches = vec![KvCache::default(); seqs.len() * n_members];
                let want = token_ids.as_deref().map_or(Logits::Full, Logits::Tokens);
                // (M, B, K) -> (B, M, K)
                let out = self
                    .inner
                    .forward_members(&seqs, lora.as_ref(), &mut caches, want)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let at = c * batch_size * n_members * width;
                flat[at..at + out.len()].copy_from_slice(&out);
            }
            Ok(flat)
        })?;
        let arr = numpy::PyArray1::from_vec(py, flat);
        arr.reshape([n, n_members, width])
    }

    /// Greedy decoding: the ids generated after ``prompt`` (stop token included if reached).
    ///
    /// Args:
    ///     prompt: token ids of the prompt.
    ///     max_new_tokens: the most tokens to generate.
    ///     stop_ids: ids that end generation (e.g. EOS, ``<|im_end|>``).
    #[pyo3(signature = (prompt, max_new_tokens=32, stop_ids=Vec::new()))]
    fn generate_greedy(
        &self,
        py: Python<'_>,
        prompt: Vec<u32>,
        max_new_tokens: usize,
        stop_ids: Vec<u32>,
    ) -> PyResult<Vec<u32>> {
        call(py, || {
            self.inner
                .generate_greedy(&prompt, max_new_tokens, &stop_ids)
        })
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Model(path={:?}, layers={}, hidden={}, heads={}/{}, vocab={}, device={:?})",
            self.path.display().to_string(),
            c.n_layer,
            c.hidden,
            c.n_head,
            c.n_kv_head,
            c.vocab_size,
            self.inner.device().location()
        )
    }
}

impl Model {
    /// The engine's config of the loaded model, for the other bindings (adapter loading).
    pub(crate) fn llama_config(&self) -> &lora_ens::model::LlamaConfig {
        self.inner.config()
    }
}

/// A model's hyper-parameters as a dict (shared with `Ensemble.config`).
pub(crate) fn config_dict<'py>(
    py: Python<'py>,
    c: &lora_ens::model::LlamaConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("vocab_size", c.vocab_size)?;
    d.set_item("hidden", c.hidden)?;
    d.set_item("n_layer", c.n_layer)?;
    d.set_item("n_head", c.n_head)?;
    d.set_item("n_kv_head", c.n_kv_head)?;
    d.set_item("head_dim", c.head_dim)?;
    d.set_item("ffn", c.ffn)?;
    d.set_item("rms_eps", c.rms_eps)?;
    d.set_item("rope_base", c.rope_base)?;
    d.set_item("context_length", c.context_length)?;
    d.set_item("tied_embeddings", c.tied_embeddings)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()
}
