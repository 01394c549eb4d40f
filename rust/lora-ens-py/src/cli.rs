//! Bindings of the `lora-ens-rs` command line: the console script calls `cli_main`, which
//! runs the same code as the Rust binary, dispatches the Python subcommands by
//! `cli_subcommands()`, and builds their shared options from `cli_option_specs()`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Run the command line with `argv` (program name first) and return the exit code.
#[pyfunction]
#[pyo3(signature = (argv, python=None))]
fn cli_main(py: Python<'_>, argv: Vec<String>, python: Option<String>) -> PyResult<i32> {
    let ctx = lora_ens_cli::Context { python };
    if argv.get(1).is_some_and(|c| c == "serve") {
        // The server handles SIGTERM / Ctrl-C itself and exits 0 after draining; Python's
        // signal checks would turn them into an engine interrupt instead.
        return Ok(py.detach(move || lora_ens_cli::run(argv, &ctx)));
    }
    // A Ctrl-C stops the command between batches (nothing is written) and is raised here.
    let (code, signal) = crate::error::run_interruptibly(py, move || lora_ens_cli::run(argv, &ctx));
    match signal {
        Some(e) => Err(e),
        None => Ok(code),
    }
}

/// Every subcommand, in `--help` order.
///
/// Returns:
///     A list of ``(name, about, runs_in_python)`` tuples.
#[pyfunction]
fn cli_subcommands() -> Vec<(String, String, bool)> {
    lora_ens_cli::subcommands()
}

/// The options several subcommands share, as the Rust parser defines them.
///
/// Returns:
///     A list of dicts with ``name`` (the flag without ``--``), ``key`` (the attribute name),
///     ``value_name``, ``help`` (with the default when it is not one value), ``kind``
///     (``"path"``, ``"str"`` or ``"int"``), ``choices`` (list, empty: any), ``default``
///     (str or None), ``min`` (int or None) and ``repeatable`` (bool).
#[pyfunction]
fn cli_option_specs(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    lora_ens_cli::options::SHARED
        .iter()
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("name", s.name)?;
            d.set_item("key", s.key())?;
            d.set_item("value_name", s.value_name)?;
            d.set_item("help", s.full_help())?;
            d.set_item("kind", s.kind.name())?;
            d.set_item("choices", s.choices.to_vec())?;
            d.set_item("default", s.default)?;
            d.set_item("min", s.min)?;
            d.set_item("repeatable", s.repeatable)?;
            Ok(d)
        })
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(cli_subcommands, m)?)?;
    m.add_function(wrap_pyfunction!(cli_option_specs, m)?)?;
    m.add("EXIT_ERROR", lora_ens_cli::EXIT_ERROR)?;
    m.add("EXIT_USAGE", lora_ens_cli::EXIT_USAGE)?;
    m.add("EXIT_INTERRUPTED", lora_ens_cli::EXIT_INTERRUPTED)?;
    Ok(())
}
