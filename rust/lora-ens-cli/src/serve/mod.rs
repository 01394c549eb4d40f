//! `lora-ens-rs serve`: the ensemble as an HTTP service. OpenAI-compatible
//! `POST /v1/completions` and `POST /v1/chat/completions` (streaming included) whose every
//! generated token also carries the ensemble's uncertainty (`choices[].uncertainty`),
//! `POST /v1/score` (questions in, `infer`'s records out), `GET /v1/models`, `GET /health`
//! and `GET /metrics` (Prometheus text). One worker owns the model ([`engine`]); requests
//! queue (bounded: 429 with `Retry-After` when full) and run batched. Binds 127.0.0.1 unless
//! `--host`; `--api-key` requires `Authorization: Bearer KEY`. SIGTERM or Ctrl-C stops
//! accepting, finishes the requests in flight and exits 0.
//!
//! To serve the engine inside another axum application, build an [`Engine`] and nest
//! [`router`] (see `examples/embed_axum.rs`).
//! Test: `pytest tests/test_serve.py` and `cargo test -p lora-ens-cli --test serve`.

pub mod api;
pub mod engine;
pub mod metrics;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use lora_ens::{Error, Result};

pub use api::{ServerState, router};
pub use engine::{Engine, Limits};

use crate::options::{self, ArgSpec};
use crate::{Context, ModelArgs};

/// Arguments of `serve`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Endpoints: POST /v1/completions, POST /v1/chat/completions (OpenAI shapes, \
    stream: true for server-sent events; each generated token's entropy, expected_entropy and \
    mutual_information in choices[].uncertainty), POST /v1/score (generic JSONL question \
    objects in, infer's records out; ?scoring=, ?normalization=, ?members=true), \
    GET /v1/models, GET /health, GET /metrics. The README documents the fields."
)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on; anything but a loopback address exposes the server to the
    /// network (use --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health (default: the
    /// LORA_ENS_RS_API_KEY environment variable, which other users cannot read in the
    /// process list as they can a command-line argument).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The model id clients name in requests (default: the ensemble directory's name, else
    /// the GGUF file's stem).
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    #[arg(long, spec = &options::BATCH_SIZE)]
    pub batch_size: u64,
    /// Requests waiting to start before new ones are answered 429.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,
    /// Generations decoded together (one token each per batched forward pass).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_generations: u64,
    /// The largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens: u64,
    /// The longest prompt in tokens (default: the model's context length minus one).
    #[arg(long, value_name = "N")]
    pub max_prompt_tokens: Option<u64>,
    /// The largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes: u64,
    /// The most questions in one /v1/score request.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_questions: u64,
    /// Seconds a request may run before it is answered 504 and its work dropped.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Pause this many milliseconds after every decoding step (for testing under load).
    #[arg(long, default_value_t = 0, hide = true)]
    pub step_delay_ms: u64,
}

fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl ServeArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_queue: size(self.max_queue),
            max_generations: size(self.max_generations),
            max_batch_questions: size(self.batch_size).saturating_mul(4).max(1),
            score_batch_size: size(self.batch_size).max(1),
            max_tokens: size(self.max_tokens),
            max_prompt_tokens: self.max_prompt_tokens.map_or(usize::MAX, size),
            max_body_bytes: size(self.max_body_bytes),
            max_questions: size(self.max_questions),
            request_timeout: Duration::from_secs(self.timeout),
            step_delay: Duration::from_millis(self.step_delay_ms),
        }
    }
}

/// The environment variable `--api-key` defaults to.
pub const API_KEY_ENV: &str = "LORA_ENS_RS_API_KEY";

/// Run `serve` until SIGTERM / Ctrl-C.
pub fn run(args: &ServeArgs, ctx: &Context) -> Result<()> {
    restore_default_signals();
    let device = args.model.device()?;
    let api_key = match &args.api_key {
        Some(key) => Some(key.clone()),
        None => match std::env::var(API_KEY_ENV) {
            Ok(key) => Some(key),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::Input(format!("{API_KEY_ENV} is not valid UTF-8")));
            }
        },
    };
    if !args.host.is_loopback() {
        eprintln!(
            "warning: listening on {}, reachable from the network{}",
            args.host,
            if api_key.is_some() {
                ""
            } else {
                " without an API key (--api-key)"
            }
        );
    }
    if api_key.as_deref().is_some_and(str::is_empty) {
        return Err(Error::Input(format!(
            "the API key (--api-key or {API_KEY_ENV}) must not be empty"
        )));
    }
    let ens = args.model.load(&device, ctx, &|msg| eprintln!("{msg}"))?;
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        let from = args.model.adapters.first().cloned().unwrap_or_else(|| {
            ens.model_path()
                .with_extension("")
                .file_name()
                .map(Into::into)
                .unwrap_or_default()
        });
        from.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lora-ens".to_owned())
    });
    let engine = Engine::start(ens, args.limits())?;
    let state = ServerState::new(Arc::clone(&engine), name, api_key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Input(format!("cannot start the server's runtime: {e}")))?;
    let addr = SocketAddr::new(args.host, args.port);
    let n_members = engine.ensemble().n_members();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Input(format!("cannot read the listening address: {e}")))?;
        eprintln!(
            "listening on http://{local} (model {}, {} members)",
            state.model_id(),
            n_members
        );
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| Error::Input(format!("the server failed: {e}")))
    })?;
    eprintln!("shutting down: finishing queued work");
    engine.shutdown();
    eprintln!("stopped");
    Ok(())
}

/// The binary's handlers turn SIGINT / SIGTERM into the engine's stop flag, which would make
/// in-flight requests fail; the server drains them instead. With the default actions back,
/// the handlers tokio installs for [`shutdown_signal`] are the only ones (tokio chains to a
/// previous handler, not to a default action).
fn restore_default_signals() {
    #[cfg(unix)]
    // SAFETY: resetting two signals to their default action; no handler code runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
    lora_ens::interrupt::clear();
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("signal received: no new connections; finishing the requests in flight");
}
