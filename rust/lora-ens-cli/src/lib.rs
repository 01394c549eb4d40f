//! The `lora-ens-rs` command line, as a library: the Rust binary (`main.rs`) and the Python
//! console script (through `lora_ens_rs._core.cli_main`) both call [`run`], so they accept
//! the same arguments and print the same output. [`Command`] is the one table of subcommands:
//! `fetch-model`, `infer` ([`infer`]), `generate` ([`generate`]) and `serve` ([`serve`]) run
//! here; `train`, `eval`, `experiment` and `convert` need torch and run in the Python package,
//! whose console script dispatches them before calling [`run`]. Options shared between subcommands are defined once, in
//! [`options`]. Exit status: 0 success, 1 error (`error: <message>` on stderr), 2 usage error
//! (the command line does not parse, or names a Python subcommand without the package), 130
//! interrupted (Ctrl-C / SIGTERM; checked between batches, nothing is written).
//! Test: `cargo test -p lora-ens-cli` and `pytest tests/test_cli.py tests/test_cli_infer.py`.

pub mod default_model;
pub mod generate;
pub mod infer;
pub mod options;
pub mod output;
pub mod progress;
pub mod serve;

use std::ffi::OsString;
use std::path::PathBuf;

use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use lora_ens::ensemble::Ensemble;

use crate::options::ArgSpec;

/// Subcommands implemented in Python (they need torch); the Rust binary points there.
pub const PYTHON_SUBCOMMANDS: &[&str] = &["train", "eval", "experiment", "convert"];

/// Exit status of a run that succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit status of a run that failed (bad input, a missing file, a model that does not load).
pub const EXIT_ERROR: i32 = 1;
/// Exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it);
/// it stops between batches and writes no output.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit status of a command line that does not parse (unknown flag, bad value, missing
/// argument), and of a Python subcommand run without the Python package.
pub const EXIT_USAGE: i32 = 2;

/// Run LoRA ensembles of LLMs: calibrated predictions with uncertainty from one base model.
#[derive(Debug, Parser)]
#[command(
    name = "lora-ens-rs",
    version = lora_ens::VERSION,
    after_help = "train, eval, experiment and convert need torch: they run in the Python package's \
                  `lora-ens-rs` (pip install 'lora-ens-rs[train]'), where \
                  `lora-ens-rs train --help` lists their options.\n\
                  Exit status: 0 on success, 1 on an error (one line `error: ...` on stderr), \
                  2 on a usage error, 130 when interrupted."
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
    /// Serve the ensemble over HTTP: OpenAI-compatible completions and chat with each
    /// token's uncertainty, question scoring with infer's records, metrics.
    Serve(serve::ServeArgs),
    /// Train M LoRA adapters (different seeds) on one frozen base model and write them as an
    /// ensemble directory (PEFT members + ensemble.json). Python package, needs torch.
    #[command(disable_help_flag = true)]
    Train(PythonArgs),
    /// Evaluate an ensemble against its members and the zero-shot base model: accuracy, NLL,
    /// ECE, Brier, member disagreement and OOD detection, with a report. Python package.
    #[command(disable_help_flag = true)]
    Eval(PythonArgs),
    /// Run the LoRA-ensemble experiment grid (tasks x scoring modes x regularisers) and write
    /// results.md with plots. Python package, needs torch.
    #[command(disable_help_flag = true)]
    Experiment(PythonArgs),
    /// Convert a Hugging Face checkpoint (safetensors + config + tokenizer) to a GGUF file for
    /// the engine, f32 to K-quants, recording the checkpoint's identity. Python package.
    #[command(disable_help_flag = true)]
    Convert(PythonArgs),
}

impl Command {
    /// The name of a subcommand that runs in the Python package, `None` for the others.
    pub fn python_name(&self) -> Option<&'static str> {
        match self {
            Command::Train(_) => Some("train"),
            Command::Eval(_) => Some("eval"),
            Command::Experiment(_) => Some("experiment"),
            Command::Convert(_) => Some("convert"),
            Command::FetchModel { .. }
            | Command::Infer(_)
            | Command::Generate(_)
            | Command::Serve(_) => None,
        }
    }
}

/// The arguments of a subcommand that runs in Python, passed through unparsed (its own
/// parser, built from [`options`] for the shared ones, checks them).
#[derive(Debug, Clone, Args)]
pub struct PythonArgs {
    /// Arguments of the Python subcommand (`--help` lists them).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

/// Each subcommand's name, one-line description and whether it runs in Python, in `--help`
/// order: the table the Python console script dispatches by.
pub fn subcommands() -> Vec<(String, String, bool)> {
    use clap::CommandFactory;
    Cli::command()
        .get_subcommands()
        .map(|c| {
            let name = c.get_name().to_owned();
            let about = c.get_about().map(ToString::to_string).unwrap_or_default();
            let python = PYTHON_SUBCOMMANDS.contains(&name.as_str());
            (name, about, python)
        })
        .collect()
}

/// The base model and its members, shared by `infer` and `generate`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    #[arg(long, spec = &options::MODEL)]
    pub model: Option<PathBuf>,
    #[arg(long, spec = &options::ADAPTERS)]
    pub adapters: Vec<PathBuf>,
    #[arg(long, spec = &options::DEVICE)]
    pub device: String,
    #[arg(long, spec = &options::THREADS)]
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
            Some(n) => {
                let cores = lora_ens::ensemble::max_threads();
                if n > cores as u64 {
                    progress(&format!(
                        "warning: --threads {n} is more than the {cores} cores; using {cores}"
                    ));
                }
                ens.with_threads(usize::try_from(n).unwrap_or(usize::MAX))
            }
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
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help / version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return e.exit_code();
        }
    };
    if let Some(sub) = cli.command.python_name() {
        eprintln!(
            "error: `{sub}` needs torch and runs in the Python package: install it with \
             `pip install 'lora-ens-rs[train]'` and run its `lora-ens-rs {sub}` \
             (or `python -m lora_ens_rs {sub}`)"
        );
        return EXIT_USAGE;
    }
    match execute(cli, ctx) {
        Ok(()) => EXIT_OK,
        Err(lora_ens::Error::Interrupted) => {
            eprintln!("error: interrupted; nothing was written");
            EXIT_INTERRUPTED
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            EXIT_ERROR
        }
    }
}

