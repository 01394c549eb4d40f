//! `ensemble.json`: the manifest of an ensemble directory (member adapter directories, the
//! base model they were trained on and its identity, labels, prompt template, scoring, the
//! training config and validation metrics), typed, read once and written by training through
//! the bindings; and [`load_adapters`], which takes adapter and ensemble directories alike.
//!
//! Base identity: members trained on a GGUF record its sha256 (`base_model.sha256`) and load
//! only on that file; members trained on a Hugging Face checkpoint record the checkpoint's
//! content hash (`base_model.checkpoint_sha256`, defined in the Python package's
//! `lora_ens_rs.checkpoint`) and load on any GGUF whose metadata names that checkpoint as its
//! source ([`SOURCE_SHA256_KEY`], written by `lora-ens-rs convert`), whatever its quantization.
//! Anything else is refused with both identities named, unless [`ALLOW_BASE_MISMATCH_ENV`] is
//! `1`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::LoraAdapter;
use super::config::refuse;
use crate::config::{LlamaConfig, Normalization, Scoring};
use crate::{Error, Result, prompt};

/// The manifest's file name inside an ensemble directory.
pub const MANIFEST_FILE: &str = "ensemble.json";

/// The environment variable that, set to `1`, lets an ensemble's members live outside its
/// directory (`..`, absolute paths, links out): for a user who means it; off by default, so a
/// downloaded ensemble cannot make the engine read elsewhere.
pub const ALLOW_OUTSIDE_MEMBERS_ENV: &str = "LORA_ENS_RS_ALLOW_OUTSIDE_MEMBERS";

/// The environment variable that, set to `1`, loads an ensemble on a base model other than the
/// one its manifest records (the user's explicit override of [`EnsembleManifest::check_base`]).
pub const ALLOW_BASE_MISMATCH_ENV: &str = "LORA_ENS_RS_ALLOW_BASE_MISMATCH";

/// The GGUF metadata key in which `lora-ens-rs convert` records the content hash of the
/// Hugging Face checkpoint the file was converted from.
pub const SOURCE_SHA256_KEY: &str = "lora_ens_rs.source.sha256";

/// What a loaded base model is, for [`EnsembleManifest::check_base`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseIdentity {
    /// Lower-case hex sha256 of the GGUF file.
    pub sha256: String,
    /// The content hash of the checkpoint the file was converted from ([`SOURCE_SHA256_KEY`]).
    pub source_sha256: Option<String>,
}

impl BaseIdentity {
    /// The identity of a GGUF file whose sha256 is `sha256`, converted from `source_sha256`.
    pub fn new(sha256: &str, source_sha256: Option<&str>) -> Self {
        Self {
            sha256: sha256.trim().to_ascii_lowercase(),
            source_sha256: source_sha256.map(|s| s.trim().to_ascii_lowercase()),
        }
    }

    fn describe(&self) -> String {
        match &self.source_sha256 {
            Some(src) => format!(
                "GGUF sha256 {}, converted from the checkpoint with content hash {src}",
                self.sha256
            ),
            None => format!(
                "GGUF sha256 {} (no source checkpoint recorded in `{SOURCE_SHA256_KEY}`)",
                self.sha256
            ),
        }
    }
}

/// The prompt templates this engine knows (a manifest naming another is refused).
pub const KNOWN_TEMPLATES: &[&str] = &[prompt::TEMPLATE_NAME];

/// A manifest's `scoring`: how the members were trained to be scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ManifestScoring {
    /// `labels` or `choices`.
    pub mode: Option<Scoring>,
    /// The choices' normalization.
    pub normalization: Option<Normalization>,
}

