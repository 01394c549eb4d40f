//! The multi-adapter forward pass: M members stacked on one base give the same logits as each
//! member run alone, and the shared trunk and the per-member KV caches change nothing.
//! (Parity of one member with PEFT is checked in `tests/test_peft_parity.py`.)

use candle_core::{Device, Tensor};

use super::MultiLora;
use crate::config::Target;
use crate::model::{KvCache, Llama, Logits};
use crate::test_support::{fixture, max_diff};

fn model() -> Llama {
    Llama::open(fixture("tiny-q8_0.gguf"), &Device::Cpu).unwrap()
}

/// Deterministic pseudo-random values in [-scale, scale].
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// One member's adapter spec: (layer, proj, rank).
type Spec = Vec<(usize, Target, usize)>;

fn dims(model: &Llama, proj: Target) -> (usize, usize) {
    let c = model.config();
    let kv = c.n_kv_head * c.head_dim;
    match proj {
        Target::Q | Target::O => (c.hidden, c.hidden),
        Target::K | Target::V => (c.hidden, kv),
        Target::Gate | Target::Up => (c.hidden, c.ffn),
        Target::Down => (c.ffn, c.hidden),
    }
}

fn build(model: &Llama, members: &[(u64, Spec)]) -> MultiLora {
    let mut lora = MultiLora::new(model.config().n_layer, members.len(), &Device::Cpu);
    for (m, (seed, spec)) in members.iter().enumerate() {
        for (j, &(layer, proj, r)) in spec.iter().enumerate() {
            let (fan_in, fan_out) = dims(model, proj);
            let a = values(seed * 100 + j as u64, r * fan_in, 0.3);
            let b = values(seed * 100 + j as u64 + 50, fan_out * r, 0.3);
            lora.insert(m, layer, proj, &a, &b, (r, fan_in, fan_out), 2.0 / r as f32)
                .unwrap();
        }
    }
    lora
}

fn prompts() -> Vec<Vec<u32>> {
    (0..5)
        .map(|i| {
            (0..(7 + 9 * i))
                .map(|j| ((i * 37 + j * 11) % 1000) as u32 + 3)
                .collect()
        })
        .collect()
}

fn run(model: &Llama, lora: Option<&MultiLora>, seqs: &[&[u32]]) -> Tensor {
    let m = lora.map_or(1, MultiLora::n_members);
    let mut caches = vec![KvCache::default(); m * seqs.len()];
    model
        .forward_members(seqs, lora, &mut caches, Logits::Full)
        .unwrap()
}

#[test]
fn stacked_members_equal_members_alone() {
    let model = model();
    let members: Vec<(u64, Spec)> = vec![
        (1, vec![(1, Target::Q, 4), (1, Target::V, 4)]),
        (
            2,
            vec![(1, Target::K, 2), (1, Target::O, 8), (1, Target::Down, 3)],
        ),
        (3, vec![(1, Target::Gate, 5), (1, Target::Up, 5)]),
        (4, vec![]), // a member with no update is the base model
    ];
    let prompts = prompts();
    let seqs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    // Adapters only in layer 1: layer 0 is the shared trunk.
    let lora = build(&model, &members);
    assert_eq!(lora.first_layer(), 1);
    let stacked = run(&model, Some(&lora), &seqs); // (M, N, vocab)
    let base = run(&model, None, &seqs).squeeze(0).unwrap();
    for (m, member) in members.iter().enumerate() {
        let alone = build(&model, std::slice::from_ref(member));
        let want = run(&model, Some(&alone), &seqs).squeeze(0).unwrap();
        let got = stacked.get(m).unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "member {m}: stacked vs alone max diff {diff}");
        let from_base = max_diff(&got, &base);
        if member.1.is_empty() {
            assert!(
                from_base < 1e-4,
                "an empty member differs from the base by {from_base}"
            );
        } else {
            assert!(
                from_base > 1e-2,
                "member {m}'s update changed nothing ({from_base})"
            );
        }
    }
    // Adapters from layer 0: no trunk, same per-member results.
    let early: Vec<(u64, Spec)> = vec![(5, vec![(0, Target::Q, 4)]), (6, vec![(1, Target::Up, 2)])];
    let lora = build(&model, &early);
    assert_eq!(lora.first_layer(), 0);
    let stacked = run(&model, Some(&lora), &seqs);
    for (m, member) in early.iter().enumerate() {
        let want = run(
            &model,
            Some(&build(&model, std::slice::from_ref(member))),
            &seqs,
        );
        let diff = max_diff(&stacked.get(m).unwrap(), &want.squeeze(0).unwrap());
        assert!(diff < 1e-4, "member {m} (no trunk): max diff {diff}");
    }
}

#[test]
fn member_caches_continue_exactly() {
    let model = model();
    let members: Vec<(u64, Spec)> = vec![
        (7, vec![(1, Target::Q, 4), (1, Target::V, 4)]),
        (8, vec![(1, Target::Down, 6)]),
    ];
    let lora = build(&model, &members);
    let prompts = prompts();
    let seqs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let full = run(&model, Some(&lora), &seqs);
    let head: Vec<&[u32]> = prompts.iter().map(|p| &p[..p.len() - 2]).collect();
    let tail: Vec<&[u32]> = prompts.iter().map(|p| &p[p.len() - 2..]).collect();
    let mut caches = vec![KvCache::default(); 2 * seqs.len()];
    model
        .forward_members(&head, Some(&lora), &mut caches, Logits::Full)
        .unwrap();
    let step = model
        .forward_members(&tail, Some(&lora), &mut caches, Logits::Full)
        .unwrap();
    let diff = max_diff(&step, &full);
    assert!(
        diff < 1e-4,
        "cached continuation vs full prefill: max diff {diff}"
    );
}

#[test]
fn label_rows_equal_full_vocabulary_columns() {
    let model = model();
    let lora = build(
        &model,
        &[(9, vec![(0, Target::V, 3)]), (10, vec![(1, Target::K, 3)])],
    );
    let prompts = prompts();
    let seqs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let full = run(&model, Some(&lora), &seqs);
    let ids = [5u32, 99, 500];
    let mut caches = vec![KvCache::default(); 2 * seqs.len()];
    let some = model
        .forward_members(&seqs, Some(&lora), &mut caches, Logits::Tokens(&ids))
        .unwrap();
    let idx = Tensor::new(&ids, &Device::Cpu).unwrap();
    let want = full.index_select(&idx, 2).unwrap();
    assert!(max_diff(&some, &want) < 1e-5);
}

#[test]
fn mismatched_caches_are_refused() {
    let model = model();
    let lora = build(&model, &[(1, vec![(1, Target::Q, 2)]), (2, vec![])]);
    let seq: &[u32] = &[5, 6, 7];
    let mut caches = vec![KvCache::default(); 1];
    let err = model
        .forward_members(&[seq], Some(&lora), &mut caches, Logits::Full)
        .unwrap_err();
    assert!(err.to_string().contains("need 2 caches"), "{err}");
}
