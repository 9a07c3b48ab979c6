//! `.npy` and image decoding as `cnnrt run` does it, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::input_decode(data));
