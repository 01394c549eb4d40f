//! Ensemble text generation: every member keeps its own KV cache; at each step the members'
//! next-token distributions over the whole vocabulary are averaged (a mixture, as in the
//! reducer) and the next token is picked from that mixture (greedy, or sampled with
//! temperature / top-p and a seed). Each generated token carries the ensemble's entropy,
//! expected entropy and mutual information at that step.
//! Test: `cargo test -p lora-ens --lib generate` and `cargo test -p lora-ens --lib ensemble`.

use candle_core::Tensor;

use crate::model::{KvCache, Llama, Logits};
use crate::multi_lora::MultiLora;
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// How to decode.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax of the mixture); otherwise sample from `mixture^(1 / temperature)`.
    pub temperature: f32,
    /// Nucleus sampling: keep the most probable tokens whose mass reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Seed of the sampler; the same seed gives the same text.
    pub seed: u64,
    /// Stop as soon as the text contains one of these (it is cut before the stop string).
    pub stop: Vec<String>,
    /// Report this many most probable tokens (with their log-probabilities) at each step in
    /// [`TokenStep::top`] (0: none).
    pub top_logprobs: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            top_logprobs: 0,
        }
    }
}

impl GenerateOptions {
    fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Input(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::Input("stop strings must not be empty".to_owned()));
        }
        Ok(())
    }
}

/// Why decoding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The end-of-sequence (or end-of-turn) token was picked.
    Eos,
    /// A stop string appeared in the text.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

impl FinishReason {
    /// `"eos"`, `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A generated continuation and the ensemble's uncertainty at each step.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The text (special tokens and any stop string left out).
    pub text: String,
    /// Generated token ids, the final EOS / end-of-turn token excluded.
    pub tokens: Vec<u32>,
    /// Per token: the mixture's probability of the token picked.
    pub probs: Vec<f32>,
    /// Per token: entropy of the mixture over the vocabulary (nats).
    pub entropy: Vec<f32>,
    /// Per token: the members' mean entropy.
    pub expected_entropy: Vec<f32>,
    /// Per token: the members' disagreement, mean KL(member || mixture) (= `entropy -
    /// expected_entropy` in exact arithmetic, without its cancellation).
    pub mutual_information: Vec<f32>,
    /// Why decoding ended: the end-of-sequence token, a stop string or the length limit.
    pub finish_reason: FinishReason,
}

/// One decoding step's mixture and its uncertainty.
struct Step {
    mixture: Vec<f64>,
    entropy: f64,
    expected_entropy: f64,
    mutual_information: f64,
}

/// Softmax of each member's `(M, 1, vocab)` logits and the reducer's mixture and
/// uncertainty over them ([`crate::reduce`]'s form: MI as the members' mean KL to the
/// mixture, so members that nearly agree give a small MI, not a cancellation), in f64.
fn mix(logits: &Tensor) -> Result<Step> {
    let rows = logits.squeeze(1)?.to_vec2::<f32>()?; // (M, vocab)
    let m = rows.len();
    let vocab = rows[0].len();
    let mut probs = Vec::with_capacity(m * vocab); // (M, vocab)
    for (member, row) in rows.iter().enumerate() {
        if let Some(j) = row.iter().position(|x| !x.is_finite()) {
            return Err(Error::Numerical(format!(
                "member {member} produced a non-finite logit ({}) for token {j}: the model \
                 or the adapter holds non-finite weights, or the activations overflowed",
                row[j]
            )));
        }
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |a, &x| a.max(f64::from(x)));
        let log_sum = row
            .iter()
            .map(|&x| (f64::from(x) - max).exp())
            .sum::<f64>()
            .ln();
        probs.extend(row.iter().map(|&x| (f64::from(x) - max - log_sum).exp()));
    }
    let mut mixture = vec![0f64; vocab];
    let (entropy, expected_entropy, mutual_information) =
        crate::reduce::mixture(&probs, m, vocab, &mut mixture);
    Ok(Step {
        mixture,
        entropy,
        expected_entropy,
        mutual_information,
    })
}

