//! `Session::run` on the shipped LeNet-5 with arbitrary input bytes (any length, any
//! floats including NaN and Inf): a typed error or a finite-shaped output, never a panic.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

static MODEL: OnceLock<Arc<cnnrt::Model>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let model = MODEL.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/lenet5.cnnrt");
        cnnrt::Model::open(path).expect("models/lenet5.cnnrt")
    });
    harness::session_run(model, data);
});
