//! Reading the tokenizer a GGUF file describes: `tokenizer.ggml.model` (only `gpt2`, the
//! byte-level BPE), `tokens`, `merges`, `token_type`, `pre`, the special token ids, the
//! `add_bos_token` / `add_eos_token` flags and `tokenizer.chat_template`, following what
//! transformers' GGUF converter and llama.cpp make of the same keys.

use candle_core::quantized::gguf_file::Value;

use super::Parts;
use super::added::AddedToken;
use super::bpe;
use super::pre::{self, PreTokenizer};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// llama.cpp's `token_type` values for tokens matched whole in the text.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The parts of the tokenizer in `gguf`'s metadata.
pub(crate) fn read(gguf: &GgufFile) -> Result<Parts> {
    let path = gguf.path().display().to_string();
    let fail = |msg: String| Error::Tokenizer(format!("{path}: {msg}"));
    match gguf.string("tokenizer.ggml.model")?.as_str() {
        "gpt2" => {}
        "llama" => {
            return Err(fail(
                "tokenizer.ggml.model `llama` (SentencePiece) is not supported yet; \
                 only byte-level BPE (`gpt2`) is"
                    .into(),
            ));
        }
        other => {
            return Err(fail(format!(
                "tokenizer.ggml.model `{other}` is not supported; only byte-level BPE (`gpt2`) is"
            )));
        }
    }
    let pre_name = gguf.optional("tokenizer.ggml.pre", GgufFile::string)?;
    let pre_name = pre_name.as_deref().unwrap_or("default");
    let pre = PreTokenizer::named(pre_name).map_err(|e| fail(message(e)))?;
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

    // A byte-level vocabulary spells every token in the byte alphabet; a token that is not
    // (llama.cpp writes some added tokens as plain text) is respelled from its UTF-8 bytes,
    // as transformers does. Only tokens already in the alphabet can be added tokens.
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
        if in_alphabet && (kind == TOKEN_TYPE_CONTROL || kind == TOKEN_TYPE_USER_DEFINED) {
            added.push(AddedToken::plain(
                token.clone(),
                id,
                kind == TOKEN_TYPE_CONTROL,
            ));
        }
        let spelled = if in_alphabet {
            token.clone()
        } else {
            bpe::spell(token.as_bytes(), &b2c)
        };
        vocab.push((spelled, id));
    }
    let special_id = |key: &str| -> Result<Option<u32>> {
        // An id outside the vocabulary (some converters write -1 or a stale id) is absent.
        Ok(gguf
            .optional(key, GgufFile::u64)?
            .and_then(|id| u32::try_from(id).ok())
            .filter(|&id| (id as usize) < raw.len()))
    };
    let bos_id = special_id("tokenizer.ggml.bos_token_id")?;
    let eos_id = special_id("tokenizer.ggml.eos_token_id")?;
    let flag =
        |key: &str| -> Result<bool> { Ok(gguf.optional(key, GgufFile::bool)?.unwrap_or(false)) };
    let wanted = |on: bool, id: Option<u32>, what: &str| -> Result<Vec<u32>> {
        match (on, id) {
            (false, _) => Ok(Vec::new()),
            (true, Some(id)) => Ok(vec![id]),
            (true, None) => Err(fail(format!(
                "add_{what}_token is set but {what}_token_id is missing"
            ))),
        }
    };
    let prefix = wanted(flag("tokenizer.ggml.add_bos_token")?, bos_id, "bos")?;
    let suffix = wanted(flag("tokenizer.ggml.add_eos_token")?, eos_id, "eos")?;
    Ok(Parts {
        vocab,
        merges,
        ignore_merges: pre::ignores_merges(pre_name),
        pre,
        add_prefix_space: false,
        added,
        prefix,
        suffix,
        bos_id,
        eos_id,
        chat_template: gguf.optional("tokenizer.chat_template", GgufFile::string)?,
    })
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
