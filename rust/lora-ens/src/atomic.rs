//! Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over
//! it, so a reader never sees half a file and a failure leaves the old one in place. A target
//! that is a symbolic link is written through: the file it points to is replaced, the link
//! stays. Temporary names carry the writer's process id (`.NAME.PID.tmp`, `.NAME.PID.RANDOM.tmp`
//! for the command line's outputs): a temporary left by a killed writer is removed by the next
//! write to the same target once that process is gone ([`remove_stale`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The file a write to `path` replaces: `path` itself, or the file a symbolic link points to.
pub fn target_of(path: &Path) -> PathBuf {
    match std::fs::canonicalize(path) {
        Ok(real) if path.is_symlink() => real,
        _ => path.to_path_buf(),
    }
}

/// Write `bytes` to `path` atomically (see the module doc).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = target_of(path);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| Error::Input(format!("{}: not a file path", path.display())))?;
    remove_stale(&dir, &name.to_string_lossy());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Whether process `pid` is running. Where this cannot be told (no `/proc`), every process
/// counts as running, so nothing is removed.
pub fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Remove the temporaries `.NAME.PID[.RANDOM].tmp` in `dir` that writers of `name` left when
/// they were killed: those whose process is no longer running. Errors are ignored (another
/// run may be removing the same file).
pub fn remove_stale(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(middle) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        let pid = middle.split('.').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !process_alive(p)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, "old").unwrap();
        write_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("out.json");
        let e = write_file(&missing, b"x").unwrap_err().to_string();
        assert!(e.contains("out.json"), "{e}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's limit (pid_max is at most 2^22) is never running.
        let dead = dir.path().join(".out.json.99999999.tmp");
        let dead_random = dir.path().join(".out.json.99999999.abc123.tmp");
        let alive = dir
            .path()
            .join(format!(".out.json.{}.x.tmp", std::process::id()));
        let other = dir.path().join(".other.json.99999999.tmp");
        for p in [&dead, &dead_random, &alive, &other] {
            std::fs::write(p, "x").unwrap();
        }
        write_file(&dir.path().join("out.json"), b"new").unwrap();
        assert!(!dead.exists() && !dead_random.exists());
        assert!(alive.exists() && other.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_file(&link, b"new").unwrap();
        assert!(link.is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
    }
}
