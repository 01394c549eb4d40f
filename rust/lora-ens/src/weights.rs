//! Weights as the engine sees them: one GGUF tensor dequantized to f32 by the engine's own
//! kernels (the code the model runs), for tests that compare it with an independent
//! implementation and for benchmarks of the kernels.

use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::gguf::GgufFile;
use crate::{Error, Result, kernels};

/// Whether the engine dequantizes tensors of this ggml type itself (F32, F16, BF16, Q4_0,
/// Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); other types go through candle.
pub fn engine_dequantizes(dtype: GgmlDType) -> bool {
    kernels::supports(dtype)
}

/// Tensor `name` of the GGUF file at `path`, dequantized to f32 by the engine's kernels.
/// Returns its dims in row-major order (a matrix is `[rows, cols]` = `[ne1, ne0]`) and its
/// elements in that order.
///
/// Errors: [`Error::Tensor`] when the tensor is missing, its type is not one
/// [`engine_dequantizes`], or its rows are not a whole number of blocks; the errors of
/// opening a GGUF otherwise.
pub fn read_tensor_f32(path: impl AsRef<Path>, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let gguf = GgufFile::open(path)?;
    let (dtype, dims, data) = gguf.raw_tensor(name)?;
    let bad = |reason: String| Error::Tensor {
        path: gguf.path().to_path_buf(),
        tensor: name.to_owned(),
        reason,
    };
    if !kernels::supports(dtype) {
        return Err(bad(format!(
            "type {dtype:?} is not one the engine dequantizes itself"
        )));
    }
    let cols = dims.last().copied().unwrap_or(1);
    if cols % dtype.block_size() != 0 {
        return Err(bad(format!(
            "rows of {cols} elements are not a whole number of {dtype:?} blocks of {}",
            dtype.block_size()
        )));
    }
    let elems: usize = dims.iter().product();
    let mut out = vec![0f32; elems];
    if elems > 0 {
        kernels::dequantize_rows(dtype, &data, cols, &mut out);
    }
    Ok((dims, out))
}

/// Dequantize rows of `cols` elements stored in `dtype`'s block layout from `data` into
/// `out` (`out.len() / cols` rows), with the engine's kernels.
///
/// Errors: [`Error::Input`] when the type is not one [`engine_dequantizes`], `cols` is not a
/// multiple of its block size, or the lengths of `data` and `out` do not describe the same
/// whole rows.
pub fn dequantize(dtype: GgmlDType, data: &[u8], cols: usize, out: &mut [f32]) -> Result<()> {
    if !kernels::supports(dtype) {
        return Err(Error::Input(format!(
            "type {dtype:?} is not one the engine dequantizes itself"
        )));
    }
    if cols == 0 || cols % dtype.block_size() != 0 {
        return Err(Error::Input(format!(
            "rows of {cols} elements are not a whole number of {dtype:?} blocks of {}",
            dtype.block_size()
        )));
    }
    let rb = kernels::row_bytes(dtype, cols);
    if out.len() % cols != 0 || data.len() != out.len() / cols * rb {
        return Err(Error::Input(format!(
            "{} bytes of {dtype:?} do not fill {} floats in rows of {cols} ({rb} bytes a row)",
            data.len(),
            out.len()
        )));
    }
    kernels::dequantize_rows(dtype, data, cols, out);
    Ok(())
}

