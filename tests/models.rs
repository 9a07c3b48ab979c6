//! Whole models, end to end: ONNX → convert → write → open → session → run, compared with
//! ONNX Runtime's outputs (stored beside each test model by `scripts/make_test_models.py`),
//! on every ISA tier this CPU has, at batch 1 and at the stored batch.

use std::path::{Path, PathBuf};

use cnnrt::convert::{convert_file, ConvertOptions};
use cnnrt::input::npy_from_bytes;
use cnnrt::kernels::reference::run_graph;
use cnnrt::{Isa, Model, SessionOptions, Threads};

fn read_npy(p: &Path) -> (Vec<f32>, Vec<usize>) {
    npy_from_bytes(&std::fs::read(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// max |a - b| / max |b|: the acceptance metric against ONNX Runtime.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let m = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    a.iter().zip(b).fold(0.0f64, |e, (x, y)| {
        if x.is_nan() && y.is_nan() {
            e
        } else {
            e.max((*x as f64 - *y as f64).abs())
        }
    }) / m
}

fn test_model_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no test models under {}", root.display());
    dirs
}

#[test]
fn test_models_match_onnxruntime_on_every_tier() {
    let tmp = std::env::temp_dir().join(format!("cnnrt-models-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in test_model_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = tmp.join(format!("{name}.cnnrt"));
        let converted = convert_file(&dir.join("model.onnx"), &out, &ConvertOptions::default())
            .unwrap_or_else(|e| panic!("{name}: convert: {e}"));
        let (x, xshape) = read_npy(&dir.join("input.npy"));
        let (expect, _) = read_npy(&dir.join("expected.npy"));
        let batch = xshape[0];
        // The oracle on the converted (folded) graph.
        let refs: Vec<&[f32]> = converted.weights.iter().map(|w| w.as_slice()).collect();
        let oracle = run_graph(&converted.graph, &refs, &[&x], batch)
            .unwrap()
            .remove(0);
        let e = rel_err(&oracle, &expect);
        if e > 1e-4 {
            failures.push(format!("{name}: reference vs ONNX Runtime rel err {e:.2e}"));
        }
        let model = Model::open(&out).unwrap();
        for isa in Isa::supported() {
            for threads in [Threads::Caller, Threads::Count(2)] {
                let mut s = model
                    .session(SessionOptions {
                        max_batch: batch,
                        max_isa: Some(isa),
                        threads: threads.clone(),
                        ..Default::default()
                    })
                    .unwrap();
                let got = s.run(&x, batch).unwrap().to_vec();
                let e = rel_err(&got, &expect);
                if e > 1e-4 {
                    failures.push(format!(
                        "{name} [{isa}, {threads:?}]: rel err {e:.2e} vs ONNX Runtime"
                    ));
                }
                // Batch 1 on the first sample gives the first sample's result.
                let per = got.len() / batch;
                let one = s.run(&x[..x.len() / batch], 1).unwrap().to_vec();
                let e1 = rel_err(&one, &expect[..per]);
                if e1 > 1e-4 {
                    failures.push(format!("{name} [{isa}] batch 1: rel err {e1:.2e}"));
                }
                checked += 1;
            }
        }
        eprintln!(
            "{name}: ok-checked ({} nodes after passes)",
            converted.graph.nodes.len()
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
    assert!(
        failures.is_empty(),
        "{} of {checked} runs off:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Held-out accuracy of a shipped LeNet-5, measured by cnnrt itself.
fn heldout_accuracy(model: &Path) -> (usize, usize) {
    let m = Model::open(model).unwrap();
    let imgs = std::fs::read(models_dir().join("mnist_heldout_images.npy")).unwrap();
    let labels = std::fs::read(models_dir().join("mnist_heldout_labels.npy")).unwrap();
    let imgs = npyz::NpyFile::new(&imgs[..]).unwrap();
    let count = imgs.shape()[0] as usize;
    let pixels: Vec<u8> = imgs.into_vec().unwrap();
    let labels_npy = npyz::NpyFile::new(&labels[..]).unwrap();
    let labels: Vec<i64> = match labels_npy.dtype().descr().as_str() {
        d if d.contains("u1") => labels_npy
            .into_vec::<u8>()
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect(),
        _ => labels_npy.into_vec::<i64>().unwrap(),
    };
    assert_eq!(labels.len(), count);
    let meta = m.metadata();
    let (mean, std) = (
        meta.mean.first().copied().unwrap_or(0.0),
        meta.std.first().copied().unwrap_or(1.0),
    );
    let batch = 100;
    let mut s = m
        .session(SessionOptions::default().max_batch(batch))
        .unwrap();
    let mut correct = 0;
    for start in (0..count).step_by(batch) {
        let n = batch.min(count - start);
        let x: Vec<f32> = pixels[start * 784..(start + n) * 784]
            .iter()
            .map(|&p| (p as f32 / 255.0 - mean) / std)
            .collect();
        let out = s.run(&x, n).unwrap();
        for i in 0..n {
            let row = &out[i * 10..(i + 1) * 10];
            let pred = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            correct += (pred as i64 == labels[start + i]) as usize;
        }
    }
    (correct, count)
}

#[test]
fn lenet5_heldout_accuracy_at_least_98_percent() {
    let (c, n) = heldout_accuracy(&models_dir().join("lenet5.cnnrt"));
    let acc = c as f64 / n as f64;
    eprintln!(
        "lenet5.cnnrt held-out accuracy: {c}/{n} = {:.2}%",
        100.0 * acc
    );
    assert!(acc >= 0.98, "accuracy {acc}");
}

#[test]
fn lenet5_bn_heldout_accuracy_at_least_98_percent() {
    let (c, n) = heldout_accuracy(&models_dir().join("lenet5_bn.cnnrt"));
    let acc = c as f64 / n as f64;
    eprintln!(
        "lenet5_bn.cnnrt held-out accuracy: {c}/{n} = {:.2}%",
        100.0 * acc
    );
    assert!(acc >= 0.98, "accuracy {acc}");
}

#[test]
fn shipped_cnnrt_files_match_a_fresh_conversion() {
    // The committed .cnnrt must be what the converter makes of the committed ONNX today.
    for name in ["lenet5", "lenet5_bn"] {
        let dir = models_dir();
        let shipped = Model::open(dir.join(format!("{name}.cnnrt"))).unwrap();
        let fresh = cnnrt::convert::convert_onnx(
            &std::fs::read(dir.join(format!("{name}.onnx"))).unwrap(),
            &ConvertOptions::default(),
        )
        .unwrap();
        let (graph, weights, _) = fresh.packed_for_file();
        assert_eq!(
            shipped.graph(),
            &graph,
            "{name}: graph differs; re-run the conversion in models/README.md"
        );
        for (i, w) in weights.iter().enumerate() {
            assert_eq!(
                shipped.file().weight(i),
                w.as_slice(),
                "{name}: weight {i} differs"
            );
        }
    }
}
