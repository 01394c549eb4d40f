//! The engine's one error type. Every fallible call in the crate returns [`Result`];
//! the Python bindings map each variant to one exception class in one place.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, with the file / tensor / argument it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },

    /// A file is not a valid GGUF model (bad magic, truncated, corrupt header).
    #[error("{path}: not a valid GGUF file: {reason}")]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The GGUF is valid but describes a model this engine does not run.
    #[error("{path}: unsupported model: {reason}")]
    UnsupportedModel {
        /// The GGUF file.
        path: PathBuf,
        /// What the engine does not run (the architecture found, ...).
        reason: String,
    },

    /// A tensor the architecture needs is absent, or has the wrong shape or type.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        /// The GGUF file.
        path: PathBuf,
        /// The tensor's GGUF name (`blk.3.attn_q.weight`).
        tensor: String,
        /// What is wrong: missing, shape found and expected, unreadable.
        reason: String,
    },

    /// A metadata key the architecture needs is absent or has the wrong type.
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        /// The GGUF file.
        path: PathBuf,
        /// The metadata key (`llama.block_count`).
        key: String,
        /// What is wrong: missing, wrong type, inconsistent value.
        reason: String,
    },

    /// The tokenizer could not be built, or could not encode / decode its input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A label or answer choice that cannot be scored with this tokenizer.
    #[error("label: {0}")]
    Label(String),

    /// A LoRA adapter or ensemble manifest that cannot be loaded or is refused.
    #[error("adapter {path}: {reason}")]
    Adapter {
        /// The adapter directory, its `adapter_config.json` / weights, or `ensemble.json`.
        path: PathBuf,
        /// The refused feature or the problem, naming the module or tensor.
        reason: String,
    },

    /// An argument or input record that is out of range or malformed.
    #[error("{0}")]
    Input(String),

    /// A dataset file with a record that cannot be read (line is 1-based; 0 = whole file).
    #[error("{}", data_message(path, *line, reason))]
    Data {
        /// The dataset file (or the name given to text held in memory).
        path: PathBuf,
        /// The 1-based line of the record; 0 for the file as a whole.
        line: usize,
        /// What is wrong with the record.
        reason: String,
    },

    /// A computation produced a value that is not finite (NaN or infinite logits), naming
    /// where: a model or adapter with non-finite weights, or a numerical overflow.
    #[error("numerical error: {0}")]
    Numerical(String),

    /// The default model could not be downloaded or did not verify.
    #[error("default model: {0}")]
    ModelFetch(String),

    /// A requested device is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),

    /// The call was interrupted (Ctrl-C, SIGTERM) before it finished; nothing was written.
    #[error("interrupted")]
    Interrupted,

    /// An error raised inside candle's tensor code.
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

fn data_message(path: &std::path::Path, line: usize, reason: &str) -> String {
    if line == 0 {
        format!("{}: {reason}", path.display())
    } else {
        format!("{}:{line}: {reason}", path.display())
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
