//! lora-ens: run an ensemble of LoRA adapters on one quantized LLaMA-family base model.
//!
//! The engine loads a GGUF model, evaluates M PEFT LoRA adapters in one batched forward
//! pass over the shared base, and reduces the members' predictive distributions to an
//! ensemble prediction with its uncertainty. It has no Python in it; `lora-ens-py` wraps it.
//!
//! The front door is [`Ensemble`]: load a model and its members, then `score` label
//! prompts, `score_choices` answer texts, `score_questions` dataset [`Question`]s or
//! `generate` text. Everything a caller names is re-exported at the crate root; the
//! modules that front ends also reach by path (`data`, `metrics`, `prompt`, `questions`,
//! `score`, `weights`, ...) are public with the same items, and so is the validating GGUF reader
//! (`gguf`). The model's other internals (quantized kernels, the multi-adapter layer, the
//! tokenizer's parts) are private.

#![deny(missing_docs)]

pub mod atomic;
mod chat;
mod config;
pub mod data;
pub mod device;
pub mod ensemble;
mod error;
pub mod generate;
pub mod gguf;
pub mod hash;
pub mod interrupt;
pub mod io;
mod kernels;
mod linear;
mod lora;
pub mod metrics;
mod model;
mod multi_lora;
pub mod prompt;
pub mod questions;
pub mod reduce;
mod rng;
pub mod score;
#[cfg(test)]
mod test_support;
mod tokenizer;
pub mod weights;

pub use atomic::write_file;
pub use config::{Architecture, LlamaConfig, Normalization, RopeScaling, Scoring, Target};
pub use data::{Format, Question, detect_format, parse_questions, read_questions};
pub use device::parse_device;
pub use ensemble::Ensemble;
pub use error::{Error, Result};
pub use generate::{FinishReason, GenerateOptions, Generation};
pub use lora::{
    ALLOW_BASE_MISMATCH_ENV, ALLOW_OUTSIDE_MEMBERS_ENV, AdapterConfig, BaseIdentity,
    EnsembleManifest, KNOWN_TEMPLATES, LoraAdapter, LoraModule, MANIFEST_FILE, ManifestScoring,
    Pattern, SOURCE_SHA256_KEY, TargetModules, load_adapters,
};
pub use metrics::{
    ECE_BINS, Metrics, NLL_FLOOR, Reliability, accuracy, brier, ece, evaluate, nll, ood_aupr,
    ood_auroc, reliability,
};
pub use model::{KvCache, Llama, Logits};
pub use prompt::{
    LABEL_PREFIX, TEMPLATE_NAME, choice_context, choice_continuation, label_continuation,
    label_prompt,
};
pub use questions::{QuestionScores, RECORD_SCHEMA_VERSION, Record, ScoringSpec, summary};
pub use reduce::{Reduced, reduce};
pub use score::{ScoreOptions, Scores};
pub use tokenizer::Tokenizer;
pub use weights::{dequantize, engine_dequantizes, matvec_t, read_tensor_f32};

/// The version of this crate (and of the Python package built from it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
