//! `lora-ens-rs`: the command-line entry point. All logic lives in the library (`lib.rs`),
//! which the Python console script calls too. Run `cargo run -p lora-ens-cli -- --help`.

fn main() {
    let code = lora_ens_cli::run(std::env::args_os(), &lora_ens_cli::Context::default());
    std::process::exit(code);
}
