//! Helpers shared by the engine's unit tests that run the tiny fixture model.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

/// A file of the tiny fixture model (`make fixtures` writes them; `$LORA_ENS_RS_FIXTURES`
/// points elsewhere).
pub(crate) fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var_os("LORA_ENS_RS_FIXTURES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny"),
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make fixtures` first",
        path.display()
    );
    path
}

/// Largest absolute elementwise difference of two tensors of the same shape.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of the same shape")
}

/// A small deterministic generator (xorshift64*), so a fuzz failure reproduces from its seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
