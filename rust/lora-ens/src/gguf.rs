//! Reading GGUF files: the header (metadata and tensor directory) through candle's
//! `gguf_file`, with every failure turned into a typed [`Error`] naming the file, key or
//! tensor. A file whose tensor data is cut short is refused at open, not at first use.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::{Error, Result};

/// An open GGUF file: its parsed header and a reader for its tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .field("metadata", &self.content.metadata.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and validate a GGUF file: magic, version, header, and that the file is long
    /// enough to hold every tensor its directory lists.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut reader = BufReader::new(file);
        let invalid = |reason: String| Error::InvalidGguf {
            path: path.clone(),
            reason,
        };
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut reader, &mut magic)
            .map_err(|_| invalid(format!("file is {file_len} bytes, too short for a header")))?;
        if &magic != b"GGUF" {
            return Err(invalid(format!(
                "bad magic {magic:02x?} (expected \"GGUF\")"
            )));
        }
        reader.rewind().map_err(|e| Error::io(&path, e))?;
        let content = Content::read(&mut reader).map_err(|e| {
            invalid(format!(
                "cannot parse the header (truncated or corrupt): {e}"
            ))
        })?;
        let need = content
            .tensor_infos
            .iter()
            .map(|(name, info)| {
                Ok(content.tensor_data_offset + info.offset + tensor_bytes(name, info, &path)?)
            })
            .collect::<Result<Vec<u64>>>()?
            .into_iter()
            .max()
            // With no tensors there is no data section: a vocabulary-only file ends right
            // after its header, before the alignment padding (llama.cpp and gguf-py accept it).
            .unwrap_or(0);
        if need > file_len {
            return Err(invalid(format!(
                "truncated: the tensors need {need} bytes, the file has {file_len}"
            )));
        }
        Ok(Self {
            path,
            content,
            reader,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header (candle's type), for code that needs raw access.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The tensor directory.
    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.content.tensor_infos
    }

    /// Whether a tensor of that name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Read one tensor (still quantized) onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(Error::Tensor {
                path: self.path.clone(),
                tensor: name.to_owned(),
                reason: "missing from the file".to_owned(),
            });
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::Tensor {
                path: self.path.clone(),
                tensor: name.to_owned(),
                reason: format!("cannot read: {e}"),
            })
    }

    /// The raw bytes of one tensor as stored (ggml block layout), with its type and its
    /// dims in row-major order (`[rows, cols]` for a matrix).
    pub fn raw_tensor(&mut self, name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::Tensor {
                path: self.path.clone(),
                tensor: name.to_owned(),
                reason: "missing from the file".to_owned(),
            })?;
        let (dtype, dims) = (info.ggml_dtype, info.shape.dims().to_vec());
        let len = tensor_bytes(name, info, &self.path)? as usize;
        let start = self.content.tensor_data_offset + info.offset;
        let mut data = vec![0u8; len];
        let read = |reader: &mut BufReader<File>, data: &mut [u8]| -> std::io::Result<()> {
            reader.seek(std::io::SeekFrom::Start(start))?;
            std::io::Read::read_exact(reader, data)
        };
        read(&mut self.reader, &mut data).map_err(|e| Error::Tensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason: format!("cannot read {len} bytes at offset {start}: {e}"),
        })?;
        Ok((dtype, dims, data))
    }

    /// A metadata value, or an error naming the missing key.
    pub fn value(&self, key: &str) -> Result<&Value> {
        self.content
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
        if self.content.metadata.contains_key(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Size in bytes of a tensor's data, from its ggml type and shape.
fn tensor_bytes(name: &str, info: &TensorInfo, path: &Path) -> Result<u64> {
    let elems = info.shape.elem_count();
    let block = info.ggml_dtype.block_size();
    if elems % block != 0 {
        return Err(Error::Tensor {
            path: path.to_path_buf(),
            tensor: name.to_owned(),
            reason: format!(
                "{elems} elements is not a multiple of the {:?} block size {block}",
                info.ggml_dtype
            ),
        });
    }
    Ok((elems / block * info.ggml_dtype.type_size()) as u64)
}
