//! `Model::from_bytes` on arbitrary bytes: errors are fine, panics and OOB reads are not.
//! A file that validates must also plan and run without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = cnnrt::Model::from_bytes(data) {
        let sample: usize = model.input_shape().iter().product();
        if sample <= 1 << 16 {
            if let Ok(mut s) = model.session(cnnrt::SessionOptions::default()) {
                let x = vec![0.5f32; sample];
                let _ = s.run(&x, 1);
            }
        }
    }
});
