//! The one place where engine errors become Python exceptions. The exception classes are
//! defined in `lora_ens_rs/errors.py` (so they can also subclass built-ins such as
//! `FileNotFoundError` and `ValueError`); this file picks the class for each variant and
//! runs engine calls with the GIL released and panics caught.

use std::panic::{AssertUnwindSafe, catch_unwind};

use lora_ens::Error;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// Every exception class this module raises, in one list: `_core._ERROR_CLASSES` exposes it
/// and `lora_ens_rs/errors.py` checks at import that it defines each one.
pub const ERROR_CLASSES: [&str; 12] = [
    "MissingFileError",
    "LoraEnsIOError",
    "ModelLoadError",
    "TokenizerError",
    "LabelError",
    "AdapterError",
    "InputError",
    "DataError",
    "NumericalError",
    "ModelFetchError",
    "DeviceError",
    "EngineError",
];

/// The Python exception class name for an engine error: one exhaustive match, each arm a
/// name of [`ERROR_CLASSES`] (asserted in debug builds where the exception is raised).
fn class_name(err: &Error) -> &'static str {
    match err {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "MissingFileError"
        }
        Error::Io { .. } => "LoraEnsIOError",
        Error::InvalidGguf { .. }
        | Error::UnsupportedModel { .. }
        | Error::Tensor { .. }
        | Error::Metadata { .. } => "ModelLoadError",
        Error::Tokenizer(_) => "TokenizerError",
        Error::Label(_) => "LabelError",
        Error::Adapter { .. } => "AdapterError",
        Error::Input(_) => "InputError",
        Error::Data { .. } => "DataError",
        Error::Numerical(_) => "NumericalError",
        Error::ModelFetch(_) => "ModelFetchError",
        Error::Device(_) => "DeviceError",
        Error::Candle(_) => "EngineError",
        // Raised as KeyboardInterrupt by `raise`; never looked up in errors.py.
        Error::Interrupted => "KeyboardInterrupt",
    }
}

fn exception_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module = py.import("lora_ens_rs.errors")?;
    Ok(module.getattr(name)?.cast_into::<PyType>()?)
}

fn raise(py: Python<'_>, name: &str, message: String) -> PyErr {
    if name == "KeyboardInterrupt" {
        return pyo3::exceptions::PyKeyboardInterrupt::new_err(message);
    }
    debug_assert!(
        ERROR_CLASSES.contains(&name),
        "{name} is not in ERROR_CLASSES"
    );
    match exception_class(py, name) {
        Ok(cls) => PyErr::from_type(cls, (message,)),
        Err(e) => e,
    }
}

/// Convert an engine error into its Python exception (for calls that keep the GIL).
pub fn to_pyerr(err: Error) -> PyErr {
    Python::attach(|py| raise(py, class_name(&err), err.to_string()))
}

/// Run an engine call with the GIL released; an engine error becomes its exception and a
/// panic becomes `EngineError` instead of tearing down the interpreter. The call runs on a
/// worker thread while this one checks for signals every 50 ms: a pending
/// `KeyboardInterrupt` (Ctrl-C) or an exception from another signal handler asks the engine
/// to stop ([`lora_ens::interrupt`]), waits for the call to return, and is raised.
pub fn call<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> lora_ens::Result<T> + Send,
{
    let (outcome, signal) = run_interruptibly(py, move || catch_unwind(AssertUnwindSafe(f)));
    if let Some(err) = signal {
        return Err(err);
    }
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(raise(py, class_name(&err), err.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(raise(
                py,
                "EngineError",
                format!("internal error (please report it): {what}"),
            ))
        }
    }
}

/// Run `f` on a worker thread with the GIL released, checking for signals every 50 ms while
/// it runs; on a signal's exception, request an engine stop and wait for `f`. Returns `f`'s
/// result and the exception of a signal that arrived meanwhile. A call that finishes sooner
/// returns at once (the wait is on the result, not a fixed sleep), so short calls such as one
/// `decode` cost a thread start, not a polling interval.
pub fn run_interruptibly<R: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> R + Send,
) -> (R, Option<PyErr>) {
    use std::sync::{Condvar, Mutex, PoisonError};
    let done = (Mutex::new(false), Condvar::new());
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let r = f();
            *done.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
            done.1.notify_all();
            r
        });
        let mut signal = None;
        loop {
            let finished = py.detach(|| {
                let guard = done.0.lock().unwrap_or_else(PoisonError::into_inner);
                let wait = std::time::Duration::from_millis(50);
                let (guard, _) = done
                    .1
                    .wait_timeout_while(guard, wait, |finished| !*finished)
                    .unwrap_or_else(PoisonError::into_inner);
                *guard
            });
            // A worker that panicked never sets the flag; it has finished all the same.
            if finished || worker.is_finished() {
                break;
            }
            if signal.is_none() {
                if let Err(e) = py.check_signals() {
                    lora_ens::interrupt::request();
                    signal = Some(e);
                }
            }
        }
        let result = py.detach(|| worker.join());
        if signal.is_some() {
            lora_ens::interrupt::clear();
        }
        match result {
            Ok(r) => (r, signal),
            // `f` catches its own panics; a panic here would be one in the thread machinery.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The class names this module raises, checked at import against `errors.py`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("_ERROR_CLASSES", ERROR_CLASSES.to_vec())
}
