//! The parallel paths of every layer kind (tiles claimed by several workers, batches in one
//! parallel region, pooling and fully connected layers split over workers) give results
//! bit-identical to one thread, on a session's first run and its second (fully connected
//! layers sweep their weights backwards on every second run). `CNNRT_PARALLEL_MIN_FLOPS=0` sends even the small layers
//! of these test models to the pool; the variable is read once per process, and this file
//! is its own process.

mod common;

use cnnrt::{Isa, Model, SessionOptions, Threads};
use std::path::Path;
use std::sync::Arc;

fn check(model: &Arc<Model>, x: &[f32], max_batch: usize, what: &str) {
    let per = x.len() / max_batch;
    for isa in Isa::supported() {
        let mut base = model
            .session(SessionOptions::default().max_batch(max_batch).max_isa(isa))
            .unwrap();
        for batch in [max_batch, 1] {
            let want = base.run(&x[..batch * per], batch).unwrap().to_vec();
            for t in [2usize, 3] {
                let mut s = model
                    .session(SessionOptions {
                        max_batch,
                        max_isa: Some(isa),
                        threads: Threads::Count(t),
                        ..Default::default()
                    })
                    .unwrap();
                // Twice: fully connected layers sweep their weights the other way on
                // every second run (`linear::Sweep`).
                for run in 0..2 {
                    let got = s.run(&x[..batch * per], batch).unwrap();
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what} [{isa}] batch {batch}: {t} threads differ from 1 (run {run})"
                    );
                }
            }
        }
    }
}

#[test]
fn parallel_paths_are_bit_identical() {
    std::env::set_var("CNNRT_PARALLEL_MIN_FLOPS", "0");
    let zoo = common::zoo(3);
    let mut seed = 11u64;
    let x = common::rand_vec(&mut seed, 3 * 1200, -2.0, 2.0);
    check(&zoo.model(), &x, 3, "zoo");

    let lenet = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet5.cnnrt");
    let model = Model::open(&lenet).unwrap();
    let x = common::rand_vec(&mut seed, 4 * 28 * 28, -1.0, 2.0);
    check(&model, &x, 4, "lenet5");
}
