//! `lora-ens-rs infer`: read multiple-choice questions (a file or stdin; CommonsenseQA /
//! OpenBookQA / ARC JSONL, MMLU CSV or generic JSONL), score them with the ensemble and write
//! one JSON line per question (the engine's [`lora_ens::questions::Record`]), atomically when `--output` is a file
//! ([`crate::output`]). With answers in the input, a summary of the metrics goes to stderr.
//! Test: `cargo test -p lora-ens-cli --test infer` and `pytest tests/test_cli_infer.py`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use lora_ens::data::{self, Format, Question};
use lora_ens::questions::{self, Scoring, ScoringSpec};
use lora_ens::score::{Normalization, ScoreOptions};
use lora_ens::{Error, Result};

use crate::options::{self, ArgSpec};
use crate::output::Output;
use crate::progress::Progress;
use crate::{Context, ModelArgs};

/// How a question is scored (the engine's [`Scoring`], as a command-line value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScoringArg {
    /// The lettered prompt (`A. ...`, `B. ...`, `Answer:`), scored on the label token.
    Labels,
    /// Each answer text as a continuation of `Question: ...\nAnswer:`.
    Choices,
}

impl From<ScoringArg> for Scoring {
    fn from(a: ScoringArg) -> Self {
        match a {
            ScoringArg::Labels => Scoring::Labels,
            ScoringArg::Choices => Scoring::Choices,
        }
    }
}

/// The name under which questions read from stdin appear in messages.
pub const STDIN_NAME: &str = "<stdin>";

/// Arguments of `infer` (the output's keys are [`lora_ens::questions::Record`]'s).
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Output: one JSON object per question and line, in input order: \
    id, labels, probs, prediction, prediction_index, confidence, entropy, expected_entropy, \
    mutual_information, agreement; answer and correct when the input has answers; member_probs \
    with --members; schema_version (the README documents each field). With answers, \
    `accuracy .. nll .. ece .. brier .. (N questions, M members)` is printed to stderr."
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
    pub scoring: Option<ScoringArg>,
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
    let spec = scoring_spec(args, ens.manifest())?;
    if let Some(note) = spec.overrides() {
        say(&format!("note: {note} (ensemble.json)"));
    }

    let bar = Progress::on_stderr("scoring", quiet);
    let report = |done: usize, total: usize| bar.update(done, total);
    let opts = ScoreOptions {
        batch_size: usize::try_from(args.batch_size).unwrap_or(usize::MAX),
        progress: Some(&report),
    };
    let scores = ens
        .score_questions(&questions, &spec, &opts)
        .map_err(|e| name_source(e, &source))?;
    bar.finish();

    let metrics = scores.metrics()?;
    for i in 0..scores.len() {
        output.write_line(&scores.record(i, args.members).to_json()?)?;
    }
    output.commit()?;
    if let Some(m) = metrics {
        say(&questions::summary(&m, scores.scores.reduced.n_members));
    }
    Ok(())
}

/// The scoring spec of `args`: the flags, else the ensemble manifest's, else the defaults.
pub fn scoring_spec(
    args: &InferArgs,
    manifest: Option<&lora_ens::EnsembleManifest>,
) -> Result<ScoringSpec> {
    let norm = args
        .normalization
        .as_deref()
        .map(Normalization::from_name)
        .transpose()?;
    Ok(ScoringSpec::resolve(
        args.scoring.map(Scoring::from),
        norm,
        manifest,
    ))
}

/// A question the engine refused, named with the file it came from.
fn name_source(e: Error, source: &Path) -> Error {
    match e {
        Error::Label(reason) | Error::Input(reason) => Error::Data {
            path: source.to_path_buf(),
            line: 0,
            reason,
        },
        other => other,
    }
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
            let refuse = |reason: String| Error::Data {
                path: source.clone(),
                line: 0,
                reason,
            };
            let bytes = lora_ens::io::read_stream(
                std::io::stdin().lock(),
                &source,
                lora_ens::io::MAX_QUESTION_FILE_BYTES,
                &refuse,
            )?;
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
