//! Few-row products `x W^T` (decoding) per weight type: the engine's product straight from
//! the blocks (`lora_ens::matvec_t`) against dequantizing the matrix into a reused buffer and
//! running candle's f32 GEMM (the prefill path), for n = 1..32 rows of `x`. Prints
//! microseconds per product, the ratio, and the GB/s of weight bytes the block product
//! reads; the crossover sets `MATVEC_MAX_ROWS` in `linear.rs`.
//!
//!     cargo run --release -p lora-ens --example bench_matvec [-- ROWS COLS REPEATS]

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Best wall time in seconds of `repeats` timed runs of `f`, after one warm-up run.
fn best_of(repeats: usize, mut f: impl FnMut() -> BoxResult<()>) -> BoxResult<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> BoxResult<()> {
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
    println!(
        "{rows} x {cols}, {} threads, best of {repeats}",
        rayon::current_num_threads()
    );
    println!("| type | n | blocks µs | dequant+GEMM µs | GEMM / blocks | blocks GB/s |");
    println!("|---|---|---|---|---|---|");
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5_0,
        GgmlDType::F16,
    ] {
        let q = QTensor::quantize(&matrix, dtype)?;
        let data = q.data()?.into_owned();
        let mut dense = vec![0f32; rows * cols];
        for n in [1, 2, 4, 5, 8, 12, 16, 24, 32] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| (i % 17) as f32 * 0.01 - 0.08)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (n, cols), &dev)?;
            let mut out = vec![0f32; n * rows];
            let blocks = best_of(repeats, || {
                lora_ens::matvec_t(dtype, &data, cols, &x, &mut out)?;
                Ok(())
            })?;
            let gemm = best_of(repeats, || {
                lora_ens::dequantize(dtype, &data, cols, &mut dense)?;
                let w = Tensor::from_slice(&dense, (rows, cols), &dev)?;
                std::hint::black_box(xt.matmul(&w.t()?)?);
                Ok(())
            })?;
            println!(
                "| {dtype:?} | {n} | {:.0} | {:.0} | {:.2} | {:.1} |",
                blocks * 1e6,
                gemm * 1e6,
                gemm / blocks,
                data.len() as f64 / blocks / 1e9
            );
        }
    }
    Ok(())
}
