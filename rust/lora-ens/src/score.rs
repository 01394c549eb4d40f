//! Scoring multiple-choice questions with every member, then reducing to the ensemble:
//! - label scoring: the prompt's next token restricted to the K label tokens (" A", " B",
//!   ...); only those K rows of the lm_head are computed. A label that is not one token falls
//!   back to the sum of its tokens' log-probabilities (choice scoring of the label text);
//! - choice scoring: the log-likelihood of each answer text as a continuation of the
//!   context (sum, per token or per byte, as lm-eval's acc / acc_norm), softmax over the K
//!   choices per member. The context runs once per member; its KV cache is shared by the K
//!   choices.
//!
//! Test: `cargo test -p lora-ens --lib ensemble` and `pytest tests/test_score.py`.

pub use crate::config::Normalization;
use crate::model::{KvCache, Llama, Logits};
use crate::multi_lora::MultiLora;
use crate::reduce::{Reduced, reduce};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Batching and progress reporting for a scoring call.
#[derive(Clone, Copy)]
pub struct ScoreOptions<'a> {
    /// Sequences per forward pass of the base model alone. With M members each question
    /// becomes M rows after the shared trunk, so a pass takes `max(1, 2 * batch_size / M)`
    /// questions (at most `batch_size`): activations and KV caches stay within about two
    /// base-model batches whatever M is (see [`ScoreOptions::questions_per_pass`]).
    pub batch_size: usize,
    /// Called with (questions done, questions in all) after every batch.
    pub progress: Option<&'a (dyn Fn(usize, usize) + Sync)>,
}

impl Default for ScoreOptions<'_> {
    fn default() -> Self {
        Self {
            batch_size: 16,
            progress: None,
        }
    }
}

impl ScoreOptions<'_> {
    /// Questions per forward pass for `members` members (rows budget `2 * batch_size`).
    ///
    /// Why 2x: smaller passes repeat the per-pass work (weight dequantization, trunk GEMMs on
    /// few rows) and slow scoring down; measured on SmolLM2 with 5 members, two base batches
    /// of rows cost no time and hold peak memory near the base model's.
    pub fn questions_per_pass(&self, members: usize) -> usize {
        let b = self.batch_size.max(1);
        (2 * b / members.max(1)).clamp(1, b)
    }
}

impl std::fmt::Debug for ScoreOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreOptions")
            .field("batch_size", &self.batch_size)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Scores of N questions by M members over up to K options each.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The ensemble reduction (member probabilities, mixture, prediction, uncertainty).
    pub reduced: Reduced,
    /// (N,): the number of options of each question (K_i <= K); slots beyond are padding.
    pub n_options: Vec<usize>,
    /// (N, M, K): what each member's softmax was taken over: label logits, or the choices'
    /// normalized log-likelihoods (`-inf` in padding slots).
    pub member_scores: Vec<f32>,
}

/// The pieces one scoring call needs: the model, its tokenizer and the members.
#[derive(Clone, Copy)]
pub(crate) struct Scorer<'a> {
    pub(crate) model: &'a Llama,
    pub(crate) tokenizer: &'a Tokenizer,
    /// `None`: the base model alone, reported as one member.
    pub(crate) lora: Option<&'a MultiLora>,
}

/// One question's options, tokenized.
struct Options {
    /// Prompt / context ids.
    context: Vec<u32>,
    /// Token ids of each option's continuation.
    options: Vec<Vec<u32>>,
    /// UTF-8 bytes of each option's continuation text (for per-byte normalization).
    bytes: Vec<usize>,
}

