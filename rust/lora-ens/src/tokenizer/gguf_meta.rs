//! Reading the tokenizer a GGUF file describes: `tokenizer.ggml.model` (`gpt2`, the
//! byte-level BPE, or `llama`, SentencePiece), `tokens`, `merges` or `scores`, `token_type`,
//! `pre`, `add_space_prefix`, the special token ids, the
//! `add_bos_token` / `add_eos_token` flags and `tokenizer.chat_template`, following what
//! transformers' GGUF converter and llama.cpp make of the same keys.

use candle_core::quantized::gguf_file::Value;

use super::Parts;
use super::added::AddedToken;
use super::bpe;
use super::pre::{self, PreTokenizer};
use super::spm::Spm;
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// llama.cpp's `tokenizer.ggml.token_type` values.
pub(crate) const TOKEN_TYPE_NORMAL: i64 = 1;
pub(crate) const TOKEN_TYPE_UNKNOWN: i64 = 2;
pub(crate) const TOKEN_TYPE_CONTROL: i64 = 3;
pub(crate) const TOKEN_TYPE_USER_DEFINED: i64 = 4;
pub(crate) const TOKEN_TYPE_BYTE: i64 = 6;

/// The `tokenizer.ggml.model` values this engine reads.
const MODELS: &str = "`gpt2` (byte-level BPE), `llama` (SentencePiece)";

/// The parts of the tokenizer in `gguf`'s metadata.
pub(crate) fn read(gguf: &GgufFile) -> Result<Parts> {
    let path = gguf.path().display().to_string();
    let fail = |msg: String| Error::Tokenizer(format!("{path}: {msg}"));
    match gguf.string("tokenizer.ggml.model")?.as_str() {
        "gpt2" => read_bpe(gguf),
        "llama" => read_spm(gguf),
        other => Err(fail(format!(
            "tokenizer.ggml.model `{other}` is not supported; supported: {MODELS}"
        ))),
    }
}

/// A byte-level BPE vocabulary (`gpt2`).
fn read_bpe(gguf: &GgufFile) -> Result<Parts> {
    let path = gguf.path().display().to_string();
    let fail = |msg: String| Error::Tokenizer(format!("{path}: {msg}"));
    // A file without the key gets llama.cpp's `default` splits, as llama.cpp gives it.
    let pre_name = gguf.optional("tokenizer.ggml.pre", GgufFile::string)?;
    let pre_name = pre_name.as_deref().unwrap_or("default");
    let pre = PreTokenizer::named(pre_name).map_err(|e| fail(message(e)))?;
    let ignore_merges = pre::ignores_merges(pre_name).map_err(|e| fail(message(e)))?;
    let add_bos_default = pre::adds_bos_by_default(pre_name).map_err(|e| fail(message(e)))?;
    let raw = gguf.strings("tokenizer.ggml.tokens")?;
    let merges = gguf
        .optional("tokenizer.ggml.merges", GgufFile::strings)?
        .ok_or_else(|| fail("byte-level BPE needs tokenizer.ggml.merges; there are none".into()))?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(l, r)| (l.to_owned(), r.to_owned()))
                .ok_or_else(|| fail(format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let types = int_array(gguf, "tokenizer.ggml.token_type")?;
    if types.as_ref().is_some_and(|t| t.len() != raw.len()) {
        return Err(fail(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.as_ref().map_or(0, Vec::len),
            raw.len()
        )));
    }

    // A byte-level vocabulary spells every token in the byte alphabet, except that llama.cpp's
    // converter writes control and user-defined (added) tokens as plain text, which is what
    // llama.cpp matches whole in the text (MPT's runs of spaces, DeepSeek's `<｜fim▁hole｜>`).
    // Such a token outside the alphabet is only an added token, never a BPE piece; a normal
    // token outside it is respelled from its UTF-8 bytes, as transformers does.
    let b2c = bpe::byte_to_char();
    let c2b = bpe::char_to_byte();
    let mut vocab = Vec::with_capacity(raw.len());
    let mut added = Vec::new();
    for (id, token) in raw.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| fail("more than 2^32 tokens".into()))?;
        let in_alphabet = bpe::spelled_bytes(token, &c2b).is_some();
        let kind = types
            .as_ref()
            .and_then(|t| t.get(id as usize).copied())
            .unwrap_or(1);
        if kind == TOKEN_TYPE_CONTROL || kind == TOKEN_TYPE_USER_DEFINED {
            added.push(AddedToken::plain(
                token.clone(),
                id,
                kind == TOKEN_TYPE_CONTROL,
            ));
            if !in_alphabet {
                continue;
            }
        }
        let spelled = if in_alphabet {
            token.clone()
        } else {
            bpe::spell(token.as_bytes(), &b2c)
        };
        vocab.push((spelled, id));
    }
    let specials = Specials::read(gguf, raw.len(), add_bos_default)?;
    Ok(Parts {
        vocab,
        merges,
        ignore_merges,
        pre,
        add_prefix_space: false,
        added,
        spm: None,
        prefix: specials.prefix,
        suffix: specials.suffix,
        bos_id: specials.bos_id,
        eos_id: specials.eos_id,
        chat_template: gguf.optional("tokenizer.chat_template", GgufFile::string)?,
    })
}

