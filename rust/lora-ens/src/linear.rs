//! Quantized weight matrices kept in their GGUF block format, with the two products the
//! model needs: `x W^T` (a linear layer) and gathering rows (embedding lookup, label rows
//! of the lm_head). On CPU a matrix is dequantized into a scratch buffer just before its
//! GEMM, so memory holds the quantized model while arithmetic runs at f32 GEMM speed. A
//! product with few rows (decoding: one new position per member and sequence) instead runs
//! straight from the blocks ([`kernels::matvec_t`]): it reads each weight once and writes
//! no f32 copy of the matrix. The host blocks are borrowed from the GGUF file's read-only
//! memory map, not copied.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::gguf::{GgufFile, MappedBytes};
use crate::{Error, Result, kernels};

/// Rows of the scratch buffer dequantized at once for very tall matrices (the lm_head):
/// bounds the scratch at `CHUNK_ROWS * cols` floats.
const CHUNK_ROWS: usize = 8192;

/// Products `x W^T` with at most this many rows of `x` run from the quantized blocks; more
/// rows go through the scratch buffer and the GEMM, whose register blocking wins once each
/// weight is used by many rows (benches/README.md, `bench_matvec`).
pub(crate) const MATVEC_MAX_ROWS: usize = 32;

thread_local! {
    /// The f32 copy of the matrix (or chunk) the GEMM path multiplies by, reused across
    /// layers and calls on the calling thread: a fresh buffer per matrix per call costs page
    /// faults and zeroing. It keeps the size of the largest one (at most `CHUNK_ROWS` rows).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

enum Storage {
    /// Raw ggml blocks in the GGUF file's read-only map, dequantized by [`kernels`].
    Host(MappedBytes),
    /// candle's quantized tensor: other block types (K-quants) or a GPU device.
    Candle(QTensor),
}

/// A `(rows, cols)` weight matrix in a ggml block format (GGUF's `ne1 = rows, ne0 = cols`).
pub struct QWeight {
    name: String,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QWeight({}, {:?}, [{}, {}])",
            self.name, self.dtype, self.rows, self.cols
        )
    }
}

impl QWeight {
    /// Load tensor `name`, checking it is a matrix of the expected shape.
    pub fn load(
        gguf: &mut GgufFile,
        name: &str,
        shape: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let bad = |reason: String| Error::Tensor {
            path: gguf.path().to_path_buf(),
            tensor: name.to_owned(),
            reason,
        };
        let info = gguf
            .tensor_infos()
            .get(name)
            .ok_or_else(|| bad("missing from the file".to_owned()))?;
        let dims = info.dims().to_vec();
        if dims != [shape.0, shape.1] {
            return Err(bad(format!(
                "shape {dims:?}, expected [{}, {}]",
                shape.0, shape.1
            )));
        }
        let dtype = gguf.tensor_dtype(name)?;
        let storage = if device.is_cpu() && kernels::supports(dtype) {
            Storage::Host(gguf.mapped_tensor(name)?.2)
        } else {
            Storage::Candle(gguf.tensor(name, device)?)
        };
        Ok(Self {
            name: name.to_owned(),
            dtype,
            rows: shape.0,
            cols: shape.1,
            storage,
        })
    }

    /// Bytes the weights occupy in memory.
    pub fn storage_bytes(&self) -> usize {
        match &self.storage {
            Storage::Host(d) => d.len(),
            Storage::Candle(q) => q.storage_size_in_bytes(),
        }
    }

    /// Dequantize rows `[start, start + n)` into an f32 `(n, cols)` tensor (candle storage).
    fn dequantize_range(&self, start: usize, n: usize, device: &Device) -> Result<Tensor> {
        match &self.storage {
            Storage::Host(data) => {
                let rb = kernels::row_bytes(self.dtype, self.cols);
                let mut out = vec![0f32; n * self.cols];
                kernels::dequantize_rows(
                    self.dtype,
                    &data[start * rb..(start + n) * rb],
                    self.cols,
                    &mut out,
                );
                Ok(Tensor::from_vec(out, (n, self.cols), device)?)
            }
            Storage::Candle(q) => {
                let full = q.dequantize(device)?;
                Ok(full.narrow(0, start, n)?.to_dtype(DType::F32)?)
            }
        }
    }

