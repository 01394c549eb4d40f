//! The `lora-ens-rs` command line, as a library: the Rust binary (`main.rs`) and the Python
//! console script (through `lora_ens_rs._core.cli_main`) both call [`run`], so they accept
//! the same arguments and print the same output. Subcommands: `fetch-model`, `infer`
//! ([`infer`]) and `generate` ([`generate`]).
//! Test: `cargo test -p lora-ens-cli` and `pytest tests/test_cli.py tests/test_cli_infer.py`.

pub mod default_model;
pub mod generate;
pub mod infer;
pub mod output;
pub mod progress;
pub mod records;

use std::ffi::OsString;
use std::path::PathBuf;

use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use lora_ens::ensemble::Ensemble;

/// Subcommands implemented in Python (they need torch); the Rust binary points there.
pub const PYTHON_SUBCOMMANDS: &[&str] = &["train", "eval", "experiment"];

/// Run LoRA ensembles of LLMs: calibrated predictions with uncertainty from one base model.
#[derive(Debug, Parser)]
#[command(
    name = "lora-ens-rs",
    version = lora_ens::VERSION,
    after_help = "Training and evaluation (train, eval, experiment) need torch: they run in the \
                  Python package's `lora-ens-rs` (pip install 'lora-ens-rs[train]'); \
                  `lora-ens-rs train --help` there lists their options."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download the default model (SmolLM2-135M-Instruct Q4_1 GGUF) into the cache and print its path.
    FetchModel {
        /// Fetch again even if a verified copy is cached.
        #[arg(long)]
        force: bool,
    },
    /// Answer multiple-choice questions with the ensemble: one JSON line per question with
    /// the ensemble's probabilities, prediction and uncertainty.
    Infer(infer::InferArgs),
    /// Continue a prompt with the ensemble (members' next-token distributions averaged) and
    /// print the text.
    Generate(generate::GenerateArgs),
}

/// The base model and its members, shared by `infer` and `generate`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// GGUF model file (default: the default model, fetched on first use).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// An ensemble directory (with `ensemble.json`) or one PEFT adapter directory; repeat
    /// the flag for several (`--adapters ens --adapters extra-member`). None: the base model
    /// alone.
    #[arg(long, value_name = "DIR")]
    pub adapters: Vec<PathBuf>,
    /// `cpu` or `cuda:N` (CUDA builds only).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads for the model's kernels (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
}

impl ModelArgs {
    /// The device named by `--device`.
    pub fn device(&self) -> lora_ens::Result<Device> {
        lora_ens::device::parse_device(&self.device)
    }

    /// Load the model and members onto `device`; `progress` reports a download of the
    /// default model.
    pub fn load(
        &self,
        device: &Device,
        ctx: &Context,
        progress: &dyn Fn(&str),
    ) -> lora_ens::Result<Ensemble> {
        let model = match &self.model {
            Some(model) => model.clone(),
            None => default_model::default_model_path(ctx.python.as_deref(), progress)?,
        };
        let ens = Ensemble::load(model, &self.adapters, device)?;
        match self.threads {
            Some(n) => ens.with_threads(usize::try_from(n).unwrap_or(usize::MAX)),
            None => Ok(ens),
        }
    }
}

/// What the embedding program knows that the command line does not.
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// The Python interpreter whose pip fetches the default model (the console script
    /// passes its own `sys.executable`).
    pub python: Option<String>,
}

/// Parse `argv` (program name first) and run the command. Returns the process exit code:
/// 0 on success, 1 on an error (printed to stderr as one line `error: <message>`), 2 on a
/// usage error (printed by the argument parser).
pub fn run<I, T>(argv: I, ctx: &Context) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    if let Some(sub) = argv.get(1).and_then(|a| a.to_str())
        && PYTHON_SUBCOMMANDS.contains(&sub)
    {
        eprintln!(
            "error: `{sub}` needs torch and runs in the Python package: install it with \
             `pip install 'lora-ens-rs[train]'` and run its `lora-ens-rs {sub}` \
             (or `python -m lora_ens_rs {sub}`)"
        );
        return 2;
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help / version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return e.exit_code();
        }
    };
    match execute(cli, ctx) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            1
        }
    }
}

/// Run a parsed command line; the error is what [`run`] prints.
pub fn execute(cli: Cli, ctx: &Context) -> lora_ens::Result<()> {
    let progress = |msg: &str| eprintln!("{msg}");
    match cli.command {
        Command::FetchModel { force } => {
            let path = if force {
                default_model::fetch(ctx.python.as_deref(), &progress)?
            } else {
                default_model::default_model_path(ctx.python.as_deref(), &progress)?
            };
            println!("{}", path.display());
            Ok(())
        }
        Command::Infer(args) => infer::run(&args, ctx),
        Command::Generate(args) => generate::run(&args, ctx),
    }
}

/// An error message on one line: line breaks (e.g. from a wrapped library message) become
/// spaces.
fn one_line(msg: &str) -> String {
    msg.split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_folded_onto_one_line() {
        assert_eq!(one_line("a\n  b\r\nc"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn adapters_take_one_directory_per_flag() {
        let cli = Cli::try_parse_from([
            "lora-ens-rs",
            "infer",
            "--adapters",
            "ens",
            "--adapters",
            "m3",
            "data.jsonl",
        ])
        .unwrap();
        let Command::Infer(args) = cli.command else {
            panic!("expected infer");
        };
        assert_eq!(args.model.adapters, [PathBuf::from("ens"), "m3".into()]);
        assert_eq!(
            args.input.as_deref(),
            Some(std::path::Path::new("data.jsonl"))
        );
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let code = |args: &[&str]| {
            let argv = std::iter::once(&"lora-ens-rs").chain(args);
            Cli::try_parse_from(argv).unwrap_err().exit_code()
        };
        assert_eq!(code(&["infer", "--scoring", "x"]), 2);
        assert_eq!(code(&["infer", "--batch-size", "0"]), 2);
        assert_eq!(code(&["infer", "--limit", "0"]), 2);
        assert_eq!(code(&["infer", "--format", "xml"]), 2);
        assert_eq!(code(&["generate"]), 2);
    }
}
