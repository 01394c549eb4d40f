//! Dequantization throughput of the engine's CPU kernels per ggml type, side by side in one
//! run: a 2048 x 2048 matrix of each type (encoded by candle's quantizer) dequantized to f32
//! with `lora_ens::dequantize`, on one thread and on all of rayon's threads, as GB/s of f32
//! written, rows/s and the ratio to Q4_1 (the engine's reference path). Candle's own whole-
//! matrix dequantization (what a type without an engine kernel costs) is shown beside it.
//!
//!     cargo run --release -p lora-ens --example bench_dequant [-- ROWS COLS REPEATS]

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Best wall time in seconds of `repeats` timed runs of `f`, after one warm-up run.
fn best_of(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let rows = args.first().copied().unwrap_or(2048);
    let cols = args.get(1).copied().unwrap_or(2048);
    let repeats = args.get(2).copied().unwrap_or(20);
    let dev = Device::Cpu;
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| ((i.wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0) * 0.05)
        .collect();
    let matrix = Tensor::from_vec(values, (rows, cols), &dev)?;
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let threads = rayon::current_num_threads();
    let types = [
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::F16,
        GgmlDType::BF16,
    ];
    let mut out = vec![0f32; rows * cols];
    let mut results = Vec::new();
    for dtype in types {
        let q = QTensor::quantize(&matrix, dtype)?;
        let data = q.data()?.into_owned();
        // A benchmark of wrong numbers is worthless: the engine's values must be candle's.
        let want = q.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
        lora_ens::dequantize(dtype, &data, cols, &mut out)?;
        if out
            .iter()
            .zip(&want)
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Err(format!("{dtype:?}: the engine's values differ from candle's").into());
        }
        let mut run = || lora_ens::dequantize(dtype, &data, cols, &mut out);
        let t1 = one.install(|| {
            best_of(repeats, || {
                let _ = run();
            })
        });
        let tn = best_of(repeats, || {
            let _ = run();
        });
        let candle = best_of(repeats.min(5), || {
            let _ = q.dequantize(&dev);
        });
        results.push((dtype, data.len(), t1, tn, candle));
    }
    let gb = (rows * cols * 4) as f64 / 1e9;
    let base = results
        .iter()
        .find(|r| r.0 == GgmlDType::Q4_1)
        .map_or((1.0, 1.0), |r| (r.2, r.3));
    println!(
        "{rows} x {cols} matrix, best of {repeats}; GB/s of f32 written; speed vs Q4_1 \
         (>1 is faster); {threads} threads in the pool"
    );
    println!(
        "| type | bytes/elem | 1 thread GB/s | rows/s | vs Q4_1 | {threads} threads GB/s | vs Q4_1 | candle (whole matrix) GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (dtype, bytes, t1, tn, candle) in results {
        println!(
            "| {dtype:?} | {:.4} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            bytes as f64 / (rows * cols) as f64,
            gb / t1,
            rows as f64 / t1,
            base.0 / t1,
            gb / tn,
            base.1 / tn,
            gb / candle,
        );
    }
    Ok(())
}
