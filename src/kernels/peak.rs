//! This core's FP32 peak for one ISA tier, measured: independent FMA chains that never
//! touch memory, on the tier's widest vectors. `cnnrt bench --profile` quotes each layer
//! as a share of it, so "% of peak" means the machine it runs on (a nominal figure was
//! off by 2× between the project's AVX2-only and AVX-512 machines).

use super::elementwise::{dispatch, Simd};
use crate::simd::Isa;
use std::time::Instant;

/// Independent accumulator chains: enough to cover the FMA latency on two ports.
const CHAINS: usize = 12;
/// Iterations per timed trial (12 chains × 16 lanes × 2 FLOP × 200k ≈ 77 MFLOP).
const ITERS: usize = 200_000;

/// Best of `trials` timings of the register-only FMA loop of `isa` (clamped to this
/// CPU by `dispatch!`), in GFLOP/s of one thread. About 1 ms per trial on a 3–4 GHz core.
pub fn fma_peak_gflops(isa: Isa, trials: usize) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..trials.max(1) {
        let t = Instant::now();
        let (flops, sink) = run(isa);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        if secs > 0.0 {
            best = best.max(flops / secs / 1e9);
        }
    }
    best
}

/// One trial on `isa`'s vectors: the FLOPs done and a value that depends on every chain.
fn run(isa: Isa) -> (f64, f32) {
    dispatch!(isa, |s| chains(s))
}

/// `CHAINS` independent `x = x·m + a` chains for `ITERS` steps (one FMA each where the
/// tier has FMA), in registers.
#[inline(always)]
fn chains<S: Simd>(s: S) -> (f64, f32) {
    let m = s.splat(std::hint::black_box(0.999_999));
    let a = s.splat(std::hint::black_box(1e-7));
    let mut acc = [s.splat(1.0); CHAINS];
    for _ in 0..ITERS {
        for x in acc.iter_mut() {
            *x = s.fmadd(*x, m, a);
        }
    }
    let sum = acc.iter().fold(s.zero(), |t, &x| s.add(t, x));
    let flops = (2 * S::LANES * CHAINS * ITERS) as f64;
    (flops, s.to_array(sum)[..S::LANES].iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_positive_on_every_tier() {
        let scalar = fma_peak_gflops(Isa::Scalar, 2);
        assert!(scalar.is_finite() && scalar > 0.0);
        for isa in Isa::supported() {
            let p = fma_peak_gflops(isa, 2);
            assert!(p.is_finite() && p > 0.0, "{isa}: {p}");
        }
    }
}
