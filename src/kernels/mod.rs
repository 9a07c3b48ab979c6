//! Kernels: `reference` is the oracle; the others are the fast paths tested against it.

pub mod reference;
pub mod conv;
pub mod gemm;
pub mod linear;
