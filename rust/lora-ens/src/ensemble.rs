//! [`Ensemble`]: the engine's front door for a service or the bindings. It loads a GGUF base
//! model, its tokenizer and M PEFT LoRA members (adapter or ensemble directories), and
//! answers `score` (label tokens), `score_choices` (answer texts) and `generate`, all with the
//! members batched on one shared base and reduced to the ensemble's prediction and
//! uncertainty. The prompt template comes from [`crate::prompt`], shared with training.
//! Test: `cargo test -p lora-ens --doc ensemble` and `cargo test -p lora-ens --lib ensemble`.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::config::LlamaConfig;
use crate::data::Question;
use crate::generate::{self, Decoding, GenerateOptions, Generation, StepEvent};
use crate::gguf::GgufFile;
use crate::lora::{BaseIdentity, EnsembleManifest, LoraAdapter, SOURCE_SHA256_KEY, load_adapters};
use crate::model::Llama;
use crate::multi_lora::MultiLora;
use crate::questions::{self, QuestionScores, Scoring, ScoringSpec};
use crate::score::{Normalization, ScoreOptions, Scorer, Scores};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, hash, prompt};

/// A base model with M LoRA members (M may be 0: the base model alone).
///
/// ```
/// use lora_ens::ensemble::Ensemble;
/// use lora_ens::score::{Normalization, ScoreOptions};
/// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
/// // A GGUF model and an ensemble directory (its `ensemble.json` lists the members).
/// let ens = Ensemble::load(dir.join("tiny-q8_0.gguf"), &[dir.join("ensemble")], &candle_core::Device::Cpu)?;
/// assert_eq!(ens.n_members(), 3);
///
/// let prompts = vec!["Question: Is the sky blue?\nA. yes\nB. no\nAnswer:".to_owned()];
/// let labels = vec![vec!["A".to_owned(), "B".to_owned()]];
/// let s = ens.score(&prompts, &labels, &ScoreOptions::default())?;
/// let r = &s.reduced;
/// assert_eq!((r.n, r.n_members, r.k), (1, 3, 2));
/// assert!((r.probs[0] + r.probs[1] - 1.0).abs() < 1e-5);
/// assert!(r.mutual_information[0] >= 0.0);
///
/// let c = ens.score_choices(
///     &["Question: What color is the sky?\nAnswer:".to_owned()],
///     &[vec!["blue".to_owned(), "green".to_owned(), "red".to_owned()]],
///     Normalization::PerToken,
///     &ScoreOptions::default(),
/// )?;
/// assert_eq!(c.n_options, vec![3]);
/// # Ok::<(), lora_ens::Error>(())
/// ```
pub struct Ensemble {
    model: Llama,
    tokenizer: Tokenizer,
    model_path: PathBuf,
    members: Vec<LoraAdapter>,
    lora: Option<MultiLora>,
    manifest: Option<EnsembleManifest>,
    stop_ids: Vec<u32>,
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("model", &self.model_path)
            .field("members", &self.member_names())
            .finish()
    }
}

