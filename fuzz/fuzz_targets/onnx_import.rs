//! The ONNX importer and converter passes on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cnnrt::convert::convert_onnx(data, &cnnrt::convert::ConvertOptions::default());
});