    /// `x W[start..start + len]^T` for host blocks: the rows are dequantized into this
    /// thread's reused scratch buffer and multiplied by candle's GEMM (the `gemm` crate, with
    /// the arguments candle passes it), so no matrix-sized buffer is allocated per call.
    /// Returns `(n, len)` row-major.
    fn gemm_host(&self, data: &[u8], x: &Tensor, start: usize, len: usize) -> Result<Vec<f32>> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let n = x.dims()[0];
        if x.dims() != [n, self.cols] {
            return Err(Error::Input(format!(
                "input of shape {:?} for `{}` ({} columns)",
                x.dims(),
                self.name,
                self.cols
            )));
        }
        let (storage, layout) = x.storage_and_layout();
        let xs: &[f32] = match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
                &v[layout.start_offset()..layout.start_offset() + n * self.cols]
            }
            _ => {
                return Err(Error::Input(format!(
                    "input for `{}` is not f32 in host memory",
                    self.name
                )));
            }
        };
        let rb = kernels::row_bytes(self.dtype, self.cols);
        let blocks = &data[start * rb..(start + len) * rb];
        let mut out = vec![0f32; n * len];
        let threads = rayon::current_num_threads();
        let run = |w: &mut Vec<f32>, out: &mut [f32]| {
            if w.len() < len * self.cols {
                w.resize(len * self.cols, 0.0);
            }
            let w = &mut w[..len * self.cols];
            kernels::dequantize_rows(self.dtype, blocks, self.cols, w);
            // SAFETY: dst is `(n, len)` (row stride `len`), lhs `x` is `(n, cols)` (row
            // stride `cols`), rhs is `W^T` `(cols, len)` read from `w` `(len, cols)` (column
            // stride `cols`); all three slices have exactly those lengths.
            unsafe {
                gemm::gemm(
                    n,
                    len,
                    self.cols,
                    out.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    xs.as_ptr(),
                    1,
                    self.cols as isize,
                    w.as_ptr(),
                    self.cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    if threads > 1 {
                        gemm::Parallelism::Rayon(threads)
                    } else {
                        gemm::Parallelism::None
                    },
                );
            }
        };
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut w) => run(&mut w, &mut out),
            // A nested call on this thread (rayon runs other jobs while it waits): no reuse.
            Err(_) => run(&mut Vec::new(), &mut out),
        });
        Ok(out)
    }

    /// The host blocks when `x` is an `(n, cols)` CPU matrix with few enough rows for
    /// [`kernels::matvec_t`].
    fn matvec_data(&self, x: &Tensor) -> Option<&[u8]> {
        match &self.storage {
            Storage::Host(data)
                if x.device().is_cpu()
                    && x.dims().len() == 2
                    && x.dims()[0] <= MATVEC_MAX_ROWS
                    && x.dims()[1] == self.cols =>
            {
                Some(&data[..])
            }
            _ => None,
        }
    }

    /// `x W^T` for `x` of shape `(n, cols)`: returns `(n, rows)`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(data) = self.matvec_data(x) {
            let n = x.dims()[0];
            let xs = host_rows(x)?;
            let mut out = vec![0f32; n * self.rows];
            kernels::matvec_t(self.dtype, data, self.cols, &xs, &mut out);
            return Ok(Tensor::from_vec(out, (n, self.rows), x.device())?);
        }
        self.matmul_t_gemm(x)
    }

    /// `x W^T` through the dequantized matrix and the GEMM, whatever the number of rows.
    pub(crate) fn matmul_t_gemm(&self, x: &Tensor) -> Result<Tensor> {
        if let (Storage::Host(data), true) = (&self.storage, x.device().is_cpu()) {
            let n = x.dims().first().copied().unwrap_or(0);
            let mut parts = Vec::with_capacity(self.rows.div_ceil(CHUNK_ROWS));
            for start in (0..self.rows).step_by(CHUNK_ROWS) {
                let len = CHUNK_ROWS.min(self.rows - start);
                let out = self.gemm_host(&data[..], x, start, len)?;
                parts.push(Tensor::from_vec(out, (n, len), x.device())?);
            }
            return Ok(if parts.len() == 1 {
                parts.swap_remove(0)
            } else {
                Tensor::cat(&parts, 1)?
            });
        }
        if self.rows <= CHUNK_ROWS {
            let w = self.dequantize_range(0, self.rows, x.device())?; // (rows, cols)
            return Ok(x.matmul(&w.t()?)?);
        }
        let mut parts = Vec::with_capacity(self.rows.div_ceil(CHUNK_ROWS));
        for start in (0..self.rows).step_by(CHUNK_ROWS) {
            let n = CHUNK_ROWS.min(self.rows - start);
            let w = self.dequantize_range(start, n, x.device())?;
            parts.push(x.matmul(&w.t()?)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// `log softmax(x W^T)[r, targets[r]]` for every row `r` of `x` `(n, cols)`: the
    /// log-probability of one token per position, without materializing `(n, rows)` logits.
    /// The matrix is streamed in chunks of [`CHUNK_ROWS`] rows with a running log-sum-exp
    /// (in f64) per position, so memory stays at `n * CHUNK_ROWS` floats.
    pub fn log_softmax_at(&self, x: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
        let n = x.dims()[0];
        if targets.len() != n {
            return Err(Error::Input(format!(
                "{} positions but {} target tokens",
                n,
                targets.len()
            )));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= self.rows) {
            return Err(Error::Input(format!(
                "token id {bad} is out of range for `{}` ({} rows)",
                self.name, self.rows
            )));
        }
        let mut max = vec![f64::NEG_INFINITY; n];
        let mut sum = vec![0f64; n];
        let mut picked = vec![0f64; n];
        // Few positions: straight from the blocks.
        let host = match self.matvec_data(x) {
            Some(data) => Some((data, host_rows(x)?)),
            None => None,
        };
        let rb = kernels::row_bytes(self.dtype, self.cols);
        for start in (0..self.rows).step_by(CHUNK_ROWS) {
            let len = CHUNK_ROWS.min(self.rows - start);
            let logits = match &host {
                Some((data, xs)) => {
                    let mut out = vec![0f32; n * len];
                    let chunk = &data[start * rb..(start + len) * rb];
                    kernels::matvec_t(self.dtype, chunk, self.cols, xs, &mut out);
                    out
                }
                None => match (&self.storage, x.device().is_cpu()) {
                    (Storage::Host(data), true) => self.gemm_host(&data[..], x, start, len)?,
                    _ => {
                        let w = self.dequantize_range(start, len, x.device())?;
                        x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?
                    }
                },
            }; // (n, len)
            for (r, row) in logits.chunks_exact(len).enumerate() {
                let chunk_max = row
                    .iter()
                    .fold(f64::NEG_INFINITY, |a, &v| a.max(f64::from(v)));
                if chunk_max > max[r] {
                    sum[r] *= (max[r] - chunk_max).exp();
                    max[r] = chunk_max;
                }
                sum[r] += row
                    .iter()
                    .map(|&v| (f64::from(v) - max[r]).exp())
                    .sum::<f64>();
                let t = targets[r] as usize;
                if (start..start + len).contains(&t) {
                    picked[r] = f64::from(row[t - start]);
                }
            }
        }
        Ok((0..n)
            .map(|r| (picked[r] - max[r] - sum[r].ln()) as f32)
            .collect())
    }

    /// The rows `ids` as an f32 `(ids.len(), cols)` tensor (embedding lookup).
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.rows) {
            return Err(Error::Input(format!(
                "token id {bad} is out of range for `{}` ({} rows)",
                self.name, self.rows
            )));
        }
        match &self.storage {
            Storage::Host(data) => {
                let rb = kernels::row_bytes(self.dtype, self.cols);
                let mut out = vec![0f32; ids.len() * self.cols];
                for (o, &id) in out.chunks_exact_mut(self.cols).zip(ids) {
                    let at = id as usize * rb;
                    kernels::dequantize_rows(self.dtype, &data[at..at + rb], self.cols, o);
                }
                Ok(Tensor::from_vec(out, (ids.len(), self.cols), device)?)
            }
            Storage::Candle(q) => {
                let full = q.dequantize(device)?.to_dtype(DType::F32)?;
                let idx = Tensor::from_vec(ids.to_vec(), ids.len(), device)?;
                Ok(full.index_select(&idx, 0)?)
            }
        }
    }
}

/// The elements of `x` in row-major order as f32 (the activations of a few-row product).
fn host_rows(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A 1-D f32 tensor (norm weights) of length `len`.
pub fn load_vector(gguf: &mut GgufFile, name: &str, len: usize, device: &Device) -> Result<Tensor> {
    let q = gguf.tensor(name, device)?;
    if q.shape().dims() != [len] {
        return Err(Error::Tensor {
            path: gguf.path().to_path_buf(),
            tensor: name.to_owned(),
            reason: format!("shape {:?}, expected [{len}]", q.shape().dims()),
        });
    }
    Ok(q.dequantize(device)?.to_dtype(DType::F32)?)
}