/// `out = x W^T` straight from the blocks, the engine's few-row (decoding) product: `x` is
/// `(n, cols)` row-major, `data` holds whole rows of `W` in `dtype`'s layout, `out` is
/// `(n, rows)`. Equal to the dequantized matrix's product up to the order of additions.
///
/// Errors: [`Error::Input`] as for [`dequantize`], or when `x` and `out` are not whole rows
/// of the product.
pub fn matvec_t(
    dtype: GgmlDType,
    data: &[u8],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<()> {
    if !kernels::supports(dtype) || cols == 0 || cols % dtype.block_size() != 0 {
        return Err(Error::Input(format!(
            "rows of {cols} elements of type {dtype:?} are not whole blocks the engine decodes"
        )));
    }
    let rb = kernels::row_bytes(dtype, cols);
    let (n, rows) = (x.len() / cols, data.len() / rb);
    if x.len() % cols != 0 || data.len() % rb != 0 || out.len() != n * rows {
        return Err(Error::Input(format!(
            "{} bytes of {dtype:?} rows and {} inputs of {cols} do not make {} outputs",
            data.len(),
            x.len(),
            out.len()
        )));
    }
    kernels::matvec_t(dtype, data, cols, x, out);
    Ok(())
}

/// The first non-finite weight of the GGUF file at `path`, as `(tensor, flat index, value)`,
/// scanning tensors in name order, a bounded number of rows at a time (memory does not grow
/// with the tensor). Tensors of types the engine does not dequantize are skipped.
///
/// Used to name the culprit when a forward pass produces a NaN or infinite logit.
pub fn first_non_finite(path: impl AsRef<Path>) -> Result<Option<(String, usize, f32)>> {
    const CHUNK_ELEMS: usize = 1 << 20;
    let gguf = GgufFile::open(path)?;
    let mut names: Vec<&String> = gguf.tensor_infos().keys().collect();
    names.sort();
    for name in names {
        let (dtype, dims, data) = gguf.mapped_tensor(name)?;
        let cols = dims.last().copied().unwrap_or(1);
        if !kernels::supports(dtype) || cols == 0 || cols % dtype.block_size() != 0 {
            continue;
        }
        let rows: usize = dims.iter().rev().skip(1).product();
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let rows_per_chunk = (CHUNK_ELEMS / cols).max(1);
        let mut out = vec![0f32; rows_per_chunk.min(rows) * cols];
        let bytes = data.as_slice();
        for first in (0..rows).step_by(rows_per_chunk) {
            let n = rows_per_chunk.min(rows - first);
            let chunk = &bytes[first * row_bytes..(first + n) * row_bytes];
            kernels::dequantize_rows(dtype, chunk, cols, &mut out[..n * cols]);
            if let Some(j) = out[..n * cols].iter().position(|v| !v.is_finite()) {
                return Ok(Some((name.clone(), first * cols + j, out[j])));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor_reason(err: Error) -> (String, String) {
        match err {
            Error::Tensor { tensor, reason, .. } => (tensor, reason),
            other => panic!("expected a tensor error, got {other:?}"),
        }
    }

    /// Tensors read back in row-major order with candle's values; a missing tensor and an
    /// unsupported type are typed errors naming the tensor.
    #[test]
    fn reads_tensors_and_names_what_is_wrong() -> Result<()> {
        use candle_core::quantized::{QTensor, gguf_file};
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let matrix = Tensor::from_vec(values, (3, 64), &dev)?;
        let q4 = QTensor::quantize(&matrix, GgmlDType::Q4_0)?;
        let q81 = QTensor::quantize(&matrix, GgmlDType::Q8_1)?;
        let vector = QTensor::quantize(&Tensor::arange(0f32, 5.0, &dev)?, GgmlDType::F32)?;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.gguf");
        let mut file = std::fs::File::create(&path).expect("create");
        gguf_file::write(&mut file, &[], &[("m", &q4), ("v", &vector), ("odd", &q81)])?;
        drop(file);

        let (dims, got) = read_tensor_f32(&path, "m")?;
        assert_eq!(dims, [3, 64]);
        let want = q4.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(got, want);
        assert_eq!(
            read_tensor_f32(&path, "v")?,
            (vec![5], vec![0.0, 1.0, 2.0, 3.0, 4.0])
        );

        let (tensor, reason) =
            tensor_reason(read_tensor_f32(&path, "no.such.weight").expect_err("missing"));
        assert_eq!(tensor, "no.such.weight");
        assert!(reason.contains("missing"), "{reason}");
        let (tensor, reason) =
            tensor_reason(read_tensor_f32(&path, "odd").expect_err("unsupported type"));
        assert_eq!(tensor, "odd");
        assert!(reason.contains("Q8_1"), "{reason}");
        Ok(())
    }

    #[test]
    fn dequantize_checks_lengths() {
        let mut out = vec![0f32; 64];
        assert!(dequantize(GgmlDType::Q4_0, &[0u8; 36], 32, &mut out).is_ok());
        assert!(dequantize(GgmlDType::Q4_0, &[0u8; 35], 32, &mut out).is_err());
        assert!(dequantize(GgmlDType::Q4K, &[0u8; 36], 32, &mut out).is_err());
        assert!(dequantize(GgmlDType::Q8_1, &[0u8; 72], 32, &mut out).is_err());
    }
}
