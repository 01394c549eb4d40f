//! Few-row products `x W^T` computed straight from the ggml blocks: the decoding path, where
//! `x` holds one new position per (member, sequence) and every weight is read once per token.
//!
//! A GEMM needs the whole matrix in f32 first (written to and read back from memory); here
//! each output row of `W` is dequantized into a small buffer that stays in L1 and dotted with
//! every row of `x` at once, so the memory traffic is the quantized weights only. Output rows
//! are split across rayon's threads. The hottest types (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) are
//! dequantized in registers instead of through the buffer. Results equal the GEMM's up to the order of the
//! f32 additions (and fused multiply-adds in the AVX2 code): well within 1e-5 relative.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::{dequantize_block_run_generic, row_bytes};

/// Weight bytes one rayon task reads at least (fewer, larger tasks for big matrices).
const TASK_BYTES: usize = 64 * 1024;

/// `out = x W^T`: `x` is `(n, cols)` row-major, `data` holds the rows of `W` (`rows` of them,
/// `cols` elements each) in `dtype`'s layout, and `out` is `(n, rows)` row-major.
pub fn matvec_t(dtype: GgmlDType, data: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let rb = row_bytes(dtype, cols);
    if rb == 0 || cols == 0 {
        out.fill(0.0);
        return;
    }
    let n = x.len() / cols;
    let rows = data.len() / rb;
    debug_assert_eq!(out.len(), n * rows);
    if n == 0 || rows == 0 {
        return;
    }
    // Enough tasks for every thread to stay busy while the others finish, but at least
    // `TASK_BYTES` of weights each for large matrices.
    let threads = rayon::current_num_threads();
    let tasks = (data.len() / TASK_BYTES).max(4 * threads).min(rows);
    let per_task = rows.div_ceil(tasks);
    if n == 1 {
        out.par_chunks_mut(per_task)
            .zip(data.par_chunks(per_task * rb))
            .for_each(|(o, d)| rows_task(dtype, d, cols, x, o));
        return;
    }
    // Each task writes its rows' dot products transposed, `(rows, n)`, then one pass puts
    // them in `(n, rows)` order (n * rows floats: small next to the weights).
    let mut t = vec![0f32; rows * n];
    t.par_chunks_mut(per_task * n)
        .zip(data.par_chunks(per_task * rb))
        .for_each(|(o, d)| rows_task(dtype, d, cols, x, o));
    for (r, o) in out.chunks_exact_mut(rows).enumerate() {
        for (v, tr) in o.iter_mut().zip(t.chunks_exact(n)) {
            *v = tr[r];
        }
    }
}

/// Dot products of whole weight rows (`data`) with the rows of `x`: `out` is `(rows, n)`.
fn rows_task(dtype: GgmlDType, data: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            unsafe { avx2::rows_task(dtype, data, cols, x, out) };
            return;
        }
    }
    rows_task_generic(dtype, data, cols, x, out);
}

/// Baseline code: dequantize each row with the block kernels, then plain dot products.
fn rows_task_generic(dtype: GgmlDType, data: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let rb = row_bytes(dtype, cols);
    let n = x.len() / cols;
    let mut buf = vec![0f32; cols];
    for (row, o) in data.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        dequantize_block_run_generic(dtype, row, &mut buf);
        for (v, xr) in o.iter_mut().zip(x.chunks_exact(cols)) {
            *v = dot_generic(&buf, xr);
        }
    }
}

