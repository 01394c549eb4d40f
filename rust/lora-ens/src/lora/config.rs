//! `adapter_config.json` of a PEFT LoRA adapter: which modules it adapts, with which rank and
//! alpha, and the refusal of every PEFT feature the engine does not run (DoRA, bias,
//! modules_to_save, embedding / lm_head LoRA, fan_in_fan_out, ...). Module matching follows
//! PEFT 0.13-0.21 (`check_target_module_exists`, `get_pattern_key`) on HF module names such
//! as `model.layers.3.self_attn.q_proj`.

use std::fmt;
use std::path::{Path, PathBuf};

use fancy_regex::Regex;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::Target;
use crate::{Error, Result};

/// PEFT's shorthand for "every linear layer but the output layer".
const ALL_LINEAR: &str = "all-linear";

/// Which modules an adapter adapts, in the two forms PEFT's `target_modules` takes.
#[derive(Debug, Clone)]
pub enum TargetModules {
    /// Module names, each matched against the full name or as a `.`-separated suffix of it
    /// (`q_proj`, `self_attn.q_proj`, `model.layers.0.mlp.up_proj`).
    Names(Vec<String>),
    /// A regular expression that must match the whole module name (`re.fullmatch`).
    Regex {
        /// The expression as written in the file.
        pattern: String,
        /// The compiled `^(?:pattern)$`.
        regex: Regex,
    },
}

impl TargetModules {
    /// Whether the full module name `module` matches (PEFT's rules, before layer filtering).
    pub fn matches(&self, module: &str) -> bool {
        match self {
            TargetModules::Names(names) => names.iter().any(|t| suffix_match(module, t)),
            TargetModules::Regex { regex, .. } => regex.is_match(module).unwrap_or(false),
        }
    }
}

/// `name == target` or `name` ends with `.target`.
fn suffix_match(name: &str, target: &str) -> bool {
    name == target
        || name
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

/// One `rank_pattern` / `alpha_pattern` entry: PEFT matches `(.*\.)?(key)$` from the start of
/// the module name, first key (in file order) wins.
#[derive(Debug, Clone)]
pub struct Pattern<T> {
    /// The key as written in the file (a module name or a regular expression).
    pub key: String,
    /// The rank or alpha it sets.
    pub value: T,
    regex: Regex,
}

/// The parts of `adapter_config.json` the engine uses, validated.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha; `scaling = lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    pub lora_alpha: f64,
    /// The modules adapted (`target_modules`; `all-linear` becomes the seven projections).
    pub target_modules: TargetModules,
    /// Modules excluded even if `target_modules` matches them.
    pub exclude_modules: Option<TargetModules>,
    /// Per-module rank overrides, in file order.
    pub rank_pattern: Vec<Pattern<usize>>,
    /// Per-module alpha overrides, in file order.
    pub alpha_pattern: Vec<Pattern<f64>>,
    /// rsLoRA: `scaling = lora_alpha / sqrt(r)` instead of `lora_alpha / r`.
    pub use_rslora: bool,
    /// Layer indices the adapter is restricted to (`None`: all layers).
    pub layers_to_transform: Option<Vec<usize>>,
    /// PEFT's `task_type` (`CAUSAL_LM`, ...), as written; not checked.
    pub task_type: Option<String>,
    /// The base model the adapter was trained on, as PEFT recorded it; not checked.
    pub base_model_name_or_path: Option<String>,
}

/// A JSON object's entries in file order (`serde_json::Map` sorts them; PEFT's pattern
/// matching depends on the order).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// The two pattern maps, read a second time to keep their order.
#[derive(serde::Deserialize)]
struct OrderedPatterns {
    #[serde(default)]
    rank_pattern: Option<Ordered>,
    #[serde(default)]
    alpha_pattern: Option<Ordered>,
}

