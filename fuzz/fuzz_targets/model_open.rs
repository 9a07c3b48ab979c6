//! `Model::from_bytes` on arbitrary bytes, raw and with the checksums recomputed: errors
//! are fine, panics and OOB reads are not. A file that validates must also plan and run.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::model_open(data));
