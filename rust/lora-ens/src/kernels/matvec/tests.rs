//! The few-row product against the GEMM path (candle's dequantization and matmul) on random
//! weights of every supported type, and the baseline code against the dispatched one.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::super::{dequantize_rows, row_bytes, supports};
use super::*;

const TYPES: [GgmlDType; 13] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Deterministic pseudo-random floats in [-1, 1) (xorshift64*).
fn random_floats(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// Largest `|got - want| / max(1, |want|)`.
fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// Random `(rows, cols)` weights encoded as `dtype` blocks by candle's quantizer, and the
/// reference `x W^T` from the dequantized matrix through candle's f32 GEMM.
fn case(
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    n: usize,
    seed: u64,
) -> candle_core::Result<(Vec<u8>, Vec<f32>, Vec<f32>)> {
    let dev = Device::Cpu;
    let w = Tensor::from_vec(random_floats(rows * cols, seed), (rows, cols), &dev)?;
    let q = QTensor::quantize(&w, dtype)?;
    let data = q.data()?.into_owned();
    assert_eq!(data.len(), rows * row_bytes(dtype, cols), "{dtype:?}");
    let x = random_floats(n * cols, seed + 1);
    let xt = Tensor::from_vec(x.clone(), (n, cols), &dev)?;
    let dense = q.dequantize(&dev)?;
    let want = xt.matmul(&dense.t()?)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((data, x, want))
}

/// Every supported type, 1 to 9, 16 and 17 input rows (whole and partial groups), an odd
/// number of output rows: within 1e-5 of the GEMM (relative to the larger of 1 and the value).
#[test]
fn matches_the_gemm_path_on_every_type() -> candle_core::Result<()> {
    let (rows, cols) = (37, 512);
    for (i, dtype) in TYPES.into_iter().enumerate() {
        assert!(supports(dtype));
        for n in (1..=9).chain([16, 17]) {
            let (data, x, want) = case(dtype, rows, cols, n, 1000 * i as u64 + n as u64)?;
            let mut got = vec![f32::NAN; n * rows];
            matvec_t(dtype, &data, cols, &x, &mut got);
            let err = max_rel_err(&got, &want);
            assert!(err < 1e-5, "{dtype:?}, n = {n}: error {err}");
        }
    }
    Ok(())
}

/// Row lengths that are not a multiple of the vector width (the unquantized types take any
/// length), many output rows split across tasks, and the baseline code path.
#[test]
fn odd_lengths_many_rows_and_the_baseline_code() -> candle_core::Result<()> {
    for (i, (dtype, cols)) in [
        (GgmlDType::F32, 77),
        (GgmlDType::F16, 45),
        (GgmlDType::BF16, 3),
        (GgmlDType::Q8_0, 96),
        (GgmlDType::Q4_1, 32),
        (GgmlDType::Q6K, 256),
    ]
    .into_iter()
    .enumerate()
    {
        for n in [1, 5] {
            let rows = 1001;
            let (data, x, want) = case(dtype, rows, cols, n, 77 + i as u64)?;
            let mut got = vec![f32::NAN; n * rows];
            matvec_t(dtype, &data, cols, &x, &mut got);
            let err = max_rel_err(&got, &want);
            assert!(err < 1e-5, "{dtype:?} cols {cols}, n = {n}: error {err}");
            // The baseline code, one task (output transposed).
            let mut t = vec![f32::NAN; rows * n];
            rows_task_generic(dtype, &data, cols, &x, &mut t);
            let generic: Vec<f32> = (0..n)
                .flat_map(|r| (0..rows).map(move |j| (r, j)))
                .map(|(r, j)| t[j * n + r])
                .collect();
            let err = max_rel_err(&generic, &want);
            assert!(
                err < 1e-5,
                "{dtype:?} cols {cols}, n = {n}, baseline: error {err}"
            );
        }
    }
    Ok(())
}

/// The weights the fused kernels use are the block kernels' (an error in one element's
/// decoding would show here even where the other elements hide it in a dot product).
#[test]
fn fused_kernels_decode_every_element() {
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
    ] {
        let (rows, cols) = (3, 512);
        let w = Tensor::from_vec(random_floats(rows * cols, 5), (rows, cols), &Device::Cpu)
            .and_then(|t| QTensor::quantize(&t, dtype))
            .and_then(|q| q.data().map(|d| d.into_owned()))
            .expect("quantize");
        let mut dense = vec![0f32; rows * cols];
        dequantize_rows(dtype, &w, cols, &mut dense);
        // x = the identity: x W^T is W^T itself.
        let mut x = vec![0f32; cols * cols];
        for i in 0..cols {
            x[i * cols + i] = 1.0;
        }
        let mut got = vec![f32::NAN; cols * rows];
        matvec_t(dtype, &w, cols, &x, &mut got);
        for r in 0..rows {
            for c in 0..cols {
                let (g, d) = (got[c * rows + r], dense[r * cols + c]);
                assert!(
                    (g - d).abs() <= 1e-6 * d.abs().max(1.0),
                    "{dtype:?} [{r}, {c}]: {g} vs {d}"
                );
            }
        }
    }
}
