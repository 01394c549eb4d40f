//! Bounded reads of the files the engine takes from users: JSON configs and manifests,
//! question files, adapter weights. Every read goes through [`read_file`] (or
//! [`read_stream`] for stdin), which refuses what is not a regular file (a directory, a FIFO,
//! `/dev/zero`) before opening it, and refuses a file larger than the limit of its kind
//! without reading it, so a wrong path never hangs or exhausts memory. The limits are the
//! `MAX_*` constants here (the README lists them); the Python package reads through the
//! engine and has no second copy.
//! Test: `cargo test -p lora-ens --lib io`.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Largest JSON file read: `adapter_config.json`, `ensemble.json` (4 MiB).
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// Largest question file (JSONL or CSV) read, from a file or stdin (1 GiB).
pub const MAX_QUESTION_FILE_BYTES: u64 = 1 << 30;

/// Longest line (one JSONL record or one CSV row) of a question file (1 MiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Most answer choices one question may have.
pub const MAX_CHOICES: usize = 1024;

/// Largest safetensors header (the JSON table of tensors) of an adapter (100 MiB, the
/// safetensors format's own limit).
pub const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// What a path holds when it is not a regular file, in words; `None` for a regular file.
fn not_regular(meta: &std::fs::Metadata) -> Option<&'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        return None;
    }
    if ft.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if ft.is_char_device() {
            return Some("a character device");
        }
        if ft.is_block_device() {
            return Some("a block device");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// Check that `path` is a regular file (symbolic links followed) of at most `max_bytes`
/// and return its size. `refuse` builds the error of the caller's kind from a reason.
///
/// # Errors
///
/// [`Error::Io`] when `path` cannot be inspected (missing, no permission); `refuse(..)` when
/// it is a directory, FIFO, device or socket, or is larger than `max_bytes`.
pub fn check_file(path: &Path, max_bytes: u64, refuse: &dyn Fn(String) -> Error) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if let Some(what) = not_regular(&meta) {
        return Err(refuse(format!("is {what}; expected a regular file")));
    }
    if meta.len() > max_bytes {
        return Err(refuse(format!(
            "file is {} bytes, more than the {} bytes this kind of file may have",
            meta.len(),
            max_bytes
        )));
    }
    Ok(meta.len())
}

/// Read the regular file `path` of at most `max_bytes` (see [`check_file`]); a file that
/// grows past the limit while it is read is refused too.
///
/// # Errors
///
/// As [`check_file`], and [`Error::Io`] when reading fails.
pub fn read_file(path: &Path, max_bytes: u64, refuse: &dyn Fn(String) -> Error) -> Result<Vec<u8>> {
    check_file(path, max_bytes, refuse)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // The file may have been replaced between the check and the open: check what was opened.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if let Some(what) = not_regular(&meta) {
        return Err(refuse(format!("is {what}; expected a regular file")));
    }
    read_stream(file, path, max_bytes, refuse)
}

/// Read `reader` (named `name` in errors) to its end, refusing more than `max_bytes`.
///
/// # Errors
///
/// [`Error::Io`] when reading fails; `refuse(..)` past `max_bytes`.
pub fn read_stream(
    reader: impl Read,
    name: &Path,
    max_bytes: u64,
    refuse: &dyn Fn(String) -> Error,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(name, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(refuse(format!(
            "more than the {max_bytes} bytes this kind of input may have"
        )));
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
///
/// # Errors
///
/// As [`read_file`], and `refuse(..)` naming the byte offset when the file is not UTF-8.
pub fn read_text(path: &Path, max_bytes: u64, refuse: &dyn Fn(String) -> Error) -> Result<String> {
    let bytes = read_file(path, max_bytes, refuse)?;
    String::from_utf8(bytes).map_err(|e| {
        refuse(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The error of a file that is not found, for callers that say more about it.
pub(crate) fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(reason: String) -> Error {
        Error::Input(reason)
    }

    #[test]
    fn a_small_file_is_read_and_a_large_one_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::fs::write(&path, b"{}").unwrap();
        assert_eq!(read_file(&path, 2, &refuse).unwrap(), b"{}");
        let e = read_file(&path, 1, &refuse).unwrap_err().to_string();
        assert!(e.contains("file is 2 bytes, more than the 1 bytes"), "{e}");
    }

    #[test]
    fn directories_and_devices_are_refused_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_file(dir.path(), 10, &refuse).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        #[cfg(unix)]
        {
            let e = read_file(Path::new("/dev/zero"), 10, &refuse)
                .unwrap_err()
                .to_string();
            assert!(e.contains("is a character device"), "{e}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = read_file(&fifo, 10, &refuse).unwrap_err().to_string();
        assert!(e.contains("is a FIFO"), "{e}");
    }

    #[test]
    fn a_stream_past_the_limit_is_refused() {
        let e = read_stream(
            std::io::repeat(0).take(100),
            Path::new("<stdin>"),
            10,
            &refuse,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more than the 10 bytes"), "{e}");
        let ok = read_stream(&b"abc"[..], Path::new("<stdin>"), 3, &refuse).unwrap();
        assert_eq!(ok, b"abc");
    }

    #[test]
    fn text_that_is_not_utf8_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::fs::write(&path, b"ab\xff").unwrap();
        let e = read_text(&path, 10, &refuse).unwrap_err().to_string();
        assert!(e.contains("offset 2"), "{e}");
    }
}
