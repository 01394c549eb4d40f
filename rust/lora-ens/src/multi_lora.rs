//! The multi-adapter LoRA layer: the low-rank updates of M ensemble members on one shared
//! base weight. Members are stacked on the row axis (`(M * T, in)`, member-major), so the
//! base product `x W^T` is one GEMM that reads (and dequantizes) `W` once for all members;
//! each member then adds `s_m B_m (A_m x_m)`, two thin matmuls. Adapters are never merged
//! into the quantized weights.

use candle_core::{Device, Tensor};

use crate::config::Target;
use crate::lora::LoraAdapter;
use crate::{Error, Result};

/// One member's update of one projection: `A^T` `(in, r)` and `(s B)^T` `(r, out)`, stored
/// transposed so both products are plain row-major matmuls.
struct Pair {
    a_t: Tensor,
    b_t: Tensor,
}

/// LoRA updates of `n_members` members for every (layer, projection).
pub struct MultiLora {
    n_members: usize,
    /// `[layer][proj][member]`.
    pairs: Vec<[Vec<Option<Pair>>; 7]>,
    device: Device,
}

impl std::fmt::Debug for MultiLora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiLora")
            .field("n_members", &self.n_members)
            .field("first_layer", &self.first_layer())
            .finish()
    }
}

impl MultiLora {
    /// No updates yet, for `n_members` members of a model with `n_layer` blocks.
    pub fn new(n_layer: usize, n_members: usize, device: &Device) -> Self {
        let empty = || std::array::from_fn(|_| (0..n_members).map(|_| None).collect());
        Self {
            n_members,
            pairs: (0..n_layer).map(|_| empty()).collect(),
            device: device.clone(),
        }
    }

    /// Set member `member`'s update of (`layer`, `proj`): `lora_a` is `(r, in)`, `lora_b` is
    /// `(out, r)` in the base weight's row order, `scaling` multiplies `B A`.
    #[allow(clippy::too_many_arguments)] // mirrors PEFT's fields one to one
    pub fn insert(
        &mut self,
        member: usize,
        layer: usize,
        proj: Target,
        lora_a: &[f32],
        lora_b: &[f32],
        (r, fan_in, fan_out): (usize, usize, usize),
        scaling: f32,
    ) -> Result<()> {
        if member >= self.n_members || layer >= self.pairs.len() {
            return Err(Error::Input(format!(
                "LoRA update for member {member}, layer {layer}: out of range ({} members, {} layers)",
                self.n_members,
                self.pairs.len()
            )));
        }
        if lora_a.len() != r * fan_in || lora_b.len() != fan_out * r {
            return Err(Error::Input(format!(
                "LoRA update for member {member}, layer {layer}, {proj:?}: {} / {} values for rank {r}, in {fan_in}, out {fan_out}",
                lora_a.len(),
                lora_b.len()
            )));
        }
        let a = Tensor::from_slice(lora_a, (r, fan_in), &self.device)?;
        let b = (Tensor::from_slice(lora_b, (fan_out, r), &self.device)? * f64::from(scaling))?;
        self.pairs[layer][proj as usize][member] = Some(Pair {
            a_t: a.t()?.contiguous()?,
            b_t: b.t()?.contiguous()?,
        });
        Ok(())
    }

    /// The updates of loaded PEFT adapters, one member each (`lora_B` rows of q/k are
    /// already in the GGUF order).
    pub fn from_adapters(
        adapters: &[&LoraAdapter],
        n_layer: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut lora = Self::new(n_layer, adapters.len(), device);
        for (m, adapter) in adapters.iter().enumerate() {
            for (&(layer, target), module) in &adapter.modules {
                lora.insert(
                    m,
                    layer,
                    target,
                    &module.lora_a,
                    &module.lora_b,
                    (module.r, module.in_dim, module.out_dim),
                    module.scaling,
                )?;
            }
        }
        Ok(lora)
    }

    /// Number of members.
    pub fn n_members(&self) -> usize {
        self.n_members
    }

    /// The first layer any member adapts (the number of layers when none does): layers
    /// before it are the trunk that all members share.
    pub fn first_layer(&self) -> usize {
        self.pairs
            .iter()
            .position(|layer| layer.iter().flatten().any(Option::is_some))
            .unwrap_or(self.pairs.len())
    }

    /// `y += s_m B_m A_m x` for each member's rows. `x` is `(M * T, in)`, `y` is `(M * T,
    /// out)`, both member-major.
    pub fn apply(&self, layer: usize, proj: Target, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let Some(members) = self.pairs.get(layer).map(|l| &l[proj as usize]) else {
            return Ok(y);
        };
        if members.iter().all(Option::is_none) {
            return Ok(y);
        }
        let rows = x.dims()[0] / self.n_members;
        let mut parts = Vec::with_capacity(self.n_members);
        for (m, pair) in members.iter().enumerate() {
            let y_m = y.narrow(0, m * rows, rows)?;
            parts.push(match pair {
                Some(p) => {
                    let x_m = x.narrow(0, m * rows, rows)?;
                    (y_m + x_m.matmul(&p.a_t)?.matmul(&p.b_t)?)? // (T, r) -> (T, out)
                }
                None => y_m,
            });
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

#[cfg(test)]
mod tests;
