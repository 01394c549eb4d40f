//! Time the engine's batched forward pass on a GGUF model (the default one's path is what
//! `lora-ens-rs fetch-model` prints):
//! `cargo run --release -p lora-ens --example forward_speed -- MODEL [BATCH LEN]`.
//! Prints prompts per second for label-only scoring, the way `benches/` measures it.

use std::time::Instant;

use candle_core::Device;
use lora_ens::{KvCache, Llama, Logits};

fn main() -> lora_ens::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        return Err(lora_ens::Error::Input(
            "usage: forward_speed MODEL.gguf [BATCH LEN]".to_owned(),
        ));
    };
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(43);
    let model = Llama::open(&path, &Device::Cpu)?;
    let vocab = model.config().vocab_size as u32;
    // Ragged prompts around `len` tokens, deterministic ids.
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|i| {
            let l = len - 4 + i % 8;
            (0..l)
                .map(|j| ((i * 131 + j * 7919) as u32) % vocab)
                .collect()
        })
        .collect();
    let seqs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let labels = [330u32, 389, 340, 422, 414];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let mut caches = vec![KvCache::default(); batch];
        let t = Instant::now();
        model.forward(&seqs, &mut caches, Logits::Tokens(&labels))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    println!(
        "batch {batch} x ~{len} tokens ({tokens} total): best {:.3} s, {:.2} prompts/s, {:.0} tokens/s",
        best,
        batch as f64 / best,
        tokens as f64 / best
    );
    Ok(())
}
