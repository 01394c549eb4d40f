//! Stopping a long call early: a process-wide flag that a front end sets when the user
//! interrupts (Ctrl-C / SIGTERM in the command line; a pending `KeyboardInterrupt` in the
//! Python bindings), checked by the engine between batches of scoring and between generated
//! tokens. A call that sees it returns [`Error::Interrupted`] without finishing, so no
//! result (and no output file) is produced.
//! Test: `cargo test -p lora-ens --lib interrupt`.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask every running engine call to stop at its next check. Only stores to an atomic, so it
/// may be called from a signal handler.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Forget a request (once the interrupted calls have returned).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// [`Error::Interrupted`] when a stop was requested.
///
/// # Errors
///
/// [`Error::Interrupted`] after [`request`] and before [`clear`].
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_until_cleared() {
        // The only test touching the flag: others running at the same time never set it.
        assert!(check().is_ok());
        request();
        assert!(matches!(check(), Err(Error::Interrupted)));
        clear();
        assert!(check().is_ok());
    }
}
