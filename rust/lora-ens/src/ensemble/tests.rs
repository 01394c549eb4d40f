//! Tests of the `Ensemble` API on the tiny fixture model and its 3-member fixture ensemble
//! (`make fixtures`): shared prefixes and trunks give the numbers of the unshared
//! computation, multi-token labels fall back to summed log-probabilities, M = 0 is the base
//! model, and generation agrees with plain greedy decoding.
//! (Parity with PEFT is checked in `tests/test_score.py`.)

use candle_core::{D, Device, IndexOp};

use super::Ensemble;
use crate::generate::{FinishReason, GenerateOptions};
use crate::model::{KvCache, Llama, Logits};
use crate::multi_lora::MultiLora;
use crate::prompt;
use crate::score::{Normalization, ScoreOptions};
use crate::test_support::fixture;

fn ensemble() -> Ensemble {
    Ensemble::load(
        fixture("tiny-q8_0.gguf"),
        &[fixture("ensemble")],
        &Device::Cpu,
    )
    .unwrap()
}

fn base() -> Ensemble {
    Ensemble::load(fixture("tiny-q8_0.gguf"), &[] as &[&str], &Device::Cpu).unwrap()
}

/// Plain greedy decoding of the base model: the argmax of the full logits, step by step on
/// one KV cache, for `max_new_tokens` tokens.
fn greedy(model: &Llama, prompt: &[u32], max_new_tokens: usize) -> Vec<u32> {
    let mut cache = vec![KvCache::default()];
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut next = prompt.to_vec();
    for _ in 0..max_new_tokens {
        let logits = model.forward(&[&next], &mut cache, Logits::Full).unwrap(); // (1, vocab)
        let id = logits.i(0).unwrap().argmax(D::Minus1).unwrap();
        let id = id.to_scalar::<u32>().unwrap();
        out.push(id);
        next = vec![id];
    }
    out
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| (*s).to_owned()).collect()
}

fn questions() -> (Vec<String>, Vec<Vec<String>>) {
    let contexts = vec![
        prompt::choice_context("What do you call a baby cat?"),
        prompt::choice_context("Where does the sun rise?"),
        "Hi".to_owned(), // a one-token context has no prefix to cache
    ];
    let choices = vec![
        strings(&["kitten", "puppy", "a small dog that barks"]),
        strings(&["in the east", "west", "north", "nowhere at all"]),
        strings(&["there", "you"]),
    ];
    (contexts, choices)
}

/// Each option's summed log-probability from one full forward pass over context + option
/// (no cache, no prefix sharing), member by member.
fn unshared_sums(ens: &Ensemble, context: &str, option: &str) -> Vec<f64> {
    let tok = ens.tokenizer();
    let ctx = tok.encode(context, true).unwrap();
    let cont = tok
        .encode(&prompt::choice_continuation(option), false)
        .unwrap();
    let full: Vec<u32> = ctx.iter().chain(&cont).copied().collect();
    let seq = &full[..full.len() - 1];
    let targets = &full[1..];
    let refs: Vec<&_> = ens.members().iter().collect();
    let lora = MultiLora::from_adapters(&refs, ens.config().n_layer, &Device::Cpu).unwrap();
    let m = refs.len();
    let mut caches = vec![KvCache::default(); m];
    let lp = ens
        .model()
        .forward_members_logprobs(&[seq], &[targets], Some(&lora), &mut caches)
        .unwrap();
    let t = seq.len();
    (0..m)
        .map(|member| {
            lp[member * t + t - cont.len()..(member + 1) * t]
                .iter()
                .map(|&x| f64::from(x))
                .sum()
        })
        .collect()
}

#[test]
fn shared_prefix_equals_full_sequence() {
    let ens = ensemble();
    let (contexts, choices) = questions();
    let opts = ScoreOptions {
        batch_size: 2, // two batches, one of them a single question
        ..Default::default()
    };
    let s = ens
        .score_choices(&contexts, &choices, Normalization::Sum, &opts)
        .unwrap();
    let (m, k) = (s.reduced.n_members, s.reduced.k);
    assert_eq!((m, k), (3, 4));
    let mut worst = 0f64;
    for (i, (context, options)) in contexts.iter().zip(&choices).enumerate() {
        for (j, option) in options.iter().enumerate() {
            let want = unshared_sums(&ens, context, option);
            for (member, w) in want.iter().enumerate() {
                let got = f64::from(s.member_scores[(i * m + member) * k + j]);
                worst = worst.max((got - w).abs());
            }
        }
    }
    assert!(
        worst < 1e-4,
        "shared vs unshared log-likelihood differ by {worst}"
    );
}

