//! The LLaMA-family decoder (LLaMA-2/3.x, Mistral, SmolLM2, Qwen2/2.5, Qwen3: GQA, SwiGLU,
//! RMSNorm, RoPE) read from a GGUF file, with a batched forward pass over ragged prompts and
//! a KV cache. What differs between the families is small and lives in [`Architecture`](crate::Architecture):
//! Q/K/V biases (Qwen2), per-head Q/K RMSNorm (Qwen3), the rotation convention.
//!
//! RoPE convention: for `llama` files, llama.cpp's converter permutes the rows of Q and K so
//! that rotating *adjacent* pairs (candle's `rope_i`) on the GGUF weights equals transformers'
//! half-split rotation on the original rows. We keep the GGUF order and use `rope_i`; LoRA
//! `lora_B` rows of q/k are permuted the same way before they are added. Qwen files keep the
//! HF row order and rotate the halves of each head (candle's `rope`).

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::{rope as rope_halves, rope_i};
use rayon::prelude::*;

use crate::config::{LlamaConfig, RopeScaling, Target};
use crate::gguf::GgufFile;
use crate::linear::{QWeight, load_vector};
use crate::lora::LoraAdapter;
use crate::multi_lora::MultiLora;
use crate::{Error, Result};

/// One decoder block's weights.
struct Block {
    attn_norm: Tensor,
    attn_q: QWeight,
    attn_k: QWeight,
    attn_v: QWeight,
    /// Q, K, V biases (Qwen2): `(n_head * head_dim,)`, `(n_kv * head_dim,)` twice.
    qkv_bias: Option<[Tensor; 3]>,
    /// Per-head RMSNorm weights of queries and keys (Qwen3): `(head_dim,)` each.
    qk_norm: Option<[Tensor; 2]>,
    attn_output: QWeight,
    ffn_norm: Tensor,
    ffn_gate: QWeight,
    ffn_up: QWeight,
    ffn_down: QWeight,
}

impl Block {
    fn load(gguf: &mut GgufFile, i: usize, c: &LlamaConfig, dev: &Device) -> Result<Self> {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        let (h, q, kv) = (c.hidden, c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let arch = c.architecture;
        let qkv_bias = if arch.qkv_bias() {
            let mut b = |s: &str, len| load_vector(gguf, &format!("blk.{i}.{s}.bias"), len, dev);
            Some([b("attn_q", q)?, b("attn_k", kv)?, b("attn_v", kv)?])
        } else {
            None
        };
        let qk_norm = if arch.qk_norm() {
            Some([
                load_vector(gguf, &n("attn_q_norm"), c.head_dim, dev)?,
                load_vector(gguf, &n("attn_k_norm"), c.head_dim, dev)?,
            ])
        } else {
            None
        };
        Ok(Self {
            attn_norm: load_vector(gguf, &n("attn_norm"), h, dev)?,
            attn_q: QWeight::load(gguf, &n("attn_q"), (q, h), dev)?,
            attn_k: QWeight::load(gguf, &n("attn_k"), (kv, h), dev)?,
            attn_v: QWeight::load(gguf, &n("attn_v"), (kv, h), dev)?,
            qkv_bias,
            qk_norm,
            attn_output: QWeight::load(gguf, &n("attn_output"), (h, q), dev)?,
            ffn_norm: load_vector(gguf, &n("ffn_norm"), h, dev)?,
            ffn_gate: QWeight::load(gguf, &n("ffn_gate"), (c.ffn, h), dev)?,
            ffn_up: QWeight::load(gguf, &n("ffn_up"), (c.ffn, h), dev)?,
            ffn_down: QWeight::load(gguf, &n("ffn_down"), (h, c.ffn), dev)?,
        })
    }
}

/// Keys and values of one sequence, per layer: `(n_kv_head, len, head_dim)` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[1])
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The layout of one copy of a packed batch of ragged sequences.
struct Batch {
    lens: Vec<usize>,
    /// Row of each sequence's first token in the packed `(T, hidden)` activations.
    offsets: Vec<usize>,
    masks: Vec<Option<Tensor>>,
    /// RoPE `(cos, sin)` of each sequence's new positions: `(len, head_dim / 2)` each.
    rope: Vec<(Tensor, Tensor)>,
    /// `T`: tokens in one copy.
    total: usize,
}

/// Which logits a forward pass returns for the last position of each sequence.
#[derive(Debug, Clone, Copy)]
pub enum Logits<'a> {
    /// Only these vocabulary entries (K rows of the lm_head): `(N, K)`.
    Tokens(&'a [u32]),
    /// The whole vocabulary: `(N, vocab_size)`.
    Full,
}

/// A LLaMA-family model loaded from GGUF, weights kept quantized.
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    token_embd: QWeight,
    /// `None` when the embeddings are tied.
    output: Option<QWeight>,
    output_norm: Tensor,
    blocks: Vec<Block>,
    /// RoPE frequencies `(1, head_dim / 2)`, rescaling included; the angle tables are built
    /// per call for the positions it needs (no table sized by the context length).
    inv_freq: Tensor,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .finish()
    }
}

