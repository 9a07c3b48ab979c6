//! `Session::run` on the shipped LeNet-5 with arbitrary input bytes (any length, any
//! floats including NaN and Inf): a typed error or a finite-shaped output, never a panic.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

static MODEL: OnceLock<Arc<cnnrt::Model>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let model = MODEL.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/lenet5.cnnrt");
        cnnrt::Model::open(path).expect("models/lenet5.cnnrt")
    });
    let Some((&b, rest)) = data.split_first() else { return };
    let batch = (b % 4) as usize;
    let x: Vec<f32> = rest.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut s = model.session(cnnrt::SessionOptions::default().max_batch(3)).unwrap();
    if let Ok(out) = s.run(&x, batch) {
        assert_eq!(out.len(), batch * 10);
    }
});
