//! `.npy` and image decoding as `cnnrt run` does it, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cnnrt::input::npy_from_bytes(data);
    let meta = cnnrt::format::Metadata::default();
    let mut out = Vec::new();
    let _ = cnnrt::input::image_to_tensor(data, &[3, 32, 32], &meta, &mut out);
    out.clear();
    let _ = cnnrt::input::image_to_tensor(data, &[1, 28, 28], &meta, &mut out);
});
