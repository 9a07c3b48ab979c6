//! The ONNX importer, converter passes, weight packing and writer on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::onnx_import(data));
