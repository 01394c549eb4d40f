//! CPU kernels: dequantization of ggml block formats into f32 rows.
//!
//! candle's CPU quantized matmul is scalar for Q4_1 and picks SIMD at compile time, so the
//! engine keeps weights quantized and dequantizes one matrix at a time into a scratch buffer
//! that feeds an f32 GEMM. The loops below are plain Rust over whole blocks, written so the
//! compiler vectorises them; the arithmetic (`q * d + m` in f32, no FMA) is the one ggml and
//! gguf-py use, so the dequantized weights are bit-identical to what transformers loads.
//! The K-quants (256-element super-blocks) live in [`kquants`]; products with few rows
//! (decoding) skip the scratch buffer and run from the blocks in [`matvec`].

use candle_core::quantized::GgmlDType;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

mod kquants;
mod matvec;

pub use matvec::matvec_t;

/// Whether [`dequantize_rows`] handles this type itself (others go through candle).
pub fn supports(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::F32
            | GgmlDType::F16
            | GgmlDType::BF16
            | GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q2K
            | GgmlDType::Q3K
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    )
}

/// Bytes one row of `cols` elements occupies (`cols` a multiple of the block size).
pub fn row_bytes(dtype: GgmlDType, cols: usize) -> usize {
    cols / dtype.block_size() * dtype.type_size()
}

/// Dequantize whole rows: `data` holds `out.len() / cols` rows of `cols` elements each in
/// `dtype`'s layout. Rows are split across threads when there are many of them.
pub fn dequantize_rows(dtype: GgmlDType, data: &[u8], cols: usize, out: &mut [f32]) {
    let rb = row_bytes(dtype, cols);
    let n_rows = out.len() / cols;
    debug_assert_eq!(data.len(), rb * n_rows);
    // Roughly 64K elements per task: small matrices stay on one thread.
    let rows_per_task = (65536 / cols.max(1)).max(1);
    out.par_chunks_mut(cols * rows_per_task)
        .zip(data.par_chunks(rb * rows_per_task))
        .for_each(|(o, d)| dequantize_block_run(dtype, d, o));
}