impl Scorer<'_> {
    fn n_members(&self) -> usize {
        self.lora.map_or(1, MultiLora::n_members)
    }

    fn encode_options(&self, context: &str, options: &[String], what: &str) -> Result<Options> {
        let context_ids = self.tokenizer.encode(context, true)?;
        if context_ids.is_empty() {
            return Err(Error::Input(format!("{what}: the context is empty")));
        }
        let mut ids = Vec::with_capacity(options.len());
        for text in options {
            let t = self.tokenizer.encode(text, false)?;
            if t.is_empty() {
                return Err(Error::Label(format!(
                    "{what}: option {text:?} has no tokens"
                )));
            }
            ids.push(t);
        }
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        let limit = self.model.config().context_length;
        if context_ids.len() + longest > limit {
            return Err(Error::Input(format!(
                "{what}: the prompt ({} tokens) and its longest option ({longest} tokens) need \
                 {} positions, more than the model's context length {limit}",
                context_ids.len(),
                context_ids.len() + longest
            )));
        }
        Ok(Options {
            context: context_ids,
            options: ids,
            bytes: options.iter().map(String::len).collect(),
        })
    }

    /// Label scoring. `prompts[i]` is scored over `continuations[i]` (the label texts as they
    /// follow the prompt, e.g. `" A"`); every continuation that is one token uses the fast
    /// path, others the summed log-probabilities of their tokens.
    pub(crate) fn score_labels(
        &self,
        prompts: &[String],
        continuations: &[Vec<String>],
        opts: &ScoreOptions<'_>,
    ) -> Result<Scores> {
        check_counts(prompts.len(), continuations, "labels")?;
        let questions = prompts
            .iter()
            .zip(continuations)
            .enumerate()
            .map(|(i, (p, c))| self.encode_options(p, c, &format!("prompt {i}")))
            .collect::<Result<Vec<_>>>()?;
        let m = self.n_members();
        let k = questions.iter().map(|q| q.options.len()).max().unwrap_or(0);
        let mut scores = vec![f32::NEG_INFINITY; questions.len() * m * k];
        let (single, multi): (Vec<usize>, Vec<usize>) =
            (0..questions.len()).partition(|&i| questions[i].options.iter().all(|o| o.len() == 1));
        let total = questions.len();
        let mut done = 0;
        for batch in single.chunks(opts.questions_per_pass(m)) {
            crate::interrupt::check()?;
            // One lm_head row per distinct label token in the batch.
            let mut vocab: Vec<u32> = batch
                .iter()
                .flat_map(|&i| questions[i].options.iter().map(|o| o[0]))
                .collect();
            vocab.sort_unstable();
            vocab.dedup();
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| &questions[i].context[..]).collect();
            let mut caches = vec![KvCache::default(); m * batch.len()];
            let logits = self.model.forward_members(
                &seqs,
                self.lora,
                &mut caches,
                Logits::Tokens(&vocab),
            )?; // (M, B, U)
            let logits = logits.to_vec3::<f32>()?;
            for (b, &i) in batch.iter().enumerate() {
                for (member, member_logits) in logits.iter().enumerate() {
                    for (j, o) in questions[i].options.iter().enumerate() {
                        // `vocab` holds every option's token, so this is its column.
                        let col = vocab.partition_point(|&t| t < o[0]);
                        scores[(i * m + member) * k + j] = member_logits[b][col];
                    }
                }
            }
            done += batch.len();
            report(opts, done, total);
        }
        for batch in multi.chunks(opts.questions_per_pass(m)) {
            crate::interrupt::check()?;
            let qs: Vec<&Options> = batch.iter().map(|&i| &questions[i]).collect();
            let lls = self.log_likelihoods(&qs, Normalization::Sum)?;
            scatter(&lls, batch, m, k, &mut scores);
            done += batch.len();
            report(opts, done, total);
        }
        finish(scores, &questions, m, k)
    }

    /// Choice scoring: each `choices[i][j]` (the continuation text, separator included) as a
    /// continuation of `contexts[i]`, normalized by `norm`, softmax over the choices.
    pub(crate) fn score_choices(
        &self,
        contexts: &[String],
        choices: &[Vec<String>],
        norm: Normalization,
        opts: &ScoreOptions<'_>,
    ) -> Result<Scores> {
        check_counts(contexts.len(), choices, "choices")?;
        let questions = contexts
            .iter()
            .zip(choices)
            .enumerate()
            .map(|(i, (c, o))| self.encode_options(c, o, &format!("context {i}")))
            .collect::<Result<Vec<_>>>()?;
        let m = self.n_members();
        let k = questions.iter().map(|q| q.options.len()).max().unwrap_or(0);
        let mut scores = vec![f32::NEG_INFINITY; questions.len() * m * k];
        let all: Vec<usize> = (0..questions.len()).collect();
        let mut done = 0;
        for batch in all.chunks(opts.questions_per_pass(m)) {
            crate::interrupt::check()?;
            let qs: Vec<&Options> = batch.iter().map(|&i| &questions[i]).collect();
            let lls = self.log_likelihoods(&qs, norm)?;
            scatter(&lls, batch, m, k, &mut scores);
            done += batch.len();
            report(opts, done, all.len());
        }
        finish(scores, &questions, m, k)
    }

    /// Normalized log-likelihood of every option of every question under every member:
    /// `[question][member][option]`.
    ///
    /// All but the context's last token run once per member and fill a KV cache; each option
    /// then runs as `[last context token, option tokens but the last]` on a clone of that
    /// cache (clones share the tensors), predicting the option's tokens one by one.
    fn log_likelihoods(&self, qs: &[&Options], norm: Normalization) -> Result<Vec<Vec<Vec<f32>>>> {
        let m = self.n_members();
        let n = qs.len();
        // Contexts of one token have no prefix to cache: they start from an empty cache.
        let with_prefix: Vec<usize> = (0..n).filter(|&i| qs[i].context.len() > 1).collect();
        let mut prefix_caches = vec![KvCache::default(); m * n];
        if !with_prefix.is_empty() {
            let seqs: Vec<&[u32]> = with_prefix
                .iter()
                .map(|&i| &qs[i].context[..qs[i].context.len() - 1])
                .collect();
            let mut caches = vec![KvCache::default(); m * with_prefix.len()];
            // Only the caches are needed: ask for one logit per sequence.
            self.model
                .forward_members(&seqs, self.lora, &mut caches, Logits::Tokens(&[0]))?;
            for member in 0..m {
                for (slot, &i) in with_prefix.iter().enumerate() {
                    prefix_caches[member * n + i] =
                        std::mem::take(&mut caches[member * with_prefix.len() + slot]);
                }
            }
        }
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (i, q) in qs.iter().enumerate() {
            let Some(&last) = q.context.last() else {
                return Err(Error::Input(format!("question {i}: the context is empty")));
            };
            for o in &q.options {
                let mut s = Vec::with_capacity(o.len());
                s.push(last);
                s.extend_from_slice(&o[..o.len() - 1]);
                seqs.push(s);
                owner.push(i);
            }
        }
        let seq_refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let targets: Vec<&[u32]> = qs
            .iter()
            .flat_map(|q| q.options.iter().map(Vec::as_slice))
            .collect();
        let mut caches: Vec<KvCache> = (0..m)
            .flat_map(|member| owner.iter().map(move |&i| (member, i)))
            .map(|(member, i)| prefix_caches[member * n + i].clone())
            .collect();
        let lp =
            self.model
                .forward_members_logprobs(&seq_refs, &targets, self.lora, &mut caches)?; // (M, T)
        let total: usize = seqs.iter().map(Vec::len).sum();
        let mut out = vec![vec![Vec::new(); m]; n];
        for (member, lp) in lp.chunks_exact(total).enumerate() {
            let mut at = 0;
            for (s, &i) in seqs.iter().zip(&owner) {
                let sum: f64 = lp[at..at + s.len()].iter().map(|&x| f64::from(x)).sum();
                let j = out[i][member].len();
                let score = match norm {
                    Normalization::Sum => sum,
                    Normalization::PerToken => sum / s.len() as f64,
                    Normalization::PerByte => sum / qs[i].bytes[j].max(1) as f64,
                };
                out[i][member].push(score as f32);
                at += s.len();
            }
        }
        Ok(out)
    }
}

