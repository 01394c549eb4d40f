//! Byte-level BPE tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata or from an
//! HF `tokenizer.json`. Ids match the HF tokenizer of the same vocabulary (checked over the
//! benchmark corpus by `tests/test_tokenizer_parity.py`), with the pre-tokenizer llama.cpp
//! applies for `tokenizer.ggml.pre` (SmolLM2's `smollm` splits digits one by one, unlike
//! GPT-2's regex that keeps runs of digits together).
//!
//! ```no_run
//! # fn main() -> lora_ens::Result<()> {
//! let tok = lora_ens::Tokenizer::from_gguf_file("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let ids = tok.encode("<|im_start|>user\nWhat is 12 + 7?<|im_end|>", false)?;
//! assert_eq!(tok.decode(&ids, false)?, "<|im_start|>user\nWhat is 12 + 7?<|im_end|>");
//! # Ok(()) }
//! ```

mod added;
mod bpe;
mod gguf_meta;
mod hf_json;
mod pre;
mod spm;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use self::added::{AddedToken, AddedTokens, Segment};
use self::bpe::Bpe;
use self::pre::PreTokenizer;
use self::spm::Spm;
use crate::chat::{self, Message};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// What both sources (GGUF metadata, `tokenizer.json`) reduce to before building.
struct Parts {
    /// Model vocabulary, tokens spelled in the byte alphabet. Where a spelling repeats, the
    /// later id is the one text encodes to (as in `tokenizers`); both ids still decode.
    vocab: Vec<(String, u32)>,
    /// Merges in rank order.
    merges: Vec<(String, String)>,
    ignore_merges: bool,
    pre: PreTokenizer,
    /// HF `ByteLevel(add_prefix_space=true)`: a space before text that lacks one.
    add_prefix_space: bool,
    added: Vec<AddedToken>,
    /// A SentencePiece model, used instead of `merges` and `pre` when present.
    spm: Option<Spm>,
    /// Ids put before / after the text when special tokens are requested (BOS, EOS).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    chat_template: Option<String>,
}

/// A byte-level BPE or SentencePiece tokenizer. Cheap to share between threads
/// (`encode_batch` does).
pub struct Tokenizer {
    model: Model,
    pre: PreTokenizer,
    add_prefix_space: bool,
    added: AddedTokens,
    /// Token -> id, model vocabulary and added tokens (added ones win, as in `tokenizers`).
    ids: HashMap<String, u32>,
    /// Id -> token as the vocabulary spells it; `None` for ids nothing uses.
    tokens: Vec<Option<String>>,
    special: Vec<bool>,
    char_to_byte: Vec<Option<u8>>,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    chat_template: Option<String>,
}

/// The subword model under the added tokens.
// BPE's inline tables make it large; there is one per tokenizer, built once and not moved.
#[allow(clippy::large_enum_variant)]
enum Model {
    /// Byte-level BPE after the pre-tokenizer's splits (`gpt2`, HF `tokenizer.json`).
    Bpe(Bpe),
    /// SentencePiece (`llama`), as llama.cpp tokenizes it.
    Spm(Spm),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("added_tokens", &self.added.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The tokenizer an open GGUF file describes (see [`Tokenizer::from_gguf_file`]).
    pub(crate) fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        Ok(Self::build(gguf_meta::read(gguf)?))
    }

