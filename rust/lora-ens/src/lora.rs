//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`) and ensemble
//! directories (`ensemble.json` + member adapters), loaded into an engine-ready form:
//! f32 `lora_A` `(r, in)` / `lora_B` `(out, r)` per (layer, projection), with `lora_B` rows
//! of q_proj / k_proj permuted into the GGUF order the base weights use (llama.cpp's converter
//! interleaves the rotary halves of Q/K rows; an unpermuted update would rotate wrongly). Everything
//! the engine does not run is refused with an [`Error::Adapter`] that names file and feature.

mod config;
mod manifest;
mod tensors;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

pub use config::{AdapterConfig, Pattern, TargetModules};
pub use manifest::{
    ALLOW_BASE_MISMATCH_ENV, ALLOW_OUTSIDE_MEMBERS_ENV, BaseIdentity, EnsembleManifest,
    KNOWN_TEMPLATES, MANIFEST_FILE, ManifestScoring, SOURCE_SHA256_KEY, load_adapters,
};

use crate::config::{LlamaConfig, Target};
use crate::{Error, Result};
use config::refuse;
use tensors::{Side, parse_key, permute_qk_rows, to_f32};

/// The adapter's configuration file inside a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights inside a PEFT adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// One adapted projection: `y += scaling * B (A x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// The rank: rows of `lora_a`, columns of `lora_b` (`rank_pattern`, else `r`).
    pub r: usize,
    /// Input features of the projection (columns of `lora_a`).
    pub in_dim: usize,
    /// Output features of the projection (rows of `lora_b`).
    pub out_dim: usize,
    /// `lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA), applied to `B A x`.
    pub scaling: f32,
    /// `(r, in)`, row-major.
    pub lora_a: Vec<f32>,
    /// `(out, r)`, row-major; rows in the GGUF (permuted) order for Q and K.
    pub lora_b: Vec<f32>,
}

impl LoraModule {
    /// `scaling * B A`, `(out, in)` row-major in GGUF row order (f64 accumulation).
    pub fn delta(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.out_dim * self.in_dim);
        for row in self.lora_b.chunks_exact(self.r) {
            out.extend((0..self.in_dim).map(|j| {
                let dot: f64 = row
                    .iter()
                    .enumerate()
                    .map(|(k, &b)| f64::from(b) * f64::from(self.lora_a[k * self.in_dim + j]))
                    .sum();
                (f64::from(self.scaling) * dot) as f32
            }));
        }
        out
    }
}

/// A PEFT LoRA adapter, validated against a base model and ready for the forward pass.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The directory's name (`m2` for `ens/m2`).
    pub name: String,
    /// The adapter directory.
    pub path: PathBuf,
    /// The validated `adapter_config.json`.
    pub config: AdapterConfig,
    /// The update of each adapted (layer, projection), in layer then GGUF order.
    pub modules: BTreeMap<(usize, Target), LoraModule>,
}

/// One module's tensors while the file is read: `(shape, values)` of A and B.
type Pending = [Option<(Vec<usize>, Vec<f32>)>; 2];

impl LoraAdapter {
    /// Load the PEFT adapter in directory `dir` for the base model `base`.
    ///
    /// A missing directory is an [`Error::Io`] (not found); every other problem (missing or
    /// malformed files, unsupported PEFT features, shapes of another model, non-finite
    /// values) is an [`Error::Adapter`] naming the file.
    pub fn load(dir: &Path, base: &LlamaConfig) -> Result<Self> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(refuse(
                dir,
                "not a directory (expected a PEFT adapter directory)".to_owned(),
            ));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config = AdapterConfig::from_file(&config_path)?;
        config.check_targets(&config_path, base.n_layer)?;

        let weights = dir.join(WEIGHTS_FILE);
        let bad = |reason: String| refuse(&weights, reason);
        let bytes = read_weights(&weights, max_weight_bytes(&config, base), &bad).map_err(|e| {
            if !crate::io::is_not_found(&e) {
                e
            } else if dir.join("adapter_model.bin").exists() {
                bad(
                    "file is missing; adapter_model.bin (pickle) is not supported: \
                     save with safe_serialization=True"
                        .to_owned(),
                )
            } else {
                bad("file is missing".to_owned())
            }
        })?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;

        let mut pending: BTreeMap<(usize, Target), Pending> = BTreeMap::new();
        let mut names = st.names();
        names.sort_unstable();
        for key in names {
            let k = parse_key(key).map_err(bad)?;
            let module = k.target.module_name(k.layer);
            if k.layer >= base.n_layer {
                return Err(bad(format!(
                    "tensor `{key}` is for layer {} but the base model has {} layers \
                     (trained for another model?)",
                    k.layer, base.n_layer
                )));
            }
            if !config.targets(&module, k.layer) {
                return Err(bad(format!(
                    "tensor `{key}` adapts `{module}`, which {CONFIG_FILE} does not target"
                )));
            }
            let view = st
                .tensor(key)
                .map_err(|e| bad(format!("tensor `{key}`: {e}")))?;
            let values = to_f32(key, &view).map_err(bad)?;
            let slot = &mut pending.entry((k.layer, k.target)).or_default()[k.side as usize];
            if slot.is_some() {
                return Err(bad(format!(
                    "two {} tensors for `{module}` (several adapters in one file?)",
                    k.side.name()
                )));
            }
            *slot = Some((view.shape().to_vec(), values));
        }