#[test]
fn normalizations_divide_the_sum() {
    let ens = ensemble();
    let (contexts, choices) = questions();
    let opts = ScoreOptions::default();
    let sum = ens
        .score_choices(&contexts, &choices, Normalization::Sum, &opts)
        .unwrap();
    let tok = ens.tokenizer();
    let (m, k) = (sum.reduced.n_members, sum.reduced.k);
    for norm in [Normalization::PerToken, Normalization::PerByte] {
        let s = ens.score_choices(&contexts, &choices, norm, &opts).unwrap();
        for (i, options) in choices.iter().enumerate() {
            for (j, option) in options.iter().enumerate() {
                let cont = prompt::choice_continuation(option);
                let denom = match norm {
                    Normalization::PerToken => tok.encode(&cont, false).unwrap().len(),
                    _ => cont.len(),
                } as f32;
                for member in 0..m {
                    let at = (i * m + member) * k + j;
                    let want = sum.member_scores[at] / denom;
                    assert!((s.member_scores[at] - want).abs() < 1e-5);
                }
            }
        }
    }
}

#[test]
fn labels_score_the_next_token_and_pad_per_question() {
    let ens = ensemble();
    let prompts = vec![
        prompt::label_prompt(
            "Pick one",
            &strings(&["x", "y", "z"]),
            &strings(&["A", "B", "C"]),
        )
        .unwrap(),
        prompt::label_prompt("Pick", &strings(&["x", "y"]), &strings(&["1", "2"])).unwrap(),
    ];
    let labels = vec![strings(&["A", "B", "C"]), strings(&["1", "2"])];
    let s = ens
        .score(&prompts, &labels, &ScoreOptions::default())
        .unwrap();
    assert_eq!(s.n_options, vec![3, 2]);
    let r = &s.reduced;
    // Padding slots have probability 0; each member's row sums to 1.
    for member in 0..r.n_members {
        let row = &r.member_probs[(r.n_members + member) * r.k..][..r.k];
        assert_eq!(row[2], 0.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // Label scores are the logits of the label tokens at the prompt's last position.
    let tok = ens.tokenizer();
    let ids: Vec<u32> = ["A", "B", "C"]
        .iter()
        .map(|l| tok.encode(&prompt::label_continuation(l), false).unwrap()[0])
        .collect();
    let refs: Vec<&_> = ens.members().iter().collect();
    let lora = MultiLora::from_adapters(&refs, ens.config().n_layer, &Device::Cpu).unwrap();
    let seq = tok.encode(&prompts[0], true).unwrap();
    let mut caches = vec![KvCache::default(); 3];
    let want = ens
        .model()
        .forward_members(&[&seq], Some(&lora), &mut caches, Logits::Tokens(&ids))
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    for (member, want) in want.iter().enumerate() {
        for (j, w) in want[0].iter().enumerate() {
            let got = s.member_scores[member * r.k + j];
            assert!((got - w).abs() < 1e-5);
        }
    }
}

#[test]
fn multi_token_labels_sum_their_log_probabilities() {
    let ens = ensemble();
    let tok = ens.tokenizer();
    let labels = strings(&["A", "yes please", "B"]);
    assert!(
        tok.encode(&prompt::label_continuation("yes please"), false)
            .unwrap()
            .len()
            > 1
    );
    let p = vec!["Question: Continue\nAnswer:".to_owned()];
    let s = ens
        .score(&p, std::slice::from_ref(&labels), &ScoreOptions::default())
        .unwrap();
    // The same question scored as choices (sum of log-probabilities) gives the same softmax.
    let c = ens
        .score_choices(
            &p,
            std::slice::from_ref(&labels),
            Normalization::Sum,
            &ScoreOptions::default(),
        )
        .unwrap();
    for (a, b) in s.reduced.member_probs.iter().zip(&c.reduced.member_probs) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn no_adapters_is_the_base_model() {
    let ens = base();
    assert_eq!(ens.n_members(), 0);
    let (contexts, choices) = questions();
    let s = ens
        .score_choices(
            &contexts,
            &choices,
            Normalization::Sum,
            &ScoreOptions::default(),
        )
        .unwrap();
    assert_eq!(s.reduced.n_members, 1);
    for r in &s.reduced.mutual_information {
        assert_eq!(*r, 0.0);
    }
    // Greedy ensemble generation with the base alone is plain greedy decoding.
    let tok = ens.tokenizer();
    let ids = tok.encode("Question: Where", true).unwrap();
    let want = greedy(ens.model(), &ids, 12);
    let got = ens
        .generate(
            "Question: Where",
            false,
            &GenerateOptions {
                max_new_tokens: 12,
                ..Default::default()
            },
        )
        .unwrap();
    let eos = tok.eos_id();
    let want: Vec<u32> = want.into_iter().take_while(|id| Some(*id) != eos).collect();
    assert_eq!(got.tokens, want);
    assert_eq!(got.entropy.len(), got.tokens.len());
    assert!(got.mutual_information.iter().all(|&x| x == 0.0));
}

#[test]
fn sampling_is_reproducible_and_stops_on_strings() {
    let ens = ensemble();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        temperature: 1.0,
        top_p: 0.9,
        seed: 42,
        ..Default::default()
    };
    let a = ens.generate("Once upon", false, &opts).unwrap();
    let b = ens.generate("Once upon", false, &opts).unwrap();
    assert_eq!(a, b);
    assert!(a.mutual_information.iter().all(|&x| x >= 0.0));
    assert!(a.mutual_information.iter().any(|&x| x > 0.0));
    // Stop at the first character of the sampled text: the result is cut before it.
    if let Some(first) = a.text.chars().find(|c| !c.is_whitespace()) {
        let stop = GenerateOptions {
            stop: vec![first.to_string()],
            ..opts.clone()
        };
        let c = ens.generate("Once upon", false, &stop).unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert!(!c.text.contains(first));
    }
}

#[test]
fn bad_arguments_are_input_errors() {
    let ens = ensemble();
    let p = vec!["a".to_owned(), "b".to_owned()];
    let three = vec![strings(&["A"]), strings(&["B"]), strings(&["C"])];
    let err = ens.score(&p, &three, &ScoreOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("3 lists of labels for 2 prompts"),
        "{err}"
    );
    let err = ens
        .score(&p, &[strings(&["A", " "])], &ScoreOptions::default())
        .unwrap_err();
    assert!(matches!(err, crate::Error::Label(_)), "{err}");
    let err = ens
        .score(&[], &[strings(&["A"])], &ScoreOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("nothing to score"), "{err}");
}

#[test]
fn sequences_decoded_together_equal_each_decoded_alone() {
    let ens = ensemble();
    let prompts = [
        "Once upon a time",
        "The sun",
        "A long prompt with several more words",
    ];
    let opts: Vec<GenerateOptions> = (0..3)
        .map(|i| GenerateOptions {
            max_new_tokens: 6 + 3 * i,
            temperature: if i == 0 { 0.0 } else { 0.8 },
            seed: i as u64,
            top_logprobs: 2,
            ..Default::default()
        })
        .collect();
    let mut seqs: Vec<_> = prompts
        .iter()
        .zip(&opts)
        .map(|(p, o)| ens.start(ens.encode_prompt(p).unwrap(), o).unwrap())
        .collect();
    let mut texts = vec![String::new(); 3];
    let mut tops = vec![Vec::new(); 3];
    // The second sequence joins late: a prompt and single tokens in one ragged pass.
    let late = seqs.remove(1);
    let mut seqs_refs: Vec<_> = seqs.iter_mut().collect();
    let first = ens.step(&mut seqs_refs).unwrap();
    for (k, e) in [0, 2].into_iter().zip(first) {
        let e = e.unwrap();
        texts[k].push_str(&e.text);
        tops[k].push(e.token.unwrap().top);
    }
    seqs.insert(1, late);
    while !seqs.iter().all(|d| d.is_done()) {
        let mut refs: Vec<_> = seqs.iter_mut().collect();
        for (k, e) in ens.step(&mut refs).unwrap().into_iter().enumerate() {
            if let Some(e) = e {
                texts[k].push_str(&e.text);
                if let Some(t) = e.token {
                    tops[k].push(t.top);
                }
            }
        }
    }
    for (k, d) in seqs.into_iter().enumerate() {
        let want = ens.generate(prompts[k], false, &opts[k]).unwrap();
        assert_eq!(texts[k], want.text, "sequence {k}");
        // The same tokens; the numbers agree to float rounding (the batched kernels sum in
        // another order than a single sequence's).
        let got = d.into_generation();
        assert_eq!(
            (&got.tokens, got.finish_reason),
            (&want.tokens, want.finish_reason)
        );
        for (a, b) in [
            (&got.probs, &want.probs),
            (&got.entropy, &want.entropy),
            (&got.expected_entropy, &want.expected_entropy),
            (&got.mutual_information, &want.mutual_information),
        ] {
            assert!(
                a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1e-3)),
                "sequence {k}: {a:?} vs {b:?}"
            );
        }
        assert!(tops[k].iter().all(|t| t.len() == 2 && t[0].1 >= t[1].1));
    }
}

