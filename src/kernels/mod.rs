//! Kernels: `reference` is the oracle; the others are the fast paths tested against it.

pub mod conv;
pub mod conv_pool;
pub mod depthwise;
pub mod elementwise;
pub mod fused;
pub mod gemm;
pub mod linear;
pub mod nhwc;
pub mod parallel;
pub mod peak;
pub mod pool;
pub mod reference;
pub mod team;
pub mod winograd;
