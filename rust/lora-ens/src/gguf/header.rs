//! The GGUF v2/v3 header parser: metadata and tensor directory read from the file's bytes
//! with every count, length, dimension and offset checked before it is used, so a corrupt
//! or hostile file gives a typed [`Error`] naming the field or tensor, never a panic, a
//! wrapped offset or an allocation larger than the file can justify.
//!
//! Checks (llama.cpp's `gguf.cpp` and gguf-py's `GGUFReader` refuse the same files):
//! magic `GGUF` and version 2 or 3; every string and array length fits in the bytes left;
//! arrays nest at most [`MAX_ARRAY_DEPTH`] deep and hold at most [`MAX_METADATA_ELEMENTS`]
//! elements in all; value types are known; metadata keys and tensor names are unique;
//! `general.alignment` is a `u32` nonzero power of two (default 32); tensors have 1 to 4
//! nonzero dimensions whose product does not overflow, a ggml type llama.cpp defines, a
//! row length that is a whole number of blocks, an aligned offset, and data inside the file
//! (checked arithmetic) not overlapping another tensor's. A type the engine does not run
//! (IQ*, TQ*, MXFP4, ...) is refused when that tensor is read, naming it, so the rest of
//! such a file (its tokenizer, say) stays readable.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

use crate::{Error, Result};

/// The alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays in metadata (arrays of arrays of ...).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most array elements in all metadata: bounds the memory metadata takes (an element is a
/// 32-byte value in memory but can be one byte in the file). Real vocabularies hold well
/// under a million tokens and merges.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 24;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Bytes before the metadata: magic, version, tensor count, metadata count.
pub const FIXED_HEADER_BYTES: u64 = 24;

/// One entry of the tensor directory, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// llama.cpp's id of the tensor's ggml type.
    pub type_id: u32,
    /// That type: name, block layout and candle's type when the engine runs it.
    pub ggml_type: GgmlType,
    /// Dimensions in row-major order (`[rows, cols]` for a matrix): GGUF's `ne` reversed.
    pub dims: Vec<usize>,
    /// Offset of the data from the start of the data section, as the directory lists it.
    pub offset: u64,
    /// Offset of the data from the start of the file.
    pub start: u64,
    /// Length of the data in bytes.
    pub bytes: u64,
}

impl TensorInfo {
    /// Dimensions in row-major order.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// llama.cpp's name of the tensor's type (`Q4_1`).
    pub fn type_name(&self) -> &'static str {
        self.ggml_type.name
    }

    /// candle's type of the tensor, `None` when the engine does not run its type.
    pub fn dtype(&self) -> Option<GgmlDType> {
        self.ggml_type.dtype
    }
}

/// A parsed, validated header.
#[derive(Debug)]
pub struct Header {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs.
    pub metadata: HashMap<String, Value>,
    /// The tensor directory.
    pub tensors: HashMap<String, TensorInfo>,
    /// Alignment of the data section and of every tensor offset.
    pub alignment: u64,
    /// Offset of the data section from the start of the file.
    pub data_offset: u64,
}

/// A ggml tensor type llama.cpp defines: its name, block size (elements) and block bytes
/// (gguf-py's `GGMLQuantizationType` and `GGML_QUANT_SIZES`), and candle's type when the
/// engine runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    /// llama.cpp's name (`Q4_K`, `IQ2_XXS`).
    pub name: &'static str,
    /// Elements per block.
    pub block: u64,
    /// Bytes per block.
    pub block_bytes: u64,
    /// candle's type, `None` when the engine does not run this type.
    pub dtype: Option<GgmlDType>,
}

