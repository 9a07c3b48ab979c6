//! `Session::run` performs no heap allocation once planned, on every tier and with a
//! thread pool: proved with a counting global allocator. One test per binary, so no other
//! test allocates concurrently.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cnnrt::{Isa, SessionOptions, Threads};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn run_does_not_allocate() {
    // Every layer through the pool, however small, so the parallel paths are counted too
    // (read once per process; this file has no other test).
    std::env::set_var("CNNRT_PARALLEL_MIN_FLOPS", "0");
    // The zoo (every op), two fused inverted-residual blocks (`kernels::fused`) and two
    // blocks on small maps (the channels-last region, `kernels::nhwc`).
    let zoos = [
        common::zoo(42),
        common::inverted_residuals(),
        common::small_map_blocks(),
    ];
    let mut seed = 9u64;
    // Sessions are kept alive to the end: a dropped pool's threads allocate as they exit.
    let mut keep = Vec::new();
    for (zoo, isa) in zoos
        .iter()
        .flat_map(|z| Isa::supported().into_iter().map(move |i| (z, i)))
    {
        let model = zoo.model();
        let sample: usize = zoo.graph.shape(zoo.graph.inputs[0]).iter().product();
        let x = common::rand_vec(&mut seed, 3 * sample, -1.0, 1.0);
        for threads in [Threads::Caller, Threads::Count(2)] {
            let mut s = model
                .session(SessionOptions {
                    max_batch: 3,
                    max_isa: Some(isa),
                    threads: threads.clone(),
                    ..Default::default()
                })
                .unwrap();
            // Warm-up: the first run may touch lazily created pool state.
            s.run(&x, 3).unwrap();
            s.run(&x[..x.len() / 3], 1).unwrap();
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            for batch in [3, 1, 2] {
                s.run(&x[..batch * x.len() / 3], batch).unwrap();
            }
            COUNTING.store(false, Ordering::SeqCst);
            let n = ALLOCS.load(Ordering::SeqCst);
            assert_eq!(n, 0, "{n} heap allocations in run() [{isa}, {threads:?}]");
            keep.push(s);
        }
    }
}
