//! Whole-model latency: cnnrt sessions on LeNet-5 and, when present, ResNet-18, MobileNetV2
//! and conv3x3_stress, at batch 1 on 1 and 2 threads.
//!
//! Throughput is in elements/s where one element is one FLOP (2 × multiply-adds of the
//! model's convolutions and linear layers), so criterion's "Gelem/s" reads as GFLOP/s.
//!
//!     cargo bench --bench models                 # all
//!     cargo bench --bench models -- resnet18     # a filter
//!
//! Models: `models/lenet5.cnnrt` (converted from `models/lenet5.onnx` into a temporary file if
//! absent), and `$CNNRT_MODELS` (default `~/.cache/cnnrt-models`)`/{resnet18,mobilenet_v2,
//! conv3x3_stress}.cnnrt`, skipped with a message when absent. `scripts/compare_peers.py`
//! writes those files (or: `scripts/export_torchvision.py`, then `cnnrt convert X.onnx -o
//! X.cnnrt`). The machine is shared: 2-thread figures are noisy while others build.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cnnrt::convert::{convert_file, ConvertOptions};
use cnnrt::graph::stats::total_macs;
use cnnrt::{Model, SessionOptions, Threads};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CNNRT_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("cnnrt-models")
}

/// `models/lenet5.cnnrt`, or a fresh conversion of `models/lenet5.onnx` in the temp folder
/// (then `true`: the file is removed once opened).
fn lenet5_path() -> Option<(PathBuf, bool)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let shipped = root.join("lenet5.cnnrt");
    if shipped.exists() {
        return Some((shipped, false));
    }
    let out = std::env::temp_dir().join(format!("cnnrt-bench-lenet5-{}.cnnrt", std::process::id()));
    match convert_file(&root.join("lenet5.onnx"), &out, &ConvertOptions::default()) {
        Ok(_) => Some((out, true)),
        Err(e) => {
            eprintln!("models bench: skipping lenet5: cannot convert models/lenet5.onnx: {e}");
            None
        }
    }
}

fn models() -> Vec<(String, Arc<Model>)> {
    let mut paths: Vec<(String, PathBuf, bool)> = Vec::new();
    if let Some((p, temp)) = lenet5_path() {
        paths.push(("lenet5".into(), p, temp));
    }
    let dir = cache_dir();
    for name in ["resnet18", "mobilenet_v2", "conv3x3_stress"] {
        let p = dir.join(format!("{name}.cnnrt"));
        if p.exists() {
            paths.push((name.into(), p, false));
        } else {
            eprintln!(
                "models bench: skipping {name}: {} not found (scripts/export_torchvision.py, then cnnrt convert, \
                 or scripts/compare_peers.py)",
                p.display()
            );
        }
    }
    let mut out = Vec::new();
    for (name, p, temp) in paths {
        match Model::open(&p) {
            Ok(m) => out.push((name, m)),
            Err(e) => eprintln!("models bench: skipping {name}: {}: {e}", p.display()),
        }
        if temp {
            let _ = std::fs::remove_file(&p); // the model holds its own mapping or copy
        }
    }
    out
}

/// Fixed pseudo-random input in [-0.5, 0.5) (the generator of `cnnrt bench`).
fn input(len: usize) -> Vec<f32> {
    let mut state = 0x2545F4914F6CDD1Du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn bench_models(c: &mut Criterion) {
    for (name, model) in models() {
        let flops = 2 * total_macs(model.graph()) as u64;
        let x = input(model.input_shape().iter().product());
        let mut g = c.benchmark_group(format!("model/{name}"));
        g.throughput(Throughput::Elements(flops));
        // Large models: fewer samples so a full run stays within minutes on 2 cores.
        if flops > 1_000_000_000 {
            g.sample_size(20).measurement_time(Duration::from_secs(8));
        } else if flops > 100_000_000 {
            g.sample_size(30).measurement_time(Duration::from_secs(5));
        }
        for threads in [1usize, 2] {
            let opts = SessionOptions {
                threads: if threads == 1 {
                    Threads::Caller
                } else {
                    Threads::Count(threads)
                },
                ..Default::default()
            };
            let mut session = match model.session(opts) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("models bench: {name}: session with {threads} thread(s) failed: {e}");
                    continue;
                }
            };
            g.bench_with_input(BenchmarkId::new("threads", threads), &x, |b, x| {
                b.iter(|| {
                    let y = session.run(black_box(x), 1).expect("run");
                    black_box(y.first().copied());
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_models);
criterion_main!(benches);
