//! `adapter_model.safetensors` of a PEFT LoRA adapter: tensor names parsed into
//! (layer, projection, A|B), values converted to f32 (from F32, F16 or BF16) and checked
//! finite, and llama.cpp's Q/K row permutation (its converter reorders Q/K rows for the
//! interleaved RoPE, so `lora_B` rows must be reordered the same way).

use safetensors::{Dtype, tensor::TensorView};

use super::config::embedding_refusal;
use crate::config::Target;
use crate::{Error, Result};

/// Which factor of a LoRA pair a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// `lora_A`, `(r, in)`.
    A,
    /// `lora_B`, `(out, r)`.
    B,
}

impl Side {
    pub(super) fn name(self) -> &'static str {
        match self {
            Side::A => "lora_A",
            Side::B => "lora_B",
        }
    }
}

/// A parsed tensor name: `[base_model.model.]model.layers.{layer}.{block}.{proj}.lora_{A|B}[.{adapter}].weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Key {
    pub layer: usize,
    pub target: Target,
    pub side: Side,
}

/// Parse a PEFT tensor name, or say why the engine cannot run it.
pub(super) fn parse_key(key: &str) -> std::result::Result<Key, String> {
    let name = key.strip_prefix("base_model.model.").unwrap_or(key);
    if name.contains("lora_embedding_A")
        || name.contains("lora_embedding_B")
        || name.contains("embed_tokens")
        || name.contains("lm_head")
        || name.contains("trainable_tokens")
    {
        return Err(format!("tensor `{key}`: {}", embedding_refusal(name)));
    }
    if name.contains("lora_magnitude_vector") {
        return Err(format!("tensor `{key}`: DoRA is not supported"));
    }
    if name.contains("modules_to_save") {
        return Err(format!("tensor `{key}`: modules_to_save is not supported"));
    }
    let split = ["lora_A", "lora_B"].iter().find_map(|side| {
        let marker = format!(".{side}.");
        name.find(&marker)
            .map(|at| (&name[..at], *side, &name[at + marker.len()..]))
    });
    let Some((module, side, rest)) = split else {
        return Err(if name.ends_with(".bias") {
            format!("tensor `{key}`: bias is not supported")
        } else {
            format!(
                "tensor `{key}` is not a LoRA weight (expected ...lora_A.weight / ...lora_B.weight)"
            )
        });
    };
    // `weight`, or `{adapter_name}.weight` as PEFT writes before it strips the name.
    let parts: Vec<&str> = rest.split('.').collect();
    match parts.as_slice() {
        ["weight"] | [_, "weight"] => {}
        [.., "bias"] => return Err(format!("tensor `{key}`: lora_bias is not supported")),
        _ => return Err(format!("tensor `{key}` is not a LoRA weight")),
    }
    let not_llama = || {
        format!(
            "tensor `{key}` adapts `{module}`, which is not a LLaMA projection \
             (model.layers.N.self_attn.{{q,k,v,o}}_proj or model.layers.N.mlp.{{gate,up,down}}_proj)"
        )
    };
    let segs: Vec<&str> = module.split('.').collect();
    let ["model", "layers", layer, block, proj] = segs.as_slice() else {
        return Err(not_llama());
    };
    let target = Target::from_name(proj)
        .filter(|t| t.block() == *block)
        .ok_or_else(not_llama)?;
    let layer = layer.parse().map_err(|_| not_llama())?;
    Ok(Key {
        layer,
        target,
        side: if side == "lora_A" { Side::A } else { Side::B },
    })
}

/// A tensor's values as f32, refusing other dtypes and non-finite values.
pub(super) fn to_f32(key: &str, view: &TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "tensor `{key}` has dtype {other:?} (supported: F32, F16, BF16)"
            ));
        }
    };
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!(
            "tensor `{key}` holds a non-finite value ({v} at flat index {i})"
        ));
    }
    Ok(values)
}