#[test]
fn streamed_text_holds_back_a_possible_stop_string() {
    let ens = ensemble();
    let free = GenerateOptions {
        max_new_tokens: 20,
        temperature: 1.0,
        seed: 3,
        ..Default::default()
    };
    let text = ens.generate("Once upon", false, &free).unwrap().text;
    // Stop strings taken from the text itself (so they are met), and one never met.
    let chars: Vec<char> = text.chars().collect();
    let mid: String = chars[chars.len() / 2..(chars.len() / 2 + 3).min(chars.len())]
        .iter()
        .collect();
    for stop in [mid, "never-in-the-text".to_owned()] {
        let opts = GenerateOptions {
            stop: vec![stop.clone()],
            ..free.clone()
        };
        let want = ens.generate("Once upon", false, &opts).unwrap();
        let mut d = ens
            .start(ens.encode_prompt("Once upon").unwrap(), &opts)
            .unwrap();
        let mut streamed = String::new();
        while !d.is_done() {
            let e = ens.step(&mut [&mut d]).unwrap().remove(0).unwrap();
            streamed.push_str(&e.text);
            // Nothing handed out ever contains the stop string.
            assert!(!streamed.contains(stop.as_str()), "{streamed:?} {stop:?}");
        }
        assert_eq!(streamed, want.text, "stop {stop:?}");
    }
}
