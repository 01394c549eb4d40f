//! Dequantization of ggml's K-quant super-blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: 256 elements
//! each) into f32, one function per type over a whole number of super-blocks.
//!
//! Each function reproduces gguf-py's `gguf.quants` (numpy, float32) operation by operation:
//! the f16 scales are widened to f32, a sub-block's scale is `d * sc` (and its offset
//! `dmin * m`) rounded to f32 once, then each element is `scale * q` (`- offset`) as a
//! multiply followed by a separate subtract (Rust never fuses them into an FMA). The
//! results are therefore bit-identical to gguf-py's and to what transformers loads. The
//! loops run over 16- or 32-element sub-blocks with their scale hoisted, so the compiler
//! vectorises the inner loop; the functions are `inline(always)` so that the caller's AVX2
//! copy compiles them with AVX2.

use super::half_at;

/// Elements in one K-quant super-block.
pub(super) const QK_K: usize = 256;

/// Bytes of one super-block of each type (ggml's `block_q*_K`).
pub(super) const Q2K_BYTES: usize = 84;
pub(super) const Q3K_BYTES: usize = 110;
pub(super) const Q4K_BYTES: usize = 144;
pub(super) const Q5K_BYTES: usize = 176;
pub(super) const Q6K_BYTES: usize = 210;

/// Q2_K: `scales[16]` (4-bit scale | 4-bit min), `qs[64]` (2-bit), `d`, `dmin` (f16).
/// Element `128 n + 32 s + l` is bits `2s..2s+2` of `qs[32 n + l]`, in sub-block `e / 16`:
/// `(d * (sc & 15)) * q - dmin * (sc >> 4)`.
#[inline(always)]
pub(super) fn q2k(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(QK_K).zip(data.chunks_exact(Q2K_BYTES)) {
        let (scales, rest) = b.split_at(16);
        let (qs, _) = rest.split_at(64);
        let d = half_at(b, 80);
        let dmin = half_at(b, 82);
        // Unpack the quants to bytes first, then scale 16 at a time: two loops the compiler
        // vectorises along the elements (one fused loop gets vectorised across the shifts).
        let mut q = [0u8; QK_K];
        for (q128, qs32) in q.chunks_exact_mut(128).zip(qs.chunks_exact(32)) {
            for (s, q32) in q128.chunks_exact_mut(32).enumerate() {
                for (y, &x) in q32.iter_mut().zip(qs32) {
                    *y = (x >> (2 * s)) & 3;
                }
            }
        }
        for ((o16, q16), &sc) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).zip(scales) {
            let dl = d * f32::from(sc & 0x0f);
            let ml = dmin * f32::from(sc >> 4);
            for (y, &x) in o16.iter_mut().zip(q16) {
                *y = dl * f32::from(x) - ml;
            }
        }
    }
}

/// Q3_K: `hmask[32]`, `qs[64]` (low 2 bits), `scales[12]` (sixteen 6-bit scales, offset 32),
/// `d` (f16). Element `128 n + 32 s + l` has low bits `2s..2s+2` of `qs[32 n + l]` and high
/// bit `4n + s` of `hmask[l]`; a clear high bit subtracts 4: `(d * sc) * q`.
#[inline(always)]
pub(super) fn q3k(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(QK_K).zip(data.chunks_exact(Q3K_BYTES)) {
        let (hmask, rest) = b.split_at(32);
        let (qs, rest) = rest.split_at(64);
        let (packed, _) = rest.split_at(12);
        let d = half_at(b, 108);
        let mut dl = [0f32; 16];
        for (j, v) in dl.iter_mut().enumerate() {
            let low = if j < 8 {
                packed[j] & 0x0f
            } else {
                packed[j - 8] >> 4
            };
            let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
            let sc = i32::from(low | (high << 4)) - 32;
            *v = d * sc as f32;
        }
        let mut q = [0i8; QK_K];
        for (n, (q128, qs32)) in q.chunks_exact_mut(128).zip(qs.chunks_exact(32)).enumerate() {
            for (s, q32) in q128.chunks_exact_mut(32).enumerate() {
                let bit = 4 * n + s;
                for ((y, &x), &h) in q32.iter_mut().zip(qs32).zip(hmask) {
                    let minus = (((h >> bit) & 1) ^ 1) << 2;
                    *y = ((x >> (2 * s)) & 3) as i8 - minus as i8;
                }
            }
        }
        for ((o16, q16), &scale) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).zip(&dl) {
            for (y, &x) in o16.iter_mut().zip(q16) {
                *y = scale * f32::from(x);
            }
        }
    }
}

