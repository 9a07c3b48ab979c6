//! This core's FP32 peak for one ISA tier, measured: independent FMA chains that never
//! touch memory, on the tier's widest vectors. `cnnrt bench --profile` quotes each layer
//! as a share of it, so "% of peak" means the machine it runs on (a nominal figure was
//! off by 2× between the project's AVX2-only and AVX-512 machines).

use crate::simd::Isa;
use std::time::Instant;

/// Independent accumulator chains: enough to cover the FMA latency on two ports.
const CHAINS: usize = 12;
/// Iterations per timed trial (12 chains × 16 lanes × 2 FLOP × 200k ≈ 77 MFLOP).
const ITERS: usize = 200_000;

/// Best of `trials` timings of the register-only FMA loop of `isa` (clamped to this
/// CPU), in GFLOP/s of one thread. About 1 ms per trial on a 3–4 GHz core.
pub fn fma_peak_gflops(isa: Isa, trials: usize) -> f64 {
    let isa = isa.min(Isa::detect());
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

/// One trial: the FLOPs done and a value that depends on every chain.
fn run(isa: Isa) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            // SAFETY: `isa` is clamped to `Isa::detect()`, so the CPU has the features.
            Isa::Avx512 => return unsafe { x86::avx512() },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { x86::avx2() },
            Isa::Scalar => {}
        }
    }
    let _ = isa;
    let mut acc = [1.0f32; CHAINS];
    let (m, a) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..ITERS {
        for x in acc.iter_mut() {
            *x = *x * m + a;
        }
    }
    ((2 * CHAINS * ITERS) as f64, acc.iter().sum())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS, ITERS};
    use std::arch::x86_64::*;

    /// Safety: AVX-512F present.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512() -> (f64, f32) {
        let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let a = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, a);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        ((2 * 16 * CHAINS * ITERS) as f64, _mm512_reduce_add_ps(s))
    }

    /// Safety: AVX2 and FMA present.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2() -> (f64, f32) {
        let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let a = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, a);
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        ((2 * 8 * CHAINS * ITERS) as f64, lanes.iter().sum())
    }
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
