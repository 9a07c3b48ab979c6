//! Tests of the `.cnnrt` v1 format: round trips, zero-copy mapping, and rejection (never a
//! panic) of damaged, truncated and hostile files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cnnrt::format::layout::{self, Entry, Header, IndexEntry};
use cnnrt::format::{
    model_to_bytes, write_model, ChannelOrder, CostRates, LayerNote, Metadata, ModelFile,
    OpenOptions, Storage,
};
use cnnrt::graph::{Activation, Conv, Graph, Linear, Node, Op};
use cnnrt::Error;
use proptest::prelude::*;

// ---------------------------------------------------------------- fixtures

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// input [3, 8, 8] → conv 3x3 pad 1 (4 channels, bias) → relu → flatten → linear (10).
fn sample_graph() -> Graph {
    let mut g = Graph::default();
    let x = g.add_value("input", vec![3, 8, 8]);
    let c = g.add_value("conv_out", vec![]);
    let r = g.add_value("relu_out", vec![]);
    let f = g.add_value("flat", vec![]);
    let y = g.add_value("logits", vec![]);
    let cw = g.add_weight("conv.weight", vec![4, 3, 3, 3]);
    let cb = g.add_weight("conv.bias", vec![4]);
    let lw = g.add_weight("fc.weight", vec![10, 256]);
    let lb = g.add_weight("fc.bias", vec![10]);
    g.nodes.push(Node {
        name: "conv".into(),
        op: Op::Conv(Conv {
            in_channels: 3,
            out_channels: 4,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
            groups: 1,
            weight: cw,
            bias: Some(cb),
            activation: Activation::Identity,
        }),
        inputs: vec![x],
        output: c,
    });
    g.nodes.push(Node {
        name: "relu".into(),
        op: Op::Activation(Activation::Relu),
        inputs: vec![c],
        output: r,
    });
    g.nodes.push(Node {
        name: "flatten".into(),
        op: Op::Flatten { axis: 1 },
        inputs: vec![r],
        output: f,
    });
    g.nodes.push(Node {
        name: "fc".into(),
        op: Op::Linear(Linear {
            in_features: 256,
            out_features: 10,
            weight: lw,
            bias: Some(lb),
            activation: Activation::Identity,
        }),
        inputs: vec![f],
        output: y,
    });
    g.inputs = vec![x];
    g.outputs = vec![y];
    g.infer_shapes().unwrap();
    g
}

fn sample_weights(g: &Graph, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed | 1);
    g.weights
        .iter()
        .map(|w| (0..w.numel()).map(|_| rng.f32()).collect())
        .collect()
}

fn sample_meta() -> Metadata {
    Metadata {
        input_name: "input".into(),
        input_shape: vec![3, 8, 8],
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        channel_order: ChannelOrder::Bgr,
        labels: (0..10).map(|i| format!("class {i} — ü")).collect(),
        producer: "tests/format.rs".into(),
        source_opset: 17,
        layer_notes: vec![
            LayerNote {
                node: "conv".into(),
                algorithm: "winograd_f2x2_3x3".into(),
                relative_error: Some(3.5e-7),
            },
            LayerNote {
                node: "fc".into(),
                algorithm: "gemm".into(),
                relative_error: None,
            },
        ],
        planned_batch: 8,
        cost_rates: Some(CostRates {
            gemm_gflops: 114.0,
            memory_gbps: 25.5,
        }),
        extra: BTreeMap::from([("license".to_string(), "CC0".to_string())]),
    }
}

fn refs(w: &[Vec<f32>]) -> Vec<&[f32]> {
    w.iter().map(|v| v.as_slice()).collect()
}