/// Pick the next token from `p` (a distribution): argmax when `temperature == 0`, else a
/// draw from the tempered, nucleus-truncated distribution.
fn pick(p: &[f64], opts: &GenerateOptions, rng: &mut SplitMix64) -> usize {
    if opts.temperature == 0.0 {
        // Lowest index on ties, like numpy.argmax.
        return p
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 { (i, x) } else { best }
            })
            .0;
    }
    let inv_t = 1.0 / f64::from(opts.temperature);
    // Tempering in log space keeps tiny probabilities from underflowing before renormalising.
    let logs: Vec<f64> = p.iter().map(|&x| x.ln() * inv_t).collect();
    let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut order: Vec<(usize, f64)> = logs
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, (l - max).exp()))
        .filter(|&(_, w)| w > 0.0)
        .collect();
    let total: f64 = order.iter().map(|&(_, w)| w).sum();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for &(_, w) in &order {
        kept += 1;
        mass += w / total;
        if mass >= f64::from(opts.top_p) {
            break;
        }
    }
    order.truncate(kept);
    let kept_total: f64 = order.iter().map(|&(_, w)| w).sum();
    let mut u = rng.next_f64() * kept_total;
    for &(i, w) in &order {
        if u < w {
            return i;
        }
        u -= w;
    }
    order[kept - 1].0
}

/// One generated token, as [`step`] hands it out: the token, the mixture's probability and
/// uncertainty at that step, and the most probable alternatives when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStep {
    /// The token id picked.
    pub id: u32,
    /// The mixture's probability of it.
    pub prob: f32,
    /// Entropy of the mixture over the vocabulary (nats).
    pub entropy: f32,
    /// The members' mean entropy (nats).
    pub expected_entropy: f32,
    /// The members' disagreement, mean KL(member || mixture) (nats).
    pub mutual_information: f32,
    /// The `top_logprobs` most probable tokens of the mixture with their log-probabilities,
    /// most probable first (empty when `top_logprobs` is 0).
    pub top: Vec<(u32, f32)>,
}

/// What one decoding step of one sequence produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEvent {
    /// The token generated at this step; `None` when the step ended the sequence without one
    /// (the end-of-sequence token was picked, or the context is full).
    pub token: Option<TokenStep>,
    /// The text that became final at this step: the concatenation of every step's `text` is
    /// the generation's text. A possible beginning of a stop string, or an incomplete UTF-8
    /// character, is held back until it is resolved.
    pub text: String,
    /// Set on the sequence's last step.
    pub finish: Option<FinishReason>,
}

/// One sequence being decoded: its caches (one per member), sampler and output so far.
/// Several run together, one token each per [`step`] (ragged batching over their own caches).
#[derive(Debug)]
pub struct Decoding {
    caches: Vec<KvCache>,
    rng: SplitMix64,
    opts: GenerateOptions,
    next: Vec<u32>,
    prompt_len: usize,
    out: Generation,
    /// Bytes of the text already handed out in [`StepEvent::text`].
    emitted: usize,
    done: bool,
}

impl Decoding {
    /// Start decoding after `prompt` (token ids, BOS included when the model wants one) with
    /// `n_members` members.
    pub(crate) fn new(prompt: Vec<u32>, n_members: usize, opts: &GenerateOptions) -> Result<Self> {
        opts.check()?;
        if prompt.is_empty() {
            return Err(Error::Input("the prompt has no tokens".to_owned()));
        }
        Ok(Self {
            caches: vec![KvCache::default(); n_members.max(1)],
            rng: SplitMix64(opts.seed),
            opts: opts.clone(),
            prompt_len: prompt.len(),
            next: prompt,
            out: Generation {
                text: String::new(),
                tokens: Vec::new(),
                probs: Vec::new(),
                entropy: Vec::new(),
                expected_entropy: Vec::new(),
                mutual_information: Vec::new(),
                finish_reason: FinishReason::Length,
            },
            emitted: 0,
            done: opts.max_new_tokens == 0,
        })
    }

    /// Whether the sequence has finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The prompt's length in tokens.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// The generation so far (complete once [`Decoding::is_done`]).
    pub fn generation(&self) -> &Generation {
        &self.out
    }

    /// Take the finished generation.
    pub fn into_generation(self) -> Generation {
        self.out
    }

    /// End the sequence: the rest of the text is handed out.
    fn finish(
        &mut self,
        reason: FinishReason,
        token: Option<TokenStep>,
        tokenizer: &Tokenizer,
    ) -> Result<StepEvent> {
        self.done = true;
        self.out.finish_reason = reason;
        if reason != FinishReason::Stop {
            self.out.text = tokenizer.decode(&self.out.tokens, true)?;
        }
        let text = self
            .out
            .text
            .get(self.emitted..)
            .unwrap_or_default()
            .to_owned();
        self.emitted = self.out.text.len();
        Ok(StepEvent {
            token,
            text,
            finish: Some(reason),
        })
    }

