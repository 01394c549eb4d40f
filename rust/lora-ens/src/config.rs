//! Types every part of the engine shares, kept apart so the model, the adapters and the
//! multi-adapter layer import them from here rather than from one another: the model's
//! hyper-parameters ([`LlamaConfig`], read from GGUF metadata) and the adaptable projections
//! ([`Target`]), and how questions are scored ([`Scoring`], [`Normalization`]), which the
//! ensemble manifest records and the scorer reads. The LLaMA-family architectures
//! ([`Architecture`]) share `LlamaConfig`; a family with another block structure would get its
//! own config type beside it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;
use crate::{Error, Result};

/// The decoder families the engine runs: one block structure (RMSNorm, GQA attention with
/// RoPE, SwiGLU MLP) with per-family details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `llama`: LLaMA-2, LLaMA-3.x, Mistral-7B, SmolLM2, TinyLlama. llama.cpp's converter
    /// permutes the Q/K rows so the rotation pairs adjacent elements.
    Llama,
    /// `qwen2`: Qwen2 / Qwen2.5. Biases on the Q, K and V projections; HF row order and the
    /// half-split ("neox") rotation.
    Qwen2,
    /// `qwen3`: Qwen3 (dense). Per-head RMSNorm of queries and keys before the rotation, no
    /// biases; HF row order and the half-split rotation; `head_dim` may differ from
    /// `hidden / n_head`.
    Qwen3,
}

impl Architecture {
    /// Every supported `general.architecture` value.
    pub const NAMES: [&'static str; 3] = ["llama", "qwen2", "qwen3"];

    /// Parse a `general.architecture` value.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Architecture::Llama),
            "qwen2" => Some(Architecture::Qwen2),
            "qwen3" => Some(Architecture::Qwen3),
            _ => None,
        }
    }

    /// The `general.architecture` value, which also prefixes its metadata keys.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    /// Whether RoPE rotates adjacent pairs `(2i, 2i + 1)` (the converter's permuted Q/K rows)
    /// rather than the halves `(i, i + head_dim / 2)` of each head.
    pub fn interleaved_rope(self) -> bool {
        matches!(self, Architecture::Llama)
    }

    /// Whether Q, K and V carry biases (`blk.N.attn_q.bias` ..).
    pub fn qkv_bias(self) -> bool {
        matches!(self, Architecture::Qwen2)
    }

    /// Whether queries and keys are RMS-normalized per head (`blk.N.attn_q_norm.weight` ..).
    pub fn qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `theta_i = base^(-2i / head_dim)`.
    None,
    /// Linear position interpolation (`{arch}.rope.scaling.type = linear`): positions divided
    /// by `factor` (`{arch}.rope.scaling.factor`).
    Linear {
        /// The divisor of positions.
        factor: f64,
    },
    /// Per-frequency divisors from the `rope_freqs.weight` tensor (`head_dim / 2` values):
    /// how llama.cpp's converter stores LLaMA-3.1 / 3.2's `llama3` scaling.
    FreqFactors,
}

/// Hyper-parameters of a LLaMA-family model, from the `{arch}.*` GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Which family (`general.architecture`).
    pub architecture: Architecture,
    /// Rows of the token embedding and of the lm_head (`{arch}.vocab_size`, else the
    /// number of `tokenizer.ggml.tokens`).
    pub vocab_size: usize,
    /// Width of the residual stream (`{arch}.embedding_length`).
    pub hidden: usize,
    /// Number of decoder blocks (`{arch}.block_count`).
    pub n_layer: usize,
    /// Query heads per block (`{arch}.attention.head_count`).
    pub n_head: usize,
    /// Key / value heads per block (`{arch}.attention.head_count_kv`; GQA when fewer than
    /// `n_head`, each shared by `n_head / n_kv_head` query heads).
    pub n_kv_head: usize,
    /// Width of one head (`{arch}.attention.key_length`, else `{arch}.rope.dimension_count`,
    /// else `hidden / n_head`); even. Queries are `n_head * head_dim` wide.
    pub head_dim: usize,
    /// Inner width of the SwiGLU MLP (`{arch}.feed_forward_length`).
    pub ffn: usize,
    /// RMSNorm epsilon (`{arch}.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f64,
    /// RoPE base frequency (`{arch}.rope.freq_base`, default 10000).
    pub rope_base: f64,
    /// RoPE frequency rescaling.
    pub rope_scaling: RopeScaling,
    /// The longest sequence the model was trained for (`{arch}.context_length`); longer
    /// inputs are refused.
    pub context_length: usize,
    /// The lm_head is the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
}

/// Upper bounds on header values, so a corrupt or hostile file is refused before it sizes
/// anything: far above any released model of these families.
const MAX_WIDTH: u64 = 1 << 20;
const MAX_LAYERS: u64 = 4096;
const MAX_CONTEXT: u64 = 1 << 24;

