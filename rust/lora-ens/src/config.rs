//! Types every part of the engine shares, kept apart so the model, the adapters and the
//! multi-adapter layer import them from here rather than from one another: the model's
//! hyper-parameters ([`LlamaConfig`], read from GGUF metadata) and the adaptable projections
//! ([`Target`]), and how questions are scored ([`Scoring`], [`Normalization`]), which the
//! ensemble manifest records and the scorer reads. Another architecture family gets its own
//! config type beside `LlamaConfig`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;
use crate::{Error, Result};

/// Hyper-parameters of a LLaMA model, from the `llama.*` GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Rows of the token embedding and of the lm_head (`llama.vocab_size`, else the
    /// number of `tokenizer.ggml.tokens`).
    pub vocab_size: usize,
    /// Width of the residual stream (`llama.embedding_length`).
    pub hidden: usize,
    /// Number of decoder blocks (`llama.block_count`).
    pub n_layer: usize,
    /// Query heads per block (`llama.attention.head_count`).
    pub n_head: usize,
    /// Key / value heads per block (`llama.attention.head_count_kv`; GQA when fewer than
    /// `n_head`, each shared by `n_head / n_kv_head` query heads).
    pub n_kv_head: usize,
    /// Width of one head (`llama.rope.dimension_count`, else `hidden / n_head`); even.
    pub head_dim: usize,
    /// Inner width of the SwiGLU MLP (`llama.feed_forward_length`).
    pub ffn: usize,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f64,
    /// RoPE base frequency (`llama.rope.freq_base`, default 10000).
    pub rope_base: f64,
    /// Positions the RoPE tables cover: the longest sequence the model runs
    /// (`llama.context_length`).
    pub context_length: usize,
    /// The lm_head is the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    /// Read the config of a `general.architecture = llama` file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.string("general.architecture")?;
        if arch != "llama" {
            return Err(Error::UnsupportedModel {
                path: gguf.path().to_path_buf(),
                reason: format!("architecture `{arch}` (this engine runs `llama`)"),
            });
        }
        let u = |k: &str| gguf.u64(&format!("llama.{k}")).map(|v| v as usize);
        let hidden = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_kv_head = gguf
            .optional("llama.attention.head_count_kv", GgufFile::u64)?
            .map_or(n_head, |v| v as usize);
        let head_dim = gguf
            .optional("llama.rope.dimension_count", GgufFile::u64)?
            .map_or(hidden / n_head.max(1), |v| v as usize);
        let bad = |key: &str, reason: String| Error::Metadata {
            path: gguf.path().to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(bad(
                "llama.attention.head_count_kv",
                format!("{n_kv_head} KV heads do not divide {n_head} heads"),
            ));
        }
        if head_dim * n_head != hidden || head_dim % 2 != 0 {
            return Err(bad(
                "llama.rope.dimension_count",
                format!("head_dim {head_dim} x {n_head} heads != hidden {hidden} (or odd)"),
            ));
        }
        let vocab_size = match gguf.optional("llama.vocab_size", GgufFile::u64)? {
            Some(v) => v as usize,
            None => gguf.strings("tokenizer.ggml.tokens")?.len(),
        };
        Ok(Self {
            vocab_size,
            hidden,
            n_layer: u("block_count")?,
            n_head,
            n_kv_head,
            head_dim,
            ffn: u("feed_forward_length")?,
            rms_eps: gguf.f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_base: gguf
                .optional("llama.rope.freq_base", GgufFile::f64)?
                .unwrap_or(10_000.0),
            context_length: u("context_length")?,
            tied_embeddings: !gguf.has_tensor("output.weight"),
        })
    }
}