/// Permute the rows of a row-major `(n_head * head_dim, cols)` matrix the way llama.cpp's
/// HF-to-GGUF converter permutes q_proj / k_proj (`n_head` = KV heads for k_proj):
/// `w.reshape(n_head, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(rows, cols)`, i.e. within
/// each head the two rotary halves are interleaved. Used on `lora_B` so that `B A` is
/// permuted exactly like the GGUF weight it is added to.
pub fn permute_qk_rows(w: &[f32], cols: usize, n_head: usize) -> Result<Vec<f32>> {
    let rows = w.len().checked_div(cols).unwrap_or(0);
    if n_head == 0 || rows * cols != w.len() || rows % (2 * n_head) != 0 {
        return Err(Error::Input(format!(
            "permute_qk_rows: {} values are not ({} heads x even head_dim, {cols})",
            w.len(),
            n_head
        )));
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(w.len());
    for row in 0..rows {
        let (head, within) = (row / head_dim, row % head_dim);
        let src = head * head_dim + (within % 2) * half + within / 2;
        out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_every_peft_spelling() {
        let want = Key {
            layer: 3,
            target: Target::Q,
            side: Side::A,
        };
        for k in [
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight",
            "model.layers.3.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight",
        ] {
            assert_eq!(parse_key(k).unwrap(), want, "{k}");
        }
        let down =
            parse_key("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight").unwrap();
        assert_eq!(
            (down.layer, down.target, down.side),
            (12, Target::Down, Side::B)
        );
    }

    #[test]
    fn refused_keys_say_why() {
        for (k, want) in [
            (
                "base_model.model.model.embed_tokens.lora_embedding_A",
                "embedding or lm_head",
            ),
            (
                "base_model.model.lm_head.lora_A.weight",
                "embedding or lm_head",
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                "DoRA",
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
                "lora_bias",
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.bias",
                "bias is not supported",
            ),
            (
                "base_model.model.model.layers.0.self_attn.up_proj.lora_A.weight",
                "not a LLaMA projection",
            ),
            (
                "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
                "not a LLaMA projection",
            ),
        ] {
            let got = parse_key(k).unwrap_err();
            assert!(got.contains(want), "{k}: {got}");
        }
    }

    #[test]
    fn dtypes_convert_and_non_finite_is_refused() {
        let f16: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F16, vec![2], &f16).unwrap();
        assert_eq!(to_f32("t", &view).unwrap(), vec![1.5, -2.0]);
        let bf16: Vec<u8> = [0.25f32, 3.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::BF16, vec![2], &bf16).unwrap();
        assert_eq!(to_f32("t", &view).unwrap(), vec![0.25, 3.0]);
        let nan: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F32, vec![2], &nan).unwrap();
        assert!(
            to_f32("t", &view)
                .unwrap_err()
                .contains("non-finite value (NaN at flat index 1)")
        );
        let ints = [0u8; 8];
        let view = TensorView::new(Dtype::I32, vec![2], &ints).unwrap();
        assert!(to_f32("t", &view).unwrap_err().contains("dtype I32"));
    }

    /// Reference: the numpy reshape / swapaxes of llama.cpp's converter, spelled out.
    fn numpy_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        // w viewed as (n_head, 2, half, cols); out viewed as (n_head, half, 2, cols).
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for s in 0..2 {
                for j in 0..half {
                    for c in 0..cols {
                        let src = ((h * 2 + s) * half + j) * cols + c;
                        let dst = ((h * half + j) * 2 + s) * cols + c;
                        out[dst] = w[src];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn permutation_matches_the_converter_and_commutes_with_a() {
        let (n_head, head_dim, r, cols) = (3, 8, 2, 5);
        let rows = n_head * head_dim;
        let b: Vec<f32> = (0..rows * r).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<f32> = (0..r * cols).map(|i| (i as f32 * 0.91).cos()).collect();
        let pb = permute_qk_rows(&b, r, n_head).unwrap();
        assert_eq!(pb, numpy_permute(&b, rows, r, n_head));
        let matmul = |b: &[f32]| -> Vec<f32> {
            (0..rows)
                .flat_map(|i| (0..cols).map(move |j| (i, j)))
                .map(|(i, j)| (0..r).map(|k| b[i * r + k] * a[k * cols + j]).sum())
                .collect()
        };
        // perm(B) A == perm(B A): permuting B's rows is permuting the delta's rows.
        assert_eq!(
            matmul(&pb),
            permute_qk_rows(&matmul(&b), cols, n_head).unwrap()
        );
        assert!(permute_qk_rows(&b[..rows * r - 1], r, n_head).is_err());
        assert!(permute_qk_rows(&b, r, 5).is_err());
    }
}
