//! Idle workers do not spin: between runs a session's helper threads park (after a short
//! grace period), so an idle service costs no CPU. One test in this binary, so that no
//! other test's work counts towards the process's CPU time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cnnrt::{SessionOptions, Threads};

#[test]
fn helpers_use_no_cpu_between_runs() {
    let zoo = common::zoo(5);
    let model = zoo.model();
    let sample: usize = zoo.graph.shape(zoo.graph.inputs[0]).iter().product();
    let mut seed = 3u64;
    let x = common::rand_vec(&mut seed, sample, -1.0, 1.0);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap(),
    );
    for threads in [Threads::Count(3), Threads::Pool(pool)] {
        let mut s = model
            .session(SessionOptions::default().threads(threads.clone()))
            .unwrap();
        for _ in 0..20 {
            s.run(&x, 1).unwrap();
        }
        // Past the grace period (200 µs) and rayon's own spinning.
        std::thread::sleep(Duration::from_millis(50));
        let before = cpu_time::ProcessTime::now();
        std::thread::sleep(Duration::from_millis(400));
        let used = before.elapsed();
        // Two spinning helpers would use about 800 ms.
        assert!(
            used < Duration::from_millis(100),
            "{threads:?}: {used:?} of CPU in 400 ms idle"
        );
        // And the session still runs after its helpers parked.
        s.run(&x, 1).unwrap();
    }
}
