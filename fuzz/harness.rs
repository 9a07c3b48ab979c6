//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (through `#[path]`)
//! and by `tests/fuzz_regressions.rs`, so `cargo test` replays every saved crash through
//! exactly the code the fuzzer ran, without cargo-fuzz.
//!
//! Rule for every body: the library may return any error, but must not panic, abort, read
//! out of bounds or blow the memory limit. The `assert!`s here check invariants the
//! library promises for inputs it accepted.
#![allow(dead_code)]

use std::sync::Arc;

use cnnrt::format::layout::{self, Entry, Header, ENTRY_LEN, HEADER_LEN, MAGIC, MAX_SECTIONS};
use cnnrt::{Model, SessionOptions};

/// Accepted models are only run when their whole graph holds at most this many activation
/// elements and their workspace is at most [`MAX_RUN_WORKSPACE`]: a 1 MB file may
/// legitimately describe a model that needs seconds and gigabytes to run, which is a
/// documented limit (see `cnnrt::limits`), not a bug.
pub const MAX_RUN_ELEMENTS: usize = 1 << 22;
pub const MAX_RUN_WORKSPACE: usize = 64 << 20;

/// Activation elements of all values in `g` (per sample), `None` on overflow.
fn total_elements(g: &cnnrt::graph::Graph) -> Option<usize> {
    g.values.iter().try_fold(0usize, |a, v| {
        a.checked_add(v.shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d))?)
    })
}

/// `model_open`: `Model::from_bytes` on the raw bytes, then again with every checksum
/// recomputed ([`reseal`]) so mutations get past the checksums to the JSON, graph and index
/// checks. A model that validates must also plan a session and run without panicking.
pub fn model_open(data: &[u8]) {
    check_model(data);
    let mut resealed = data.to_vec();
    if reseal(&mut resealed) {
        check_model(&resealed);
    }
}

fn check_model(bytes: &[u8]) {
    let Ok(model) = Model::from_bytes(bytes) else {
        return;
    };
    // After validation every accessor is infallible.
    let g = model.graph();
    for (id, w) in g.weights.iter().enumerate() {
        assert_eq!(Some(model.file().weight(id).len()), w.stored_elements());
    }
    let _ = cnnrt::inspect::layer_table(g, None, &[]);
    let sample: usize = model.input_shape().iter().product();
    let out: usize = model.output_shape().iter().product();
    if total_elements(g).is_none_or(|t| t > MAX_RUN_ELEMENTS) {
        return;
    }
    let Ok(mut s) = model.session(SessionOptions::default()) else {
        return;
    };
    let _ = s.algorithms();
    if s.workspace_bytes() > MAX_RUN_WORKSPACE {
        return;
    }
    let x = vec![0.5f32; sample];
    if let Ok(y) = s.run(&x, 1) {
        assert_eq!(y.len(), out);
    }
}

/// Recomputes a `.cnnrt` file's length field and checksums (header, section table, every
/// in-bounds section) in place, so that mutated files reach the checks behind the
/// checksums. Returns whether anything changed. Files too short or without the magic are
/// left alone (the raw run already covers them).
pub fn reseal(b: &mut [u8]) -> bool {
    if b.len() < HEADER_LEN || b[..8] != MAGIC {
        return false;
    }
    let before = b.to_vec();
    let mut h = Header::decode(&b[..HEADER_LEN]);
    h.file_length = b.len() as u64;
    let n = h.section_count as usize;
    let table = usize::try_from(h.table_offset)
        .ok()
        .and_then(|t| Some((t, t.checked_add(n.checked_mul(ENTRY_LEN)?)?)))
        .filter(|&(t, end)| n <= MAX_SECTIONS && t >= HEADER_LEN && end <= b.len());
    if let Some((t, end)) = table {
        for i in 0..n {
            let at = t + i * ENTRY_LEN;
            let mut e = Entry::decode(&b[at..at + ENTRY_LEN]);
            let range = usize::try_from(e.offset).ok().and_then(|s| {
                let end = s.checked_add(usize::try_from(e.length).ok()?)?;
                (end <= b.len()).then_some(s..end)
            });
            if let Some(r) = range {
                e.checksum = layout::checksum(&b[r]);
                b[at..at + ENTRY_LEN].copy_from_slice(&e.encode());
            }
        }
        h.table_checksum = layout::checksum(&b[t..end]);
    }
    b[..HEADER_LEN].copy_from_slice(&h.encode());
    b[..] != before[..]
}

/// `onnx_import`: what `cnnrt convert` does with a file: import, passes, shape inference,
/// weight packing (with the Winograd error measurement), then the writer's self-check. A
/// converted model must open again.
pub fn onnx_import(data: &[u8]) {
    let Ok(c) = cnnrt::convert::convert_onnx(data, &cnnrt::convert::ConvertOptions::default())
    else {
        return;
    };
    if total_elements(&c.graph).is_none_or(|t| t > MAX_RUN_ELEMENTS) {
        return;
    }
    let (graph, weights, notes) = c.packed_for_file();
    let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
    let meta = cnnrt::format::Metadata {
        layer_notes: notes,
        ..c.metadata.clone()
    };
    if let Ok(bytes) = cnnrt::format::model_to_bytes(&graph, &refs, &meta) {
        if let Err(e) = Model::from_bytes(&bytes) {
            panic!("the converter wrote a file that does not open: {e}");
        }
    }
}

/// `input_decode`: `.npy` and image decoding as `cnnrt run` does it, on arbitrary bytes,
/// for a 3-channel and a 1-channel model input.
pub fn input_decode(data: &[u8]) {
    if let Ok((v, shape)) = cnnrt::input::npy_from_bytes(data) {
        assert_eq!(v.len(), shape.iter().product::<usize>());
    }
    let rgb = cnnrt::format::Metadata {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        channel_order: cnnrt::format::ChannelOrder::Bgr,
        ..Default::default()
    };
    let mut out = Vec::new();
    if cnnrt::input::image_to_tensor(data, &[3, 32, 32], &rgb, &mut out).is_ok() {
        assert_eq!(out.len(), 3 * 32 * 32);
    }
    out.clear();
    let gray = cnnrt::format::Metadata::default();
    if cnnrt::input::image_to_tensor(data, &[1, 28, 28], &gray, &mut out).is_ok() {
        assert_eq!(out.len(), 28 * 28);
    }
}

/// `session_run`: `Session::run` on a valid model (the shipped LeNet-5, in a session planned
/// for batch 3 that is reused across inputs, as a service would) with arbitrary input bytes.
/// The first byte picks the batch (0..=3: 0 must be an error, and so must a length that is
/// not `batch × 784`); the rest are little-endian f32s (any bits: NaN, Inf, denormals).
/// Either a typed error or an output of `batch × 10` values.
pub fn session_run(session: &mut cnnrt::Session, data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let batch = (b % 4) as usize;
    let x: Vec<f32> = rest
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Ok(out) = session.run(&x, batch) {
        assert_eq!(out.len(), batch * 10);
    }
}

/// The session [`session_run`] runs in.
pub fn lenet_session(model: &Arc<Model>) -> cnnrt::Session {
    model
        .session(SessionOptions::default().max_batch(3))
        .expect("a session for the shipped model")
}
