//! Bindings of `lora_ens::tokenizer`: the byte-level BPE tokenizer of a GGUF model or an HF
//! `tokenizer.json`, with the GIL released while it works.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::error::call;

/// A byte-level BPE tokenizer whose ids match the HF tokenizer of the same model.
///
/// Build it with `Tokenizer.from_gguf(path)` (the vocabulary inside a GGUF model) or
/// `Tokenizer.from_file(path)` (an HF `tokenizer.json`). Special tokens written in the text,
/// such as `<|im_start|>`, are kept whole.
///
/// Example:
///     >>> tok = Tokenizer.from_gguf(tiny_gguf)       # a GGUF file with its vocabulary
///     >>> tok.decode(tok.encode("<|im_start|>user\nHi!<|im_end|>"))
///     '<|im_start|>user\nHi!<|im_end|>'
#[pyclass(frozen, name = "Tokenizer", module = "lora_ens_rs._core")]
pub struct Tokenizer {
    inner: Arc<lora_ens::Tokenizer>,
}

#[pymethods]
impl Tokenizer {
    /// Load the tokenizer stored in a GGUF model's metadata (`tokenizer.ggml.*`).
    ///
    /// Args:
    ///     path: the GGUF file.
    ///
    /// Returns:
    ///     The tokenizer.
    ///
    /// Raises:
    ///     MissingFileError: the file does not exist.
    ///     ModelLoadError: the file is not a valid GGUF or lacks tokenizer metadata.
    ///     TokenizerError: the tokenizer kind or pre-tokenizer is not supported.
    ///
    /// Example:
    ///     >>> Tokenizer.from_gguf(tiny_gguf).vocab_size > 0
    ///     True
    #[staticmethod]
    fn from_gguf(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = call(py, || lora_ens::Tokenizer::from_gguf_file(&path))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Load an HF `tokenizer.json` of the byte-level BPE kind (GPT-2, SmolLM, LLaMA-3).
    /// BOS, EOS and the chat template come from a `tokenizer_config.json` beside it, if any.
    ///
    /// Args:
    ///     path: the `tokenizer.json` file.
    ///
    /// Returns:
    ///     The tokenizer.
    ///
    /// Raises:
    ///     MissingFileError: the file does not exist.
    ///     TokenizerError: the file is malformed or uses a feature not supported here.
    ///
    /// Example:
    ///     >>> hf = Tokenizer.from_file(tiny_tokenizer_json)   # an HF tokenizer.json
    ///     >>> hf.encode("Hello world") == tok.encode("Hello world")
    ///     True
    #[staticmethod]
    fn from_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = call(py, || lora_ens::Tokenizer::from_file(&path))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Token ids of a text.
    ///
    /// Args:
    ///     text: the text; special tokens written in it (`<|im_end|>`) are matched whole.
    ///     add_special_tokens: add BOS / EOS where the model asks for them (SmolLM2 adds
    ///         none).
    ///
    /// Returns:
    ///     The ids, as a list of ints.
    ///
    /// Example:
    ///     >>> ids = tok.encode("Question: 2 + 2 =")
    ///     >>> tok.decode(ids)
    ///     'Question: 2 + 2 ='
    #[pyo3(signature = (text, add_special_tokens=false))]
    fn encode(&self, py: Python<'_>, text: String, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        call(py, || self.inner.encode(&text, add_special_tokens))
    }

    /// Token ids of many texts, encoded in parallel.
    ///
    /// Args:
    ///     texts: the texts.
    ///     add_special_tokens: as for `encode`.
    ///
    /// Returns:
    ///     One list of ids per text, in order.
    ///
    /// Example:
    ///     >>> tok.encode_batch(["A. red", "B. blue"]) == [tok.encode("A. red"), tok.encode("B. blue")]
    ///     True
    #[pyo3(signature = (texts, add_special_tokens=false))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        call(py, || self.inner.encode_batch(&texts, add_special_tokens))
    }