/// A SentencePiece vocabulary (`llama`), tokenized as llama.cpp's SPM tokenizer does.
///
/// Control, user-defined and unknown tokens are matched whole in the text; control and
/// unknown ones are special. Without `tokenizer.ggml.add_bos_token` BOS is added, as
/// llama.cpp and HF's `LlamaTokenizer` do for this kind of vocabulary.
fn read_spm(gguf: &GgufFile) -> Result<Parts> {
    let path = gguf.path().display().to_string();
    let fail = |msg: String| Error::Tokenizer(format!("{path}: {msg}"));
    let tokens = gguf.strings("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types = int_array(gguf, "tokenizer.ggml.token_type")?.unwrap_or_default();
    let scores = gguf
        .optional("tokenizer.ggml.scores", float_array)?
        .unwrap_or_default();
    for (key, len) in [("token_type", types.len()), ("scores", scores.len())] {
        if len != 0 && len != n {
            return Err(fail(format!(
                "tokenizer.ggml.{key} has {len} entries for {n} tokens"
            )));
        }
    }
    let mut vocab = Vec::with_capacity(n);
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| fail("more than 2^32 tokens".into()))?;
        let kind = types.get(id as usize).copied().unwrap_or(TOKEN_TYPE_NORMAL);
        if matches!(
            kind,
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN
        ) {
            let special = kind != TOKEN_TYPE_USER_DEFINED;
            added.push(AddedToken::plain(token.clone(), id, special));
        }
        vocab.push((token.clone(), id));
    }
    let specials = Specials::read(gguf, n, true)?;
    let unk_id = specials_id(gguf, "tokenizer.ggml.unknown_token_id", n)?;
    let add_space_prefix = gguf
        .optional("tokenizer.ggml.add_space_prefix", GgufFile::bool)?
        .unwrap_or(true);
    Ok(Parts {
        vocab,
        merges: Vec::new(),
        ignore_merges: false,
        pre: PreTokenizer::from_patterns(std::iter::empty::<&str>())?,
        add_prefix_space: false,
        added,
        spm: Some(Spm::new(&tokens, &scores, &types, unk_id, add_space_prefix)),
        prefix: specials.prefix,
        suffix: specials.suffix,
        bos_id: specials.bos_id,
        eos_id: specials.eos_id,
        chat_template: gguf.optional("tokenizer.chat_template", GgufFile::string)?,
    })
}