fn sample_bytes() -> Vec<u8> {
    let g = sample_graph();
    let w = sample_weights(&g, 7);
    model_to_bytes(&g, &refs(&w), &sample_meta()).unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnrt-format-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Named edits applied to a copy of a valid file.
type Cases<T> = Vec<(&'static str, Box<dyn Fn(&mut T)>)>;

/// Asserts a `Format` error (never a panic: a panic fails the test by itself).
#[track_caller]
fn expect_format_err(bytes: &[u8], what: &str) -> String {
    match ModelFile::from_bytes(bytes) {
        Err(Error::Format { path, reason }) => {
            assert_eq!(path, Path::new("<memory>"));
            reason
        }
        Err(e) => panic!("{what}: expected a Format error, got {e}"),
        Ok(_) => panic!("{what}: expected an error, the file was accepted"),
    }
}

// ------------------------------------------------- a tiny test-side container editor

/// The sections of a file, in table order: (kind, flags, bytes).
fn split(bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let h = Header::decode(&bytes[..64]);
    let t = h.table_offset as usize;
    (0..h.section_count as usize)
        .map(|i| {
            let e = Entry::decode(&bytes[t + 32 * i..t + 32 * i + 32]);
            (
                e.kind,
                e.flags,
                bytes[e.offset as usize..(e.offset + e.length) as usize].to_vec(),
            )
        })
        .collect()
}

/// Lays sections out after the header and table (WEIGHTS 64-aligned, others 8-aligned),
/// with correct checksums everywhere, so only the content is hostile.
fn assemble(sections: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    assemble_with(sections, |_| {})
}

fn assemble_with(
    sections: &[(u32, u32, Vec<u8>)],
    edit_header: impl FnOnce(&mut Header),
) -> Vec<u8> {
    let table_len = 32 * sections.len();
    let mut out = vec![0u8; 64 + table_len];
    let mut entries = Vec::new();
    for (kind, flags, data) in sections {
        let align = if *kind == layout::KIND_WEIGHTS { 64 } else { 8 };
        out.resize(out.len().div_ceil(align) * align, 0);
        entries.push(Entry {
            kind: *kind,
            flags: *flags,
            offset: out.len() as u64,
            length: data.len() as u64,
            checksum: layout::checksum(data),
        });
        out.extend_from_slice(data);
    }
    for (i, e) in entries.iter().enumerate() {
        out[64 + 32 * i..96 + 32 * i].copy_from_slice(&e.encode());
    }
    let mut h = Header {
        major: 1,
        minor: 0,
        flags: 0,
        table_offset: 64,
        section_count: sections.len() as u32,
        reserved0: 0,
        file_length: out.len() as u64,
        table_checksum: layout::checksum(&out[64..64 + table_len]),
        reserved1: 0,
        header_checksum: 0,
    };
    edit_header(&mut h);
    out[..64].copy_from_slice(&h.encode());
    out
}

/// Recomputes the table checksum and header checksum after the table was edited.
fn reseal_table(bytes: &mut [u8]) {
    let mut h = Header::decode(&bytes[..64]);
    let t = h.table_offset as usize;
    h.table_checksum = layout::checksum(&bytes[t..t + 32 * h.section_count as usize]);
    bytes[..64].copy_from_slice(&h.encode());
}

/// Recomputes every checksum (sections, table, header) in place, best effort: entries that
/// point outside the file are left alone.
fn reseal_all(bytes: &mut [u8]) {
    if bytes.len() < 64 {
        return;
    }
    let h = Header::decode(&bytes[..64]);
    let t = h.table_offset as usize;
    let n = (h.section_count as usize).min(64);
    if t.checked_add(32 * n).is_none_or(|e| e > bytes.len()) {
        return;
    }
    for i in 0..n {
        let at = t + 32 * i;
        let mut e = Entry::decode(&bytes[at..at + 32]);
        let end = e.offset.checked_add(e.length);
        if let Some(end) = end.filter(|&end| end <= bytes.len() as u64) {
            e.checksum = layout::checksum(&bytes[e.offset as usize..end as usize]);
            bytes[at..at + 32].copy_from_slice(&e.encode());
        }
    }
    let mut h = h;
    h.table_checksum = layout::checksum(&bytes[t..t + 32 * n]);
    bytes[..64].copy_from_slice(&h.encode());
}

fn section_mut(sections: &mut [(u32, u32, Vec<u8>)], kind: u32) -> &mut Vec<u8> {
    &mut sections.iter_mut().find(|s| s.0 == kind).unwrap().2
}

/// Replaces the GRAPH JSON via an edit on its `serde_json::Value`.
fn with_graph_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut s = split(&sample_bytes());
    let g = section_mut(&mut s, layout::KIND_GRAPH);
    let mut v: serde_json::Value = serde_json::from_slice(g).unwrap();
    edit(&mut v);
    *g = serde_json::to_vec(&v).unwrap();
    assemble(&s)
}

fn with_index_entry(id: usize, edit: impl FnOnce(&mut IndexEntry)) -> Vec<u8> {
    let mut s = split(&sample_bytes());
    let idx = section_mut(&mut s, layout::KIND_WEIGHT_INDEX);
    let at = 8 + 24 * id;
    let mut e = IndexEntry::decode(&idx[at..at + 24]);
    edit(&mut e);
    idx[at..at + 24].copy_from_slice(&e.encode());
    assemble(&s)
}

// ---------------------------------------------------------------- round trips

#[test]
fn model_file_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<ModelFile>();
}

#[test]
fn round_trip_in_memory() {
    let g = sample_graph();
    let w = sample_weights(&g, 1);
    let meta = sample_meta();
    let bytes = model_to_bytes(&g, &refs(&w), &meta).unwrap();
    let m = ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(m.graph(), &g);
    assert_eq!(m.metadata(), &meta);
    assert_eq!(m.weights(), refs(&w));
    assert!(!m.is_mapped());
    assert_eq!(m.huge_page_bytes(), None, "heap bytes: not counted");
    assert_eq!(m.bytes(), &bytes[..]);
    assert_eq!(m.version(), (1, 0));
    // The test-side assembler produces the same bytes as the writer: the spec is the layout.
    assert_eq!(assemble(&split(&bytes)), bytes);
}

#[test]
fn round_trip_file_mmap_and_copy_zero_copy() {
    let dir = tmpdir("roundtrip");
    let path = dir.join("m.cnnrt");
    let g = sample_graph();
    let w = sample_weights(&g, 2);
    let meta = sample_meta();
    write_model(&path, &g, &refs(&w), &meta).unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temp file left behind"
    );

    for storage in [Storage::Mmap, Storage::Copy] {
        for verify in [true, false] {
            let m = ModelFile::open(
                &path,
                &OpenOptions {
                    storage,
                    verify_weight_checksum: verify,
                },
            )
            .unwrap();
            assert_eq!(m.is_mapped(), storage == Storage::Mmap);
            // Huge pages of the model's own memory only: at most its (page-rounded) size.
            let huge = m.huge_page_bytes();
            assert_eq!(huge.is_some(), cfg!(target_os = "linux"));
            let rounded = (m.bytes().len() as u64).next_multiple_of(2 << 20);
            assert!(huge.unwrap_or(0) <= rounded, "{huge:?} huge-page bytes");
            assert_eq!(m.graph(), &g);
            assert_eq!(m.metadata(), &meta);
            assert_eq!(m.weights(), refs(&w));
            let base = m.bytes().as_ptr() as usize;
            let end = base + m.bytes().len();
            for id in 0..g.weights.len() {
                let s = m.weight(id);
                let p = s.as_ptr() as usize;
                assert_eq!(p % 64, 0, "weight {id} not 64-byte aligned");
                assert!(
                    p >= base && p + 4 * s.len() <= end,
                    "weight {id} is not a view into bytes()"
                );
                assert_eq!(s.len(), g.weights[id].numel());
            }
        }
    }
    // Default options map.
    assert!(ModelFile::open(&path, &OpenOptions::default())
        .unwrap()
        .is_mapped());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_and_zero_sized_weights() {
    // A graph with no weights, and one with a zero-element weight.
    let mut g = Graph::default();
    let x = g.add_value("x", vec![2, 3]);
    let y = g.add_value("y", vec![]);
    g.nodes.push(Node {
        name: "relu".into(),
        op: Op::Activation(Activation::Relu),
        inputs: vec![x],
        output: y,
    });
    g.inputs = vec![x];
    g.outputs = vec![y];
    g.infer_shapes().unwrap();
    let b = model_to_bytes(&g, &[], &Metadata::default()).unwrap();
    let m = ModelFile::from_bytes(&b).unwrap();
    assert!(m.weights().is_empty());

    g.add_weight("unused_empty", vec![0, 4]);
    g.add_weight("unused", vec![5]);
    let w0: Vec<f32> = vec![];
    let w1 = vec![1.0f32, 2.0, 3.0, 4.0, 5.0];
    let b = model_to_bytes(&g, &[&w0, &w1], &Metadata::default()).unwrap();
    let m = ModelFile::from_bytes(&b).unwrap();
    assert_eq!(m.weight(0), &[] as &[f32]);
    assert_eq!(m.weight(1), &w1[..]);
    assert_eq!(m.weight(1).as_ptr() as usize % 64, 0);
}

