//! Kernels: `reference` is the oracle; the others are the fast paths tested against it.

pub mod reference;
pub mod depthwise;
pub mod elementwise;
pub mod pool;