/// `sum w[i] x[i]` with eight partial sums (the compiler vectorises it).
fn dot_generic(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let wc = w.chunks_exact(8);
    let xc = x.chunks_exact(8);
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in wc.zip(xc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA versions, compiled per function and chosen at run time.

    use std::arch::x86_64::*;

    use candle_core::quantized::GgmlDType;

    use super::super::{dequantize_block_run_generic, row_bytes};

    /// Rows of `x` handled together: each weight vector decoded is used this many times.
    const GROUP: usize = 8;

    /// `$f::<R, ...>(args)` with `R = $g` (1 to [`GROUP`]) as a compile-time constant.
    macro_rules! by_group {
        ($g:expr, $f:ident $(, $c:expr)*; $($arg:expr),*) => {
            match $g {
                8 => $f::<8 $(, $c)*>($($arg),*),
                7 => $f::<7 $(, $c)*>($($arg),*),
                6 => $f::<6 $(, $c)*>($($arg),*),
                5 => $f::<5 $(, $c)*>($($arg),*),
                4 => $f::<4 $(, $c)*>($($arg),*),
                3 => $f::<3 $(, $c)*>($($arg),*),
                2 => $f::<2 $(, $c)*>($($arg),*),
                _ => $f::<1 $(, $c)*>($($arg),*),
            }
        };
    }

    /// Accumulate 32 decoded weights `w` times columns `c..c + 32` of each of the `R` rows of
    /// `x` (at `xp`, rows `cols` apart). Up to four rows keep two sums each (the FMA latency
    /// would bound one chain); more rows have enough chains with one each, and all of them
    /// fit in the 16 registers with the weights.
    ///
    /// # Safety
    /// AVX2 + FMA; `xp + i * cols + c + 32` in bounds for every `i < R`.
    #[inline(always)]
    unsafe fn fma_block<const R: usize>(
        acc: &mut [[__m256; 2]; R],
        w: &[__m256; 4],
        xp: *const f32,
        cols: usize,
        c: usize,
    ) {
        let second = usize::from(R <= 4);
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the caller's contract.
            unsafe {
                let xr = xp.add(i * cols + c);
                a[0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xr), a[0]);
                a[second] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xr.add(8)), a[second]);
                a[0] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xr.add(16)), a[0]);
                a[second] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xr.add(24)), a[second]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn rows_task(
        dtype: GgmlDType,
        data: &[u8],
        cols: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let rb = row_bytes(dtype, cols);
        let n = x.len() / cols;
        match dtype {
            GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q6K => {
                for (row, o) in data.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
                    let mut r = 0;
                    while r < n {
                        let g = GROUP.min(n - r);
                        let xs = &x[r * cols..(r + g) * cols];
                        let o = &mut o[r..r + g];
                        match dtype {
                            GgmlDType::Q4_0 => by_group!(g, fused_q4, false; row, cols, xs, o),
                            GgmlDType::Q4_1 => by_group!(g, fused_q4, true; row, cols, xs, o),
                            GgmlDType::Q4K => by_group!(g, fused_q4k; row, cols, xs, o),
                            GgmlDType::Q6K => by_group!(g, fused_q6k; row, cols, xs, o),
                            _ => by_group!(g, fused_q8_0; row, cols, xs, o),
                        }
                        r += g;
                    }
                }
            }
            _ => {
                let mut buf = vec![0f32; cols];
                for (row, o) in data.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
                    dequantize_block_run_generic(dtype, row, &mut buf);
                    dot_rows(&buf, x, o);
                }
            }
        }
    }

    /// `out[r] = w . x[r]` for every row of `x` (`(out.len(), w.len())`).
    #[target_feature(enable = "avx2,fma")]
    fn dot_rows(w: &[f32], x: &[f32], out: &mut [f32]) {
        let cols = w.len();
        let mut r = 0;
        while r < out.len() {
            let g = GROUP.min(out.len() - r);
            let xs = &x[r * cols..(r + g) * cols];
            let o = &mut out[r..r + g];
            by_group!(g, dot_group; w, xs, o);
            r += g;
        }
    }

    /// `out[i] = w . x[i]` for `R` rows of `x`, 32 columns per step.
    #[inline(always)]
    fn dot_group<const R: usize>(w: &[f32], x: &[f32], out: &mut [f32]) {
        let cols = w.len();
        let main = cols / 32 * 32;
        debug_assert!(x.len() >= R * cols && out.len() >= R);
        // SAFETY: every load reads 8 floats at `c + 0..32 <= main <= cols` of `w` or of one
        // of the `R` rows of `x` (length `R * cols`, checked by the slicing of the callers).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let wp = w.as_ptr();
            let xp = x.as_ptr();
            let mut c = 0;
            while c < main {
                let wv = [
                    _mm256_loadu_ps(wp.add(c)),
                    _mm256_loadu_ps(wp.add(c + 8)),
                    _mm256_loadu_ps(wp.add(c + 16)),
                    _mm256_loadu_ps(wp.add(c + 24)),
                ];
                fma_block(&mut acc, &wv, xp, cols, c);
                c += 32;
            }
            for (i, a) in acc.iter().enumerate() {
                let xr = &x[i * cols..(i + 1) * cols];
                let tail: f32 = w[main..].iter().zip(&xr[main..]).map(|(p, q)| p * q).sum();
                out[i] = hsum(_mm256_add_ps(a[0], a[1])) + tail;
            }
        }
    }

    /// Sum of the eight lanes.
    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only intrinsics of SSE / AVX, available wherever this is inlined
        // (AVX2 functions only).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// The low eight bytes of `v`, unsigned, as floats.
    #[inline(always)]
    fn u8s_to_f32(v: __m128i) -> __m256 {
        // SAFETY: register-only AVX2 intrinsics, inlined into AVX2 functions only.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)) }
    }

    #[inline(always)]
    fn half(b: &[u8], at: usize) -> f32 {
        half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
    }

    /// Q4_0 (`d`, 16 bytes of nibbles: `(q - 8) d`) or Q4_1 (`d`, `m`, nibbles: `q d + m`)
    /// rows dotted with `x.len() / cols` (at most [`GROUP`]) rows of `x`, the weights
    /// dequantized in registers. Element `j < 16` of a block is the low nibble of byte `j`,
    /// element `16 + j` its high nibble.
    #[inline(always)]
    fn fused_q4<const R: usize, const WITH_MIN: bool>(
        row: &[u8],
        cols: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let bytes = if WITH_MIN { 20 } else { 18 };
        debug_assert!(x.len() == R * cols && out.len() == R && row.len() * 32 == cols * bytes);
        // SAFETY: each block `b` reads its 16 quant bytes inside `row` (`bytes` per block)
        // and 32 floats at `32 b..32 b + 32 <= cols` of each of the `R` rows of `x`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let xp = x.as_ptr();
            let low = _mm_set1_epi8(0x0f);
            for (bi, b) in row.chunks_exact(bytes).enumerate() {
                let d = _mm256_set1_ps(half(b, 0));
                let (m, qs) = if WITH_MIN {
                    (_mm256_set1_ps(half(b, 2)), b.as_ptr().add(4))
                } else {
                    (_mm256_set1_ps(-8.0 * half(b, 0)), b.as_ptr().add(2))
                };
                let q = _mm_loadu_si128(qs.cast());
                let lo = _mm_and_si128(q, low);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
                let w = [
                    _mm256_fmadd_ps(u8s_to_f32(lo), d, m),
                    _mm256_fmadd_ps(u8s_to_f32(_mm_srli_si128(lo, 8)), d, m),
                    _mm256_fmadd_ps(u8s_to_f32(hi), d, m),
                    _mm256_fmadd_ps(u8s_to_f32(_mm_srli_si128(hi, 8)), d, m),
                ];
                fma_block(&mut acc, &w, xp, cols, 32 * bi);
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = hsum(_mm256_add_ps(a[0], a[1]));
            }
        }
    }

    /// Q4_K rows (super-blocks of 256: `d`, `dmin`, eight 6-bit scales and mins, 128 bytes
    /// of nibbles: sub-block `2c` is the low nibbles of bytes `32c..32c + 32`, `2c + 1` the
    /// high ones; `(d sc) q - dmin m`) dotted with at most [`GROUP`] rows of `x`.
    #[inline(always)]
    fn fused_q4k<const R: usize>(row: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
        use super::super::kquants::{Q4K_BYTES, QK_K, scale_min_k4};
        debug_assert!(
            x.len() == R * cols && out.len() == R && row.len() * QK_K == cols * Q4K_BYTES
        );
        // SAFETY: each super-block reads its 128 quant bytes inside `row` (`Q4K_BYTES` per
        // super-block) and 256 floats at `256 b..256 b + 256 <= cols` of each of the `R` rows
        // of `x`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let xp = x.as_ptr();
            let low = _mm_set1_epi8(0x0f);
            for (bi, b) in row.chunks_exact(Q4K_BYTES).enumerate() {
                let d = half(b, 0);
                let dmin = half(b, 2);
                let (sc, m) = scale_min_k4(&b[4..16]);
                let qs = b.as_ptr().add(16);
                for c in 0..4 {
                    for (h, j) in [(0, 2 * c), (1, 2 * c + 1)] {
                        let scale = _mm256_set1_ps(d * f32::from(sc[j]));
                        let offset = _mm256_set1_ps(-(dmin * f32::from(m[j])));
                        let q0 = _mm_loadu_si128(qs.add(32 * c).cast());
                        let q1 = _mm_loadu_si128(qs.add(32 * c + 16).cast());
                        let (q0, q1) = if h == 0 {
                            (_mm_and_si128(q0, low), _mm_and_si128(q1, low))
                        } else {
                            (
                                _mm_and_si128(_mm_srli_epi16(q0, 4), low),
                                _mm_and_si128(_mm_srli_epi16(q1, 4), low),
                            )
                        };
                        let w = [
                            _mm256_fmadd_ps(u8s_to_f32(q0), scale, offset),
                            _mm256_fmadd_ps(u8s_to_f32(_mm_srli_si128(q0, 8)), scale, offset),
                            _mm256_fmadd_ps(u8s_to_f32(q1), scale, offset),
                            _mm256_fmadd_ps(u8s_to_f32(_mm_srli_si128(q1, 8)), scale, offset),
                        ];
                        fma_block(&mut acc, &w, xp, cols, QK_K * bi + 32 * j);
                    }
                }
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = hsum(_mm256_add_ps(a[0], a[1]));
            }
        }
    }

    /// Q6_K rows (super-blocks of 256: `ql[128]` low nibbles, `qh[64]` high two bits,
    /// `scales[16]` (i8), `d`): in half `h`, group `g` of 32 elements takes nibble `g / 2` of
    /// `ql[64h + 32 (g % 2) + l]` and bits `2g..2g + 2` of `qh[32h + l]`; each 16 elements
    /// share `d sc`: `(d sc) (q - 32)`, computed as one FMA `q (d sc) - 32 (d sc)` (the same
    /// rounding: `32 (d sc)` is exact). Dotted with at most [`GROUP`] rows of `x`.
    #[inline(always)]
    fn fused_q6k<const R: usize>(row: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
        use super::super::kquants::{Q6K_BYTES, QK_K};
        debug_assert!(
            x.len() == R * cols && out.len() == R && row.len() * QK_K == cols * Q6K_BYTES
        );
        // SAFETY: each super-block reads 16-byte runs inside its `ql` (128 bytes) and `qh`
        // (64 bytes) within `row` (`Q6K_BYTES` per super-block), and 256 floats at
        // `256 b..256 b + 256 <= cols` of each of the `R` rows of `x`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let xp = x.as_ptr();
            let low = _mm_set1_epi8(0x0f);
            let three = _mm_set1_epi8(3);
            for (bi, b) in row.chunks_exact(Q6K_BYTES).enumerate() {
                let d = half(b, 208);
                let ql = b.as_ptr();
                let qh = b.as_ptr().add(128);
                for h in 0..2 {
                    for g in 0..4 {
                        let mut w = [_mm256_setzero_ps(); 4];
                        for k in 0..2 {
                            let l = ql.add(64 * h + 32 * (g % 2) + 16 * k);
                            let l = _mm_loadu_si128(l.cast());
                            let nib = if g < 2 {
                                _mm_and_si128(l, low)
                            } else {
                                _mm_and_si128(_mm_srli_epi16(l, 4), low)
                            };
                            let hb = _mm_loadu_si128(qh.add(32 * h + 16 * k).cast());
                            let hb = _mm_and_si128(
                                _mm_srl_epi16(hb, _mm_cvtsi32_si128(2 * g as i32)),
                                three,
                            );
                            let q = _mm_or_si128(nib, _mm_slli_epi16(hb, 4));
                            let sc = b[192 + 8 * h + 2 * g + k] as i8;
                            let scale = d * f32::from(sc);
                            let sv = _mm256_set1_ps(scale);
                            let off = _mm256_set1_ps(-32.0 * scale);
                            w[2 * k] = _mm256_fmadd_ps(u8s_to_f32(q), sv, off);
                            w[2 * k + 1] =
                                _mm256_fmadd_ps(u8s_to_f32(_mm_srli_si128(q, 8)), sv, off);
                        }
                        fma_block(&mut acc, &w, xp, cols, QK_K * bi + 128 * h + 32 * g);
                    }
                }
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = hsum(_mm256_add_ps(a[0], a[1]));
            }
        }
    }

    /// Q8_0 rows (`d`, 32 signed bytes: `q d`) dotted with at most [`GROUP`] rows of `x`.
    #[inline(always)]
    fn fused_q8_0<const R: usize>(row: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
        debug_assert!(x.len() == R * cols && out.len() == R && row.len() * 32 == cols * 34);
        // SAFETY: each block `b` reads its 32 quant bytes inside `row` (34 bytes per block)
        // and 32 floats at `32 b..32 b + 32 <= cols` of each of the `R` rows of `x`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let xp = x.as_ptr();
            for (bi, b) in row.chunks_exact(34).enumerate() {
                let d = _mm256_set1_ps(half(b, 0));
                let qs = b.as_ptr().add(2);
                let q0 = _mm_loadu_si128(qs.cast());
                let q1 = _mm_loadu_si128(qs.add(16).cast());
                let w = [
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), d),
                    _mm256_mul_ps(
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))),
                        d,
                    ),
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), d),
                    _mm256_mul_ps(
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))),
                        d,
                    ),
                ];
                fma_block(&mut acc, &w, xp, cols, 32 * bi);
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = hsum(_mm256_add_ps(a[0], a[1]));
            }
        }
    }
}

#[cfg(test)]
mod tests;