    /// Record the token picked at this step and decide whether the sequence goes on.
    fn push(
        &mut self,
        id: u32,
        step: &Step,
        tokenizer: &Tokenizer,
        stop_ids: &[u32],
    ) -> Result<StepEvent> {
        if stop_ids.contains(&id) {
            return self.finish(FinishReason::Eos, None, tokenizer);
        }
        let token = TokenStep {
            id,
            prob: step.mixture[id as usize] as f32,
            entropy: step.entropy as f32,
            expected_entropy: step.expected_entropy as f32,
            mutual_information: step.mutual_information as f32,
            top: top_logprobs(&step.mixture, self.opts.top_logprobs),
        };
        self.out.tokens.push(id);
        self.out.probs.push(token.prob);
        self.out.entropy.push(token.entropy);
        self.out.expected_entropy.push(token.expected_entropy);
        self.out.mutual_information.push(token.mutual_information);
        let text = tokenizer.decode(&self.out.tokens, true)?;
        if let Some(cut) = self
            .opts
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            self.out.text = text[..cut].to_owned();
            return self.finish(FinishReason::Stop, Some(token), tokenizer);
        }
        if self.out.tokens.len() >= self.opts.max_new_tokens {
            self.out.text = text;
            return self.finish(FinishReason::Length, Some(token), tokenizer);
        }
        // Hand out what can no longer change: not an incomplete character at the end, nor a
        // suffix that may be the start of a stop string.
        let end = text.trim_end_matches('\u{FFFD}').len();
        let mut safe = end;
        for s in &self.opts.stop {
            let held = s
                .char_indices()
                .map(|(k, _)| k)
                .filter(|&k| k > 0)
                .rev()
                .find(|&k| text[..end].ends_with(&s[..k]));
            if let Some(k) = held {
                safe = safe.min(end - k);
            }
        }
        let delta = if safe > self.emitted {
            text.get(self.emitted..safe).unwrap_or_default().to_owned()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(safe);
        self.out.text = text;
        self.next = vec![id];
        Ok(StepEvent {
            token: Some(token),
            text: delta,
            finish: None,
        })
    }
}

/// The `k` most probable entries of `p` as `(id, ln p)`, most probable first (lowest id on ties).
fn top_logprobs(p: &[f64], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..p.len()).collect();
    let k = k.min(p.len());
    let by_prob = |a: &usize, b: &usize| p[*b].total_cmp(&p[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_prob);
        idx.truncate(k);
    }
    idx.sort_by(by_prob);
    idx.into_iter()
        .map(|i| (i as u32, p[i].ln() as f32))
        .collect()
}

/// One decoding step of every sequence in `seqs` that has not finished, in one batched
/// forward pass over their own caches (a new sequence's whole prompt goes through in the
/// same pass). Returns one event per sequence (`None` for one already done).
pub(crate) fn step(
    model: &Llama,
    tokenizer: &Tokenizer,
    lora: Option<&MultiLora>,
    stop_ids: &[u32],
    seqs: &mut [&mut Decoding],
) -> Result<Vec<Option<StepEvent>>> {
    let n_members = lora.map_or(1, MultiLora::n_members);
    let mut events: Vec<Option<StepEvent>> = vec![None; seqs.len()];
    let mut live = Vec::new();
    for (i, d) in seqs.iter_mut().enumerate() {
        if d.done {
            continue;
        }
        if d.caches.len() != n_members {
            return Err(Error::Input(format!(
                "a sequence started with {} members decodes with {n_members}",
                d.caches.len()
            )));
        }
        if d.caches[0].len() + d.next.len() > model.config().context_length {
            // The context is full: stop as if the length limit was reached.
            events[i] = Some(d.finish(FinishReason::Length, None, tokenizer)?);
        } else {
            live.push(i);
        }
    }
    if live.is_empty() {
        return Ok(events);
    }
    let n = live.len();
    // Caches member-major: member m of sequence j at m * n + j.
    let mut caches = Vec::with_capacity(n_members * n);
    for m in 0..n_members {
        for &i in &live {
            caches.push(std::mem::take(&mut seqs[i].caches[m]));
        }
    }
    let inputs: Vec<Vec<u32>> = live.iter().map(|&i| seqs[i].next.clone()).collect();
    let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let result = model.forward_members(&refs, lora, &mut caches, Logits::Full);
    for (k, cache) in caches.into_iter().enumerate() {
        let (m, j) = (k / n, k % n);
        seqs[live[j]].caches[m] = cache;
    }
    let logits = result?; // (M, n, vocab)
    for (j, &i) in live.iter().enumerate() {
        let s = mix(&logits.narrow(1, j, 1)?)?;
        let d = &mut *seqs[i];
        let id = pick(&s.mixture, &d.opts, &mut d.rng) as u32;
        events[i] = Some(d.push(id, &s, tokenizer, stop_ids)?);
    }
    Ok(events)
}

