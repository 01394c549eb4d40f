//! The classes that binding files take from one another: [`Model`] (a loaded base model,
//! methods in model.rs) and [`LoraAdapter`] (an adapter loaded for one, methods in lora.rs).
//! They are declared here so that model.rs and lora.rs each import this file, not each other.

use std::path::PathBuf;

use lora_ens::{Llama, LlamaConfig};
use pyo3::prelude::*;

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
    pub(crate) inner: Llama,
    pub(crate) path: PathBuf,
}

impl Model {
    /// The engine's config of the loaded model, for the other bindings (adapter loading).
    pub(crate) fn llama_config(&self) -> &LlamaConfig {
        self.inner.config()
    }
}

/// A PEFT LoRA adapter directory, validated against a base model.
///
/// Refused with ``AdapterError`` (message naming the file and feature): DoRA, bias,
/// modules_to_save, embedding / lm_head LoRA, fan_in_fan_out, unknown targets, shapes of
/// another model, non-finite values, missing or malformed files. q_proj / k_proj updates
/// are kept in the GGUF's (llama.cpp-permuted) row order.
///
/// Example:
///     >>> a = LoraAdapter.load(tiny_ensemble + "/m0", Model(tiny_gguf))
///     >>> a.modules[:2]
///     [(0, 'q_proj'), (0, 'v_proj')]
#[pyclass(module = "lora_ens_rs._core", frozen)]
pub struct LoraAdapter {
    pub(crate) inner: lora_ens::LoraAdapter,
}
