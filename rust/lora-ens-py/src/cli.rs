//! Bindings of the `lora-ens-rs` command line: the console script calls `cli_main`, which
//! runs the same code as the Rust binary.

use pyo3::prelude::*;

/// Run the command line with `argv` (program name first) and return the exit code.
#[pyfunction]
#[pyo3(signature = (argv, python=None))]
fn cli_main(py: Python<'_>, argv: Vec<String>, python: Option<String>) -> i32 {
    let ctx = lora_ens_cli::Context { python };
    py.detach(|| lora_ens_cli::run(argv, &ctx))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    Ok(())
}
