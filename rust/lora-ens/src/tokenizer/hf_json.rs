//! Reading an HF `tokenizer.json` of the byte-level BPE kind (GPT-2, SmolLM, LLaMA-3, ...):
//! `model` (BPE vocab + merges), `added_tokens`, `pre_tokenizer` (`ByteLevel`, `Split`,
//! `Digits`, `Sequence`) and `post_processor` (`TemplateProcessing`). Anything that would
//! change the ids and is not implemented (a normalizer, byte fallback, dropout, ...) is
//! refused by name. A `tokenizer_config.json` beside the file supplies BOS / EOS and the
//! chat template.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::Parts;
use super::added::AddedToken;
use super::pre::{DIGIT_RUNS, DIGITS, GPT2, PreTokenizer};
use crate::{Error, Result};

/// Parse `tokenizer.json` (and its sibling `tokenizer_config.json`, if any).
pub(crate) fn read(path: &Path) -> Result<Parts> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fail = |msg: String| Error::Tokenizer(format!("{}: {msg}", path.display()));
    let json: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let config = read_config(path)?;
    parse(&json, config.as_ref()).map_err(fail)
}

fn read_config(path: &Path) -> Result<Option<Value>> {
    let config = path.with_file_name("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Tokenizer(format!("{}: not valid JSON: {e}", config.display())))
}

type Parsed<T> = std::result::Result<T, String>;

/// Build the parts from the parsed JSON; errors are messages the caller prefixes with the path.
fn parse(json: &Value, config: Option<&Value>) -> Parsed<Parts> {
    let model = json.get("model").ok_or("no `model`")?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if kind != "BPE" {
        return Err(format!(
            "model type `{kind}` is not supported (only byte-level BPE)"
        ));
    }
    if let Some(n) = json.get("normalizer").filter(|n| !n.is_null()) {
        return Err(format!("normalizer `{}` is not supported", type_of(n)));
    }
    for (key, ok) in [
        ("dropout", Value::is_null as fn(&Value) -> bool),
        ("byte_fallback", |v| v == &Value::Bool(false)),
        ("continuing_subword_prefix", empty_string),
        ("end_of_word_suffix", empty_string),
    ] {
        if let Some(v) = model.get(key).filter(|v| !ok(v)) {
            return Err(format!("BPE option `{key}` = {v} is not supported"));
        }
    }
    let vocab: Vec<(String, u32)> = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or("model has no `vocab` object")?
        .iter()
        .map(|(token, id)| Ok((token.clone(), as_id(id, "vocab id")?)))
        .collect::<Parsed<_>>()?;
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or("model has no `merges` list")?
        .iter()
        .map(parse_merge)
        .collect::<Parsed<Vec<_>>>()?;
    let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool) == Some(true);

    let (patterns, add_prefix_space) = pre_tokenizer(json.get("pre_tokenizer"))?;
    let pre = PreTokenizer::from_patterns(patterns).map_err(|e| e.to_string())?;
    let added = json
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|list| list.iter().map(parse_added).collect::<Parsed<Vec<_>>>())
        .transpose()?
        .unwrap_or_default();
    let ids: HashMap<&str, u32> = vocab
        .iter()
        .map(|(t, id)| (t.as_str(), *id))
        .chain(added.iter().map(|t| (t.content.as_str(), t.id)))
        .collect();
    let (prefix, suffix) = template(json.get("post_processor"), &ids)?;

    let config_token = |name: &str| -> Option<u32> {
        let value = config?.get(name)?;
        let content = value.as_str().or_else(|| value.get("content")?.as_str())?;
        ids.get(content).copied()
    };
    let chat_template = config
        .and_then(|c| c.get("chat_template"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Parts {
        bos_id: config_token("bos_token").or_else(|| prefix.first().copied()),
        eos_id: config_token("eos_token"),
        vocab,
        merges,
        ignore_merges,
        pre,
        add_prefix_space,
        added,
        spm: None,
        prefix,
        suffix,
        chat_template,
    })
}

fn empty_string(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("?")
}

fn as_id(v: &Value, what: &str) -> Parsed<u32> {
    v.as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| format!("{what} {v} is not a token id"))
}

/// A merge written `"a b"` (older files) or `["a", "b"]` (newer).
fn parse_merge(v: &Value) -> Parsed<(String, String)> {
    let pair = match v {
        Value::String(s) => s.split_once(' '),
        Value::Array(a) => match a.as_slice() {
            [Value::String(l), Value::String(r)] => Some((l.as_str(), r.as_str())),
            _ => None,
        },
        _ => None,
    };
    pair.map(|(l, r)| (l.to_owned(), r.to_owned()))
        .ok_or_else(|| format!("merge {v} is not a pair of tokens"))
}