/// The ggml type with id `id`, `None` for an id llama.cpp does not define.
pub fn ggml_type(id: u32) -> Option<GgmlType> {
    const K: u64 = 256;
    let t = |name, block, block_bytes, dtype| {
        Some(GgmlType {
            name,
            block,
            block_bytes,
            dtype,
        })
    };
    match id {
        0 => t("F32", 1, 4, Some(GgmlDType::F32)),
        1 => t("F16", 1, 2, Some(GgmlDType::F16)),
        2 => t("Q4_0", 32, 2 + 16, Some(GgmlDType::Q4_0)),
        3 => t("Q4_1", 32, 2 + 2 + 16, Some(GgmlDType::Q4_1)),
        6 => t("Q5_0", 32, 2 + 4 + 16, Some(GgmlDType::Q5_0)),
        7 => t("Q5_1", 32, 2 + 2 + 4 + 16, Some(GgmlDType::Q5_1)),
        8 => t("Q8_0", 32, 2 + 32, Some(GgmlDType::Q8_0)),
        // ggml's `block_q8_1` is two f16 (d, s) and 32 int8: 36 bytes, as candle writes it
        // (gguf-py's size table says 40).
        9 => t("Q8_1", 32, 2 + 2 + 32, None),
        10 => t("Q2_K", K, 2 + 2 + K / 16 + K / 4, Some(GgmlDType::Q2K)),
        11 => t("Q3_K", K, 2 + K / 4 + K / 8 + 12, Some(GgmlDType::Q3K)),
        12 => t("Q4_K", K, 2 + 2 + K / 2 + 12, Some(GgmlDType::Q4K)),
        13 => t("Q5_K", K, 2 + 2 + K / 2 + K / 8 + 12, Some(GgmlDType::Q5K)),
        14 => t("Q6_K", K, 2 + K / 2 + K / 4 + K / 16, Some(GgmlDType::Q6K)),
        15 => t("Q8_K", K, 4 + K + K / 8, None),
        16 => t("IQ2_XXS", K, 2 + K / 4, None),
        17 => t("IQ2_XS", K, 2 + K / 4 + K / 32, None),
        18 => t("IQ3_XXS", K, 2 + K / 4 + K / 8, None),
        19 => t("IQ1_S", K, 2 + K / 8 + K / 16, None),
        20 => t("IQ4_NL", 32, 2 + 16, None),
        21 => t("IQ3_S", K, 2 + K / 4 + K / 8 + K / 32 + 4, None),
        22 => t("IQ2_S", K, 2 + K / 4 + K / 16, None),
        23 => t("IQ4_XS", K, 2 + 2 + K / 2 + K / 64, None),
        24 => t("I8", 1, 1, None),
        25 => t("I16", 1, 2, None),
        26 => t("I32", 1, 4, None),
        27 => t("I64", 1, 8, None),
        28 => t("F64", 1, 8, None),
        29 => t("IQ1_M", K, K / 8 + K / 16 + K / 32, None),
        30 => t("BF16", 1, 2, Some(GgmlDType::BF16)),
        34 => t("TQ1_0", K, 2 + 4 * 13, None),
        35 => t("TQ2_0", K, 2 + 64, None),
        39 => t("MXFP4", 32, 1 + 16, None),
        40 => t("NVFP4", 64, 4 + 32, None),
        41 => t("Q1_0", 128, 2 + 16, None),
        _ => None,
    }
}

/// The names of the types the engine runs, for error messages.
pub fn supported_names() -> String {
    (0..64)
        .filter_map(ggml_type)
        .filter(|t| t.dtype.is_some())
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a value could not be read (wrapped with the key or tensor it belongs to).
enum Fault {
    /// `need` bytes at `at` but only `left` remain.
    Short {
        what: &'static str,
        need: u64,
        at: usize,
        left: usize,
    },
    /// An array whose element count cannot fit in the bytes left.
    ArrayTooLong { count: u64, at: usize, left: usize },
    /// More array elements in all than [`MAX_METADATA_ELEMENTS`].
    TooManyElements,
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    TooDeep,
    /// A value type id outside GGUF's 0..=12.
    UnknownType(u32),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Short {
                what,
                need,
                at,
                left,
            } => write!(
                f,
                "truncated: {what} of {need} bytes at byte {at} runs past the end of the file \
                 ({left} bytes left)"
            ),
            Fault::ArrayTooLong { count, at, left } => write!(
                f,
                "truncated or corrupt: an array of {count} elements at byte {at} cannot fit \
                 in the {left} bytes left in the file"
            ),
            Fault::TooManyElements => write!(
                f,
                "more than {MAX_METADATA_ELEMENTS} array elements in the metadata"
            ),
            Fault::TooDeep => write!(f, "arrays nested more than {MAX_ARRAY_DEPTH} deep"),
            Fault::UnknownType(t) => write!(f, "unknown value type {t} (GGUF defines 0 to 12)"),
        }
    }
}

