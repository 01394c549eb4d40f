//! lora-ens: run an ensemble of LoRA adapters on one quantized LLaMA-family base model.
//!
//! The engine loads a GGUF model, evaluates M PEFT LoRA adapters in one batched forward
//! pass over the shared base, and reduces the members' predictive distributions to an
//! ensemble prediction with its uncertainty. It has no Python in it; `lora-ens-py` wraps it.

pub mod atomic;
pub mod chat;
pub mod data;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hash;
pub mod kernels;
pub mod linear;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod multi_lora;
pub mod prompt;
pub mod questions;
pub mod reduce;
pub mod score;
pub mod tokenizer;

pub use error::{Error, Result};

/// The version of this crate (and of the Python package built from it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
