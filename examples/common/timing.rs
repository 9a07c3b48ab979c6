//! Timing and data helpers shared by the examples: thread-CPU time, deterministic
//! values, and the best time of a closure over many short trials.

use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
pub fn thread_cpu_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clk: i32, tp: *mut Timespec) -> i32;
    }
    let mut t = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { clock_gettime(3, &mut t) };
    assert_eq!(rc, 0);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_ns() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Best time of one run in ns: trials of about `trial_ns` each (at least 10), for about
/// `budget`.
pub fn best(run: &mut dyn FnMut(), trial_ns: u64, budget: Duration) -> f64 {
    run();
    let t0 = thread_cpu_ns();
    run();
    let one = (thread_cpu_ns() - t0).max(1);
    let reps = (trial_ns / one).clamp(1, 10_000);
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut trials = 0;
    while trials < 10 || (start.elapsed() < budget && trials < 1000) {
        let t = thread_cpu_ns();
        for _ in 0..reps {
            run();
        }
        best = best.min((thread_cpu_ns() - t) as f64 / reps as f64);
        trials += 1;
    }
    best
}