impl Llama {
    /// Open the GGUF file at `path` and load every tensor onto `device`.
    ///
    /// Errors name the file and what is wrong: [`Error::Io`] when it cannot be read,
    /// [`Error::InvalidGguf`] for a file that is not GGUF, [`Error::UnsupportedModel`] for
    /// another architecture, [`Error::Metadata`] / [`Error::Tensor`] for missing or
    /// mis-shaped entries.
    pub fn open(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        Self::load(&mut gguf, device)
    }

    /// Load every tensor of an open LLaMA-family GGUF onto `device`.
    pub(crate) fn load(gguf: &mut GgufFile, device: &Device) -> Result<Self> {
        let c = LlamaConfig::from_gguf(gguf)?;
        let tokens = gguf
            .optional("tokenizer.ggml.tokens", GgufFile::strings)?
            .map_or(0, |t| t.len());
        if tokens > c.vocab_size {
            return Err(Error::Metadata {
                path: gguf.path().to_path_buf(),
                key: "tokenizer.ggml.tokens".to_owned(),
                reason: format!(
                    "{tokens} tokens but the embedding has {} rows: ids past the rows \
                     would have no embedding",
                    c.vocab_size
                ),
            });
        }
        let token_embd =
            QWeight::load(gguf, "token_embd.weight", (c.vocab_size, c.hidden), device)?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(QWeight::load(
                gguf,
                "output.weight",
                (c.vocab_size, c.hidden),
                device,
            )?)
        };
        let output_norm = load_vector(gguf, "output_norm.weight", c.hidden, device)?;
        let blocks = (0..c.n_layer)
            .map(|i| Block::load(gguf, i, &c, device))
            .collect::<Result<Vec<_>>>()?;
        let inv_freq = Tensor::from_vec(rope_frequencies(gguf, &c)?, (1, c.head_dim / 2), device)?;
        Ok(Self {
            inv_freq,
            config: c,
            device: device.clone(),
            token_embd,
            output,
            output_norm,
            blocks,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes held by the weights (quantized), for memory reports.
    pub fn weight_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                [
                    &b.attn_q,
                    &b.attn_k,
                    &b.attn_v,
                    &b.attn_output,
                    &b.ffn_gate,
                    &b.ffn_up,
                    &b.ffn_down,
                ]
                .iter()
                .map(|w| w.storage_bytes())
                .sum::<usize>()
            })
            .sum();
        blocks
            + self.token_embd.storage_bytes()
            + self.output.as_ref().map_or(0, QWeight::storage_bytes)
    }

    /// Run `seqs` (token ids; ragged) through the model, appending to `caches` (one per
    /// sequence, possibly empty: positions continue from each cache's length), and return the
    /// requested logits of each sequence's last new position: `(N, K)` or `(N, vocab)`.
    pub fn forward(
        &self,
        seqs: &[&[u32]],
        caches: &mut [KvCache],
        logits: Logits<'_>,
    ) -> Result<Tensor> {
        Ok(self
            .forward_members(seqs, None, caches, logits)?
            .squeeze(0)?)
    }

    /// The ensemble forward pass: `seqs` run through the base model once per member of
    /// `lora` (the base alone when `None`). Layers before the first adapted one are the shared
    /// trunk: they run once, and their keys / values go into every member's cache. From that
    /// layer on, the members' rows are stacked (`(M * T, hidden)`, member-major), so each
    /// base weight is read once per layer for all members.
    ///
    /// `caches` holds one cache per (member, sequence), member-major (`M * N` of them).
    /// Returns `(M, N, K)` (or `(M, N, vocab)`) logits of each sequence's last new position.
    pub(crate) fn forward_members(
        &self,
        seqs: &[&[u32]],
        lora: Option<&MultiLora>,
        caches: &mut [KvCache],
        logits: Logits<'_>,
    ) -> Result<Tensor> {
        let n = seqs.len();
        let (x, batch, copies, n_members) = self.run_blocks(seqs, lora, caches)?;
        // Only the last position of each (member, sequence) reaches the lm_head.
        let mut last = Vec::with_capacity(n_members * n);
        for m in 0..n_members {
            let base = if copies == 1 { 0 } else { m * batch.total };
            for i in 0..n {
                last.push((base + batch.offsets[i] + batch.lens[i] - 1) as u32);
            }
        }
        let last = Tensor::from_vec(last, n_members * n, &self.device)?;
        let h = rms_norm(
            &x.index_select(&last, 0)?,
            &self.output_norm,
            self.config.rms_eps as f32,
        )?; // (M * N, hidden)
        let head = self.head();
        let out = match logits {
            Logits::Tokens(tokens) => {
                let rows = head.rows(tokens, &self.device)?; // (K, hidden)
                h.matmul(&rows.t()?)?
            }
            Logits::Full => head.matmul_t(&h)?,
        };
        let width = out.dims()[1];
        Ok(out.reshape((n_members, n, width))?)
    }

    /// Teacher-forced log-probabilities: like [`Llama::forward_members`], but for every new
    /// position `t` of every sequence returns `log p(targets[i][t] | seq[..=t])` under each
    /// member, flat `(M, T)` member-major with the sequences packed in order
    /// (`T = sum of lengths`). `targets[i]` has the length of `seqs[i]` (usually the sequence
    /// shifted by one). The full vocabulary is normalized, a chunk at a time.
    pub(crate) fn forward_members_logprobs(
        &self,
        seqs: &[&[u32]],
        targets: &[&[u32]],
        lora: Option<&MultiLora>,
        caches: &mut [KvCache],
    ) -> Result<Vec<f32>> {
        if targets.len() != seqs.len() || seqs.iter().zip(targets).any(|(s, t)| s.len() != t.len())
        {
            return Err(Error::Input(
                "targets must have one token per input position".to_owned(),
            ));
        }
        let (x, batch, copies, n_members) = self.run_blocks(seqs, lora, caches)?;
        let h = rms_norm(&x, &self.output_norm, self.config.rms_eps as f32)?; // (C * T, hidden)
        let flat: Vec<u32> = targets.iter().flat_map(|t| t.iter().copied()).collect();
        let all: Vec<u32> = (0..copies).flat_map(|_| flat.iter().copied()).collect();
        let lp = self.head().log_softmax_at(&h, &all)?; // (C * T,)
        // A trunk-only pass (no member adapts any layer) is the same for every member.
        debug_assert_eq!(lp.len(), copies * batch.total);
        Ok(if copies == n_members {
            lp
        } else {
            lp.repeat(n_members)
        })
    }

    /// Last-position logits of every prompt under every member: the base model with each of
    /// `adapters`' LoRA updates (the base alone, as one member, when `adapters` is empty),
    /// all members in one pass over the shared base. Prompts run `batch_size` at a time.
    ///
    /// Returns the logits flat and row-major with shape `(N, M, K)`: N prompts, M members
    /// (`max(1, adapters.len())`), K = the number of `Logits::Tokens` ids or `vocab_size`.
    /// Errors: [`Error::Input`] for `batch_size` 0 or a prompt the model cannot run (empty,
    /// longer than the context, ids out of the vocabulary).
    pub fn member_logits<P: AsRef<[u32]>>(
        &self,
        prompts: &[P],
        adapters: &[&LoraAdapter],
        logits: Logits<'_>,
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        if batch_size == 0 {
            return Err(Error::Input("batch_size must be at least 1".to_owned()));
        }
        let lora = if adapters.is_empty() {
            None
        } else {
            Some(MultiLora::from_adapters(
                adapters,
                self.config.n_layer,
                &self.device,
            )?)
        };
        let n_members = adapters.len().max(1);
        let mut flat = Vec::new();
        for chunk in prompts.chunks(batch_size) {
            let seqs: Vec<&[u32]> = chunk.iter().map(AsRef::as_ref).collect();
            let mut caches = vec![KvCache::default(); seqs.len() * n_members];
            let out = self
                .forward_members(&seqs, lora.as_ref(), &mut caches, logits)? // (M, B, K)
                .transpose(0, 1)? // (B, M, K)
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            flat.extend(out);
        }
        Ok(flat)
    }

    /// The lm_head: `output.weight`, or the token embeddings when they are tied.
    fn head(&self) -> &QWeight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Embeddings and every decoder block for `seqs` (see [`Llama::forward_members`]).
    /// Returns the final hidden states `(C * T, hidden)` (before the output norm), the batch
    /// layout, `C` (copies of the batch in the rows: 1 when nothing is adapted, else M) and M.
    fn run_blocks(
        &self,
        seqs: &[&[u32]],
        lora: Option<&MultiLora>,
        caches: &mut [KvCache],
    ) -> Result<(Tensor, Batch, usize, usize)> {
        let c = &self.config;
        let n = seqs.len();
        let n_members = lora.map_or(1, MultiLora::n_members);
        if n == 0 || n_members == 0 {
            return Err(Error::Input(
                "no sequences (or no members) to run".to_owned(),
            ));
        }
        if caches.len() != n * n_members {
            return Err(Error::Input(format!(
                "{n} sequences x {n_members} members need {} caches, got {}",
                n * n_members,
                caches.len()
            )));
        }
        for (i, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::Input(format!("sequence {i} is empty")));
            }
            let start = caches[i].len();
            if (1..n_members).any(|m| caches[m * n + i].len() != start) {
                return Err(Error::Input(format!(
                    "sequence {i}: the members' caches hold different lengths"
                )));
            }
            let end = start + s.len();
            if end > c.context_length {
                return Err(Error::Input(format!(
                    "sequence {i} needs {end} positions, more than the model's context length {}",
                    c.context_length
                )));
            }
        }
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let total = ids.len();
        let mut offsets = Vec::with_capacity(n);
        let mut at = 0;
        for s in seqs {
            offsets.push(at);
            at += s.len();
        }
        let starts: Vec<usize> = caches[..n].iter().map(KvCache::len).collect();
        let rope = seqs
            .iter()
            .zip(&starts)
            .map(|(s, &start)| self.rope_tables(start, s.len()))
            .collect::<Result<Vec<_>>>()?;
        let masks = seqs
            .iter()
            .zip(&starts)
            .map(|(s, &start)| self.causal_mask(s.len(), start))
            .collect::<Result<Vec<_>>>()?;
        let batch = Batch {
            lens: seqs.iter().map(|s| s.len()).collect(),
            offsets,
            masks,
            rope,
            total,
        };
        let trunk = lora.map_or(c.n_layer, MultiLora::first_layer);
        let mut x = self.token_embd.rows(&ids, &self.device)?; // (T, hidden)
        let mut copies = 1;
        for (li, block) in self.blocks.iter().enumerate() {
            if li == trunk && n_members > 1 {
                x = Tensor::cat(&vec![&x; n_members], 0)?; // (M * T, hidden)
                copies = n_members;
            }
            let layer_lora = lora.filter(|_| li >= trunk);
            x = self.block_forward(
                li,
                block,
                &x,
                &batch,
                copies,
                &mut caches[..copies * n],
                layer_lora,
            )?;
            if copies == 1 && n_members > 1 {
                // A trunk layer: every member sees the same keys and values.
                let (first, rest) = caches.split_at_mut(n);
                for (j, cache) in rest.iter_mut().enumerate() {
                    let kv = first[j % n].layers[li].clone();
                    if li < cache.layers.len() {
                        cache.layers[li] = kv;
                    } else {
                        cache.layers.push(kv);
                    }
                }
            }
        }
        Ok((x, batch, copies, n_members))
    }

    /// One decoder block over `copies` stacked copies of the batch (rows member-major), with
    /// the members' LoRA updates when `lora` is given.
    #[allow(clippy::too_many_arguments)] // internal; the pieces are the block's whole state
    fn block_forward(
        &self,
        li: usize,
        block: &Block,
        x: &Tensor,
        batch: &Batch,
        copies: usize,
        caches: &mut [KvCache],
        lora: Option<&MultiLora>,
    ) -> Result<Tensor> {
        let eps = self.config.rms_eps as f32;
        let linear = |w: &QWeight, proj: Target, h: &Tensor| -> Result<Tensor> {
            let y = w.matmul_t(h)?;
            match lora {
                Some(l) => l.apply(li, proj, h, y),
                None => Ok(y),
            }
        };
        let h = rms_norm(x, &block.attn_norm, eps)?;
        let mut q = linear(&block.attn_q, Target::Q, &h)?; // (C * T, n_head * head_dim)
        let mut k = linear(&block.attn_k, Target::K, &h)?; // (C * T, n_kv_head * head_dim)
        let mut v = linear(&block.attn_v, Target::V, &h)?;
        if let Some([bq, bk, bv]) = &block.qkv_bias {
            // The bias belongs to the base projection: PEFT adds the LoRA update to
            // `base(x) = x W^T + b`, so the order does not matter.
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        // Each (copy, sequence) attends on its own: one task each, spread over the cores.
        let n = batch.lens.len();
        let outs = caches
            .par_iter_mut()
            .enumerate()
            .map(|(slot, cache)| {
                let (copy, i) = (slot / n, slot % n);
                let (offset, len) = (copy * batch.total + batch.offsets[i], batch.lens[i]);
                self.attend(
                    &q.narrow(0, offset, len)?,
                    &k.narrow(0, offset, len)?,
                    &v.narrow(0, offset, len)?,
                    &batch.rope[i],
                    block.qk_norm.as_ref(),
                    batch.masks[i].as_ref(),
                    cache,
                    li,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        debug_assert_eq!(outs.len(), copies * n);
        let attn = Tensor::cat(&outs, 0)?; // (C * T, hidden)
        let x = (x + linear(&block.attn_output, Target::O, &attn)?)?;
        let h = rms_norm(&x, &block.ffn_norm, eps)?;
        let gate = linear(&block.ffn_gate, Target::Gate, &h)?.silu()?;
        let up = linear(&block.ffn_up, Target::Up, &h)?;
        Ok((&x + linear(&block.ffn_down, Target::Down, &(gate * up)?)?)?)
    }

    /// Causal attention of one sequence's `len` new positions over the cached ones plus
    /// themselves; updates the cache. Inputs are `(len, heads * head_dim)`; `rope` holds the
    /// new positions' `(cos, sin)`.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &(Tensor, Tensor),
        qk_norm: Option<&[Tensor; 2]>,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (len, hd) = (q.dims()[0], c.head_dim);
        let groups = c.n_head / c.n_kv_head;
        let (cos, sin) = rope;
        let eps = c.rms_eps as f32;
        let heads = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((1, len, n, hd))?.transpose(1, 2)?.contiguous() // (1, n, len, hd)
        };
        // Qwen3 normalizes each head's query and key (over head_dim) before rotating them.
        let (mut q, mut k) = (heads(q, c.n_head)?, heads(k, c.n_kv_head)?);
        if let Some([qn, kn]) = qk_norm {
            q = rms_norm(&q, qn, eps)?;
            k = rms_norm(&k, kn, eps)?;
        }
        let rotate: fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> =
            if c.architecture.interleaved_rope() {
                rope_i
            } else {
                rope_halves
            };
        let q = rotate(&q, cos, sin)?;
        let k = rotate(&k, cos, sin)?.squeeze(0)?; // (n_kv, len, hd)
        let v = heads(v, c.n_kv_head)?.squeeze(0)?;
        let (k, v) = if layer < cache.layers.len() {
            let (pk, pv) = &cache.layers[layer];
            let k = Tensor::cat(&[pk, &k], 1)?;
            let v = Tensor::cat(&[pv, &v], 1)?;
            cache.layers[layer] = (k.clone(), v.clone());
            (k, v)
        } else {
            cache.layers.push((k.clone(), v.clone()));
            (k, v)
        };
        // Query heads h*groups..(h+1)*groups share KV head h (transformers' repeat_kv), so
        // folding the group into the row axis gives one batched matmul per KV head.
        let q = q.reshape((c.n_kv_head, groups * len, hd))?; // (n_kv, groups*len, hd)
        let scale = 1.0 / (hd as f64).sqrt();
        let mut att = (q.matmul(&k.t()?)? * scale)?; // (n_kv, groups*len, total)
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = softmax_last_dim(&att)?;
        let out = att.matmul(&v)?; // (n_kv, groups*len, hd)
        let out = out.reshape((c.n_head, len, hd))?.transpose(0, 1)?; // (len, n_head, hd)
        Ok(out.reshape((len, c.n_head * hd))?)
    }

    /// RoPE `(cos, sin)` for positions `start..start + len`: `(len, head_dim / 2)` each, the
    /// angles `position * inv_freq` in f32 as transformers computes them.
    fn rope_tables(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let positions: Vec<f32> = (start..start + len).map(|p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (len, 1), &self.device)?;
        let angles = positions.broadcast_mul(&self.inv_freq)?; // (len, half)
        Ok((angles.cos()?, angles.sin()?))
    }

    /// `(groups * len, start + len)` additive mask: row `r` is query `start + r % len`,
    /// which may see keys `0..=start + r % len`. `None` for a single new position.
    fn causal_mask(&self, len: usize, start: usize) -> Result<Option<Tensor>> {
        if len == 1 {
            return Ok(None);
        }
        let groups = self.config.n_head / self.config.n_kv_head;
        let total = start + len;
        let mut m = vec![0f32; groups * len * total];
        for r in 0..groups * len {
            let q = start + r % len;
            for key in (q + 1)..total {
                m[r * total + key] = f32::NEG_INFINITY;
            }
        }
        Ok(Some(Tensor::from_vec(
            m,
            (groups * len, total),
            &self.device,
        )?))
    }
}

/// RoPE frequencies `theta_i = base^(-2i / head_dim)` for `i < head_dim / 2` (transformers'
/// formula, in f32), rescaled as the config says: divided by `rope_freqs.weight` (llama3
/// scaling, as llama.cpp applies it) or by the linear factor.
fn rope_frequencies(gguf: &mut GgufFile, c: &LlamaConfig) -> Result<Vec<f32>> {
    let half = c.head_dim / 2;
    let mut inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (c.rope_base as f32).powf((2 * i) as f32 / c.head_dim as f32))
        .collect();
    match &c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            for f in &mut inv_freq {
                *f /= *factor as f32;
            }
        }
        RopeScaling::FreqFactors => {
            let factors =
                load_vector(gguf, "rope_freqs.weight", half, &Device::Cpu)?.to_vec1::<f32>()?;
            if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                return Err(Error::Tensor {
                    path: gguf.path().to_path_buf(),
                    tensor: "rope_freqs.weight".to_owned(),
                    reason: format!("frequency factor {bad} (must be finite and positive)"),
                });
            }
            for (f, d) in inv_freq.iter_mut().zip(&factors) {
                *f /= d;
            }
        }
    }
    Ok(inv_freq)
}