impl AdapterConfig {
    /// Read and validate `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| refuse(path, reason);
        let text = crate::io::read_text(path, crate::io::MAX_JSON_BYTES, &bad).map_err(|e| {
            if crate::io::is_not_found(&e) {
                bad("file is missing (not a PEFT adapter directory)".to_owned())
            } else {
                e
            }
        })?;
        Self::from_json(&text, path)
    }

    /// Parse and validate the text of an `adapter_config.json`; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| refuse(path, reason);
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".to_owned()))?;
        refuse_unsupported(obj).map_err(bad)?;

        let r = positive_int(obj.get("r"), "r")
            .map_err(bad)?
            .ok_or_else(|| bad("`r` is missing".to_owned()))?;
        let lora_alpha = match obj.get("lora_alpha") {
            None | Some(Value::Null) => 8.0, // PEFT's default
            Some(v) => sane_alpha(v).ok_or_else(|| {
                bad(format!(
                    "`lora_alpha` must be a finite number of magnitude at most {MAX_ALPHA}, got {v}"
                ))
            })?,
        };
        if r > MAX_RANK {
            return Err(bad(format!(
                "`r` is {r}, more than the largest rank {MAX_RANK}"
            )));
        }
        let target_modules = match obj.get("target_modules") {
            None | Some(Value::Null) => return Err(bad("`target_modules` is missing".to_owned())),
            Some(v) => parse_targets(v, "target_modules").map_err(bad)?,
        };
        let exclude_modules = match obj.get("exclude_modules") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_targets(v, "exclude_modules").map_err(bad)?),
        };
        let ordered: OrderedPatterns = serde_json::from_str(text)
            .map_err(|e| bad(format!("rank_pattern / alpha_pattern: {e}")))?;
        let rank_pattern = patterns(ordered.rank_pattern, "rank_pattern", |v| {
            v.as_u64()
                .filter(|&r| r > 0 && r <= MAX_RANK as u64)
                .map(|r| r as usize)
        })
        .map_err(bad)?;
        let alpha_pattern =
            patterns(ordered.alpha_pattern, "alpha_pattern", sane_alpha).map_err(bad)?;
        let layers_to_transform = match obj.get("layers_to_transform") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(vec![layer_index(n.as_u64()).map_err(bad)?]),
            Some(Value::Array(items)) if items.is_empty() => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| layer_index(v.as_u64()))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(bad)?,
            ),
            Some(v) => {
                return Err(bad(format!(
                    "`layers_to_transform` must be an integer or a list, got {v}"
                )));
            }
        };
        let string = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            r,
            lora_alpha,
            target_modules,
            exclude_modules,
            rank_pattern,
            alpha_pattern,
            use_rslora: obj.get("use_rslora").and_then(Value::as_bool) == Some(true),
            layers_to_transform,
            task_type: string("task_type"),
            base_model_name_or_path: string("base_model_name_or_path"),
        })
    }

    /// Whether the module `module` (full HF name) of block `layer` carries this adapter.
    pub fn targets(&self, module: &str, layer: usize) -> bool {
        if self
            .exclude_modules
            .as_ref()
            .is_some_and(|ex| ex.matches(module))
        {
            return false;
        }
        match &self.target_modules {
            TargetModules::Regex { .. } => self.target_modules.matches(module),
            // PEFT applies `layers_to_transform` only to suffix matches of a name list.
            TargetModules::Names(names) if names.iter().any(|t| t == module) => true,
            TargetModules::Names(_) => {
                self.target_modules.matches(module)
                    && self
                        .layers_to_transform
                        .as_ref()
                        .is_none_or(|layers| layers.contains(&layer))
            }
        }
    }

    /// The rank of module `module`: its `rank_pattern` entry, else `r`.
    pub fn rank_for(&self, module: &str) -> usize {
        first_match(&self.rank_pattern, module).unwrap_or(self.r)
    }

    /// The alpha of module `module`: its `alpha_pattern` entry, else `lora_alpha`.
    pub fn alpha_for(&self, module: &str) -> f64 {
        first_match(&self.alpha_pattern, module).unwrap_or(self.lora_alpha)
    }

    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA, for module `module`.
    pub fn scaling_for(&self, module: &str) -> f64 {
        let r = self.rank_for(module) as f64;
        let alpha = self.alpha_for(module);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Refuse target names that are not LLaMA projections of a base with `n_layer` blocks:
    /// embedding / lm_head targets, unknown names, a regex that matches nothing.
    pub fn check_targets(&self, path: &Path, n_layer: usize) -> Result<()> {
        let modules: Vec<String> = (0..n_layer)
            .flat_map(|layer| Target::ALL.map(|t| t.module_name(layer)))
            .collect();
        const NOT_LINEAR: [&str; 2] = ["model.embed_tokens", "lm_head"];
        match &self.target_modules {
            TargetModules::Names(names) => {
                for name in names {
                    if NOT_LINEAR.iter().any(|m| suffix_match(m, name))
                        || name.contains("embed_tokens")
                        || name.contains("lm_head")
                    {
                        return Err(refuse(path, embedding_refusal(name)));
                    }
                    if !modules.iter().any(|m| suffix_match(m, name)) {
                        return Err(refuse(
                            path,
                            format!(
                                "unknown target module `{name}` (a {n_layer}-layer LLaMA has {})",
                                Target::ALL.map(Target::hf_name).join(", ")
                            ),
                        ));
                    }
                }
            }
            TargetModules::Regex { pattern, .. } => {
                if let Some(m) = NOT_LINEAR.iter().find(|m| self.target_modules.matches(m)) {
                    return Err(refuse(
                        path,
                        format!(
                            "target_modules regex `{pattern}` matches `{m}`: {}",
                            embedding_refusal(m)
                        ),
                    ));
                }
                if !modules.iter().any(|m| self.target_modules.matches(m)) {
                    return Err(refuse(
                        path,
                        format!(
                            "target_modules regex `{pattern}` matches no module of a {n_layer}-layer LLaMA"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An [`Error::Adapter`] for `path`.
pub(super) fn refuse(path: &Path, reason: String) -> Error {
    Error::Adapter {
        path: PathBuf::from(path),
        reason,
    }
}

/// The refusal of LoRA on the embedding or the lm_head.
pub(super) fn embedding_refusal(what: &str) -> String {
    format!("LoRA on the embedding or lm_head (`{what}`) is not supported")
}

/// Refuse the PEFT features the engine does not run, naming each.
fn refuse_unsupported(obj: &Map<String, Value>) -> std::result::Result<(), String> {
    let truthy = |k: &str| match obj.get(k) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    match obj.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => return Err(format!("peft_type `{other}` is not supported (only LORA)")),
        None => return Err("`peft_type` is missing (expected \"LORA\")".to_owned()),
    }
    if truthy("use_dora") {
        return Err("DoRA is not supported (use_dora = true)".to_owned());
    }
    match obj.get("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(v) => return Err(format!("bias = {v} is not supported (only \"none\")")),
    }
    if truthy("lora_bias") {
        return Err("lora_bias = true is not supported (bias on lora_B)".to_owned());
    }
    if truthy("modules_to_save") {
        return Err(format!(
            "modules_to_save = {} is not supported (the engine runs LoRA deltas only)",
            obj["modules_to_save"]
        ));
    }
    if truthy("trainable_token_indices") {
        return Err(embedding_refusal("trainable_token_indices"));
    }
    if truthy("fan_in_fan_out") {
        return Err(
            "fan_in_fan_out = true is not supported (LLaMA projections are nn.Linear)".to_owned(),
        );
    }
    if truthy("target_parameters") {
        return Err("target_parameters (LoRA on nn.Parameter) is not supported".to_owned());
    }
    // PEFT's other LoRA variants change the forward pass (PEFT 0.21 `lora_variants`).
    for variant in [
        "arrow_config",
        "use_bdlora",
        "alora_invocation_tokens",
        "velora_config",
        "monteclora_config",
        "mica",
        "kasa_config",
        "use_qalora",
    ] {
        if truthy(variant) {
            return Err(format!(
                "the LoRA variant `{variant}` = {} is not supported (plain LoRA only)",
                obj[variant]
            ));
        }
    }
    if truthy("layer_replication") {
        return Err("layer_replication is not supported".to_owned());
    }
    Ok(())
}

/// The largest rank (`r`, `rank_pattern` values) an adapter may have.
pub const MAX_RANK: usize = 1 << 16;

/// The largest magnitude of `lora_alpha` / `alpha_pattern` values (the scaling is alpha / r).
pub const MAX_ALPHA: f64 = 1e6;

/// An alpha that is a finite number of magnitude at most [`MAX_ALPHA`].
fn sane_alpha(v: &Value) -> Option<f64> {
    v.as_f64().filter(|a| a.is_finite() && a.abs() <= MAX_ALPHA)
}

fn positive_int(v: Option<&Value>, key: &str) -> std::result::Result<Option<usize>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(format!("`{key}` must be a positive integer, got {v}")),
        },
    }
}

fn layer_index(v: Option<u64>) -> std::result::Result<usize, String> {
    v.map(|n| n as usize)
        .ok_or_else(|| "`layers_to_transform` must hold non-negative integers".to_owned())
}

fn parse_targets(v: &Value, key: &str) -> std::result::Result<TargetModules, String> {
    match v {
        Value::String(s) if s == ALL_LINEAR => Ok(TargetModules::Names(
            Target::ALL.map(|t| t.hf_name().to_owned()).to_vec(),
        )),
        Value::String(pattern) => Ok(TargetModules::Regex {
            regex: Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| format!("`{key}` regex `{pattern}` is invalid: {e}"))?,
            pattern: pattern.clone(),
        }),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("`{key}` must hold strings, got {item}"))
            })
            .collect::<std::result::Result<_, _>>()
            .map(TargetModules::Names),
        other => Err(format!(
            "`{key}` must be a list or a regex string, got {other}"
        )),
    }
}

fn patterns<T>(
    entries: Option<Ordered>,
    key: &str,
    value: impl Fn(&Value) -> Option<T>,
) -> std::result::Result<Vec<Pattern<T>>, String> {
    let Some(Ordered(entries)) = entries else {
        return Ok(Vec::new());
    };
    entries
        .into_iter()
        .map(|(k, v)| {
            let parsed = value(&v).ok_or_else(|| {
                let want = if key == "rank_pattern" {
                    format!("a positive integer of at most {MAX_RANK}")
                } else {
                    format!("a finite number of magnitude at most {MAX_ALPHA}")
                };
                format!("`{key}` entry `{k}` has bad value {v}: expected {want}")
            })?;
            let regex = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                .map_err(|e| format!("`{key}` key `{k}` is not a valid pattern: {e}"))?;
            Ok(Pattern {
                key: k,
                value: parsed,
                regex,
            })
        })
        .collect()
}

fn first_match<T: Copy>(patterns: &[Pattern<T>], module: &str) -> Option<T> {
    patterns
        .iter()
        .find(|p| p.regex.is_match(module).unwrap_or(false))
        .map(|p| p.value)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