/// The seven adaptable projections of a LLaMA block (HF `q_proj`.. `down_proj`, GGUF
/// `attn_q`.. `ffn_down`), in GGUF order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Query projection: HF `self_attn.q_proj`, GGUF `attn_q`, `(hidden) -> (n_head * head_dim)`.
    Q,
    /// Key projection: HF `self_attn.k_proj`, GGUF `attn_k`, `(hidden) -> (n_kv_head * head_dim)`.
    K,
    /// Value projection: HF `self_attn.v_proj`, GGUF `attn_v`, `(hidden) -> (n_kv_head * head_dim)`.
    V,
    /// Attention output: HF `self_attn.o_proj`, GGUF `attn_output`, `(n_head * head_dim) -> (hidden)`.
    O,
    /// MLP gate (SiLU branch): HF `mlp.gate_proj`, GGUF `ffn_gate`, `(hidden) -> (ffn)`.
    Gate,
    /// MLP up: HF `mlp.up_proj`, GGUF `ffn_up`, `(hidden) -> (ffn)`.
    Up,
    /// MLP down: HF `mlp.down_proj`, GGUF `ffn_down`, `(ffn) -> (hidden)`.
    Down,
}

impl Target {
    /// All projections, in GGUF order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// HF / PEFT module name: `q_proj`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// GGUF tensor stem: `attn_q` (as in `blk.3.attn_q.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// The HF submodule holding it: `self_attn` or `mlp`.
    pub fn block(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        }
    }

    /// Parse an HF (`q_proj`) or GGUF (`attn_q`) name.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.hf_name() == name || t.gguf_name() == name)
    }

    /// The full HF module name in block `layer`: `model.layers.3.self_attn.q_proj`.
    pub fn module_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.block(), self.hf_name())
    }

    /// `(in, out)` features of this projection in a model with config `c`.
    pub fn dims(self, c: &LlamaConfig) -> (usize, usize) {
        match self {
            Target::Q => (c.hidden, c.n_head * c.head_dim),
            Target::K | Target::V => (c.hidden, c.n_kv_head * c.head_dim),
            Target::O => (c.n_head * c.head_dim, c.hidden),
            Target::Gate | Target::Up => (c.hidden, c.ffn),
            Target::Down => (c.ffn, c.hidden),
        }
    }

    /// The head count llama.cpp's converter permutes this projection's rows with (Q: heads,
    /// K: KV heads), or `None` for projections it leaves alone.
    pub fn permuted_heads(self, c: &LlamaConfig) -> Option<usize> {
        match self {
            Target::Q => Some(c.n_head),
            Target::K => Some(c.n_kv_head),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hf_name())
    }
}

/// How a question is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// The lettered prompt (`A. ...`, `B. ...`, `Answer:`), scored on the label token.
    Labels,
    /// Each answer text as a continuation of `Question: ...\nAnswer:`.
    Choices,
}

impl Scoring {
    /// The names [`Scoring::from_name`] accepts.
    pub const NAMES: [&'static str; 2] = ["labels", "choices"];

    /// Parse `"labels"` or `"choices"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "labels" => Ok(Scoring::Labels),
            "choices" => Ok(Scoring::Choices),
            other => Err(Error::Input(format!(
                "unknown scoring `{other}`: expected labels or choices"
            ))),
        }
    }

    /// `"labels"` or `"choices"`.
    pub fn name(self) -> &'static str {
        match self {
            Scoring::Labels => "labels",
            Scoring::Choices => "choices",
        }
    }
}

/// How a choice's token log-probabilities become its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalization {
    /// The sum: the log-probability of the whole text (lm-eval `acc`).
    #[default]
    Sum,
    /// The mean over the choice's tokens.
    PerToken,
    /// The sum divided by the text's length in UTF-8 bytes (lm-eval `acc_norm` uses
    /// characters; bytes do not depend on the text's script).
    PerByte,
}

impl Normalization {
    /// Parse `"sum"`, `"token"` / `"per_token"` or `"byte"` / `"per_byte"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "sum" => Ok(Normalization::Sum),
            "token" | "per_token" => Ok(Normalization::PerToken),
            "byte" | "per_byte" => Ok(Normalization::PerByte),
            other => Err(Error::Input(format!(
                "unknown normalization `{other}`: expected sum, per_token or per_byte"
            ))),
        }
    }

    /// The canonical name: `"sum"`, `"per_token"` or `"per_byte"`.
    pub fn name(self) -> &'static str {
        match self {
            Normalization::Sum => "sum",
            Normalization::PerToken => "per_token",
            Normalization::PerByte => "per_byte",
        }
    }
}
