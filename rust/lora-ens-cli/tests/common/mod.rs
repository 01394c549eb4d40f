//! Helpers shared by the command line's integration tests: the tiny fixture model and its
//! ensemble (`make fixtures`; `$LORA_ENS_RS_FIXTURES` points elsewhere), the benchmark data
//! (`$LORA_ENS_RS_DATA`, else `shared/data` beside the repository) and running the command.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::path::{Path, PathBuf};

use lora_ens_cli::{Cli, Context};

// The fixture locator is the engine's test helper (`rust/lora-ens/src/test_support.rs`).
#[path = "../../../lora-ens/src/test_support.rs"]
mod test_support;

pub(crate) use test_support::fixture;

/// A file of the benchmark data directory, if it is there.
pub fn data_file(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LORA_ENS_RS_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    );
    let path = dir.join(name);
    path.is_file().then_some(path)
}

/// `argv` as the command line gets it (program name first).
pub fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once("lora-ens-rs")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// Run the command line; returns the exit code.
pub fn run(args: &[&str]) -> i32 {
    lora_ens_cli::run(argv(args), &Context::default())
}

/// Run a command line that parses; returns the error message it prints after `error: `.
pub fn error_of(args: &[&str]) -> String {
    let cli = <Cli as clap::Parser>::try_parse_from(argv(args)).expect("arguments parse");
    lora_ens_cli::execute(cli, &Context::default())
        .expect_err("the command fails")
        .to_string()
}

/// `path` as a `&str` for an argument list.
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