fn report(opts: &ScoreOptions<'_>, done: usize, total: usize) {
    if let Some(f) = opts.progress {
        f(done, total);
    }
}

fn check_counts(n: usize, options: &[Vec<String>], what: &str) -> Result<()> {
    if n == 0 {
        return Err(Error::Input(
            "nothing to score: no prompts given".to_owned(),
        ));
    }
    if options.len() != n {
        return Err(Error::Input(format!(
            "{n} prompts but {} lists of {what}",
            options.len()
        )));
    }
    if let Some(i) = options.iter().position(Vec::is_empty) {
        return Err(Error::Input(format!("prompt {i} has no {what}")));
    }
    Ok(())
}

/// Write `[batch question][member][option]` scores into the flat (N, M, K) array.
fn scatter(lls: &[Vec<Vec<f32>>], batch: &[usize], m: usize, k: usize, scores: &mut [f32]) {
    for (per_member, &i) in lls.iter().zip(batch) {
        for (member, opts) in per_member.iter().enumerate() {
            let row = (i * m + member) * k;
            scores[row..row + opts.len()].copy_from_slice(opts);
        }
    }
}

fn finish(scores: Vec<f32>, questions: &[Options], m: usize, k: usize) -> Result<Scores> {
    let n_options: Vec<usize> = questions.iter().map(|q| q.options.len()).collect();
    // A NaN or +inf score comes from the weights or an overflow, not from the input: say so
    // (the ensemble then names the weight), rather than the reducer's generic input error.
    for (i, &n) in n_options.iter().enumerate() {
        for member in 0..m {
            let row = &scores[(i * m + member) * k..][..n];
            if let Some(j) = row.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
                return Err(Error::Numerical(format!(
                    "member {member} scored option {j} of prompt {i} as {}: the model or the \
                     adapter holds non-finite weights, or the activations overflowed",
                    row[j]
                )));
            }
        }
    }
    let reduced = reduce(&scores, questions.len(), m, k, Some(&n_options))?;
    Ok(Scores {
        reduced,
        n_options,
        member_scores: scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_pass_stay_within_two_base_batches() {
        let opts = ScoreOptions {
            batch_size: 16,
            progress: None,
        };
        // (members, questions per pass): M * questions <= 2 * batch_size, never 0, never
        // more questions than the base model alone takes.
        for (m, q) in [(0, 16), (1, 16), (2, 16), (3, 10), (5, 6), (10, 3), (40, 1)] {
            assert_eq!(opts.questions_per_pass(m), q, "M = {m}");
        }
        let tiny = ScoreOptions {
            batch_size: 0,
            progress: None,
        };
        assert_eq!(tiny.questions_per_pass(5), 1);
    }
}