        let mut modules = BTreeMap::new();
        for layer in 0..base.n_layer {
            for target in Target::ALL {
                let module = target.module_name(layer);
                let entry = pending.remove(&(layer, target));
                if entry.is_none() && config.targets(&module, layer) {
                    return Err(bad(format!(
                        "no lora_A / lora_B for `{module}`, which {CONFIG_FILE} targets"
                    )));
                }
                let Some([a, b]) = entry else { continue };
                let m = build_module(&config, base, layer, target, a, b).map_err(bad)?;
                modules.insert((layer, target), m);
            }
        }
        // `m0` for `ens/m0`; `.` and `..` name the directory they resolve to.
        let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = file_name(dir)
            .or_else(|| file_name(&dir.canonicalize().ok()?))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            name,
            path: dir.to_path_buf(),
            config,
            modules,
        })
    }

    /// The update of (`layer`, `target`), if this adapter has one.
    pub fn module(&self, layer: usize, target: Target) -> Option<&LoraModule> {
        self.modules.get(&(layer, target))
    }

    /// The first layer this adapter changes (`None` if it has no modules): hidden states
    /// before it are the base model's.
    pub fn first_layer(&self) -> Option<usize> {
        self.modules.keys().next().map(|&(layer, _)| layer)
    }
}

/// The most bytes an adapter for `base` with `config` can take: every target of every layer
/// at the largest rank, in f64, plus the largest header.
fn max_weight_bytes(config: &AdapterConfig, base: &LlamaConfig) -> u64 {
    let rank = config
        .rank_pattern
        .iter()
        .map(|p| p.value)
        .fold(config.r, usize::max) as u64;
    let per_layer: u64 = Target::ALL
        .iter()
        .map(|t| {
            let (i, o) = t.dims(base);
            (i as u64).saturating_add(o as u64)
        })
        .fold(0u64, u64::saturating_add);
    (base.n_layer as u64)
        .saturating_mul(per_layer)
        .saturating_mul(rank)
        .saturating_mul(8)
        .saturating_add(8 + crate::io::MAX_SAFETENSORS_HEADER)
}

/// Read a safetensors file of at most `max_bytes`, after checking that its header length
/// (the first 8 bytes, little-endian) fits in the file and under the format's limit.
fn read_weights(path: &Path, max_bytes: u64, bad: &dyn Fn(String) -> Error) -> Result<Vec<u8>> {
    use std::io::Read;
    let size = crate::io::check_file(path, max_bytes, bad)?;
    let mut prefix = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if size < 8 || file.read_exact(&mut prefix).is_err() {
        return Err(bad(format!(
            "not a valid safetensors file: {size} bytes, shorter than the 8-byte header length"
        )));
    }
    let header = u64::from_le_bytes(prefix);
    if header > crate::io::MAX_SAFETENSORS_HEADER || header > size - 8 {
        return Err(bad(format!(
            "not a valid safetensors file: header length {header} does not fit in the \
             {size}-byte file (at most {} bytes)",
            crate::io::MAX_SAFETENSORS_HEADER
        )));
    }
    crate::io::read_file(path, max_bytes, bad)
}

/// Check one module's shapes against the base and the config, permute B for Q / K.
fn build_module(
    config: &AdapterConfig,
    base: &LlamaConfig,
    layer: usize,
    target: Target,
    a: Option<(Vec<usize>, Vec<f32>)>,
    b: Option<(Vec<usize>, Vec<f32>)>,
) -> std::result::Result<LoraModule, String> {
    let module = target.module_name(layer);
    let missing = |side: Side| format!("`{module}` has no {} tensor", side.name());
    let (a_shape, lora_a) = a.ok_or_else(|| missing(Side::A))?;
    let (b_shape, lora_b) = b.ok_or_else(|| missing(Side::B))?;
    let r = config.rank_for(&module);
    let (in_dim, out_dim) = target.dims(base);
    for (side, shape, want) in [
        (Side::A, &a_shape, [r, in_dim]),
        (Side::B, &b_shape, [out_dim, r]),
    ] {
        if shape.as_slice() != want {
            let rank_only = shape.len() == 2 && {
                let (fixed, ranked) = if side == Side::A { (1, 0) } else { (0, 1) };
                shape[fixed] == want[fixed] && shape[ranked] != r
            };
            let hint = if rank_only {
                format!("r = {r} in {CONFIG_FILE}")
            } else {
                "trained for another model?".to_owned()
            };
            return Err(format!(
                "{} of `{module}` is {shape:?}, expected {want:?} ({hint})",
                side.name()
            ));
        }
    }
    let lora_b = match target.permuted_heads(base) {
        Some(n_head) => permute_qk_rows(&lora_b, r, n_head).map_err(|e| e.to_string())?,
        None => lora_b,
    };
    Ok(LoraModule {
        r,
        in_dim,
        out_dim,
        scaling: config.scaling_for(&module) as f32,
        lora_a,
        lora_b,
    })
}
