//! `lora-ens-rs infer`: read multiple-choice questions (a file or stdin; CommonsenseQA /
//! OpenBookQA / ARC JSONL, MMLU CSV or generic JSONL), score them with the ensemble and write
//! one JSON line per question ([`crate::records`]), atomically when `--output` is a file
//! ([`crate::output`]). With answers in the input, a summary of the metrics goes to stderr.
//! Test: `cargo test -p lora-ens-cli --test infer` and `pytest tests/test_cli_infer.py`.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use lora_ens::data::{self, Format, Question};
use lora_ens::ensemble::Ensemble;
use lora_ens::lora::EnsembleManifest;
use lora_ens::score::{Normalization, ScoreOptions, Scores};
use lora_ens::{Error, Result, prompt};
use serde_json::Value;

use crate::options::{self, ArgSpec};
use crate::output::Output;
use crate::progress::Progress;
use crate::{Context, ModelArgs, records};

/// The name under which questions read from stdin appear in messages.
pub const STDIN_NAME: &str = "<stdin>";

/// How a question is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scoring {
    /// The lettered prompt (`A. ...`, `B. ...`, `Answer:`), scored on the label token.
    Labels,
    /// Each answer text as a continuation of `Question: ...\nAnswer:`.
    Choices,
}

impl Scoring {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "labels" => Some(Scoring::Labels),
            "choices" => Some(Scoring::Choices),
            _ => None,
        }
    }
}

/// Arguments of `infer` (the output's keys are listed in [`crate::records`]).
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Output: one JSON object per question and line, in input order: \
    id, labels, probs, prediction, confidence, entropy, expected_entropy, mutual_information, \
    agreement; answer and correct when the input has answers; member_probs with --members. \
    With answers, `accuracy .. nll .. ece .. brier .. (N questions, M members)` is printed to \
    stderr."
)]
pub struct InferArgs {
    /// Questions file (.jsonl or MMLU .csv); `-` or none: read stdin.
    #[arg(value_name = "INPUT")]
    pub input: Option<PathBuf>,
    #[arg(long, spec = &options::FORMAT)]
    pub format: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, spec = &options::SCORING)]
    pub scoring: Option<Scoring>,
    #[arg(long, spec = &options::NORMALIZATION)]
    pub normalization: Option<String>,
    #[arg(long, spec = &options::BATCH_SIZE)]
    pub batch_size: u64,
    #[arg(long, spec = &options::LIMIT)]
    pub limit: Option<u64>,
    /// Write the records to this file (replaced only when everything succeeded) instead of
    /// stdout.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Include each member's probabilities (`member_probs`, one list per member).
    #[arg(long)]
    pub members: bool,
    /// Print nothing on stderr but errors: no progress bar, no download messages, no summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Run `infer`.
pub fn run(args: &InferArgs, ctx: &Context) -> Result<()> {
    // Cheap checks first: the device, the input and the output's directory, before a model
    // is fetched or loaded.
    let device = args.model.device()?;
    let format = args.format.as_deref().map(Format::from_name).transpose()?;
    let limit = args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let from_stdin = args.input.as_deref().is_none_or(|p| p.as_os_str() == "-");
    if from_stdin && !args.quiet && std::io::stdin().is_terminal() {
        eprintln!("reading questions from stdin (end with Ctrl-D)");
    }
    let (source, questions) = read_input(args.input.as_deref(), format, limit)?;
    let mut output = Output::create(args.output.as_deref())?;

    let quiet = args.quiet;
    let say = |msg: &str| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    let ens = args.model.load(&device, ctx, &say)?;
    let (scoring, norm) = scoring_of(&ens, args.scoring, args.normalization.as_deref())?;
    check_tokens(&ens, &source, &questions, scoring)?;

    let bar = Progress::on_stderr("scoring", quiet);
    let report = |done: usize, total: usize| bar.update(done, total);
    let opts = ScoreOptions {
        batch_size: usize::try_from(args.batch_size).unwrap_or(usize::MAX),
        progress: Some(&report),
    };
    let scores = score(&ens, &questions, scoring, norm, &opts)?;
    bar.finish();

    let metrics = records::metrics(&questions, &scores)?;
    for (i, q) in questions.iter().enumerate() {
        let line = records::to_line(&records::record(q, &scores, i, args.members))?;
        output.write_line(&line)?;
    }
    output.commit()?;
    if let Some(m) = metrics {
        say(&records::summary(&m, scores.reduced.n_members));
    }
    Ok(())
}