/// The eight 6-bit scales and mins of a Q4_K / Q5_K super-block (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(super) fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        m[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, m)
}

/// Q4_K: `d`, `dmin` (f16), `scales[12]` (eight 6-bit scales and mins), `qs[128]` (4-bit).
/// Sub-block `2c` holds the low nibbles of `qs[32c..32c+32]`, sub-block `2c+1` the high
/// ones: `(d * sc) * q - dmin * m`.
#[inline(always)]
pub(super) fn q4k(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(QK_K).zip(data.chunks_exact(Q4K_BYTES)) {
        let d = half_at(b, 0);
        let dmin = half_at(b, 2);
        let (sc, m) = scale_min_k4(&b[4..16]);
        let qs = &b[16..Q4K_BYTES];
        for (c, (o64, q32)) in o.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
            let (lo, hi) = o64.split_at_mut(32);
            let d1 = d * f32::from(sc[2 * c]);
            let m1 = dmin * f32::from(m[2 * c]);
            let d2 = d * f32::from(sc[2 * c + 1]);
            let m2 = dmin * f32::from(m[2 * c + 1]);
            for ((y1, y2), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(q32) {
                *y1 = d1 * f32::from(x & 0x0f) - m1;
                *y2 = d2 * f32::from(x >> 4) - m2;
            }
        }
    }
}

/// Q5_K: as Q4_K plus `qh[32]` between the scales and `qs`: bit `j` of `qh[l]` is the fifth
/// bit of element `l` of sub-block `j`.
#[inline(always)]
pub(super) fn q5k(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(QK_K).zip(data.chunks_exact(Q5K_BYTES)) {
        let d = half_at(b, 0);
        let dmin = half_at(b, 2);
        let (sc, m) = scale_min_k4(&b[4..16]);
        let qh = &b[16..48];
        let qs = &b[48..Q5K_BYTES];
        for (c, (o64, q32)) in o.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
            let (lo, hi) = o64.split_at_mut(32);
            let (j1, j2) = (2 * c, 2 * c + 1);
            let d1 = d * f32::from(sc[j1]);
            let m1 = dmin * f32::from(m[j1]);
            let d2 = d * f32::from(sc[j2]);
            let m2 = dmin * f32::from(m[j2]);
            for (((y1, y2), &x), &h) in lo.iter_mut().zip(hi.iter_mut()).zip(q32).zip(qh) {
                let q1 = (x & 0x0f) | (((h >> j1) & 1) << 4);
                let q2 = (x >> 4) | (((h >> j2) & 1) << 4);
                *y1 = d1 * f32::from(q1) - m1;
                *y2 = d2 * f32::from(q2) - m2;
            }
        }
    }
}

/// Q6_K: `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), `scales[16]` (i8), `d` (f16). In
/// each half `h` of the super-block, group `g` of 32 elements takes nibble `g / 2` of
/// `ql[64h + 32 (g % 2) + l]` and bits `2g..2g+2` of `qh[32h + l]`, minus 32: `(d * sc) * q`.
#[inline(always)]
pub(super) fn q6k(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(QK_K).zip(data.chunks_exact(Q6K_BYTES)) {
        let (ql, rest) = b.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (scales, _) = rest.split_at(16);
        let d = half_at(b, 208);
        let mut q = [0i8; QK_K];
        for ((q128, ql64), qh32) in q
            .chunks_exact_mut(128)
            .zip(ql.chunks_exact(64))
            .zip(qh.chunks_exact(32))
        {
            let (g0, rest) = q128.split_at_mut(32);
            let (g1, rest) = rest.split_at_mut(32);
            let (g2, g3) = rest.split_at_mut(32);
            let (l0, l1) = ql64.split_at(32);
            for i in 0..32 {
                let h = qh32[i];
                g0[i] = ((l0[i] & 0x0f) | ((h & 3) << 4)) as i8 - 32;
                g1[i] = ((l1[i] & 0x0f) | (((h >> 2) & 3) << 4)) as i8 - 32;
                g2[i] = ((l0[i] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                g3[i] = ((l1[i] >> 4) | ((h >> 6) << 4)) as i8 - 32;
            }
        }
        for ((o16, q16), &sc) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).zip(scales) {
            let scale = d * f32::from(sc as i8);
            for (y, &x) in o16.iter_mut().zip(q16) {
                *y = scale * f32::from(x);
            }
        }
    }
}
