//! Reading GGUF files: the header (metadata and tensor directory) parsed and validated by
//! [`header`], the tensor data memory-mapped read-only and lent out without copying.
//! Every failure is a typed [`Error`] naming the file, key or tensor; a file whose tensor
//! data is cut short is refused at open, not at first use.
//!
//! The mapping has the property llama.cpp's has: if the file is truncated or rewritten by
//! another process while it is mapped, touching the missing pages raises SIGBUS. Sizes are
//! checked at open against the file as it was then; do not modify a model file in use.

pub mod header;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
/// A metadata value (candle's type, re-exported for callers of [`GgufFile::metadata`]).
pub use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use memmap2::Mmap;

pub use header::TensorInfo;
use header::{FIXED_HEADER_BYTES, Header};

use crate::{Error, Result};

/// A read-only byte range of a memory-mapped file, kept alive by a shared handle to the
/// mapping (so weights borrow the file's pages instead of copying them).
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl MappedBytes {
    /// The bytes (empty if the range were ever outside the map; [`GgufFile::open`] checks
    /// every tensor's range, so it is not).
    pub fn as_slice(&self) -> &[u8] {
        self.start
            .checked_add(self.len)
            .and_then(|end| self.map.get(self.start..end))
            .unwrap_or_default()
    }
}

impl std::ops::Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for MappedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedBytes({}..{})", self.start, self.start + self.len)
    }
}

