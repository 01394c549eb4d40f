//! `lora-ens-rs`: the command-line entry point. All logic lives in the library (`lib.rs`),
//! which the Python console script calls too. Run `cargo run -p lora-ens-cli -- --help`.
//! Ctrl-C and SIGTERM set the engine's stop flag ([`lora_ens::interrupt`]): the command stops
//! between batches and exits with 130 without writing its output; a second signal ends the
//! process at once (its temporary file is removed by the next run).

fn main() {
    install_signal_handlers();
    let code = lora_ens_cli::run(std::env::args_os(), &lora_ens_cli::Context::default());
    std::process::exit(code);
}

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    lora_ens::interrupt::request();
}

#[cfg(unix)]
fn install_signal_handlers() {
    // SAFETY: `sigaction` with a handler that only stores to an atomic; SA_RESETHAND restores
    // the default action, so a second signal terminates the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(not(unix))]
fn install_signal_handlers() {}
