//! The `lora-ens-rs` command line, as a library: the Rust binary (`main.rs`) and the Python
//! console script (through `lora_ens_rs._core.cli_main`) both call [`run`], so they accept
//! the same arguments and print the same output.

use std::ffi::OsString;
use std::path::PathBuf;

use std::path::Path;

use clap::{Parser, Subcommand};
use lora_ens::chat::Message;
use lora_ens::gguf::GgufFile;
use lora_ens::model::Llama;
use lora_ens::tokenizer::Tokenizer;

/// Subcommands implemented in Python (they need torch); the Rust binary points there.
pub const PYTHON_SUBCOMMANDS: &[&str] = &[];

/// Run LoRA ensembles of LLMs: calibrated predictions with uncertainty from one base model.
#[derive(Debug, Parser)]
#[command(name = "lora-ens-rs", version = lora_ens::VERSION)]
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
    /// Continue a prompt with the base model (greedy decoding) and print the text.
    Generate {
        /// The prompt text (with --chat: the user's message).
        prompt: String,
        /// GGUF model file (default: the default model, fetched on first use).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// The most tokens to generate.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// `cpu` or `cuda:N` (CUDA builds only).
        #[arg(long, default_value = "cpu")]
        device: String,
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
        Command::Generate {
            prompt,
            model,
            chat,
            max_new_tokens,
            device,
        } => {
            let model = match model {
                Some(m) => m,
                None => {
                    lora_ens::default_model::default_model_path(ctx.python.as_deref(), &progress)?
                }
            };
            let text = generate(&model, &prompt, chat, max_new_tokens, &device)?;
            println!("{text}");
        }
    }
    Ok(())
}

fn generate(
    model: &Path,
    prompt: &str,
    chat: bool,
    max_new_tokens: usize,
    device: &str,
) -> lora_ens::Result<String> {
    let device = lora_ens::device::parse_device(device)?;
    let mut gguf = GgufFile::open(model)?;
    let tok = Tokenizer::from_gguf(&gguf)?;
    let llama = Llama::load(&mut gguf, &device)?;
    let text = if chat {
        let template = tok.chat_template().ok_or_else(|| {
            lora_ens::Error::Input(format!(
                "{}: the model has no chat template (drop --chat)",
                model.display()
            ))
        })?;
        lora_ens::chat::render(template, &[Message::new("user", prompt)], true, "", "")?
    } else {
        prompt.to_owned()
    };
    let ids = tok.encode(&text, true)?;
    let stops: Vec<u32> = tok
        .eos_id()
        .into_iter()
        .chain(tok.token_to_id("<|im_end|>"))
        .collect();
    let mut out = llama.generate_greedy(&ids, max_new_tokens, &stops)?;
    if out.last().is_some_and(|id| stops.contains(id)) {
        out.pop();
    }
    tok.decode(&out, true)
}
