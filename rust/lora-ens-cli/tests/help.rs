//! The `lora-ens-rs` binary's top level: `--help` lists every subcommand (those that run in
//! the Python package too), and those Python subcommands stop with exit code 2 and a message
//! saying where they run. Run: `cargo test -p lora-ens-cli --test help`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is a failed test

use std::process::Command;

fn binary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lora-ens-rs"))
        .args(args)
        .output()
        .expect("the lora-ens-rs binary runs")
}

#[test]
fn help_lists_every_subcommand() {
    let out = binary(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for name in lora_ens_cli::subcommands().iter().map(|(n, _, _)| n) {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))),
            "`{name}` missing from --help:\n{help}"
        );
    }
    assert!(help.contains("Exit status: 0"), "{help}");
}

#[test]
fn python_subcommands_say_where_they_run() {
    for name in lora_ens_cli::PYTHON_SUBCOMMANDS {
        for extra in [&[][..], &["--help"], &["data.jsonl", "--out", "x"]] {
            let mut args = vec![*name];
            args.extend_from_slice(extra);
            let out = binary(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert!(
                stderr.starts_with(&format!("error: `{name}` needs torch")),
                "{stderr}"
            );
            assert!(stderr.contains("python -m lora_ens_rs"), "{stderr}");
            assert!(out.stdout.is_empty());
        }
    }
}