type Read<T> = std::result::Result<T, Fault>;

/// A cursor over the file's bytes; every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements still allowed (see [`MAX_METADATA_ELEMENTS`]).
    elements_left: u64,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: &'static str) -> Read<&'a [u8]> {
        let short = Fault::Short {
            what,
            need: n,
            at: self.pos,
            left: self.left(),
        };
        let n = usize::try_from(n).map_err(|_| short)?;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let bytes = end.and_then(|end| self.buf.get(self.pos..end));
        match bytes {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(Fault::Short {
                what,
                need: n as u64,
                at: self.pos,
                left: self.left(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Read<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Read<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Read<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed string (trailing NULs dropped, invalid UTF-8 replaced, as candle
    /// and the tokenizer always read them).
    fn string(&mut self, what: &'static str) -> Read<String> {
        let len = self.u64("string length")?;
        let mut bytes = self.take(len, what)?;
        while let [rest @ .., 0] = bytes {
            bytes = rest;
        }
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// One metadata value of type `ty`.
    fn value(&mut self, ty: u32, depth: usize) -> Read<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array("u8")?)),
            1 => Value::I8(i8::from_le_bytes(self.array("i8")?)),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(u32::from_le_bytes(self.array("u32")?)),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => Value::Bool(self.array::<1>("bool")?[0] != 0),
            8 => Value::String(self.string("string")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Fault::TooDeep);
                }
                let elem = self.u32("array element type")?;
                let count = self.u64("array length")?;
                let min = min_value_bytes(elem).ok_or(Fault::UnknownType(elem))?;
                let (at, left) = (self.pos, self.left());
                if count.checked_mul(min).is_none_or(|n| n > left as u64) {
                    return Err(Fault::ArrayTooLong { count, at, left });
                }
                self.elements_left = self
                    .elements_left
                    .checked_sub(count)
                    .ok_or(Fault::TooManyElements)?;
                // `count * min <= left` bounds the allocation by the file's size.
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array("u64")?)),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            other => return Err(Fault::UnknownType(other)),
        })
    }
}