/// An open GGUF file: its validated header and a read-only map of its bytes.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    header: Header,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .field("metadata", &self.header.metadata.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and validate a GGUF file (see [`header`] for the checks): magic, version,
    /// header, and that every tensor the directory lists lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if file_len < FIXED_HEADER_BYTES {
            // Too short to map usefully: read what is there for the magic check's message.
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            return Err(match header::parse(&bytes, &path) {
                Err(e) => e,
                Ok(_) => Error::InvalidGguf {
                    path: path.clone(),
                    reason: format!("truncated: the file is {file_len} bytes"),
                },
            });
        }
        // SAFETY: the map is read-only and private to this process. Its contents could
        // still change if another process truncates or rewrites the file while it is
        // mapped (then reads may see new bytes or raise SIGBUS); the module's doc states
        // this, and no Rust invariant depends on the bytes: they are parsed with checks.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        if map.len() as u64 != file_len {
            return Err(Error::InvalidGguf {
                path,
                reason: format!(
                    "the file changed while being opened ({file_len} bytes, then {})",
                    map.len()
                ),
            });
        }
        let header = header::parse(&map, &path)?;
        Ok(Self {
            path,
            map: Arc::new(map),
            header,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version of the file (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.header.metadata
    }

    /// The tensor directory.
    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.header.tensors
    }

    /// Whether a tensor of that name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.header.tensors.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.header.tensors.get(name).ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason: "missing from the file".to_owned(),
        })
    }

    /// The type of tensor `name`: an error naming the tensor and its type when the engine
    /// does not run that type (llama.cpp's IQ*, TQ*, MXFP4, Q8_1, ...).
    pub fn tensor_dtype(&self, name: &str) -> Result<GgmlDType> {
        let info = self.info(name)?;
        info.dtype().ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason: format!(
                "ggml type {} (id {}) is not supported; supported: {}",
                info.type_name(),
                info.type_id,
                header::supported_names()
            ),
        })
    }

    /// The bytes of one tensor as stored (ggml block layout), borrowed from the map
    /// without copying, with its type and row-major dims.
    pub fn mapped_tensor(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, MappedBytes)> {
        let dtype = self.tensor_dtype(name)?;
        let info = self.info(name)?;
        let bad = |what: &str| Error::Tensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason: format!("{what} does not fit in memory on this platform"),
        };
        let start = usize::try_from(info.start).map_err(|_| bad("the data offset"))?;
        let len = usize::try_from(info.bytes).map_err(|_| bad("the data size"))?;
        let bytes = MappedBytes {
            map: Arc::clone(&self.map),
            start,
            len,
        };
        Ok((dtype, info.dims.clone(), bytes))
    }

    /// Read one tensor (still quantized) onto `device` (copies the bytes into candle's
    /// storage: for the GPU path and the block types the CPU kernels do not handle).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let (dtype, dims, bytes) = self.mapped_tensor(name)?;
        // candle views the bytes as blocks of f16/f32 fields: give it an 8-byte aligned
        // copy when an alignment below 8 left the mapped bytes unaligned.
        let aligned;
        let data: &[u8] = if (bytes.as_ptr() as usize) % 8 == 0 {
            &bytes
        } else {
            let mut words = vec![0u64; bytes.len().div_ceil(8)];
            let view: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
            view.get_mut(..bytes.len())
                .unwrap_or_default()
                .copy_from_slice(&bytes);
            aligned = words;
            bytemuck::cast_slice(&aligned)
        };
        qtensor_from_ggml(dtype, data, dims, device).map_err(|e| Error::Tensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason: format!("cannot read: {e}"),
        })
    }

    /// The raw bytes of one tensor as stored (ggml block layout), copied, with its type
    /// and its dims in row-major order (`[rows, cols]` for a matrix). The model path uses
    /// [`GgufFile::mapped_tensor`], which does not copy.
    pub fn raw_tensor(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>)> {
        let (dtype, dims, bytes) = self.mapped_tensor(name)?;
        Ok((dtype, dims, bytes.to_vec()))
    }

    /// A metadata value, or an error naming the missing key.
    pub fn value(&self, key: &str) -> Result<&Value> {
        self.header
            .metadata
            .get(key)
            .ok_or_else(|| Error::Metadata {
                path: self.path.clone(),
                key: key.to_owned(),
                reason: "missing".to_owned(),
            })
    }

    fn typed<T>(&self, key: &str, get: impl FnOnce(&Value) -> candle_core::Result<T>) -> Result<T> {
        get(self.value(key)?).map_err(|e| Error::Metadata {
            path: self.path.clone(),
            key: key.to_owned(),
            reason: format!("wrong type: {e}"),
        })
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Result<String> {
        self.typed(key, |v| v.to_string().cloned())
    }

    /// An unsigned integer metadata value (any integer width).
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.typed(key, |v| match v {
            Value::U8(x) => Ok(u64::from(*x)),
            Value::U16(x) => Ok(u64::from(*x)),
            Value::U32(x) => Ok(u64::from(*x)),
            Value::U64(x) => Ok(*x),
            Value::I8(x) => u64::try_from(*x).map_err(candle_core::Error::wrap),
            Value::I16(x) => u64::try_from(*x).map_err(candle_core::Error::wrap),
            Value::I32(x) => u64::try_from(*x).map_err(candle_core::Error::wrap),
            Value::I64(x) => u64::try_from(*x).map_err(candle_core::Error::wrap),
            other => Err(candle_core::Error::Msg(format!(
                "expected an integer, got {:?}",
                other.value_type()
            ))),
        })
    }

    /// A float metadata value (f32 or f64).
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.typed(key, |v| match v {
            Value::F32(x) => Ok(f64::from(*x)),
            Value::F64(x) => Ok(*x),
            other => Err(candle_core::Error::Msg(format!(
                "expected a float, got {:?}",
                other.value_type()
            ))),
        })
    }

    /// A boolean metadata value.
    pub fn bool(&self, key: &str) -> Result<bool> {
        self.typed(key, |v| v.to_bool())
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.typed(key, |v| {
            v.to_vec()?.iter().map(|x| x.to_string().cloned()).collect()
        })
    }

    /// An optional value: `Ok(None)` when absent, an error when present with the wrong type.
    pub fn optional<T>(
        &self,
        key: &str,
        get: impl FnOnce(&Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.header.metadata.contains_key(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}