/// The questions of `input` (a file; `-` or `None`: stdin) and the name to report them by.
pub fn read_input(
    input: Option<&Path>,
    format: Option<Format>,
    limit: Option<usize>,
) -> Result<(PathBuf, Vec<Question>)> {
    match input.filter(|p| p.as_os_str() != "-") {
        Some(path) => Ok((
            path.to_path_buf(),
            data::read_questions(path, format, limit)?,
        )),
        None => {
            let source = PathBuf::from(STDIN_NAME);
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io(&source, e))?;
            let text = String::from_utf8(bytes).map_err(|e| Error::Data {
                path: source.clone(),
                line: 0,
                reason: format!("not UTF-8 text: {}", e.utf8_error()),
            })?;
            let questions = data::parse_questions(&text, &source, format, limit)?;
            Ok((source, questions))
        }
    }
}

/// The scoring mode and normalization: the flags, else the first ensemble manifest's
/// `"scoring": {"mode": ..., "normalization": ...}`, else `choices` and `per_token`.
pub fn scoring_of(
    ens: &Ensemble,
    mode: Option<Scoring>,
    normalization: Option<&str>,
) -> Result<(Scoring, Normalization)> {
    let (manifest_mode, manifest_norm) = match ens.manifest() {
        Some(m) => manifest_scoring(m)?,
        None => (None, None),
    };
    let norm = match normalization {
        Some(name) => Normalization::from_name(name)?,
        None => manifest_norm.unwrap_or(Normalization::PerToken),
    };
    Ok((mode.or(manifest_mode).unwrap_or(Scoring::Choices), norm))
}

/// The `scoring` entry of a manifest, checked.
fn manifest_scoring(m: &EnsembleManifest) -> Result<(Option<Scoring>, Option<Normalization>)> {
    let bad = |reason: String| Error::Adapter {
        path: m.path.clone(),
        reason,
    };
    let scoring = match m.extra.get("scoring") {
        None | Some(Value::Null) => return Ok((None, None)),
        Some(Value::Object(o)) => o,
        Some(v) => return Err(bad(format!("`scoring` must be an object, got {v}"))),
    };
    let mode = match scoring.get("mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Scoring::from_name(s).ok_or_else(|| {
            bad(format!(
                "`scoring.mode` must be \"labels\" or \"choices\", got {s:?}"
            ))
        })?),
        Some(v) => return Err(bad(format!("`scoring.mode` must be a string, got {v}"))),
    };
    let norm = match scoring.get("normalization") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            Normalization::from_name(s)
                .map_err(|e| bad(format!("`scoring.normalization`: {e}")))?,
        ),
        Some(v) => {
            return Err(bad(format!(
                "`scoring.normalization` must be a string, got {v}"
            )));
        }
    };
    Ok((mode, norm))
}

/// Refuse, naming the question, a label or answer text the tokenizer turns into no tokens.
fn check_tokens(
    ens: &Ensemble,
    source: &Path,
    questions: &[Question],
    scoring: Scoring,
) -> Result<()> {
    let tok = ens.tokenizer();
    for q in questions {
        let (what, options, continuation): (&str, &[String], fn(&str) -> String) = match scoring {
            Scoring::Labels => ("label", &q.labels, prompt::label_continuation),
            Scoring::Choices => ("choice", &q.choices, prompt::choice_continuation),
        };
        for text in options {
            if text.trim().is_empty() || tok.encode(&continuation(text), false)?.is_empty() {
                return Err(Error::Data {
                    path: source.to_path_buf(),
                    line: 0,
                    reason: format!(
                        "question {}: {what} {text:?} has no tokens in the model's vocabulary",
                        q.id
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Score `questions` as `scoring` says; this is exactly [`Ensemble::score`] on
/// [`prompt::label_prompt`]s, or [`Ensemble::score_choices`] on [`prompt::choice_context`]s.
pub fn score(
    ens: &Ensemble,
    questions: &[Question],
    scoring: Scoring,
    norm: Normalization,
    opts: &ScoreOptions<'_>,
) -> Result<Scores> {
    match scoring {
        Scoring::Labels => {
            let prompts = questions
                .iter()
                .map(|q| {
                    prompt::label_prompt(&q.question, &q.choices, &q.labels)
                        .map_err(|e| Error::Input(format!("question {}: {e}", q.id)))
                })
                .collect::<Result<Vec<_>>>()?;
            let labels: Vec<Vec<String>> = questions.iter().map(|q| q.labels.clone()).collect();
            ens.score(&prompts, &labels, opts)
        }
        Scoring::Choices => {
            let contexts: Vec<String> = questions
                .iter()
                .map(|q| prompt::choice_context(&q.question))
                .collect();
            let choices: Vec<Vec<String>> = questions.iter().map(|q| q.choices.clone()).collect();
            ens.score_choices(&contexts, &choices, norm, opts)
        }
    }
}
