//! The ensemble inside an existing axum application: the application's own routes, and the
//! OpenAI-compatible server of `lora-ens-rs serve` nested under `/llm` -- a few lines.
//!
//! Run: `cargo run -p lora-ens-cli --example embed_axum -- MODEL.gguf [ADAPTERS_DIR...]`; it
//! prints `listening on http://ADDR` (an ephemeral port on 127.0.0.1) and serves until
//! Ctrl-C / SIGTERM. Then, for example:
//! `curl ADDR/llm/v1/completions -d '{"prompt": "Once upon a time", "max_tokens": 8}'`.
//! Test: `cargo test -p lora-ens-cli --test serve` builds and runs it.

use axum::Router;
use axum::routing::get;
use lora_ens::Ensemble;
use lora_ens_cli::serve::{Engine, Limits, ServerState, router, shutdown_signal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((model, adapters)) = args.split_first() else {
        return Err("usage: embed_axum MODEL.gguf [ADAPTERS_DIR...]".into());
    };
    // The engine: one worker thread owns the model; the routes queue work for it.
    let ensemble = Ensemble::load(model, adapters, &candle_core::Device::Cpu)?;
    let engine = Engine::start(ensemble, Limits::default())?;
    let llm = router(ServerState::new(engine, "my-ensemble", None)?);

    // The existing application, with the ensemble's routes under /llm.
    let app = Router::new()
        .route("/", get(|| async { "my application" }))
        .nest("/llm", llm);

    tokio::runtime::Runtime::new()?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok(())
    })
}
