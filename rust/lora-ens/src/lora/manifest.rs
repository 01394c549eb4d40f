//! `ensemble.json`: the manifest of an ensemble directory (member adapter directories, the
//! base model they were trained on and its sha256, labels, training config, metrics), and
//! [`load_adapters`], which takes adapter and ensemble directories alike.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::LoraAdapter;
use super::config::refuse;
use crate::model::LlamaConfig;
use crate::{Error, Result};

/// The manifest's file name inside an ensemble directory.
pub const MANIFEST_FILE: &str = "ensemble.json";

/// A parsed `ensemble.json`:
/// `{"members": ["m0", ...], "base_model": {"path": ..., "sha256": ...}, "labels": [...], ...}`.
#[derive(Debug, Clone)]
pub struct EnsembleManifest {
    /// The `ensemble.json` file.
    pub path: PathBuf,
    /// Member adapter directories, relative entries resolved against the manifest's directory.
    pub members: Vec<PathBuf>,
    pub base_model_path: Option<String>,
    /// Lower-case hex sha256 of the base GGUF the members were trained on.
    pub base_model_sha256: Option<String>,
    pub labels: Option<Vec<String>>,
    /// Every other top-level key (prompt template, training config, metrics), as written.
    pub extra: Map<String, Value>,
}

impl EnsembleManifest {
    /// Read `path`: an ensemble directory or its `ensemble.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        Self::from_json(&text, &file)
    }

    /// Parse the text of the manifest at `file` (which resolves relative member paths).
    pub fn from_json(text: &str, file: &Path) -> Result<Self> {
        let bad = |reason: String| refuse(file, reason);
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(bad("expected a JSON object".to_owned()));
        };
        let dir = file.parent().unwrap_or(Path::new(""));
        let members = match obj.remove("members") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|item| {
                    let rel = match item {
                        Value::String(s) => Some(s.as_str()),
                        Value::Object(o) => o.get("path").and_then(Value::as_str),
                        _ => None,
                    };
                    rel.map(|r| dir.join(r)).ok_or_else(|| {
                        bad(format!(
                            "`members` entries must be paths (or {{\"path\": ...}}), got {item}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            Some(other) => {
                return Err(bad(format!(
                    "`members` must be a non-empty list of adapter directories, got {other}"
                )));
            }
            None => return Err(bad("`members` is missing".to_owned())),
        };
        let (base_model_path, base_model_sha256) = match obj.remove("base_model") {
            None | Some(Value::Null) => (None, None),
            Some(Value::Object(b)) => {
                let field = |k: &str| match b.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(v) => Err(bad(format!("`base_model.{k}` must be a string, got {v}"))),
                };
                let sha = field("sha256")?.map(|s| s.trim().to_ascii_lowercase());
                if let Some(s) = sha.as_deref().filter(|s| !is_sha256(s)) {
                    return Err(bad(format!(
                        "`base_model.sha256` `{s}` is not a hex sha256"
                    )));
                }
                (field("path")?, sha)
            }
            Some(v) => return Err(bad(format!("`base_model` must be an object, got {v}"))),
        };
        let labels = match obj.remove("labels") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("`labels` must be a list of strings".to_owned()))?,
            ),
            Some(v) => return Err(bad(format!("`labels` must be a list of strings, got {v}"))),
        };
        Ok(Self {
            path: file.to_path_buf(),
            members,
            base_model_path,
            base_model_sha256,
            labels,
            extra: obj,
        })
    }

    /// Refuse a base model whose sha256 differs from the one the members were trained on
    /// (nothing to check if the manifest records none).
    pub fn check_base(&self, base_sha256: &str) -> Result<()> {
        let Some(want) = &self.base_model_sha256 else {
            return Ok(());
        };
        let have = base_sha256.trim().to_ascii_lowercase();
        if *want != have {
            let made_for = self
                .base_model_path
                .as_deref()
                .map_or_else(String::new, |p| format!(" (`{p}`)"));
            return Err(refuse(
                &self.path,
                format!(
                    "the members were trained on base model sha256 {want}{made_for}, \
                     but the loaded model's sha256 is {have}"
                ),
            ));
        }
        Ok(())
    }

    /// Load every member for `base`; an error says which member failed.
    pub fn load_members(&self, base: &LlamaConfig) -> Result<Vec<LoraAdapter>> {
        let n = self.members.len();
        self.members
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let which = format!("member {} of {n} in {}", i + 1, self.path.display());
                if !dir.is_dir() {
                    return Err(refuse(
                        dir,
                        format!("{which}: the directory does not exist"),
                    ));
                }
                LoraAdapter::load(dir, base).map_err(|e| match e {
                    Error::Adapter { path, reason } => Error::Adapter {
                        path,
                        reason: format!("{which}: {reason}"),
                    },
                    other => other,
                })
            })
            .collect()
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Whether `path` is an ensemble (a directory with `ensemble.json`, or that file itself).
pub fn is_ensemble(path: &Path) -> bool {
    path.join(MANIFEST_FILE).is_file()
        || (path.is_file() && path.extension().is_some_and(|e| e == "json"))
}

/// Load adapters for `base` from `paths`, each a PEFT adapter directory or an ensemble
/// directory (whose members come in manifest order). With `base_sha256`, an ensemble made
/// for another base model is refused.
pub fn load_adapters(
    paths: &[PathBuf],
    base: &LlamaConfig,
    base_sha256: Option<&str>,
) -> Result<Vec<LoraAdapter>> {
    if paths.is_empty() {
        return Err(Error::Input("no adapter paths given".to_owned()));
    }
    let mut adapters = Vec::new();
    for path in paths {
        if is_ensemble(path) {
            let manifest = EnsembleManifest::load(path)?;
            if let Some(sha) = base_sha256 {
                manifest.check_base(sha)?;
            }
            adapters.extend(manifest.load_members(base)?);
        } else {
            adapters.push(LoraAdapter::load(path, base)?);
        }
    }
    Ok(adapters)
}