/// Decode from `prompt` (token ids) with every member of `lora` (the base alone when
/// `None`), stopping at `stop_ids`, a stop string or `max_new_tokens`.
pub(crate) fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    lora: Option<&MultiLora>,
    prompt: &[u32],
    stop_ids: &[u32],
    opts: &GenerateOptions,
) -> Result<Generation> {
    let n_members = lora.map_or(1, MultiLora::n_members);
    let mut d = Decoding::new(prompt.to_vec(), n_members, opts)?;
    while !d.done {
        crate::interrupt::check()?;
        step(model, tokenizer, lora, stop_ids, &mut [&mut d])?;
    }
    Ok(d.into_generation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = SplitMix64(0);
        let opts = GenerateOptions::default();
        assert_eq!(pick(&[0.1, 0.4, 0.4, 0.1], &opts, &mut rng), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let opts = GenerateOptions {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut rng = SplitMix64(7);
        // The top token alone holds 0.6 >= 0.5 of the mass: nothing else may be drawn.
        for _ in 0..200 {
            assert_eq!(pick(&[0.1, 0.6, 0.2, 0.1], &opts, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let opts = GenerateOptions {
            temperature: 1.0,
            ..Default::default()
        };
        let mut rng = SplitMix64(3);
        let p = [0.2, 0.5, 0.3];
        let mut counts = [0usize; 3];
        let draws = 20_000;
        for _ in 0..draws {
            counts[pick(&p, &opts, &mut rng)] += 1;
        }
        for (c, want) in counts.iter().zip(p) {
            let freq = *c as f64 / draws as f64;
            // 5 standard deviations of a binomial frequency at n = 20000 is < 0.018.
            assert!((freq - want).abs() < 0.018, "{counts:?}");
        }
    }

    #[test]
    fn low_temperature_sharpens() {
        let opts = GenerateOptions {
            temperature: 0.05,
            ..Default::default()
        };
        let mut rng = SplitMix64(11);
        // (0.5 / 0.3)^(1/0.05) is about 2.7e4: the runner-up is (almost) never drawn.
        let hits = (0..1000)
            .filter(|_| pick(&[0.3, 0.5, 0.2], &opts, &mut rng) == 1)
            .count();
        assert!(hits >= 995, "{hits}");
    }

    #[test]
    fn options_are_checked() {
        for opts in [
            GenerateOptions {
                temperature: -1.0,
                ..Default::default()
            },
            GenerateOptions {
                top_p: 0.0,
                ..Default::default()
            },
            GenerateOptions {
                stop: vec![String::new()],
                ..Default::default()
            },
        ] {
            assert!(matches!(opts.check(), Err(Error::Input(_))));
        }
    }

    #[test]
    fn mixture_entropies_of_identical_members() {
        let logits = Tensor::new(
            &[[[1.0f32, 2.0, 0.5]], [[1.0, 2.0, 0.5]]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let s = mix(&logits).unwrap();
        assert!((s.entropy - s.expected_entropy).abs() < 1e-12);
        assert_eq!(s.mutual_information, 0.0);
        let total: f64 = s.mixture.iter().sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn mixture_uncertainty_is_the_reducers() {
        let rows = [
            [0.3f32, -1.0, 2.0, 0.0],
            [0.1, 0.5, 1.9, -0.2],
            [2.0, 0.0, 0.0, 1.0],
        ];
        let logits = Tensor::new(
            &[[rows[0]], [rows[1]], [rows[2]]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let s = mix(&logits).unwrap();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let r = crate::reduce::reduce(&flat, 1, 3, 4, None).unwrap();
        assert!((s.entropy as f32 - r.entropy[0]).abs() < 1e-6);
        assert!((s.expected_entropy as f32 - r.expected_entropy[0]).abs() < 1e-6);
        assert!((s.mutual_information as f32 - r.mutual_information[0]).abs() < 1e-6);
        assert!(s.mutual_information > 0.0);
    }

    #[test]
    fn a_non_finite_logit_is_a_numerical_error() {
        let logits = Tensor::new(
            &[[[1.0f32, f32::NAN]], [[0.0, 0.0]]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let e = mix(&logits).err().unwrap();
        assert!(
            matches!(&e, Error::Numerical(m) if m.contains("member 0")),
            "{e}"
        );
    }
}