    /// Build the tokenizer the GGUF file at `path` describes (`tokenizer.ggml.model` `gpt2`
    /// or `llama`); only the file's header is read, and a vocabulary-only file will do.
    ///
    /// Tokens of type CONTROL (3) or USER_DEFINED (4) are matched whole in the text, as the
    /// HF tokenizer transformers builds from the file does; CONTROL ones are special
    /// (dropped by `decode(.., true)`). BOS is added only if `tokenizer.ggml.add_bos_token`
    /// (absent: llama.cpp's default, see [`Tokenizer::add_bos_token`]).
    ///
    /// Errors: [`Error::Io`] / [`Error::InvalidGguf`] for a file that cannot be read as
    /// GGUF, [`Error::Metadata`] or [`Error::Tokenizer`] for a tokenizer it cannot build.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Read an HF `tokenizer.json` of the byte-level BPE kind. BOS / EOS and the chat
    /// template come from a `tokenizer_config.json` in the same directory, if there is one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::build(hf_json::read(path.as_ref())?))
    }

    fn build(parts: Parts) -> Self {
        let mut ids: HashMap<String, u32> = parts.vocab.iter().cloned().collect();
        let model = match parts.spm {
            Some(spm) => Model::Spm(spm),
            None => Model::Bpe(Bpe::new(&ids, &parts.merges, parts.ignore_merges)),
        };
        let all_ids = parts.vocab.iter().map(|(_, id)| *id);
        let size = all_ids
            .chain(parts.added.iter().map(|t| t.id))
            .max()
            .map_or(0, |m| m as usize + 1);
        let mut tokens = vec![None; size];
        let mut special = vec![false; size];
        for (token, id) in parts.vocab {
            tokens[id as usize].get_or_insert(token);
        }
        // An added token's spelling wins, for decoding and for `token_to_id`.
        for t in &parts.added {
            tokens[t.id as usize] = Some(t.content.clone());
            special[t.id as usize] = t.special;
            ids.insert(t.content.clone(), t.id);
        }
        Self {
            model,
            pre: parts.pre,
            add_prefix_space: parts.add_prefix_space,
            added: AddedTokens::new(parts.added),
            ids,
            tokens,
            special,
            char_to_byte: bpe::char_to_byte(),
            prefix: parts.prefix,
            suffix: parts.suffix,
            bos_id: parts.bos_id,
            eos_id: parts.eos_id,
            chat_template: parts.chat_template,
        }
    }

    /// Token ids of `text`. Added tokens in the text (`<|im_start|>`, ...) are always matched
    /// whole; `add_special_tokens` adds BOS / EOS only where the model asks for them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special_tokens {
            out.extend_from_slice(&self.prefix);
        }
        for segment in self.added.split(text) {
            match segment {
                Segment::Token(id) => out.push(id),
                Segment::Text(text) => self.encode_text(text, &mut out)?,
            }
        }
        if add_special_tokens {
            out.extend_from_slice(&self.suffix);
        }
        Ok(out)
    }

    fn encode_text(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let bpe = match &self.model {
            Model::Bpe(bpe) => bpe,
            Model::Spm(spm) => return spm.encode(text, out),
        };
        let text = if self.add_prefix_space && !text.starts_with(' ') {
            Cow::Owned(format!(" {text}"))
        } else {
            Cow::Borrowed(text)
        };
        for piece in self.pre.split(&text)? {
            bpe.encode_word(piece.as_bytes(), out);
        }
        Ok(())
    }

    /// [`Tokenizer::encode`] of many texts, in parallel on rayon's pool.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .map(|t| self.encode(t.as_ref(), add_special_tokens))
            .collect()
    }

    /// The text of `ids`; invalid UTF-8 (a cut multi-byte character) becomes U+FFFD.
    /// `skip_special` drops special tokens (BOS, `<|im_end|>`, ...).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut first = true;
        for &id in ids {
            let token = self
                .tokens
                .get(id as usize)
                .and_then(Option::as_deref)
                .ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "cannot decode id {id}: not in the vocabulary (size {})",
                        self.tokens.len()
                    ))
                })?;
            if skip_special && self.special[id as usize] {
                continue;
            }
            if let Model::Spm(spm) = &self.model {
                spm.push_piece(id, token, first, &mut bytes);
                first = false;
                continue;
            }
            // Tokens outside the byte alphabet are added tokens written as plain text.
            match bpe::spelled_bytes(token, &self.char_to_byte) {
                Some(b) => bytes.extend_from_slice(&b),
                None => bytes.extend_from_slice(token.as_bytes()),
            }
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The id of a token as the vocabulary spells it (`"Ġthe"`, `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// The token of an id as the vocabulary spells it.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }

    /// Number of ids (the largest id + 1), added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the model names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token, if the model names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether `encode(.., true)` puts BOS first: `tokenizer.ggml.add_bos_token`, or when
    /// the file lacks it llama.cpp's default (yes for SentencePiece and LLaMA-3's BPE, no
    /// for GPT-2, Qwen2, SmolLM2 and the other BPE pre-tokenizers). Scoring, generation and
    /// training all encode their contexts with `encode(.., true)`, so they agree on it.
    pub fn add_bos_token(&self) -> bool {
        self.bos_id.is_some() && self.prefix.first() == self.bos_id.as_ref()
    }

    /// Whether `encode(.., true)` puts EOS last (`tokenizer.ggml.add_eos_token`).
    pub fn add_eos_token(&self) -> bool {
        self.eos_id.is_some() && self.suffix.last() == self.eos_id.as_ref()
    }

    /// Whether `id` is a special token (skipped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The Jinja chat template (`tokenizer.chat_template`), if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The text of a conversation (`(role, content)` pairs) in the model's own chat template,
    /// as transformers' `apply_chat_template(.., tokenize=False)` renders it: `bos_token` and
    /// `eos_token` are the model's BOS / EOS tokens. `add_generation_prompt` appends the
    /// header that opens the assistant's turn.
    ///
    /// Errors: [`Error::Tokenizer`] when the model has no template or it fails to render.
    pub fn apply_chat_template(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template().ok_or_else(|| {
            Error::Tokenizer("the model has no chat template (tokenizer.chat_template)".into())
        })?;
        let messages: Vec<Message> = messages
            .iter()
            .map(|(role, content)| Message::new(*role, *content))
            .collect();
        let text = |id: Option<u32>| id.and_then(|id| self.id_to_token(id)).unwrap_or("");
        chat::render(
            template,
            &messages,
            add_generation_prompt,
            text(self.bos_id),
            text(self.eos_id),
        )
    }

    /// The token ids of a conversation in the model's chat template, with BOS exactly once
    /// where the model adds it: when the rendered text already starts with BOS (a template
    /// that writes `{{ bos_token }}`) that copy is dropped before `encode(.., true)` puts
    /// BOS first, as llama.cpp does. Equal to transformers'
    /// `apply_chat_template(.., tokenize=True)` when the template writes BOS exactly when
    /// the model adds it (LLaMA-2/3, Mistral, Phi-3, Qwen2, SmolLM2).
    pub fn encode_chat(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        let bos = self.bos_id.and_then(|id| self.id_to_token(id));
        let body = match bos {
            Some(bos) if self.add_bos_token() => text.strip_prefix(bos).unwrap_or(&text),
            _ => &text,
        };
        self.encode(body, true)
    }
}

#[cfg(test)]
mod tests;