/// BOS / EOS and whether to add them.
struct Specials {
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

impl Specials {
    /// `add_bos_default`: whether BOS is added when `tokenizer.ggml.add_bos_token` is absent
    /// (llama.cpp's default for the vocabulary's kind; without a BOS id nothing is added).
    /// EOS is added only when `tokenizer.ggml.add_eos_token` says so.
    fn read(gguf: &GgufFile, n_tokens: usize, add_bos_default: bool) -> Result<Self> {
        let path = gguf.path().display().to_string();
        let bos_id = specials_id(gguf, "tokenizer.ggml.bos_token_id", n_tokens)?;
        let eos_id = specials_id(gguf, "tokenizer.ggml.eos_token_id", n_tokens)?;
        let wanted = |key: &str, default: bool, id: Option<u32>, what: &str| -> Result<Vec<u32>> {
            match (gguf.optional(key, GgufFile::bool)?, id) {
                (Some(true), Some(id)) => Ok(vec![id]),
                (Some(true), None) => Err(Error::Tokenizer(format!(
                    "{path}: {key} is set but tokenizer.ggml.{what}_token_id is missing"
                ))),
                (None, Some(id)) if default => Ok(vec![id]),
                _ => Ok(Vec::new()),
            }
        };
        let prefix = wanted(
            "tokenizer.ggml.add_bos_token",
            add_bos_default,
            bos_id,
            "bos",
        )?;
        let suffix = wanted("tokenizer.ggml.add_eos_token", false, eos_id, "eos")?;
        Ok(Self {
            bos_id,
            eos_id,
            prefix,
            suffix,
        })
    }
}

/// A special token id, `None` when the key is absent; one outside the vocabulary is an error.
fn specials_id(gguf: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    // llama.cpp warns and falls back to a default id here; a wrong id would put the wrong
    // token at the start of every sequence, so the file is refused instead.
    match gguf.optional(key, GgufFile::u64)? {
        None => Ok(None),
        Some(id) if id < n_tokens as u64 => Ok(Some(id as u32)),
        Some(id) => Err(Error::Metadata {
            path: gguf.path().to_path_buf(),
            key: key.to_owned(),
            reason: format!("token id {id} is outside the vocabulary of {n_tokens} tokens"),
        }),
    }
}

/// The message of an [`Error::Tokenizer`] (to re-wrap it with the file's name).
fn message(err: Error) -> String {
    match err {
        Error::Tokenizer(msg) => msg,
        other => other.to_string(),
    }
}

/// An integer array from GGUF metadata (`tokenizer.ggml.token_type`), `None` when absent.
fn int_array(gguf: &GgufFile, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(value) = gguf.metadata().get(key) else {
        return Ok(None);
    };
    let wrong = |reason: String| Error::Metadata {
        path: gguf.path().to_path_buf(),
        key: key.to_owned(),
        reason,
    };
    let items = value
        .to_vec()
        .map_err(|e| wrong(format!("expected an array: {e}")))?;
    items
        .iter()
        .map(|v| match v {
            Value::I8(x) => Ok(i64::from(*x)),
            Value::U8(x) => Ok(i64::from(*x)),
            Value::I16(x) => Ok(i64::from(*x)),
            Value::U16(x) => Ok(i64::from(*x)),
            Value::I32(x) => Ok(i64::from(*x)),
            Value::U32(x) => Ok(i64::from(*x)),
            Value::I64(x) => Ok(*x),
            other => Err(wrong(format!(
                "expected integers, got {:?}",
                other.value_type()
            ))),
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// A float array from GGUF metadata (`tokenizer.ggml.scores`).
fn float_array(gguf: &GgufFile, key: &str) -> Result<Vec<f32>> {
    let wrong = |reason: String| Error::Metadata {
        path: gguf.path().to_path_buf(),
        key: key.to_owned(),
        reason,
    };
    gguf.value(key)?
        .to_vec()
        .map_err(|e| wrong(format!("expected an array: {e}")))?
        .iter()
        .map(|v| match v {
            Value::F32(x) => Ok(*x),
            // Scores only order merges; f32 is what llama.cpp keeps.
            Value::F64(x) => Ok(*x as f32),
            other => Err(wrong(format!(
                "expected floats, got {:?}",
                other.value_type()
            ))),
        })
        .collect()
}