/// Run a parsed command line; the error is what [`run`] prints. The Python subcommands
/// are refused with an [`lora_ens::Error::Input`] (the console script never passes them here).
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
        Command::Serve(args) => serve::run(&args, ctx),
        Command::Train(_) | Command::Eval(_) | Command::Experiment(_) | Command::Convert(_) => {
            Err(lora_ens::Error::Input(format!(
                "`{}` runs in the Python package (`python -m lora_ens_rs`)",
                cli.command.python_name().unwrap_or_default()
            )))
        }
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
    fn the_command_table_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let names: Vec<String> = subcommands().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(
            names,
            [
                "fetch-model",
                "infer",
                "generate",
                "serve",
                "train",
                "eval",
                "experiment",
                "convert"
            ]
        );
        let python: Vec<String> = subcommands()
            .into_iter()
            .filter(|(_, about, python)| {
                assert!(!about.is_empty());
                *python
            })
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(python, PYTHON_SUBCOMMANDS);
    }

    #[test]
    fn help_lists_every_subcommand() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        for (name, _, _) in subcommands() {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{name} "))),
                "`{name}` missing from --help:\n{help}"
            );
        }
    }

    #[test]
    fn python_subcommands_take_their_arguments_unparsed() {
        let cli =
            Cli::try_parse_from(["lora-ens-rs", "train", "data.jsonl", "--help", "--out", "x"])
                .unwrap();
        let Command::Train(args) = &cli.command else {
            panic!("expected train");
        };
        assert_eq!(args.args, ["data.jsonl", "--help", "--out", "x"]);
        assert_eq!(cli.command.python_name(), Some("train"));
        assert_eq!(
            run(["lora-ens-rs", "eval", "--data", "x"], &Context::default()),
            2
        );
    }

    /// Every flag named like a shared option is that option, as [`options`] defines it.
    #[test]
    fn shared_options_are_the_specs() {
        use clap::CommandFactory;
        let mut seen = std::collections::BTreeSet::new();
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(spec) = arg.get_long().and_then(options::spec) else {
                    continue;
                };
                seen.insert(spec.name);
                let what = format!("{} --{}", sub.get_name(), spec.name);
                assert_eq!(
                    arg.get_help().map(ToString::to_string),
                    Some(spec.full_help()),
                    "{what}"
                );
                let value_names: Vec<String> = arg
                    .get_value_names()
                    .unwrap_or_default()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                assert_eq!(value_names, [spec.value_name], "{what}");
                let defaults: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|d| d.to_string_lossy().into_owned())
                    .collect();
                assert_eq!(defaults, spec.default.as_slice(), "{what}");
                let choices: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_owned())
                    .collect();
                assert_eq!(choices, spec.choices, "{what}");
            }
        }
        let all: std::collections::BTreeSet<_> = options::SHARED.iter().map(|s| s.name).collect();
        assert_eq!(
            seen, all,
            "every shared option is used by a Rust subcommand"
        );
    }

    #[test]
    fn shared_options_parse_into_their_fields() {
        let cli = Cli::try_parse_from([
            "lora-ens-rs",
            "infer",
            "q.jsonl",
            "--model",
            "m.gguf",
            "--adapters",
            "e",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--scoring",
            "labels",
            "--normalization",
            "sum",
            "--batch-size",
            "3",
            "--limit",
            "5",
            "--format",
            "csqa",
        ])
        .unwrap();
        let Command::Infer(a) = cli.command else {
            panic!("expected infer");
        };
        assert_eq!(
            a.model.model.as_deref(),
            Some(std::path::Path::new("m.gguf"))
        );
        assert_eq!(a.model.adapters, [PathBuf::from("e")]);
        assert_eq!((a.model.device.as_str(), a.model.threads), ("cpu", Some(2)));
        assert_eq!(a.scoring, Some(infer::ScoringArg::Labels));
        assert_eq!(a.normalization.as_deref(), Some("sum"));
        assert_eq!((a.batch_size, a.limit), (3, Some(5)));
        assert_eq!(a.format.as_deref(), Some("csqa"));
        let cli = Cli::try_parse_from(["lora-ens-rs", "infer"]).unwrap();
        let Command::Infer(a) = cli.command else {
            panic!("expected infer");
        };
        assert_eq!((a.batch_size, a.model.device.as_str()), (16, "cpu"));
        assert_eq!((a.scoring, a.limit, a.model.threads), (None, None, None));
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
        assert_eq!(code(&["infer", "--threads", "0"]), 2);
        assert_eq!(code(&["infer", "--normalization", "mean"]), 2);
        assert_eq!(code(&["infer", "--batch-size", "-1"]), 2);
        let e = Cli::try_parse_from(["lora-ens-rs", "infer", "--limit", "-3"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid value '-3' for '--limit <N>'"),
            "{e}"
        );
    }
}