/// Dequantize a contiguous run of blocks, with AVX2 code where the CPU has it. The shipped
/// binary targets baseline x86-64, so the wide version is compiled per function and chosen
/// at run time; both versions do the same f32 operations and give identical results.
fn dequantize_block_run(dtype: GgmlDType, data: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { dequantize_block_run_avx2(dtype, data, out) };
            return;
        }
    }
    dequantize_block_run_generic(dtype, data, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dequantize_block_run_avx2(dtype: GgmlDType, data: &[u8], out: &mut [f32]) {
    dequantize_block_run_generic(dtype, data, out);
}

/// Dequantize a contiguous run of blocks (any whole number of blocks).
#[inline(always)]
fn dequantize_block_run_generic(dtype: GgmlDType, data: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlDType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlDType::F16 => {
            // half converts a slice with F16C eight at a time (checking the CPU once per
            // call); converting one value at a time checks it per element, 6x slower.
            let mut halves = [f16::ZERO; 256];
            for (o, b) in out.chunks_mut(256).zip(data.chunks(512)) {
                let h = &mut halves[..o.len()];
                for (x, c) in h.iter_mut().zip(b.chunks_exact(2)) {
                    *x = f16::from_le_bytes([c[0], c[1]]);
                }
                h.convert_to_f32_slice(o);
            }
        }
        GgmlDType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlDType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(18)) {
                let d = half_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    o[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlDType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(20)) {
                let d = half_at(b, 0);
                let m = half_at(b, 2);
                let qs = &b[4..20];
                for j in 0..16 {
                    o[j] = (qs[j] & 0x0f) as f32 * d + m;
                    o[j + 16] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlDType::Q5_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(22)) {
                let d = half_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    o[j] = (((qs[j] & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
                    o[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlDType::Q5_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(24)) {
                let d = half_at(b, 0);
                let m = half_at(b, 2);
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    o[j] = ((qs[j] & 0x0f) as u32 | h0) as f32 * d + m;
                    o[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
                }
            }
        }
        GgmlDType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(34)) {
                let d = half_at(b, 0);
                for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                    *x = q as i8 as f32 * d;
                }
            }
        }
        GgmlDType::Q2K => kquants::q2k(data, out),
        GgmlDType::Q3K => kquants::q3k(data, out),
        GgmlDType::Q4K => kquants::q4k(data, out),
        GgmlDType::Q5K => kquants::q5k(data, out),
        GgmlDType::Q6K => kquants::q6k(data, out),
        // Callers check `supports` first; other types never reach here.
        _ => out.fill(f32::NAN),
    }
}

#[inline(always)]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Each supported block type dequantizes exactly as candle's reference code does.
    #[test]
    fn matches_candle_dequantize() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (rows, cols) = (7, 96);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let t = Tensor::from_vec(values, (rows, cols), &dev)?;
        for dtype in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let q = QTensor::quantize(&t, dtype)?;
            let want = q.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
            let data = q.data()?;
            let mut got = vec![0f32; rows * cols];
            dequantize_rows(dtype, &data, cols, &mut got);
            assert_eq!(got, want, "{dtype:?}");
            let mut generic = vec![0f32; rows * cols];
            dequantize_block_run_generic(dtype, &data, &mut generic);
            assert_eq!(generic, want, "{dtype:?} (generic code path)");
        }
        Ok(())
    }

    const K_QUANTS: [GgmlDType; 5] = [
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    /// Deterministic pseudo-random bytes (xorshift64*).
    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    fn smooth_matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3 + (i % 13) as f32 * 0.01)
            .collect()
    }

    /// The K-quants also match candle's dequantization (quantized by candle's quantizer);
    /// gguf-py is the reference the Python tests check bit for bit.
    #[test]
    fn k_quants_match_candle_dequantize() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (rows, cols) = (5, 512);
        let t = Tensor::from_vec(smooth_matrix(rows, cols), (rows, cols), &dev)?;
        for dtype in K_QUANTS {
            assert!(supports(dtype));
            assert_eq!(dtype.block_size(), kquants::QK_K);
            let q = QTensor::quantize(&t, dtype)?;
            let want = q.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
            let data = q.data()?;
            assert_eq!(data.len(), rows * row_bytes(dtype, cols), "{dtype:?}");
            let mut got = vec![0f32; rows * cols];
            dequantize_rows(dtype, &data, cols, &mut got);
            assert_same_bits(&got, &want, &format!("{dtype:?}"));
        }
        Ok(())
    }

    /// The super-block sizes are ggml's.
    #[test]
    fn k_quant_block_bytes() {
        for (dtype, bytes) in [
            (GgmlDType::Q2K, kquants::Q2K_BYTES),
            (GgmlDType::Q3K, kquants::Q3K_BYTES),
            (GgmlDType::Q4K, kquants::Q4K_BYTES),
            (GgmlDType::Q5K, kquants::Q5K_BYTES),
            (GgmlDType::Q6K, kquants::Q6K_BYTES),
        ] {
            assert_eq!(dtype.type_size(), bytes, "{dtype:?}");
            assert_eq!(dtype.block_size(), 256, "{dtype:?}");
        }
        assert_eq!(
            [84, 110, 144, 176, 210],
            [
                kquants::Q2K_BYTES,
                kquants::Q3K_BYTES,
                kquants::Q4K_BYTES,
                kquants::Q5K_BYTES,
                kquants::Q6K_BYTES
            ]
        );
    }

    /// Same bits everywhere, except that any NaN equals any NaN: which operand's payload an
    /// x86 instruction propagates depends on the operand order the compiler picks, which
    /// differs between scalar and vector code (numpy makes no promise either).
    fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let bits = |x: f32| {
            if x.is_nan() {
                f32::NAN.to_bits()
            } else {
                x.to_bits()
            }
        };
        if let Some(i) = (0..got.len()).find(|&i| bits(got[i]) != bits(want[i])) {
            panic!(
                "{what}: element {i} is {} ({:#010x}), expected {} ({:#010x})",
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits()
            );
        }
    }

    /// The run-time dispatched code (AVX2 where the CPU has it) and the baseline code give
    /// the same bits on random blocks of every supported type, NaN, infinite and subnormal
    /// scales included.
    #[test]
    fn dispatched_and_generic_code_agree_bit_for_bit() {
        for (i, dtype) in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ]
        .into_iter()
        .chain(K_QUANTS)
        .enumerate()
        {
            let (rows, cols) = (9, 768);
            let data = random_bytes(rows * row_bytes(dtype, cols), 0x9e37_79b9 + i as u64);
            let mut dispatched = vec![0f32; rows * cols];
            dequantize_rows(dtype, &data, cols, &mut dispatched);
            let mut generic = vec![0f32; rows * cols];
            dequantize_block_run_generic(dtype, &data, &mut generic);
            assert_same_bits(&dispatched, &generic, &format!("{dtype:?}"));
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                let mut avx2 = vec![0f32; rows * cols];
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { dequantize_block_run_avx2(dtype, &data, &mut avx2) };
                assert_same_bits(&avx2, &generic, &format!("{dtype:?} (AVX2)"));
            }
        }
    }

    /// A K-quant matrix loaded as a `QWeight` on the CPU takes the host path and computes
    /// `x W^T` and row gathers from the same weights candle dequantizes.
    #[test]
    fn qweight_runs_k_quants_on_the_host_path() -> crate::Result<()> {
        use crate::gguf::GgufFile;
        use crate::linear::QWeight;
        let dev = Device::Cpu;
        let (rows, cols) = (6, 256);
        let t = Tensor::from_vec(smooth_matrix(rows, cols), (rows, cols), &dev)?;
        let quantized: Vec<(String, QTensor)> = K_QUANTS
            .iter()
            .map(|&d| Ok((format!("w.{d:?}"), QTensor::quantize(&t, d)?)))
            .collect::<candle_core::Result<_>>()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("k.gguf");
        let mut file = std::fs::File::create(&path).expect("create");
        let tensors: Vec<(&str, &QTensor)> =
            quantized.iter().map(|(n, q)| (n.as_str(), q)).collect();
        candle_core::quantized::gguf_file::write(&mut file, &[], &tensors)?;
        drop(file);
        let mut gguf = GgufFile::open(&path)?;
        let x = Tensor::from_vec(smooth_matrix(3, cols), (3, cols), &dev)?;
        for (name, q) in &quantized {
            let w = QWeight::load(&mut gguf, name, (rows, cols), &dev)?;
            assert_eq!(
                w.storage_bytes(),
                rows * row_bytes(q.dtype(), cols),
                "{name}"
            );
            let dense = q.dequantize(&dev)?;
            let want = x.matmul(&dense.t()?)?;
            // The GEMM path gives the same bits as candle; the few-row path (3 rows) agrees
            // up to the order of additions.
            let gemm = w.matmul_t_gemm(&x)?;
            assert_eq!(gemm.to_vec2::<f32>()?, want.to_vec2::<f32>()?, "{name}");
            let got = w.matmul_t(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let want = want.flatten_all()?.to_vec1::<f32>()?;
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{name}: {g} vs {e}"
                );
            }
            let ids = [4u32, 0, 4];
            let idx = Tensor::from_vec(ids.to_vec(), 3, &dev)?;
            assert_eq!(
                w.rows(&ids, &dev)?.to_vec2::<f32>()?,
                dense.index_select(&idx, 0)?.to_vec2::<f32>()?,
                "{name}"
            );
        }
        Ok(())
    }
}