/// The fewest bytes a value of type `ty` takes in the file, `None` for an unknown type.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Parse and validate the header of the GGUF file `path` whose bytes are `buf`.
pub fn parse(buf: &[u8], path: &Path) -> Result<Header> {
    let invalid = |reason: String| Error::InvalidGguf {
        path: path.to_path_buf(),
        reason,
    };
    let bad_tensor = |tensor: &str, reason: String| Error::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_owned(),
        reason,
    };
    let file_len = buf.len() as u64;
    let mut cur = Cursor {
        buf,
        pos: 0,
        elements_left: MAX_METADATA_ELEMENTS,
    };
    let magic = buf.get(..4).unwrap_or(buf);
    if magic != b"GGUF" {
        return Err(invalid(format!(
            "bad magic {magic:02x?} (expected \"GGUF\")"
        )));
    }
    if file_len < FIXED_HEADER_BYTES {
        return Err(invalid(format!(
            "truncated: the file is {file_len} bytes, too short for a header \
             ({FIXED_HEADER_BYTES} bytes)"
        )));
    }
    let fixed = |r: Read<u64>| r.map_err(|f| invalid(f.to_string()));
    cur.pos = 4;
    let version = fixed(cur.u32("version").map(u64::from))? as u32;
    if !(version == 2 || version == 3) {
        let hint = if matches!(version.swap_bytes(), 2 | 3) {
            " (a big-endian file; only little-endian GGUF is read)"
        } else {
            ""
        };
        return Err(invalid(format!(
            "GGUF version {version} is not supported (2 or 3){hint}"
        )));
    }
    let n_tensors = fixed(cur.u64("tensor count"))?;
    let n_kv = fixed(cur.u64("metadata count"))?;
    // Each key/value takes at least 13 bytes and each directory entry 24: refuse counts the
    // file cannot hold before reserving anything for them.
    let need = n_kv
        .checked_mul(13)
        .and_then(|a| n_tensors.checked_mul(24).and_then(|b| a.checked_add(b)));
    let left = cur.left() as u64;
    if need.is_none_or(|n| n > left) {
        return Err(invalid(format!(
            "the header lists {n_tensors} tensors and {n_kv} metadata entries, which cannot \
             fit in the {left} bytes left in the file (truncated or corrupt)"
        )));
    }

    let mut metadata = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = cur
            .string("metadata key")
            .map_err(|f| invalid(format!("metadata entry {i}: {f}")))?;
        let at_key = |f: Fault| invalid(format!("metadata `{key}`: {f}"));
        let ty = cur.u32("value type").map_err(at_key)?;
        let value = cur.value(ty, 0).map_err(at_key)?;
        if metadata.contains_key(&key) {
            return Err(invalid(format!("metadata key `{key}` appears twice")));
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(invalid(format!(
                "metadata `general.alignment` is {a}; it must be a nonzero power of two"
            )));
        }
        Some(other) => {
            return Err(invalid(format!(
                "metadata `general.alignment` has type {:?}; it must be a u32",
                other.value_type()
            )));
        }
    };

    // The directory, as listed.
    let mut listed: Vec<(String, u32, Vec<u64>, u64)> = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = cur
            .string("tensor name")
            .map_err(|f| invalid(format!("tensor directory entry {i}: {f}")))?;
        let at_tensor = |f: Fault| bad_tensor(&name, format!("directory entry: {f}"));
        let n_dims = cur.u32("dimension count").map_err(at_tensor)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(bad_tensor(
                &name,
                format!("n_dims is {n_dims}; it must be 1 to {MAX_DIMS}"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(cur.u64("dimension").map_err(at_tensor)?);
        }
        let type_id = cur.u32("type").map_err(at_tensor)?;
        let offset = cur.u64("offset").map_err(at_tensor)?;
        listed.push((name, type_id, ne, offset));
    }

    let header_end = cur.pos as u64;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| invalid("the data section's offset overflows".to_owned()))?;

    let mut tensors: HashMap<String, TensorInfo> = HashMap::with_capacity(listed.len());
    for (name, type_id, ne, offset) in listed {
        let fail = |reason: String| bad_tensor(&name, reason);
        if tensors.contains_key(&name) {
            return Err(fail("listed twice in the tensor directory".to_owned()));
        }
        let Some(ty) = ggml_type(type_id) else {
            return Err(fail(format!("unknown ggml type id {type_id}")));
        };
        if let Some(pos) = ne.iter().position(|&d| d == 0) {
            return Err(fail(format!("dimension {pos} of {ne:?} is zero")));
        }
        let elems = ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok() && n <= i64::MAX as u64)
            .ok_or_else(|| fail(format!("the element count of dimensions {ne:?} overflows")))?;
        let row = ne.first().copied().unwrap_or(1);
        if row % ty.block != 0 {
            return Err(fail(format!(
                "row length {row} is not a multiple of the {} block size {}",
                ty.name, ty.block
            )));
        }
        let bytes = (elems / ty.block)
            .checked_mul(ty.block_bytes)
            .ok_or_else(|| fail(format!("the byte size of dimensions {ne:?} overflows")))?;
        if offset % alignment != 0 {
            return Err(fail(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let start = data_offset.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(bytes));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(fail(format!(
                "data offset {offset} + {bytes} bytes overflows (data section at {data_offset})"
            )));
        };
        if end > file_len {
            return Err(fail(format!(
                "truncated: its {bytes} bytes at {start}..{end} run past the end of the file \
                 ({file_len} bytes)"
            )));
        }
        let dims = ne.iter().rev().map(|&d| d as usize).collect();
        tensors.insert(
            name,
            TensorInfo {
                type_id,
                ggml_type: ty,
                dims,
                offset,
                start,
                bytes,
            },
        );
    }

    let mut spans: Vec<(&String, &TensorInfo)> = tensors.iter().collect();
    spans.sort_by_key(|(_, t)| t.start);
    for pair in spans.windows(2) {
        let [(a, ta), (b, tb)] = pair else {
            continue;
        };
        if ta.start + ta.bytes > tb.start {
            return Err(bad_tensor(
                b,
                format!(
                    "its data at {}.. overlaps tensor `{a}` at {}..{}",
                    tb.start,
                    ta.start,
                    ta.start + ta.bytes
                ),
            ));
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