#[test]
fn metadata_defaults_and_unknown_fields() {
    let mut s = split(&sample_bytes());
    *section_mut(&mut s, layout::KIND_META) =
        br#"{"labels":["a"],"from_the_future":{"x":1}}"#.to_vec();
    let m = ModelFile::from_bytes(&assemble(&s)).unwrap();
    assert_eq!(m.metadata().labels, vec!["a".to_string()]);
    assert_eq!(m.metadata().channel_order, ChannelOrder::Rgb);
    assert_eq!(m.metadata().source_opset, 0);
}

// ---------------------------------------------------------------- writer checks

#[test]
fn writer_rejects_mismatched_weights_and_bad_values() {
    let g = sample_graph();
    let w = sample_weights(&g, 3);
    let meta = sample_meta();
    let r = refs(&w);
    assert!(model_to_bytes(&g, &r[..3], &meta).is_err());
    let mut short = r.clone();
    short[2] = &w[2][..100];
    assert!(model_to_bytes(&g, &short, &meta).is_err());

    let mut bad = meta.clone();
    bad.std[1] = 0.0;
    assert!(model_to_bytes(&g, &r, &bad).is_err());
    let mut bad = meta.clone();
    bad.mean.pop();
    assert!(model_to_bytes(&g, &r, &bad).is_err());
    for rates in [
        (0.0, 20.0),
        (100.0, -1.0),
        (f64::NAN, 20.0),
        (100.0, f64::INFINITY),
    ] {
        let mut bad = meta.clone();
        bad.cost_rates = Some(CostRates {
            gemm_gflops: rates.0,
            memory_gbps: rates.1,
        });
        let e = model_to_bytes(&g, &r, &bad).unwrap_err().to_string();
        assert!(e.contains("cost_rates"), "{rates:?}: {e}");
    }

    // A NaN attribute cannot survive JSON: the writer's self-check refuses it.
    let mut gn = g.clone();
    gn.nodes[1].op = Op::Activation(Activation::LeakyRelu { alpha: f32::NAN });
    assert!(model_to_bytes(&gn, &r, &meta).is_err());

    // Stored shapes that are not the inferred ones.
    let mut gs = g.clone();
    gs.values[1].shape = vec![4, 8, 9];
    assert!(model_to_bytes(&gs, &r, &meta).is_err());
}