impl LlamaConfig {
    /// Read the config of a `llama`, `qwen2` or `qwen3` file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch_name = gguf.string("general.architecture")?;
        let arch = Architecture::from_name(&arch_name).ok_or_else(|| Error::UnsupportedModel {
            path: gguf.path().to_path_buf(),
            reason: format!(
                "architecture `{arch_name}` (this engine runs {})",
                Architecture::NAMES.join(", ")
            ),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let bad = |k: &str, reason: String| Error::Metadata {
            path: gguf.path().to_path_buf(),
            key: key(k),
            reason,
        };
        // Every size is checked against a bound before it is used to size anything.
        let bounded = |k: &str, v: u64, max: u64| -> Result<usize> {
            if v == 0 || v > max {
                return Err(bad(k, format!("{v} is outside 1..={max}")));
            }
            Ok(v as usize)
        };
        let u = |k: &str, max: u64| bounded(k, gguf.u64(&key(k))?, max);
        let opt = |k: &str, max: u64| -> Result<Option<usize>> {
            gguf.optional(&key(k), GgufFile::u64)?
                .map(|v| bounded(k, v, max))
                .transpose()
        };
        let hidden = u("embedding_length", MAX_WIDTH)?;
        let n_head = u("attention.head_count", MAX_WIDTH)?;
        let n_kv_head = opt("attention.head_count_kv", MAX_WIDTH)?.unwrap_or(n_head);
        let rope_dim = opt("rope.dimension_count", MAX_WIDTH)?;
        let head_dim = match (opt("attention.key_length", MAX_WIDTH)?, rope_dim) {
            (Some(k), _) => k,
            (None, Some(r)) => r,
            (None, None) => hidden / n_head,
        };
        if n_head % n_kv_head != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_kv_head} KV heads do not divide {n_head} heads"),
            ));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(
                "attention.key_length",
                format!("head_dim {head_dim} must be even and nonzero"),
            ));
        }
        if arch != Architecture::Qwen3 && head_dim * n_head != hidden {
            return Err(bad(
                "rope.dimension_count",
                format!("head_dim {head_dim} x {n_head} heads != hidden {hidden}"),
            ));
        }
        if let Some(v) = opt("attention.value_length", MAX_WIDTH)?
            && v != head_dim
        {
            return Err(bad(
                "attention.value_length",
                format!("{v} differs from the key length {head_dim} (not supported)"),
            ));
        }
        if let Some(r) = rope_dim
            && r != head_dim
        {
            return Err(bad(
                "rope.dimension_count",
                format!("partial rotary embeddings ({r} of {head_dim} dims) are not supported"),
            ));
        }
        let vocab_size = match opt("vocab_size", 1 << 24)? {
            Some(v) => v,
            None => gguf.strings("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = gguf.optional(&key("rope.scaling.type"), GgufFile::string)?;
        let has_freqs = gguf.has_tensor("rope_freqs.weight");
        let rope_scaling = match rope_scaling.as_deref() {
            None | Some("none") if has_freqs => RopeScaling::FreqFactors,
            None | Some("none") => RopeScaling::None,
            Some("llama3") if has_freqs => RopeScaling::FreqFactors,
            Some("llama3") => {
                return Err(Error::Tensor {
                    path: gguf.path().to_path_buf(),
                    tensor: "rope_freqs.weight".to_owned(),
                    reason: format!(
                        "missing: `{}` says llama3 RoPE scaling, whose frequency factors \
                         llama.cpp's converter stores in this tensor",
                        key("rope.scaling.type")
                    ),
                });
            }
            Some("linear") => {
                let factor = gguf.f64(&key("rope.scaling.factor"))?;
                if !(factor.is_finite() && factor >= 1.0) {
                    return Err(bad(
                        "rope.scaling.factor",
                        format!("{factor} (a linear factor must be finite and >= 1)"),
                    ));
                }
                if has_freqs {
                    return Err(bad(
                        "rope.scaling.type",
                        "linear scaling together with rope_freqs.weight".to_owned(),
                    ));
                }
                RopeScaling::Linear { factor }
            }
            Some(other) => {
                return Err(bad(
                    "rope.scaling.type",
                    format!("`{other}` is not supported (none, linear, llama3 are)"),
                ));
            }
        };
        let rope_base = gguf
            .optional(&key("rope.freq_base"), GgufFile::f64)?
            .unwrap_or(10_000.0);
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(bad("rope.freq_base", format!("{rope_base} must be > 1")));
        }
        let rms_eps = gguf.f64(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("{rms_eps} must be a positive number"),
            ));
        }
        Ok(Self {
            architecture: arch,
            vocab_size,
            hidden,
            n_layer: u("block_count", MAX_LAYERS)?,
            n_head,
            n_kv_head,
            head_dim,
            ffn: u("feed_forward_length", MAX_WIDTH * 8)?,
            rms_eps,
            rope_base,
            rope_scaling,
            context_length: u("context_length", MAX_CONTEXT)?,
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
    /// K: KV heads), or `None` for projections it leaves alone (all of them for the
    /// architectures whose rotation is the half-split one: their rows keep the HF order).
    pub fn permuted_heads(self, c: &LlamaConfig) -> Option<usize> {
        if !c.architecture.interleaved_rope() {
            return None;
        }
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
