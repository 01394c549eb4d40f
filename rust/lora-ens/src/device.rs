//! Device selection by name: `cpu` (always) and `cuda` / `cuda:N` (builds with the `cuda`
//! feature, on a machine with that GPU).

use candle_core::Device;

use crate::{Error, Result};

/// Parse a device name into a candle [`Device`].
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.as_str() {
        "cuda" | "gpu" => Some(0),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(ordinal) = ordinal else {
        return Err(Error::Device(format!(
            "unknown device `{name}` (expected `cpu`, `cuda` or `cuda:N`)"
        )));
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Device(format!(
            "`{name}` requested but this build has no CUDA support (rebuild with the `cuda` feature)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("`{name}`: {e}")))
}
