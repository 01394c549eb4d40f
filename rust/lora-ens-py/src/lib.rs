//! `lora_ens_rs._core`: PyO3 bindings of the lora-ens engine. Each file mirrors an engine
//! module; errors are mapped to Python exceptions in `error.rs` only. Build with
//! `maturin develop --release` (see the Makefile).

use pyo3::prelude::*;

mod cli;
mod data;
mod default_model;
mod ensemble;
mod error;
mod generate;
mod gguf;
mod handles;
mod lora;
mod metrics;
mod model;
mod prompt;
mod reduce;
mod score;
mod tokenizer;
mod weights;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", lora_ens::VERSION)?;
    error::register(m)?;
    default_model::register(m)?;
    reduce::register(m)?;
    cli::register(m)?;
    model::register(m)?;
    lora::register(m)?;
    tokenizer::register(m)?;
    data::register(m)?;
    prompt::register(m)?;
    ensemble::register(m)?;
    score::register(m)?;
    generate::register(m)?;
    metrics::register(m)?;
    weights::register(m)?;
    gguf::register(m)?;
    Ok(())
}
