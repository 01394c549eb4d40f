//! Helpers shared by the engine's integration tests: the unit tests' own, from
//! `src/test_support.rs`, so there is one fixture locator.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset of these helpers

#[path = "../../src/test_support.rs"]
mod test_support;

pub(crate) use test_support::{Rng, fixture, max_diff};
