//! The `lora-ens-rs` command line, as a library: the Rust binary (`main.rs`) and the Python
//! console script (through `lora_ens_rs._core.cli_main`) both call [`run`], so they accept
//! the same arguments and print the same output.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

/// Subcommands implemented in Python (they need torch); the Rust binary points there.
pub const PYTHON_SUBCOMMANDS: &[&str] = &[];

/// Run LoRA ensembles of LLMs: calibrated predictions with uncertainty from one base model.
#[derive(Debug, Parser)]
#[command(name = "lora-ens-rs", version = lora_ens::VERSION, about, long_about = None)]
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
}

/// What the embedding program knows that the command line does not.
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// The Python interpreter whose pip fetches the default model (the console script
    /// passes its own `sys.executable`).
    pub python: Option<String>,
}

/// Parse `argv` (program name first) and run the command. Returns the process exit code;
/// errors are printed to stderr as one line.
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
    match execute(cli, ctx) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn execute(cli: Cli, ctx: &Context) -> lora_ens::Result<()> {
    let progress = |msg: &str| eprintln!("{msg}");
    match cli.command {
        Command::FetchModel { force } => {
            let path = if force {
                lora_ens::default_model::fetch(ctx.python.as_deref(), &progress)?
            } else {
                lora_ens::default_model::default_model_path(ctx.python.as_deref(), &progress)?
            };
            println!("{}", path.display());
        }
    }
    Ok(())
}
