//! Where a command writes its results: stdout, or a file written atomically. The file's
//! content goes to a temporary file in the same directory, renamed over the destination only
//! by [`Output::commit`]; if the command fails first (or the output is dropped), the
//! temporary file is removed and nothing appears at the destination (an existing file there
//! is left as it was). A destination that is a symbolic link is written through (the file it
//! points to is replaced, the link kept); temporaries of a killed run are removed by the next
//! run writing the same destination ([`lora_ens::atomic::remove_stale`]).
//! Test: `cargo test -p lora-ens-cli --lib output`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use lora_ens::{Error, Result};
use tempfile::NamedTempFile;

/// A destination for the command's output.
#[derive(Debug)]
pub enum Output {
    /// Standard output, buffered. Once its reader has gone (a broken pipe, as with `| head`),
    /// further output is dropped without an error.
    Stdout {
        out: BufWriter<std::io::Stdout>,
        closed: bool,
    },
    /// A temporary file beside `path`, renamed to `path` on commit.
    File {
        path: PathBuf,
        file: BufWriter<NamedTempFile>,
    },
}

impl Output {
    /// Write to `path` (atomically), or to stdout when `path` is `None` or `-`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming `path` when its directory does not exist or is not writable.
    pub fn create(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path.filter(|p| p.as_os_str() != "-") else {
            return Ok(Output::Stdout {
                out: BufWriter::new(std::io::stdout()),
                closed: false,
            });
        };
        if path.is_dir() {
            return Err(Error::Input(format!(
                "{}: is a directory; --output needs a file name",
                path.display()
            )));
        }
        // A symbolic link is written through: its target is replaced, the link stays.
        let target = lora_ens::atomic::target_of(path);
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
        lora_ens::atomic::remove_stale(&dir, &name);
        let mut builder = tempfile::Builder::new();
        // `.NAME.PID.RANDOM.tmp`: the pid lets a later run remove it if this one is killed.
        let prefix = format!(".{name}.{}.", std::process::id());
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            // As a plain new file would be: readable by all, less what the umask removes.
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = builder.tempfile_in(&dir).map_err(|e| Error::io(path, e))?;
        Ok(Output::File {
            path: target,
            file: BufWriter::new(tmp),
        })
    }

    /// The name of the destination, for error messages.
    pub fn name(&self) -> PathBuf {
        match self {
            Output::Stdout { .. } => PathBuf::from("<stdout>"),
            Output::File { path, .. } => path.clone(),
        }
    }

    /// Write one line (`line` and a newline).
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let result = match self {
            Output::Stdout { closed: true, .. } => Ok(()),
            Output::Stdout { out, closed } => {
                let result = writeln!(out, "{line}");
                *closed = is_broken_pipe(&result);
                if *closed { Ok(()) } else { result }
            }
            Output::File { file, .. } => writeln!(file, "{line}"),
        };
        result.map_err(|e| Error::io(self.name(), e))
    }

    /// Finish: flush stdout, or flush and sync the temporary file and rename it to the
    /// destination (replacing any file there).
    pub fn commit(self) -> Result<()> {
        let name = self.name();
        match self {
            Output::Stdout { closed: true, .. } => Ok(()),
            Output::Stdout { mut out, .. } => {
                let result = out.flush();
                if is_broken_pipe(&result) {
                    return Ok(());
                }
                result.map_err(|e| Error::io(name, e))
            }
            Output::File { path, file } => {
                let tmp = file
                    .into_inner()
                    .map_err(|e| Error::io(&path, e.into_error()))?;
                tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
                tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
                Ok(())
            }
        }
    }
}

fn is_broken_pipe(result: &std::io::Result<()>) -> bool {
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut out = Output::create(Some(&path)).unwrap();
        out.write_line("{\"a\": 1}").unwrap();
        assert!(!path.exists());
        out.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\": 1}\n");
        assert_eq!(entries(dir.path()), ["out.jsonl"]);
    }

    #[test]
    fn a_dropped_output_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let mut out = Output::create(Some(&path)).unwrap();
        out.write_line("new").unwrap();
        drop(out);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(entries(dir.path()), ["out.jsonl"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let err = Output::create(Some(Path::new("/nonexistent/dir/out.jsonl"))).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/dir/out.jsonl: "),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = Output::create(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_written_through_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.jsonl");
        std::fs::write(&real, "old\n").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut out = Output::create(Some(&link)).unwrap();
        out.write_line("new").unwrap();
        out.commit().unwrap();
        assert!(link.is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new\n");
        assert_eq!(entries(dir.path()), ["link.jsonl", "real.jsonl"]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_killed_run_leaves_a_temporary_the_next_run_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(dir.path().join(".out.jsonl.99999999.Ab12Cd.tmp"), "partial").unwrap();
        let out = Output::create(Some(&path)).unwrap();
        out.commit().unwrap();
        assert_eq!(entries(dir.path()), ["out.jsonl"]);
    }

    #[test]
    fn dash_means_stdout() {
        assert!(matches!(
            Output::create(Some(Path::new("-"))),
            Ok(Output::Stdout { .. })
        ));
        assert!(matches!(Output::create(None), Ok(Output::Stdout { .. })));
    }
}
