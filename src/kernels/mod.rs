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

/// `len` floats rounded up to whole 64-byte lines. Every kernel's `scratch_len` is, so
/// that worker slot `i` of a 64-byte aligned scratch (at `i · scratch_len`) starts on a
/// line too: a 64-byte vector load at a line's start touches one line, elsewhere two.
pub const fn whole_lines(len: usize) -> usize {
    len.next_multiple_of(crate::plan::ALIGN_FLOATS)
}
