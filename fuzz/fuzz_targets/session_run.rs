//! `Session::run` on the shipped LeNet-5 with arbitrary input bytes (any length, any
//! floats including NaN and Inf): a typed error or a finite-shaped output, never a panic.
#![no_main]
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

static SESSION: OnceLock<Mutex<cnnrt::Session>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let session = SESSION.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/lenet5.cnnrt");
        let model = cnnrt::Model::open(path).expect("models/lenet5.cnnrt");
        Mutex::new(harness::lenet_session(&model))
    });
    harness::session_run(&mut session.lock().unwrap(), data);
});
