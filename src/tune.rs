//! Measures the two machine rates the converter's cost model weighs algorithms with
//! (`cnnrt convert --tune`): how fast this core's GEMM micro-kernels compute and how fast
//! one core reads weights that are not cached. About half a second; uses one thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::aligned::AlignedFloats;
use crate::convert::DEFAULT_COST_RATES;
use crate::format::CostRates;
use crate::kernels::gemm::{self, Epilogue, Gemm};
use crate::simd::Isa;

/// Measures [`CostRates`] for kernels of tier `isa` on the calling thread: the best of
/// several timings of a 256 × 64 × 256 packed-A GEMM with its operands in cache (a
/// Winograd layer's GEMM per transformed position: output channels × tiles × input
/// channels), and the best of several reads of a buffer four times the last-level cache
/// (at least 64 MiB, at most 512 MiB). A rate whose buffers cannot be allocated is the
/// default's ([`DEFAULT_COST_RATES`]). A tier above this CPU's is measured at this CPU's.
pub fn measure_cost_rates(isa: Isa) -> CostRates {
    let isa = isa.min(Isa::detect());
    CostRates {
        gemm_gflops: gemm_gflops(isa).unwrap_or(DEFAULT_COST_RATES.gemm_gflops),
        memory_gbps: memory_gbps().unwrap_or(DEFAULT_COST_RATES.memory_gbps),
    }
}

/// The best of `rounds` timings of `f`, after one untimed call.
fn best_time(rounds: usize, mut f: impl FnMut()) -> Duration {
    f();
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
        .max(Duration::from_nanos(1))
}

fn gemm_gflops(isa: Isa) -> Option<f64> {
    let (m, n, k) = (256, 64, 256);
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) / 8.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
    let mut a_packed = AlignedFloats::try_zeroed(gemm::packed_a_len(m, k))?;
    gemm::pack_a(m, k, &a, k, &mut a_packed);
    let plan = Gemm::new(isa, m, n, k);
    let mut scratch = AlignedFloats::try_zeroed(plan.scratch_len())?;
    let mut c = AlignedFloats::try_zeroed(m * n)?;
    let run = |c: &mut [f32], scratch: &mut [f32]| {
        plan.run(
            &a_packed,
            black_box(&b),
            n,
            c,
            n,
            &Epilogue::default(),
            scratch,
        )
    };
    // About 2 ms a timing (40 GEMMs at 100 GFLOP/s), long enough for the clock; fewer
    // where a GEMM is slow (the portable tier, emulation).
    let one = best_time(1, || run(&mut c, &mut scratch));
    let repeat = (Duration::from_millis(2).as_nanos() / one.as_nanos()).clamp(1, 200) as usize;
    let t = best_time(15, || {
        for _ in 0..repeat {
            run(&mut c, &mut scratch);
        }
        black_box(&c[..]);
    });
    Some((2 * m * n * k * repeat) as f64 / t.as_secs_f64() / 1e9)
}

fn memory_gbps() -> Option<f64> {
    let llc = crate::cpu_cache::last_level_bytes().unwrap_or(32 << 20);
    let bytes = llc.saturating_mul(4).clamp(64 << 20, 512 << 20);
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(bytes / 8).ok()?;
    // Written once so every page is mapped before the timed reads.
    buf.extend((0..bytes as u64 / 8).map(|i| i.wrapping_mul(0x9e37_79b9)));
    let t = best_time(4, || {
        // Eight independent sums a step, which the compiler keeps in vector registers.
        let mut acc = [0u64; 8];
        for chunk in buf.chunks_exact(8) {
            for (a, v) in acc.iter_mut().zip(chunk) {
                *a = a.wrapping_add(*v);
            }
        }
        black_box(acc);
    });
    Some(buf.len() as f64 * 8.0 / t.as_secs_f64() / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates are finite, positive and within what any core that runs these tests does
    /// (a broken timing gives 0, infinity or nonsense of many orders of magnitude).
    #[test]
    fn measured_rates_are_plausible() {
        // Avx512 on any CPU: measured at the best tier this one has.
        let r = measure_cost_rates(Isa::Avx512);
        assert!(
            (0.1..100_000.0).contains(&r.gemm_gflops),
            "GEMM {} GFLOP/s",
            r.gemm_gflops
        );
        assert!(
            (0.1..10_000.0).contains(&r.memory_gbps),
            "memory {} GB/s",
            r.memory_gbps
        );
    }
}