/// A parsed `ensemble.json`:
/// `{"members": ["m0", ...], "base_model": {"path": ..., "sha256": ..., "checkpoint_sha256":
/// ...}, "labels": [...],
/// "prompt_template": "qa-v1", "scoring": {"mode": ..., "normalization": ...},
/// "training": {...}, "seeds": [...], "validation": {...}, "version": "..."}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnsembleManifest {
    /// The `ensemble.json` file (empty for a manifest built in memory).
    pub path: PathBuf,
    /// Member adapter directories as written (relative to the manifest's directory).
    pub member_entries: Vec<String>,
    /// Member adapter directories, relative entries resolved against the manifest's directory.
    pub members: Vec<PathBuf>,
    /// The base model's path as recorded by training.
    pub base_model_path: Option<String>,
    /// Lower-case hex sha256 of the base GGUF the members were trained on.
    pub base_model_sha256: Option<String>,
    /// Content hash of the Hugging Face checkpoint the members were trained on (lower-case hex).
    pub base_model_checkpoint_sha256: Option<String>,
    /// Option labels (the default labels of label scoring).
    pub labels: Option<Vec<String>>,
    /// The prompt template's name (one of [`KNOWN_TEMPLATES`]).
    pub prompt_template: Option<String>,
    /// How the members were trained to be scored.
    pub scoring: Option<ManifestScoring>,
    /// The full training configuration, opaque to the engine.
    pub training: Option<Value>,
    /// Each member's seed.
    pub seeds: Option<Vec<u64>>,
    /// Validation metrics of the members and the ensemble, opaque to the engine.
    pub validation: Option<Value>,
    /// The version of the package that wrote it.
    pub version: Option<String>,
    /// Every other top-level key, as written (kept when the manifest is written again).
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
        let bad = |reason: String| refuse(&file, reason);
        let text = crate::io::read_text(&file, crate::io::MAX_JSON_BYTES, &bad)?;
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
        let member_entries = match obj.remove("members") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|item| {
                    let rel = match item {
                        Value::String(s) => Some(s.as_str()),
                        Value::Object(o) => o.get("path").and_then(Value::as_str),
                        _ => None,
                    };
                    rel.map(str::to_owned).ok_or_else(|| {
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
            None if obj.contains_key("peft_type") || obj.contains_key("target_modules") => {
                return Err(bad(format!(
                    "this is a PEFT adapter config, not an ensemble manifest: pass the \
                     adapter's directory ({})",
                    dir.display()
                )));
            }
            None => return Err(bad("`members` is missing".to_owned())),
        };
        let (base_model_path, base_model_sha256, base_model_checkpoint_sha256) =
            match obj.remove("base_model") {
                None | Some(Value::Null) => (None, None, None),
                Some(Value::Object(b)) => {
                    let field = |k: &str| match b.get(k) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(v) => Err(bad(format!("`base_model.{k}` must be a string, got {v}"))),
                    };
                    let hex = |k: &str| -> Result<Option<String>> {
                        let sha = field(k)?.map(|s| s.trim().to_ascii_lowercase());
                        if let Some(s) = sha.as_deref().filter(|s| !is_sha256(s)) {
                            return Err(bad(format!("`base_model.{k}` `{s}` is not a hex sha256")));
                        }
                        Ok(sha)
                    };
                    (field("path")?, hex("sha256")?, hex("checkpoint_sha256")?)
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
        let prompt_template = match obj.remove("prompt_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if KNOWN_TEMPLATES.contains(&t.as_str()) => Some(t),
            Some(v) => {
                return Err(bad(format!(
                    "`prompt_template` {v} is not a template this engine knows ({}): the \
                     members were trained on prompts it cannot build",
                    KNOWN_TEMPLATES.join(", ")
                )));
            }
        };
        let scoring = parse_scoring(obj.remove("scoring"), &bad)?;
        let seeds = match obj.remove("seeds") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(Value::as_u64)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        bad("`seeds` must be a list of non-negative integers".to_owned())
                    })?,
            ),
            Some(v) => return Err(bad(format!("`seeds` must be a list, got {v}"))),
        };
        let version = match obj.remove("version") {
            None | Some(Value::Null) => None,
            Some(Value::String(v)) => Some(v),
            Some(v) => return Err(bad(format!("`version` must be a string, got {v}"))),
        };
        let opaque = |v: Option<Value>| v.filter(|v| !v.is_null());
        Ok(Self {
            path: file.to_path_buf(),
            members: member_entries.iter().map(|r| dir.join(r)).collect(),
            member_entries,
            base_model_path,
            base_model_sha256,
            base_model_checkpoint_sha256,
            labels,
            prompt_template,
            scoring,
            training: opaque(obj.remove("training")),
            seeds,
            validation: opaque(obj.remove("validation")),
            version,
            extra: obj,
        })
    }

    /// The manifest as a JSON object, keys in the documented order (then any other keys).
    pub fn to_value(&self) -> Value {
        let mut o = Map::new();
        let members = self
            .member_entries
            .iter()
            .cloned()
            .map(Value::from)
            .collect();
        o.insert("members".into(), Value::Array(members));
        let mut base = Map::new();
        base.insert("path".into(), self.base_model_path.clone().into());
        base.insert("sha256".into(), self.base_model_sha256.clone().into());
        if let Some(c) = &self.base_model_checkpoint_sha256 {
            base.insert("checkpoint_sha256".into(), c.clone().into());
        }
        o.insert("base_model".into(), Value::Object(base));
        o.insert("labels".into(), self.labels.clone().into());
        o.insert(
            "prompt_template".into(),
            self.prompt_template.clone().into(),
        );
        let scoring = self.scoring.map(|s| {
            let mut m = Map::new();
            m.insert("mode".into(), s.mode.map(Scoring::name).into());
            m.insert(
                "normalization".into(),
                s.normalization.map(Normalization::name).into(),
            );
            Value::Object(m)
        });
        o.insert("scoring".into(), scoring.into());
        o.insert("training".into(), self.training.clone().into());
        o.insert("seeds".into(), self.seeds.clone().into());
        o.insert("validation".into(), self.validation.clone().into());
        o.insert("version".into(), self.version.clone().into());
        for (k, v) in &self.extra {
            o.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(o)
    }

    /// The manifest as indented JSON text (with a final newline), as training writes it.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_value()).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Whether the manifest records what its members were trained on.
    pub fn records_base(&self) -> bool {
        self.base_model_sha256.is_some() || self.base_model_checkpoint_sha256.is_some()
    }

    /// Refuse a base model other than the one the members were trained on (see the module
    /// documentation; nothing to check if the manifest records none), unless the environment
    /// variable [`ALLOW_BASE_MISMATCH_ENV`] is `1`.
    pub fn check_base(&self, have: &BaseIdentity) -> Result<()> {
        let allow = std::env::var(ALLOW_BASE_MISMATCH_ENV).is_ok_and(|v| v == "1");
        self.check_base_with(have, allow)
    }

    /// [`EnsembleManifest::check_base`] with the override given (`allow`: accept any base).
    pub fn check_base_with(&self, have: &BaseIdentity, allow: bool) -> Result<()> {
        let file_ok = self
            .base_model_sha256
            .as_ref()
            .is_some_and(|want| *want == have.sha256);
        let source_ok = self
            .base_model_checkpoint_sha256
            .as_ref()
            .is_some_and(|want| have.source_sha256.as_ref() == Some(want));
        if !self.records_base() || file_ok || source_ok || allow {
            return Ok(());
        }
        let mut trained = Vec::new();
        if let Some(c) = &self.base_model_checkpoint_sha256 {
            trained.push(format!(
                "the Hugging Face checkpoint with content hash {c} (or a GGUF converted from it)"
            ));
        }
        if let Some(f) = &self.base_model_sha256 {
            trained.push(format!("the GGUF with sha256 {f}"));
        }
        let made_for = self
            .base_model_path
            .as_deref()
            .map_or_else(String::new, |p| format!(" (`{p}`)"));
        Err(refuse(
            &self.path,
            format!(
                "the members were trained on {}{made_for}, but the loaded model is {}; \
                 set {ALLOW_BASE_MISMATCH_ENV}=1 to load them on it anyway",
                trained.join(" or "),
                have.describe()
            ),
        ))
    }

    /// Load every member for `base`; an error says which member failed. Members must resolve
    /// (symbolic links followed) inside the manifest's directory unless the environment
    /// variable [`ALLOW_OUTSIDE_MEMBERS_ENV`] is `1`.
    pub fn load_members(&self, base: &LlamaConfig) -> Result<Vec<LoraAdapter>> {
        let allow = std::env::var(ALLOW_OUTSIDE_MEMBERS_ENV).is_ok_and(|v| v == "1");
        self.load_members_with(base, allow)
    }

    /// [`EnsembleManifest::load_members`], with members outside the directory allowed or not.
    pub(crate) fn load_members_with(
        &self,
        base: &LlamaConfig,
        allow_outside: bool,
    ) -> Result<Vec<LoraAdapter>> {
        let n = self.members.len();
        let root = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let root = std::fs::canonicalize(&root).map_err(|e| Error::io(&root, e))?;
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
                let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
                if !allow_outside && !real.starts_with(&root) {
                    return Err(refuse(
                        dir,
                        format!(
                            "{which}: resolves to {}, outside the ensemble directory {}; \
                             members must live inside it (set {ALLOW_OUTSIDE_MEMBERS_ENV}=1 \
                             to load members from elsewhere)",
                            real.display(),
                            root.display()
                        ),
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

/// The `scoring` entry, checked: `{"mode": "labels" | "choices", "normalization": ...}`.
fn parse_scoring(
    value: Option<Value>,
    bad: &dyn Fn(String) -> Error,
) -> Result<Option<ManifestScoring>> {
    let scoring = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(v) => return Err(bad(format!("`scoring` must be an object, got {v}"))),
    };
    let text = |key: &str| match scoring.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(bad(format!("`scoring.{key}` must be a string, got {v}"))),
    };
    let mode = text("mode")?
        .map(|s| {
            Scoring::from_name(s).map_err(|_| {
                bad(format!(
                    "`scoring.mode` must be \"labels\" or \"choices\", got {s:?}"
                ))
            })
        })
        .transpose()?;
    let normalization = text("normalization")?
        .map(|s| {
            Normalization::from_name(s).map_err(|e| bad(format!("`scoring.normalization`: {e}")))
        })
        .transpose()?;
    Ok(
        (mode.is_some() || normalization.is_some()).then_some(ManifestScoring {
            mode,
            normalization,
        }),
    )
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Whether `path` is an ensemble (a directory with `ensemble.json`, or that file itself).
pub fn is_ensemble(path: &Path) -> bool {
    // `exists`, not `is_file`: an `ensemble.json` that is not a regular file (a FIFO, a
    // directory) is refused by the manifest reader, naming it.
    path.join(MANIFEST_FILE).exists()
        || (path.is_file() && path.extension().is_some_and(|e| e == "json"))
}

/// Load adapters for `base` from `paths`, each a PEFT adapter directory or an ensemble
/// directory (whose members come in manifest order); also returns the first manifest.
/// `base_identity` gives the loaded model's identity, asked for only when a manifest records
/// one: an ensemble made for another base model is refused (`None`: no check).
pub fn load_adapters(
    paths: &[impl AsRef<Path>],
    base: &LlamaConfig,
    base_identity: Option<&dyn Fn() -> Result<BaseIdentity>>,
) -> Result<(Vec<LoraAdapter>, Option<EnsembleManifest>)> {
    let mut adapters = Vec::new();
    let mut first = None;
    let mut identity: Option<BaseIdentity> = None;
    for path in paths {
        let path = path.as_ref();
        if is_ensemble(path) {
            let manifest = EnsembleManifest::load(path)?;
            if let (true, Some(compute)) = (manifest.records_base(), base_identity) {
                let have = match &identity {
                    Some(id) => id.clone(),
                    None => identity.insert(compute()?).clone(),
                };
                manifest.check_base(&have)?;
            }
            adapters.extend(manifest.load_members(base)?);
            first.get_or_insert(manifest);
        } else {
            adapters.push(LoraAdapter::load(path, base)?);
        }
    }
    Ok((adapters, first))
}
