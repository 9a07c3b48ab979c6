//! Soak: 8 threads share one `Model`, each with its own `Session`, 10,000 runs each on
//! varied inputs; every output is bit-identical to a single-thread run of the same input.

use std::path::Path;
use std::sync::Arc;

use cnnrt::{Model, SessionOptions};

const THREADS: usize = 8;
const RUNS: usize = 10_000;
const INPUTS: usize = 16;

#[test]
fn eight_threads_ten_thousand_runs_each_bit_identical() {
    let model = Model::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet5.cnnrt")).unwrap();
    let sample: usize = model.input_shape().iter().product();
    let inputs: Arc<Vec<Vec<f32>>> = Arc::new(
        (0..INPUTS)
            .map(|k| (0..sample).map(|i| (((i * 31 + k * 17) % 97) as f32 / 97.0 - 0.3) * 2.0).collect())
            .collect(),
    );
    let mut single = model.session(SessionOptions::default()).unwrap();
    let expected: Arc<Vec<Vec<u32>>> =
        Arc::new(inputs.iter().map(|x| single.run(x, 1).unwrap().iter().map(|v| v.to_bits()).collect()).collect());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (model, inputs, expected) = (model.clone(), inputs.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut s = model.session(SessionOptions::default()).unwrap();
                let mut mismatches = 0usize;
                for r in 0..RUNS {
                    let k = (r * 7 + t) % INPUTS;
                    let out = s.run(&inputs[k], 1).unwrap();
                    if out.iter().map(|v| v.to_bits()).ne(expected[k].iter().copied()) {
                        mismatches += 1;
                    }
                }
                mismatches
            })
        })
        .collect();
    let mismatches: usize = handles.into_iter().map(|h| h.join().expect("worker panicked")).sum();
    assert_eq!(mismatches, 0, "{mismatches} of {} runs differ from the single-thread result", THREADS * RUNS);
}
