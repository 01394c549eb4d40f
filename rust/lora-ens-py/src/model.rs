//! Bindings of `lora_ens::model`: the base LLaMA model and its raw forward pass (logits),
//! used by the parity tests and by code that needs logits rather than ensemble scores.

use std::path::PathBuf;

use lora_ens::{KvCache, Llama, LlamaConfig, Logits, RopeScaling};
use numpy::{PyArray2, PyArray3, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::call;
use crate::handles::{LoraAdapter, Model};

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, device="cpu"))]
    fn new(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        let inner = call(py, || {
            let device = lora_ens::parse_device(device)?;
            Llama::open(&path, &device)
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
            let want = token_ids.as_deref().map_or(Logits::Full, Logits::Tokens);
            // The base alone is one member: (N, 1, K) is (N, K).
            self.inner.member_logits(&prompts, &[], want, batch_size)
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
        let width = token_ids
            .as_ref()
            .map_or(self.inner.config().vocab_size, Vec::len);
        let members: Vec<&lora_ens::LoraAdapter> = adapters.iter().map(|a| &a.inner).collect();
        let n_members = members.len().max(1);
        let n = prompts.len();
        let flat = call(py, || {
            let want = token_ids.as_deref().map_or(Logits::Full, Logits::Tokens);
            self.inner
                .member_logits(&prompts, &members, want, batch_size)
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
            greedy(&self.inner, &prompt, max_new_tokens, &stop_ids)
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

/// Plain greedy decoding of the base model, the reference the parity tests hold against
/// transformers' greedy search: the argmax of the full logits, one token at a time on one
/// KV cache, up to `max_new_tokens` ids, stopping after any of `stop_ids` (included).
/// Ensemble generation with sampling and uncertainty is `Ensemble.generate`.
fn greedy(
    model: &Llama,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
) -> lora_ens::Result<Vec<u32>> {
    let mut cache = vec![KvCache::default()];
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut next: Vec<u32> = prompt.to_vec();
    for _ in 0..max_new_tokens {
        let logits = model.forward(&[&next], &mut cache, Logits::Full)?; // (1, vocab)
        let id = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        out.push(id);
        if stop_ids.contains(&id) {
            break;
        }
        next = vec![id];
    }
    Ok(out)
}

/// A model's hyper-parameters as a dict (shared with `Ensemble.config`).
pub(crate) fn config_dict<'py>(py: Python<'py>, c: &LlamaConfig) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("architecture", c.architecture.name())?;
    d.set_item("vocab_size", c.vocab_size)?;
    d.set_item("hidden", c.hidden)?;
    d.set_item("n_layer", c.n_layer)?;
    d.set_item("n_head", c.n_head)?;
    d.set_item("n_kv_head", c.n_kv_head)?;
    d.set_item("head_dim", c.head_dim)?;
    d.set_item("ffn", c.ffn)?;
    d.set_item("rms_eps", c.rms_eps)?;
    d.set_item("rope_base", c.rope_base)?;
    let scaling = match &c.rope_scaling {
        RopeScaling::None => "none".to_owned(),
        RopeScaling::Linear { factor } => format!("linear:{factor}"),
        RopeScaling::FreqFactors => "freq_factors".to_owned(),
    };
    d.set_item("rope_scaling", scaling)?;
    d.set_item("context_length", c.context_length)?;
    d.set_item("tied_embeddings", c.tied_embeddings)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()
}