impl Ensemble {
    /// Load the GGUF `model` and the members found in `adapters` (PEFT adapter directories
    /// and ensemble directories, in order; empty = the base model alone) onto `device`.
    ///
    /// An ensemble manifest that records the base model is checked against `model`: the same
    /// GGUF file, or a GGUF converted from the same checkpoint ([`EnsembleManifest::check_base`]).
    pub fn load(
        model: impl AsRef<Path>,
        adapters: &[impl AsRef<Path>],
        device: &Device,
    ) -> Result<Self> {
        let model_path = model.as_ref().to_path_buf();
        crate::io::check_file(&model_path, u64::MAX, &|reason| Error::InvalidGguf {
            path: model_path.clone(),
            reason,
        })?;
        let mut gguf = GgufFile::open(&model_path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let llama = Llama::load(&mut gguf, device)?;
        let source = gguf.optional(SOURCE_SHA256_KEY, GgufFile::string)?;
        drop(gguf);
        let identity = || {
            let sha = hash::sha256_file(&model_path)?;
            Ok(BaseIdentity::new(&sha, source.as_deref()))
        };
        let (members, manifest) = load_adapters(adapters, llama.config(), Some(&identity))?;
        let lora = if members.is_empty() {
            None
        } else {
            let refs: Vec<&LoraAdapter> = members.iter().collect();
            Some(MultiLora::from_adapters(
                &refs,
                llama.config().n_layer,
                device,
            )?)
        };
        let stop_ids = tokenizer
            .eos_id()
            .into_iter()
            .chain(tokenizer.token_to_id("<|im_end|>"))
            .chain(tokenizer.token_to_id("<|eot_id|>"))
            .collect();
        Ok(Self {
            model: llama,
            tokenizer,
            model_path,
            members,
            lora,
            manifest,
            stop_ids,
            pool: None,
        })
    }

    /// Run every later call on a pool of `threads` threads (default: rayon's global pool, one
    /// thread per core); more threads than [`max_threads`] (the machine's cores) are capped
    /// to it, since extra threads only compete for the same cores.
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        if threads == 0 {
            return Err(Error::Input("threads must be at least 1".to_owned()));
        }
        let threads = threads.min(max_threads());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Input(format!("cannot start {threads} threads: {e}")))?;
        self.pool = Some(pool);
        Ok(self)
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let result = match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        };
        result.map_err(|e| self.name_non_finite_weight(e))
    }

    /// A non-finite result names the base model's first non-finite weight when it has one
    /// (adapters are checked when they load), so the user learns which tensor is broken.
    fn name_non_finite_weight(&self, err: Error) -> Error {
        let Error::Numerical(msg) = err else {
            return err;
        };
        match crate::weights::first_non_finite(&self.model_path) {
            Ok(Some((tensor, index, value))) => Error::Numerical(format!(
                "{msg}; tensor `{tensor}` of {} holds a non-finite weight ({value} at flat \
                 index {index})",
                self.model_path.display()
            )),
            _ => Error::Numerical(msg),
        }
    }

    fn scorer(&self) -> Scorer<'_> {
        Scorer {
            model: &self.model,
            tokenizer: &self.tokenizer,
            lora: self.lora.as_ref(),
        }
    }

    /// Score each prompt over its labels: the next token after the prompt, restricted to the
    /// label tokens ([`prompt::label_continuation`], e.g. `"A"` -> `" A"`). `labels` has one
    /// list per prompt, or a single list shared by all. A label of several tokens is scored
    /// by the sum of its tokens' log-probabilities.
    pub fn score(
        &self,
        prompts: &[String],
        labels: &[Vec<String>],
        opts: &ScoreOptions<'_>,
    ) -> Result<Scores> {
        let labels = per_prompt(prompts.len(), labels, "labels")?;
        let continuations: Vec<Vec<String>> = labels
            .iter()
            .map(|ls| {
                if let Some(bad) = ls.iter().find(|l| l.trim().is_empty()) {
                    return Err(Error::Label(format!("label {bad:?} is empty")));
                }
                Ok(ls.iter().map(|l| prompt::label_continuation(l)).collect())
            })
            .collect::<Result<_>>()?;
        self.run(|| self.scorer().score_labels(prompts, &continuations, opts))
    }

    /// Score answer texts as continuations of `contexts` (one list of choices per context,
    /// or a single list shared by all). Each choice is scored as
    /// [`prompt::choice_continuation`] (trimmed, one leading space), so a context should end
    /// without whitespace, as [`prompt::choice_context`] does.
    pub fn score_choices(
        &self,
        contexts: &[String],
        choices: &[Vec<String>],
        norm: Normalization,
        opts: &ScoreOptions<'_>,
    ) -> Result<Scores> {
        let choices = per_prompt(contexts.len(), choices, "choices")?;
        let continuations: Vec<Vec<String>> = choices
            .iter()
            .map(|cs| cs.iter().map(|c| prompt::choice_continuation(c)).collect())
            .collect();
        self.run(|| {
            self.scorer()
                .score_choices(contexts, &continuations, norm, opts)
        })
    }

    /// Score dataset questions with the shared prompt template ([`crate::prompt`]): in
    /// `labels` mode the lettered prompt over the labels, in `choices` mode each answer text
    /// after the question. Each label or answer text must have tokens in the vocabulary; the
    /// error names the question. The result carries the ids, labels and answers for
    /// [`QuestionScores::records`] and [`QuestionScores::metrics`].
    ///
    /// ```
    /// use lora_ens::ensemble::Ensemble;
    /// use lora_ens::questions::ScoringSpec;
    /// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    /// let ens = Ensemble::load(dir.join("tiny-q8_0.gguf"), &[dir.join("ensemble")], &candle_core::Device::Cpu)?;
    /// let text = r#"{"id": "q1", "question": "Ice is", "choices": ["cold", "hot"], "answer": 0}"#;
    /// let qs = lora_ens::data::parse_questions(text, "inline.jsonl".as_ref(), None, None)?;
    /// let spec = ScoringSpec::resolve(None, None, ens.manifest());
    /// let s = ens.score_questions(&qs, &spec, &Default::default())?;
    /// let record = s.record(0, false);
    /// assert_eq!((record.id.as_str(), record.labels.len()), ("q1", 2));
    /// assert_eq!(s.metrics()?.unwrap().n, 1);
    /// # Ok::<(), lora_ens::Error>(())
    /// ```
    pub fn score_questions(
        &self,
        questions: &[Question],
        spec: &ScoringSpec,
        opts: &ScoreOptions<'_>,
    ) -> Result<QuestionScores> {
        self.check_tokens(questions, spec.mode)?;
        let (texts, options) = questions::layout(questions, spec.mode)?;
        let scores = match spec.mode {
            Scoring::Labels => self.score(&texts, &options, opts),
            Scoring::Choices => self.score_choices(&texts, &options, spec.normalization, opts),
        }
        .map_err(|e| name_question(e, questions))?;
        Ok(QuestionScores {
            scores,
            spec: *spec,
            ids: questions.iter().map(|q| q.id.clone()).collect(),
            labels: questions.iter().map(|q| q.labels.clone()).collect(),
            answers: questions.iter().map(|q| q.answer).collect(),
        })
    }

    /// Refuse, naming the question, a label or answer text the tokenizer turns into no tokens.
    fn check_tokens(&self, questions: &[Question], mode: Scoring) -> Result<()> {
        for q in questions {
            let (what, options, continuation): (&str, &[String], fn(&str) -> String) = match mode {
                Scoring::Labels => ("label", &q.labels, prompt::label_continuation),
                Scoring::Choices => ("choice", &q.choices, prompt::choice_continuation),
            };
            for text in options {
                if text.trim().is_empty()
                    || self
                        .tokenizer
                        .encode(&continuation(text), false)?
                        .is_empty()
                {
                    return Err(Error::Label(format!(
                        "question {}: {what} {text:?} has no tokens in the model's vocabulary",
                        q.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Generate a continuation of `prompt` with the members' averaged next-token
    /// distribution. With `chat`, the prompt is a user message rendered with the model's
    /// chat template.
    ///
    /// ```
    /// use lora_ens::ensemble::Ensemble;
    /// use lora_ens::generate::GenerateOptions;
    /// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    /// let ens = Ensemble::load(dir.join("tiny-q8_0.gguf"), &[dir.join("ensemble")], &candle_core::Device::Cpu)?;
    /// let opts = GenerateOptions { max_new_tokens: 8, temperature: 0.7, seed: 1, ..Default::default() };
    /// let g = ens.generate("Once upon a time", false, &opts)?;
    /// assert!(g.tokens.len() <= 8);
    /// // One entry per generated token: the mixture's entropy and the members' disagreement.
    /// assert_eq!(g.entropy.len(), g.tokens.len());
    /// assert!(g.mutual_information.iter().all(|&mi| mi >= 0.0));
    /// # Ok::<(), lora_ens::Error>(())
    /// ```
    pub fn generate(&self, prompt: &str, chat: bool, opts: &GenerateOptions) -> Result<Generation> {
        let ids = self.prompt_ids(prompt, chat, opts)?;
        self.run(|| {
            generate::generate(
                &self.model,
                &self.tokenizer,
                self.lora.as_ref(),
                &ids,
                &self.stop_ids,
                opts,
            )
        })
    }

    /// [`Ensemble::generate`] for several prompts at once: every step runs one batched
    /// forward pass over all unfinished sequences (each with its members and its own KV
    /// caches), so the weights are read once per step for all of them. Each result equals
    /// the prompt's [`Ensemble::generate`] with the same options (the same seed for each).
    ///
    /// ```
    /// use lora_ens::ensemble::Ensemble;
    /// use lora_ens::generate::GenerateOptions;
    /// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    /// let ens = Ensemble::load(dir.join("tiny-q8_0.gguf"), &[dir.join("ensemble")], &candle_core::Device::Cpu)?;
    /// let opts = GenerateOptions { max_new_tokens: 6, ..Default::default() };
    /// let prompts = ["Once upon a time", "The capital of France is"];
    /// let batch = ens.generate_batch(&prompts, false, &opts)?;
    /// assert_eq!(batch[1].tokens, ens.generate(prompts[1], false, &opts)?.tokens);
    /// # Ok::<(), lora_ens::Error>(())
    /// ```
    pub fn generate_batch<S: AsRef<str>>(
        &self,
        prompts: &[S],
        chat: bool,
        opts: &GenerateOptions,
    ) -> Result<Vec<Generation>> {
        let mut seqs = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ids = self
                    .prompt_ids(p.as_ref(), chat, opts)
                    .map_err(|e| prefix_input(e, &format!("prompt {i}")))?;
                self.start(ids, opts)
            })
            .collect::<Result<Vec<_>>>()?;
        while seqs.iter().any(|d| !d.is_done()) {
            crate::interrupt::check()?;
            let mut refs: Vec<&mut Decoding> = seqs.iter_mut().collect();
            self.step(&mut refs)?;
        }
        Ok(seqs.into_iter().map(Decoding::into_generation).collect())
    }

    /// The token ids `generate` feeds the model for `prompt`, refused when the context
    /// leaves no room to generate.
    fn prompt_ids(&self, prompt: &str, chat: bool, opts: &GenerateOptions) -> Result<Vec<u32>> {
        // The model's own template with its real BOS / EOS text; a BOS the template writes is
        // dropped when the tokenizer adds one (as llama.cpp does), so there is exactly one.
        let ids = if chat {
            self.encode_chat(&[("user", prompt)])?
        } else {
            self.tokenizer.encode(prompt, true)?
        };
        let limit = self.model.config().context_length;
        if ids.len() > limit || (ids.len() == limit && opts.max_new_tokens > 0) {
            return Err(Error::Input(format!(
                "the prompt is {} tokens; the model's context length {limit} leaves no room \
                 to generate",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// The token ids of a conversation (`(role, content)` pairs) rendered with the model's
    /// chat template, the assistant's turn opened: what [`Ensemble::generate`] feeds the model
    /// with `chat`. The template sees the model's real BOS / EOS text; a BOS it writes is
    /// dropped when the tokenizer adds one itself (as llama.cpp does), so there is exactly one.
    pub fn encode_chat(&self, messages: &[(&str, &str)]) -> Result<Vec<u32>> {
        if self.tokenizer.chat_template().is_none() {
            return Err(Error::Input(format!(
                "{}: the model has no chat template",
                self.model_path.display()
            )));
        }
        self.tokenizer.encode_chat(messages, true)
    }

    /// The token ids of a prompt text, as [`Ensemble::generate`] feeds it (BOS included when
    /// the model wants one).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    /// Start decoding after `prompt` (token ids, see [`Ensemble::encode_prompt`]); drive it
    /// with [`Ensemble::step`], alone or together with other sequences. Decoding one
    /// sequence alone to its end gives exactly [`Ensemble::generate`]'s result; decoded
    /// together with others, its numbers agree to float rounding (the batched kernels may
    /// sum in another order).
    ///
    /// ```
    /// use lora_ens::ensemble::Ensemble;
    /// use lora_ens::generate::GenerateOptions;
    /// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    /// let ens = Ensemble::load(dir.join("tiny-q8_0.gguf"), &[dir.join("ensemble")], &candle_core::Device::Cpu)?;
    /// let opts = GenerateOptions { max_new_tokens: 6, ..Default::default() };
    /// let mut a = ens.start(ens.encode_prompt("Once upon a time")?, &opts)?;
    /// let mut b = ens.start(ens.encode_prompt("The sun")?, &opts)?;
    /// let mut text = String::new();
    /// while !(a.is_done() && b.is_done()) {
    ///     let events = ens.step(&mut [&mut a, &mut b])?; // one token of each, one pass
    ///     if let Some(e) = &events[0] {
    ///         text.push_str(&e.text);
    ///     }
    /// }
    /// assert_eq!(text, a.generation().text);
    /// assert_eq!(a.into_generation().tokens, ens.generate("Once upon a time", false, &opts)?.tokens);
    /// # Ok::<(), lora_ens::Error>(())
    /// ```
    pub fn start(&self, prompt: Vec<u32>, opts: &GenerateOptions) -> Result<Decoding> {
        Decoding::new(prompt, self.n_members(), opts)
    }

    /// One token of every unfinished sequence of `seqs` (started by [`Ensemble::start`]), all
    /// in one batched forward pass; one event per sequence, `None` for one already done.
    pub fn step(&self, seqs: &mut [&mut Decoding]) -> Result<Vec<Option<StepEvent>>> {
        self.run(|| {
            generate::step(
                &self.model,
                &self.tokenizer,
                self.lora.as_ref(),
                &self.stop_ids,
                seqs,
            )
        })
    }

    /// The number of members M (0 when the base model runs alone).
    pub fn n_members(&self) -> usize {
        self.members.len()
    }

    /// The members' names (their directory names), in order.
    pub fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// The members' adapters.
    pub fn members(&self) -> &[LoraAdapter] {
        &self.members
    }

    /// The first ensemble manifest loaded, if any (labels, template, training config).
    pub fn manifest(&self) -> Option<&EnsembleManifest> {
        self.manifest.as_ref()
    }

    /// The base model's GGUF file.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// The base model.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The base model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Broadcast a single shared list to all `n` prompts, or check there is one per prompt.
/// The most kernel threads an ensemble runs: the cores this process may use.
pub fn max_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// An error about `prompt {i}` / `context {i}` (the scorer's names) renamed after the
/// question: its id and, when read from a file, its line.
fn name_question(e: Error, questions: &[Question]) -> Error {
    let rename = |msg: String| {
        let named = ["prompt ", "context "].iter().find_map(|p| {
            let rest = msg.strip_prefix(p)?;
            let (index, tail) = rest.split_once(": ")?;
            let q = questions.get(index.parse::<usize>().ok()?)?;
            Some(match q.line {
                0 => format!("question {}: {tail}", q.id),
                line => format!("question {} (line {line}): {tail}", q.id),
            })
        });
        named.unwrap_or(msg)
    };
    match e {
        Error::Input(msg) => Error::Input(rename(msg)),
        Error::Label(msg) => Error::Label(rename(msg)),
        other => other,
    }
}

/// An input error about one of several prompts, saying which.
fn prefix_input(e: Error, which: &str) -> Error {
    match e {
        Error::Input(msg) => Error::Input(format!("{which}: {msg}")),
        other => other,
    }
}

fn per_prompt<'a>(n: usize, lists: &'a [Vec<String>], what: &str) -> Result<Vec<&'a Vec<String>>> {
    match lists.len() {
        1 => Ok(vec![&lists[0]; n]),
        len if len == n => Ok(lists.iter().collect()),
        len => Err(Error::Input(format!(
            "{len} lists of {what} for {n} prompts: give one list per prompt, or one for all"
        ))),
    }
}

#[cfg(test)]
mod tests;
