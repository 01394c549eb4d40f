//! The engine's one random number generator: SplitMix64 (Steele, Lea & Flood 2014), a 64-bit
//! state advanced by a fixed odd constant and mixed. Small, fast and reproducible on every
//! machine: the sampler of `generate` and the bootstrap's resampling draw from it.
//! Test: `cargo test -p lora-ens --lib metrics` (its published first values are checked there).

/// A SplitMix64 stream whose state starts at the seed.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index in `0..n`: the high 64 bits of `next_u64() * n` (Lemire's multiply-shift).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}