    /// The text of token ids.
    ///
    /// Args:
    ///     ids: token ids.
    ///     skip_special_tokens: leave out special tokens such as `<|im_end|>`.
    ///
    /// Returns:
    ///     The text; a multi-byte character cut by the end of `ids` becomes U+FFFD.
    ///
    /// Raises:
    ///     TokenizerError: an id is outside the vocabulary.
    ///
    /// Example:
    ///     >>> tok.decode(tok.encode("héllo"))
    ///     'héllo'
    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        call(py, || self.inner.decode(&ids, skip_special_tokens))
    }

    /// The id of a token as the vocabulary spells it (`"Ġthe"`, `"<|im_end|>"`).
    ///
    /// Args:
    ///     token: the token.
    ///
    /// Returns:
    ///     Its id, or None if it is not in the vocabulary.
    ///
    /// Example:
    ///     >>> tok.token_to_id("<|im_end|>")
    ///     2
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id as the vocabulary spells it.
    ///
    /// Args:
    ///     id: the token id.
    ///
    /// Returns:
    ///     The token, or None if the id is outside the vocabulary.
    ///
    /// Example:
    ///     >>> tok.id_to_token(2)
    ///     '<|im_end|>'
    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id).map(str::to_owned)
    }

    /// Number of token ids, added tokens included.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// The beginning-of-sequence id, or None.
    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id()
    }

    /// The end-of-sequence id, or None.
    #[getter]
    fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id()
    }

    /// The model's Jinja chat template, or None.
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.inner.chat_template().map(str::to_owned)
    }

    /// Whether `encode(text, add_special_tokens=True)` puts BOS first
    /// (`tokenizer.ggml.add_bos_token`, or llama.cpp's default when the file lacks it).
    #[getter]
    fn add_bos_token(&self) -> bool {
        self.inner.add_bos_token()
    }

    /// Whether `encode(text, add_special_tokens=True)` puts EOS last.
    #[getter]
    fn add_eos_token(&self) -> bool {
        self.inner.add_eos_token()
    }

    /// Render a conversation with the model's own chat template.
    ///
    /// Args:
    ///     messages: dicts with "role" and "content" strings.
    ///     add_generation_prompt: append the header that opens the assistant's turn.
    ///
    /// Returns:
    ///     The text, as transformers' `apply_chat_template(messages, tokenize=False)`.
    ///
    /// Raises:
    ///     TokenizerError: the model has no chat template, or it fails to render.
    #[pyo3(signature = (messages, add_generation_prompt=false))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: Vec<std::collections::HashMap<String, String>>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        let pairs = chat_pairs(&messages)?;
        call(py, || {
            self.inner
                .apply_chat_template(&pairs, add_generation_prompt)
        })
    }

    /// Token ids of a conversation in the model's chat template, BOS exactly once where
    /// the model adds it (a leading BOS the template writes is not doubled).
    ///
    /// Args:
    ///     messages: dicts with "role" and "content" strings.
    ///     add_generation_prompt: append the header that opens the assistant's turn.
    ///
    /// Raises:
    ///     TokenizerError: the model has no chat template, or it fails to render.
    #[pyo3(signature = (messages, add_generation_prompt=false))]
    fn encode_chat(
        &self,
        py: Python<'_>,
        messages: Vec<std::collections::HashMap<String, String>>,
        add_generation_prompt: bool,
    ) -> PyResult<Vec<u32>> {
        let pairs = chat_pairs(&messages)?;
        call(py, || self.inner.encode_chat(&pairs, add_generation_prompt))
    }

    fn __repr__(&self) -> String {
        let id = |id: Option<u32>| id.map_or_else(|| "None".to_owned(), |i| i.to_string());
        format!(
            "Tokenizer(vocab_size={}, bos_id={}, eos_id={})",
            self.inner.vocab_size(),
            id(self.inner.bos_id()),
            id(self.inner.eos_id())
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()
}

/// `(role, content)` of each message dict; a dict without either key is a `KeyError`.
fn chat_pairs(
    messages: &[std::collections::HashMap<String, String>],
) -> PyResult<Vec<(&str, &str)>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let get = |key: &str| {
                m.get(key).map(String::as_str).ok_or_else(|| {
                    pyo3::exceptions::PyKeyError::new_err(format!("message {i} has no \"{key}\""))
                })
            };
            Ok((get("role")?, get("content")?))
        })
        .collect()
}