fn parse_added(v: &Value) -> Parsed<AddedToken> {
    let flag = |key: &str| v.get(key).and_then(Value::as_bool) == Some(true);
    let content = v
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("added token {v} has no `content`"))?;
    let mut token = AddedToken::plain(
        content.to_owned(),
        as_id(v.get("id").unwrap_or(&Value::Null), "added token id")?,
        flag("special"),
    );
    token.lstrip = flag("lstrip");
    token.rstrip = flag("rstrip");
    token.single_word = flag("single_word");
    Ok(token)
}

/// The split patterns of a pre-tokenizer, in order, and whether `ByteLevel` adds a prefix
/// space. The vocabulary is only byte-level if a `ByteLevel` step is present.
fn pre_tokenizer(v: Option<&Value>) -> Parsed<(Vec<String>, bool)> {
    fn walk(v: &Value, patterns: &mut Vec<String>, byte_level: &mut Option<bool>) -> Parsed<()> {
        let flag = |key: &str| v.get(key).and_then(Value::as_bool);
        match type_of(v) {
            "Sequence" => {
                let steps = v.get("pretokenizers").and_then(Value::as_array);
                let steps = steps.ok_or("pre-tokenizer `Sequence` has no `pretokenizers` list")?;
                for step in steps {
                    walk(step, patterns, byte_level)?;
                }
            }
            "ByteLevel" => {
                let prefix = flag("add_prefix_space") == Some(true);
                if prefix && !patterns.is_empty() {
                    // tokenizers would add the space to every piece cut so far.
                    return Err(
                        "ByteLevel(add_prefix_space) after another split is not supported".into(),
                    );
                }
                *byte_level = Some(prefix);
                if flag("use_regex") != Some(false) {
                    patterns.push(GPT2.to_owned());
                }
            }
            "Digits" => {
                let individual = flag("individual_digits") == Some(true);
                patterns.push(if individual { DIGITS } else { DIGIT_RUNS }.to_owned());
            }
            "Split" => {
                let behavior = v.get("behavior").and_then(Value::as_str).unwrap_or("?");
                if behavior != "Isolated" || flag("invert") == Some(true) {
                    return Err(format!(
                        "pre-tokenizer `Split` with behavior `{behavior}` is not supported \
                         (only `Isolated`, not inverted)"
                    ));
                }
                let pattern = |kind: &str| v.get("pattern")?.get(kind)?.as_str();
                let regex = match (pattern("Regex"), pattern("String")) {
                    (Some(re), _) => re.to_owned(),
                    (None, Some(s)) => fancy_regex::escape(s).into_owned(),
                    (None, None) => return Err("pre-tokenizer `Split` has no pattern".into()),
                };
                patterns.push(regex);
            }
            other => return Err(format!("pre-tokenizer `{other}` is not supported")),
        }
        Ok(())
    }
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Err("no pre-tokenizer: not a byte-level BPE tokenizer".into());
    };
    let mut patterns = Vec::new();
    let mut byte_level = None;
    walk(v, &mut patterns, &mut byte_level)?;
    let add_prefix_space =
        byte_level.ok_or("the pre-tokenizer has no `ByteLevel` step: not a byte-level BPE")?;
    Ok((patterns, add_prefix_space))
}

/// The ids a `TemplateProcessing` post-processor puts before and after a single sequence.
fn template(v: Option<&Value>, ids: &HashMap<&str, u32>) -> Parsed<(Vec<u32>, Vec<u32>)> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((Vec::new(), Vec::new()));
    };
    match type_of(v) {
        "ByteLevel" => Ok((Vec::new(), Vec::new())),
        "Sequence" => {
            let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
            for step in v
                .get("processors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (p, s) = template(Some(step), ids)?;
                prefix.extend(p);
                suffix.splice(0..0, s);
            }
            Ok((prefix, suffix))
        }
        "TemplateProcessing" => {
            let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
            let mut seen_sequence = false;
            for piece in v
                .get("single")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if piece.get("Sequence").is_some() {
                    seen_sequence = true;
                } else if let Some(name) = piece.pointer("/SpecialToken/id").and_then(Value::as_str)
                {
                    let id = *ids.get(name).ok_or_else(|| {
                        format!("post-processor token `{name}` is not in the vocabulary")
                    })?;
                    if seen_sequence {
                        &mut suffix
                    } else {
                        &mut prefix
                    }
                    .push(id);
                }
            }
            Ok((prefix, suffix))
        }
        other => Err(format!("post-processor `{other}` is not supported")),
    }
}