#[test]
fn write_replaces_atomically_under_a_live_mapping() {
    let dir = tmpdir("atomic");
    let path = dir.join("m.cnnrt");
    let g = sample_graph();
    let w1 = sample_weights(&g, 11);
    let w2 = sample_weights(&g, 12);
    write_model(&path, &g, &refs(&w1), &sample_meta()).unwrap();
    let old = ModelFile::open(&path, &OpenOptions::default()).unwrap();
    assert!(old.is_mapped());
    write_model(&path, &g, &refs(&w2), &sample_meta()).unwrap();
    // The open model still sees the old inode; a fresh open sees the new one.
    assert_eq!(old.weights(), refs(&w1));
    let new = ModelFile::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(new.weights(), refs(&w2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn copy_storage_survives_truncation_after_open() {
    let dir = tmpdir("copy");
    let path = dir.join("m.cnnrt");
    let g = sample_graph();
    let w = sample_weights(&g, 5);
    write_model(&path, &g, &refs(&w), &sample_meta()).unwrap();
    let m = ModelFile::open(
        &path,
        &OpenOptions {
            storage: Storage::Copy,
            verify_weight_checksum: true,
        },
    )
    .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(0).unwrap();
    drop(f);
    assert_eq!(m.weights(), refs(&w));
    assert_eq!(m.graph(), &g);
    // And opening the truncated file is an error, not a crash.
    for storage in [Storage::Mmap, Storage::Copy] {
        let e = ModelFile::open(
            &path,
            &OpenOptions {
                storage,
                verify_weight_checksum: true,
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_errors_name_the_path() {
    let dir = tmpdir("paths");
    let missing = dir.join("missing.cnnrt");
    assert!(matches!(
        ModelFile::open(&missing, &OpenOptions::default()),
        Err(Error::Io { .. })
    ));
    let bad = dir.join("bad.cnnrt");
    let mut b = sample_bytes();
    b.truncate(b.len() - 1);
    std::fs::write(&bad, &b).unwrap();
    for storage in [Storage::Mmap, Storage::Copy] {
        match ModelFile::open(
            &bad,
            &OpenOptions {
                storage,
                verify_weight_checksum: true,
            },
        ) {
            Err(Error::Format { path, reason }) => {
                assert_eq!(path, bad);
                assert!(reason.contains("bytes"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- damaged files

#[test]
fn every_header_byte_flipped_or_incremented_is_rejected() {
    let good = sample_bytes();
    for i in 0..64 {
        for (how, v) in [
            ("xor 0xff", good[i] ^ 0xFF),
            ("+1", good[i].wrapping_add(1)),
        ] {
            let mut b = good.clone();
            b[i] = v;
            expect_format_err(&b, &format!("header byte {i} {how}"));
        }
    }
}

#[test]
fn header_fields_with_resealed_checksum_are_rejected() {
    let s = split(&sample_bytes());
    let cases: Cases<Header> = vec![
        ("major 2", Box::new(|h| h.major = 2)),
        ("major 0", Box::new(|h| h.major = 0)),
        ("required flag", Box::new(|h| h.flags = 1)),
        ("required flag 15", Box::new(|h| h.flags = 1 << 15)),
        ("reserved0", Box::new(|h| h.reserved0 = 1)),
        ("reserved1", Box::new(|h| h.reserved1 = 1)),
        ("file length +1", Box::new(|h| h.file_length += 1)),
        ("file length -1", Box::new(|h| h.file_length -= 1)),
        ("table offset 0", Box::new(|h| h.table_offset = 0)),
        ("table offset 32", Box::new(|h| h.table_offset = 32)),
        (
            "table offset huge",
            Box::new(|h| h.table_offset = u64::MAX - 8),
        ),
        ("section count 0", Box::new(|h| h.section_count = 0)),
        ("section count 3", Box::new(|h| h.section_count = 3)),
        (
            "section count huge",
            Box::new(|h| h.section_count = u32::MAX),
        ),
        ("section count 5", Box::new(|h| h.section_count = 5)),
    ];
    for (what, edit) in cases {
        let r = expect_format_err(&assemble_with(&s, |h| edit(h)), what);
        if what.starts_with("major") {
            assert!(r.contains("version"), "{r}");
        }
    }
    // Optional header flags (16..31) and a newer minor are accepted.
    ModelFile::from_bytes(&assemble_with(&s, |h| h.flags = 1 << 16)).unwrap();
    ModelFile::from_bytes(&assemble_with(&s, |h| h.minor = 7)).unwrap();
}

#[test]
fn truncation_anywhere_is_rejected() {
    let good = sample_bytes();
    let h = Header::decode(&good[..64]);
    let mut cuts = vec![0, 1, 8, 63, 64, 65];
    let t = h.table_offset as usize;
    cuts.extend([t, t + 32 * h.section_count as usize]);
    for s in split(&good)
        .iter()
        .enumerate()
        .map(|(i, _)| Entry::decode(&good[t + 32 * i..t + 32 * i + 32]))
    {
        cuts.extend([
            s.offset as usize,
            (s.offset + s.length) as usize,
            (s.offset + s.length / 2) as usize,
        ]);
    }
    let mut rng = Rng(99);
    for k in 0..50 {
        cuts.push(k * good.len() / 50);
        cuts.push(rng.next() as usize % good.len());
    }
    cuts.push(good.len() - 1);
    for cut in cuts.into_iter().filter(|&c| c < good.len()) {
        expect_format_err(&good[..cut], &format!("truncated at {cut}"));
        // Truncated but with header and table resealed: still rejected (sections cut).
        let mut b = good[..cut].to_vec();
        if b.len() >= 64 {
            let mut hh = Header::decode(&b[..64]);
            hh.file_length = cut as u64;
            b[..64].copy_from_slice(&hh.encode());
            expect_format_err(&b, &format!("truncated at {cut}, length resealed"));
        }
    }
    // Appended bytes too.
    let mut b = good.clone();
    b.push(0);
    let r = expect_format_err(&b, "one byte appended");
    assert!(r.contains("bytes"), "{r}");
}

#[test]
fn every_section_table_field_corrupted_is_rejected() {
    let good = sample_bytes();
    let h = Header::decode(&good[..64]);
    let t = h.table_offset as usize;
    for i in 0..h.section_count as usize {
        let at = t + 32 * i;
        let orig = Entry::decode(&good[at..at + 32]);
        let mut variants: Vec<(String, Entry)> = Vec::new();
        for k in [
            orig.kind ^ 0xFFFF_FFFF,
            orig.kind + 1,
            orig.kind.wrapping_sub(1),
            0,
            99,
        ] {
            variants.push((format!("kind {k}"), Entry { kind: k, ..orig }));
        }
        for f in [1, 2, 0x8000_0000, u32::MAX] {
            variants.push((format!("flags {f:#x}"), Entry { flags: f, ..orig }));
        }
        for o in [
            orig.offset + 1,
            orig.offset.wrapping_sub(1),
            orig.offset ^ u64::MAX,
            0,
            32,
            u64::MAX,
            orig.offset + 64,
        ] {
            variants.push((format!("offset {o}"), Entry { offset: o, ..orig }));
        }
        for l in [
            orig.length + 1,
            orig.length.wrapping_sub(1),
            orig.length ^ u64::MAX,
            u64::MAX,
            good.len() as u64,
        ] {
            variants.push((format!("length {l}"), Entry { length: l, ..orig }));
        }
        for c in [orig.checksum ^ 1, orig.checksum.wrapping_add(1), 0] {
            variants.push((
                format!("checksum {c:#x}"),
                Entry {
                    checksum: c,
                    ..orig
                },
            ));
        }
        for (what, e) in variants {
            // With the table checksum stale (caught there) and resealed (caught by the
            // entry checks themselves).
            let mut b = good.clone();
            b[at..at + 32].copy_from_slice(&e.encode());
            expect_format_err(&b, &format!("entry {i} {what}, stale table checksum"));
            reseal_table(&mut b);
            expect_format_err(&b, &format!("entry {i} {what}, resealed"));
        }
    }
}

#[test]
fn error_messages_are_actionable() {
    let good = sample_bytes();
    let t = 64;
    // WEIGHTS is entry 3; make it run past the end.
    let mut b = good.clone();
    let mut e = Entry::decode(&b[t + 96..t + 128]);
    e.length = 999_999;
    b[t + 96..t + 128].copy_from_slice(&e.encode());
    reseal_table(&mut b);
    let r = expect_format_err(&b, "weights past end");
    assert_eq!(
        r,
        format!(
            "section table entry 3 (WEIGHTS) extends past end of file: offset {} + length 999999 > file length {}",
            e.offset,
            good.len()
        )
    );
    let e = ModelFile::from_bytes(&b).unwrap_err().to_string();
    assert!(
        e.starts_with("<memory>: invalid cnnrt model: section table entry 3 (WEIGHTS)"),
        "{e}"
    );

    let r = expect_format_err(
        b"GIF89a..........................................................",
        "magic",
    );
    assert!(r.contains("not a cnnrt model"), "{r}");
    assert!(!r.contains("ONNX"), "{r}");

    // An ONNX file given where a cnnrt model is expected gets told to convert it.
    let onnx =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet5.onnx")).unwrap();
    let r = expect_format_err(&onnx, "magic");
    assert!(
        r.contains("it may be an ONNX model: convert it first"),
        "{r}"
    );
}

#[test]
fn weight_checksum_can_be_skipped_but_structure_is_still_checked() {
    let dir = tmpdir("skipsum");
    let path = dir.join("m.cnnrt");
    let mut b = sample_bytes();
    let last = b.len() - 1;
    b[last] ^= 0x40; // damage a weight value
    std::fs::write(&path, &b).unwrap();
    let strict = OpenOptions::default();
    let lax = OpenOptions {
        verify_weight_checksum: false,
        ..OpenOptions::default()
    };
    let r = ModelFile::open(&path, &strict).unwrap_err().to_string();
    assert!(r.contains("WEIGHTS") && r.contains("checksum"), "{r}");
    ModelFile::open(&path, &lax).unwrap();
    // Structural damage is still refused without the weight checksum.
    let bad = with_index_entry(2, |e| e.offset += 64);
    std::fs::write(&path, &bad).unwrap();
    assert!(ModelFile::open(&path, &lax).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------- hostile content with valid checksums

#[test]
fn hostile_graph_json_is_rejected() {
    let cases: Cases<serde_json::Value> = vec![
        (
            "huge weight shape",
            Box::new(|v| {
                v["weights"][0]["shape"] = serde_json::json!([1 << 20, 1 << 20, 1 << 20, 1 << 20])
            }),
        ),
        (
            "overflowing weight shape",
            Box::new(|v| v["weights"][2]["shape"] = serde_json::json!([u64::MAX, u64::MAX])),
        ),
        (
            "weight rank 9",
            Box::new(|v| v["weights"][1]["shape"] = serde_json::json!([1, 1, 1, 1, 1, 1, 1, 1, 4])),
        ),
        (
            "weight shape changed consistently",
            Box::new(|v| {
                v["weights"][3]["shape"] = serde_json::json!([11]);
            }),
        ),
        (
            "weight id out of range",
            Box::new(|v| v["nodes"][0]["weight"] = serde_json::json!(99)),
        ),
        (
            "bias id out of range",
            Box::new(|v| v["nodes"][3]["bias"] = serde_json::json!(usize::MAX)),
        ),
        (
            "input value out of range",
            Box::new(|v| v["nodes"][1]["inputs"] = serde_json::json!([1000])),
        ),
        (
            "graph output out of range",
            Box::new(|v| v["outputs"] = serde_json::json!([77])),
        ),
        (
            "no inputs",
            Box::new(|v| v["inputs"] = serde_json::json!([])),
        ),
        (
            "cycle / order",
            Box::new(|v| v["nodes"][1]["inputs"] = serde_json::json!([3])),
        ),
        (
            "huge input shape",
            Box::new(|v| v["values"][0]["shape"] = serde_json::json!([3, 1 << 24, 1 << 24])),
        ),
        (
            "stored shape not inferred",
            Box::new(|v| v["values"][1]["shape"] = serde_json::json!([4, 8, 9])),
        ),
        (
            "stored shape empty",
            Box::new(|v| v["values"][4]["shape"] = serde_json::json!([])),
        ),
        (
            "groups zero",
            Box::new(|v| v["nodes"][0]["groups"] = serde_json::json!(0)),
        ),
        (
            "stride zero",
            Box::new(|v| v["nodes"][0]["stride"] = serde_json::json!([0, 1])),
        ),
        (
            "huge pads",
            Box::new(|v| v["nodes"][0]["pads"] = serde_json::json!([u64::MAX, 0, u64::MAX, 0])),
        ),
        (
            "huge dilation",
            Box::new(|v| v["nodes"][0]["dilation"] = serde_json::json!([u64::MAX, 1])),
        ),
        (
            "flatten axis huge",
            Box::new(|v| v["nodes"][2]["axis"] = serde_json::json!(u64::MAX)),
        ),
        (
            "negative number",
            Box::new(|v| v["nodes"][2]["axis"] = serde_json::json!(-1)),
        ),
        (
            "unknown op",
            Box::new(|v| v["nodes"][1]["op"] = serde_json::json!("teleport")),
        ),
        (
            "not an object",
            Box::new(|v| *v = serde_json::json!([1, 2, 3])),
        ),
        (
            "pad overflow",
            Box::new(|v| {
                v["nodes"][1] = serde_json::json!({
                    "name": "pad", "op": "pad", "pads": [u64::MAX, 0, 2, 0], "value": 0.0,
                    "inputs": [1], "output": 2
                });
            }),
        ),
    ];
    for (what, edit) in cases {
        let b = with_graph_json(|v| edit(v));
        expect_format_err(&b, what);
    }

    let mut s = split(&sample_bytes());
    for junk in [
        &b""[..],
        b"{",
        b"\xff\xfe",
        b"null",
        b"{\"values\": 5}",
        &[b'['; 100_000][..],
    ] {
        *section_mut(&mut s, layout::KIND_GRAPH) = junk.to_vec();
        expect_format_err(&assemble(&s), "junk graph JSON");
    }
}

#[test]
fn oversized_json_sections_are_rejected_before_parsing() {
    let mut s = split(&sample_bytes());
    let mut big = sample_meta();
    big.producer = " ".repeat(cnnrt::limits::MAX_JSON_SECTION_BYTES);
    *section_mut(&mut s, layout::KIND_META) = serde_json::to_vec(&big).unwrap();
    let r = expect_format_err(&assemble(&s), "64 MiB metadata");
    assert!(r.contains("limit"), "{r}");
}

#[test]
fn hostile_metadata_is_rejected() {
    for junk in [
        &br#"{"std": [0.0], "mean": [0.5]}"#[..],
        br#"{"std": [1.0, 1.0], "mean": [0.5]}"#,
        br#"{"input_shape": [1, 2, 3, 4, 5, 6, 7, 8, 9]}"#,
        br#"{"input_shape": [99999999999]}"#,
        br#"{"channel_order": "cmyk"}"#,
        br#"{"cost_rates": {"gemm_gflops": 0.0, "memory_gbps": 20.0}}"#,
        br#"{"cost_rates": {"gemm_gflops": 100.0, "memory_gbps": -5.0}}"#,
        br#"{"cost_rates": {"gemm_gflops": 100.0}}"#,
        br#"{"labels": "x"}"#,
        b"not json",
        b"",
    ] {
        let mut s = split(&sample_bytes());
        *section_mut(&mut s, layout::KIND_META) = junk.to_vec();
        expect_format_err(&assemble(&s), &String::from_utf8_lossy(junk));
    }
}

#[test]
fn hostile_weight_index_is_rejected() {
    let cases: Cases<IndexEntry> = vec![
        ("offset absurd", Box::new(|e| e.offset = u64::MAX - 63)),
        ("offset negative", Box::new(|e| e.offset = (-64i64) as u64)),
        ("offset 1<<62", Box::new(|e| e.offset = 1 << 62)),
        ("offset unaligned", Box::new(|e| e.offset += 4)),
        ("offset past section", Box::new(|e| e.offset += 1 << 20)),
        ("elements +1", Box::new(|e| e.elements += 1)),
        ("elements -1", Box::new(|e| e.elements -= 1)),
        ("elements huge", Box::new(|e| e.elements = u64::MAX / 2)),
        (
            "elements overflow ×4",
            Box::new(|e| e.elements = u64::MAX / 3),
        ),
        ("dtype 0", Box::new(|e| e.dtype = 0)),
        ("dtype f16", Box::new(|e| e.dtype = 2)),
        ("flags", Box::new(|e| e.flags = 1)),
    ];
    for id in 0..4 {
        for (what, edit) in &cases {
            expect_format_err(
                &with_index_entry(id, |e| edit(e)),
                &format!("weight {id}: {what}"),
            );
        }
    }
    // The last blob moved so it runs past the end of WEIGHTS.
    expect_format_err(
        &with_index_entry(3, |e| e.offset += 64),
        "last blob past end",
    );

    // Count and size mismatches.
    let good = split(&sample_bytes());
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    let idx = good
        .iter()
        .find(|s| s.0 == layout::KIND_WEIGHT_INDEX)
        .unwrap()
        .2
        .clone();
    let mut v = idx.clone();
    v[..8].copy_from_slice(&3u64.to_le_bytes());
    variants.push(("count 3", v));
    let mut v = idx.clone();
    v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    variants.push(("count max", v));
    let mut v = idx.clone();
    v.pop();
    variants.push(("short by one", v));
    let mut v = idx.clone();
    v.extend_from_slice(&[0; 24]);
    variants.push(("extra entry", v));
    variants.push(("empty", Vec::new()));
    variants.push(("four bytes", vec![4, 0, 0, 0]));
    for (what, data) in variants {
        let mut s = good.clone();
        *section_mut(&mut s, layout::KIND_WEIGHT_INDEX) = data;
        expect_format_err(&assemble(&s), what);
    }
}

#[test]
fn section_table_structure_rules() {
    let good = split(&sample_bytes());
    // Unknown optional section: skipped.
    let mut s = good.clone();
    s.insert(
        1,
        (
            0x1000,
            layout::SECTION_FLAG_OPTIONAL,
            b"future stuff".to_vec(),
        ),
    );
    ModelFile::from_bytes(&assemble(&s)).unwrap();
    // Empty unknown optional section too.
    let mut s = good.clone();
    s.push((77, layout::SECTION_FLAG_OPTIONAL, Vec::new()));
    ModelFile::from_bytes(&assemble(&s)).unwrap();
    // Unknown required section: refused with an upgrade hint.
    let mut s = good.clone();
    s.push((0x1000, 0, b"needed".to_vec()));
    let r = expect_format_err(&assemble(&s), "unknown required");
    assert!(r.contains("newer"), "{r}");
    // Known kind marked optional.
    let mut s = good.clone();
    s[0].1 = layout::SECTION_FLAG_OPTIONAL;
    expect_format_err(&assemble(&s), "known optional");
    // Duplicates, known and unknown.
    let mut s = good.clone();
    s.push(s[0].clone());
    expect_format_err(&assemble(&s), "duplicate META");
    let mut s = good.clone();
    s.push((9, 1, vec![1]));
    s.push((9, 1, vec![2]));
    expect_format_err(&assemble(&s), "duplicate optional");
    // Each required section missing.
    for kind in 1..=4 {
        let s: Vec<_> = good.iter().filter(|x| x.0 != kind).cloned().collect();
        expect_format_err(&assemble(&s), &format!("missing kind {kind}"));
    }
}

#[test]
fn overlapping_and_misplaced_sections_are_rejected() {
    let good = sample_bytes();
    let t = 64;
    let entry = |b: &[u8], i: usize| Entry::decode(&b[t + 32 * i..t + 32 * i + 32]);
    let put = |b: &mut Vec<u8>, i: usize, e: Entry| {
        b[t + 32 * i..t + 32 * i + 32].copy_from_slice(&e.encode());
        reseal_all(b);
    };
    // GRAPH pointed at META's bytes (checksums recomputed, so only overlap can catch it;
    // META's JSON would not parse as a graph, so make them literally the same section).
    let mut b = good.clone();
    let m = entry(&b, 0);
    put(
        &mut b,
        1,
        Entry {
            offset: m.offset,
            length: m.length,
            ..entry(&good, 1)
        },
    );
    let r = expect_format_err(&b, "graph = meta");
    assert!(r.contains("overlaps"), "{r}");
    // Partial overlap.
    let mut b = good.clone();
    let g = entry(&b, 1);
    put(
        &mut b,
        1,
        Entry {
            offset: g.offset - 4,
            length: g.length + 4,
            ..g
        },
    );
    expect_format_err(&b, "graph overlaps meta tail");
    // A section over the table.
    let mut b = good.clone();
    put(&mut b, 0, Entry { offset: 64, ..m });
    expect_format_err(&b, "meta over table");
    // A section in the header.
    let mut b = good.clone();
    put(
        &mut b,
        0,
        Entry {
            offset: 0,
            length: 64,
            ..m
        },
    );
    expect_format_err(&b, "meta in header");
    // WEIGHTS not 64-aligned.
    let mut s = split(&good);
    let w = section_mut(&mut s, layout::KIND_WEIGHTS);
    w.insert(0, 0); // shift by building a file whose WEIGHTS is at +8
    let mut b = assemble(&s);
    let mut e = entry(&b, 3);
    e.offset += 8;
    e.length -= 8;
    put(&mut b, 3, e);
    expect_format_err(&b, "weights misaligned");
}

// ---------------------------------------------------------------- fuzz-style

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Random byte edits anywhere never panic (most are caught by checksums).
    #[test]
    fn random_mutations_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                    cut in prop::option::of(any::<prop::sample::Index>())) {
        let mut b = sample_bytes();
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        if let Some(c) = cut {
            let n = c.index(b.len());
            b.truncate(n);
        }
        let _ = ModelFile::from_bytes(&b);
    }

    /// Random edits followed by recomputing every checksum, so they reach the JSON, index
    /// and graph checks. Must never panic; must never accept a file whose weights are
    /// out of bounds (weight() would panic).
    #[test]
    fn resealed_mutations_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut b = sample_bytes();
        // Edit only past the header (header edits are covered above).
        for (at, v) in edits {
            let i = 64 + at.index(b.len() - 64);
            b[i] = v;
        }
        reseal_all(&mut b);
        if let Ok(m) = ModelFile::from_bytes(&b) {
            let mut g = m.graph().clone();
            g.infer_shapes().unwrap();
            for (id, w) in m.graph().weights.iter().enumerate() {
                prop_assert_eq!(m.weight(id).len(), w.numel());
            }
        }
    }

    /// Mutations of the GRAPH JSON text specifically (digits are the interesting bytes).
    #[test]
    fn resealed_graph_digit_mutations_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..20), 1..4)) {
        let mut s = split(&sample_bytes());
        let g = section_mut(&mut s, layout::KIND_GRAPH);
        let digits: Vec<usize> = g.iter().enumerate().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
        for (at, v) in edits {
            let i = digits[at.index(digits.len())];
            g[i] = if v < 10 { b'0' + v } else { b'9' };
            if v >= 10 {
                // Make the number much longer: insert digits.
                for _ in 0..v { g.insert(i, b'9'); }
                break;
            }
        }
        let _ = ModelFile::from_bytes(&assemble(&s));
    }
}

// ------------------------------------------- structured fuzzing of the graph JSON

/// A graph that uses every op, so mutations reach every branch of shape inference.
fn rich_graph() -> Graph {
    use cnnrt::graph::{BinaryKind, Pool, PoolKind};
    let mut g = Graph::default();
    let node = |g: &mut Graph, name: &str, op: Op, inputs: Vec<usize>| -> usize {
        let out = g.add_value(format!("{name}_out"), vec![]);
        g.nodes.push(Node {
            name: name.into(),
            op,
            inputs,
            output: out,
        });
        out
    };
    let x = g.add_value("x", vec![4, 8, 8]);
    g.inputs = vec![x];
    let cw = g.add_weight("cw", vec![8, 4, 3, 3]);
    let cb = g.add_weight("cb", vec![8]);
    let c = node(
        &mut g,
        "conv",
        Op::Conv(Conv {
            in_channels: 4,
            out_channels: 8,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
            groups: 1,
            weight: cw,
            bias: Some(cb),
            activation: Activation::Clip { min: 0.0, max: 6.0 },
        }),
        vec![x],
    );
    let dw = g.add_weight("dw", vec![8, 1, 3, 3]);
    let c = node(
        &mut g,
        "dwconv",
        Op::Conv(Conv {
            in_channels: 8,
            out_channels: 8,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [2, 2],
            pads: [2, 2, 2, 2],
            groups: 8,
            weight: dw,
            bias: None,
            activation: Activation::Identity,
        }),
        vec![c, c],
    );
    let sc = g.add_weight("scale", vec![8]);
    let sh = g.add_weight("shift", vec![1]);
    let a = node(
        &mut g,
        "bn",
        Op::ChannelAffine {
            scale: Some(sc),
            shift: Some(sh),
            activation: Activation::HardSwish,
        },
        vec![c],
    );
    let sl = g.add_weight("slope", vec![8]);
    let a = node(&mut g, "prelu", Op::PRelu { slope: sl }, vec![a]);
    let p = node(
        &mut g,
        "maxpool",
        Op::Pool(Pool {
            kind: PoolKind::Max,
            kernel: [2, 2],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [0, 0, 1, 1],
            ceil_mode: true,
            count_include_pad: false,
        }),
        vec![a],
    );
    let pd = node(
        &mut g,
        "pad",
        Op::Pad {
            pads: [1, 1, 1, 1],
            value: 0.0,
        },
        vec![p],
    );
    let p2 = node(
        &mut g,
        "avgpool",
        Op::Pool(Pool {
            kind: PoolKind::Average,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0, 0, 0, 0],
            ceil_mode: false,
            count_include_pad: true,
        }),
        vec![pd],
    );
    let add = node(
        &mut g,
        "add",
        Op::Binary {
            kind: BinaryKind::Add,
            activation: Activation::Relu,
        },
        vec![p2, p],
    );
    let cat = node(&mut g, "concat", Op::Concat { axis: 0 }, vec![add, p2]);
    let is = g.add_weight("in_s", vec![16]);
    let ib = g.add_weight("in_b", vec![16]);
    let inn = node(
        &mut g,
        "inorm",
        Op::InstanceNorm {
            epsilon: 1e-5,
            scale: is,
            bias: ib,
        },
        vec![cat],
    );
    let ls = g.add_weight("ln_s", vec![4, 4]);
    let ln = node(
        &mut g,
        "lnorm",
        Op::LayerNorm {
            axis: 1,
            epsilon: 1e-5,
            scale: ls,
            bias: None,
        },
        vec![inn],
    );
    let gp = node(
        &mut g,
        "gap",
        Op::GlobalPool {
            kind: PoolKind::Average,
        },
        vec![ln],
    );
    let se = node(
        &mut g,
        "se",
        Op::Activation(Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        }),
        vec![gp],
    );
    let mul = node(
        &mut g,
        "mul",
        Op::Binary {
            kind: BinaryKind::Mul,
            activation: Activation::Identity,
        },
        vec![ln, se],
    );
    let sm = node(
        &mut g,
        "softmax",
        Op::Softmax {
            axis: 0,
            flatten_from_axis: false,
        },
        vec![mul],
    );
    let f = node(&mut g, "flatten", Op::Flatten { axis: 2 }, vec![sm]);
    let f = node(&mut g, "flatten2", Op::Flatten { axis: 1 }, vec![f]);
    let lw = g.add_weight("lw", vec![10, 256]);
    let l = node(
        &mut g,
        "fc",
        Op::Linear(Linear {
            in_features: 256,
            out_features: 10,
            weight: lw,
            bias: None,
            activation: Activation::Silu,
        }),
        vec![f],
    );
    let y = node(&mut g, "tanh", Op::Activation(Activation::Tanh), vec![l]);
    g.outputs = vec![y];
    g.infer_shapes().unwrap();
    g
}

fn interesting_number(rng: &mut Rng) -> serde_json::Value {
    let n: u64 = match rng.next() % 12 {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        4 => u64::MAX,
        5 => u64::MAX / 2 + 1,
        6 => 1 << 24,
        7 => (1 << 24) + 1,
        8 => 1 << 31,
        9 => 1 << 32,
        10 => rng.next() % 300,
        _ => rng.next(),
    };
    if rng.next().is_multiple_of(16) {
        serde_json::json!(-(n as i64 & 0xFFFF))
    } else {
        serde_json::json!(n)
    }
}

fn mutate_numbers(v: &mut serde_json::Value, rng: &mut Rng, p: u64) {
    match v {
        serde_json::Value::Number(_) if rng.next().is_multiple_of(p) => {
            *v = interesting_number(rng)
        }
        serde_json::Value::Array(a) => {
            if rng.next().is_multiple_of(4 * p) && !a.is_empty() {
                a.pop();
            } else if rng.next().is_multiple_of(4 * p) && !a.is_empty() {
                let e = a[0].clone();
                a.push(e);
            }
            a.iter_mut().for_each(|x| mutate_numbers(x, rng, p));
        }
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| mutate_numbers(x, rng, p)),
        _ => {}
    }
}

fn fuzz_graph_json(iterations: u64, seed: u64) {
    let g = rich_graph();
    let w = sample_weights(&g, seed);
    let bytes = model_to_bytes(&g, &refs(&w), &Metadata::default()).unwrap();
    ModelFile::from_bytes(&bytes).unwrap();
    let base = split(&bytes);
    let gv: serde_json::Value = serde_json::from_slice(&base[1].2).unwrap();
    let mut rng = Rng(seed);
    let mut accepted = 0;
    let ops = [
        "conv",
        "linear",
        "channel_affine",
        "activation",
        "p_relu",
        "pool",
        "global_pool",
        "flatten",
        "binary",
        "concat",
        "layer_norm",
        "instance_norm",
        "softmax",
        "pad",
    ];
    let nodes = gv["nodes"].as_array().unwrap().clone();
    for it in 0..iterations {
        let mut v = gv.clone();
        let p = [5, 20, 40, 200][(it % 4) as usize];
        if rng.next().is_multiple_of(4) {
            // Graft one node's fields onto another (keeping its wiring), or rename its op.
            let i = (rng.next() % nodes.len() as u64) as usize;
            let j = (rng.next() % nodes.len() as u64) as usize;
            let target = v["nodes"][i].as_object_mut().unwrap();
            for (k, val) in nodes[j].as_object().unwrap() {
                if k != "inputs" && k != "output" {
                    target.insert(k.clone(), val.clone());
                }
            }
            if rng.next().is_multiple_of(2) {
                target.insert(
                    "op".into(),
                    serde_json::json!(ops[(rng.next() % ops.len() as u64) as usize]),
                );
            }
        }
        mutate_numbers(&mut v, &mut rng, p);
        let mut s = base.clone();
        s[1].2 = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = ModelFile::from_bytes(&assemble(&s)) {
            accepted += 1;
            for (id, wi) in m.graph().weights.iter().enumerate() {
                assert_eq!(m.weight(id).len(), wi.numel());
            }
        }
    }
    eprintln!("seed {seed}: {accepted} of {iterations} mutated graphs accepted");
    // Most mutations must be refused; a few (e.g. an epsilon changed) are harmless.
    assert!(accepted < iterations, "every mutation accepted?");
}

#[test]
fn structured_graph_mutations_never_panic() {
    fuzz_graph_json(300, 0x5EED);
}

/// Longer run: `cargo test --test format -- --ignored`.
#[test]
#[ignore]
fn structured_graph_mutations_never_panic_long() {
    let iters = std::env::var("CNNRT_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    for seed in 1..=20 {
        fuzz_graph_json(iters, seed * 7919);
    }
}
