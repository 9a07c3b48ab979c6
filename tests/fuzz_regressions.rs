//! Replays the fuzzers' saved inputs without cargo-fuzz: every file in
//! `fuzz/regressions/<target>/` (inputs that once crashed, kept after the fix) and
//! `fuzz/seeds/<target>/` goes through the same function the fuzz target calls
//! (`fuzz/harness.rs`), which asserts no panic and the library's output invariants.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;
#[path = "../fuzz/harness.rs"]
mod harness;

const TARGETS: [&str; 4] = ["model_open", "onnx_import", "input_decode", "session_run"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"));
    v.sort();
    v
}

fn lenet() -> Arc<cnnrt::Model> {
    cnnrt::Model::open(root().join("models/lenet5.cnnrt")).unwrap()
}

/// A saved input that takes longer than this (in the test profile) counts as a failure:
/// libFuzzer's per-input timeout in `fuzz/run.sh` is 30 s, and the slow inputs found so far
/// took minutes before their fix and milliseconds after.
const MAX_SECONDS_PER_INPUT: f64 = 5.0;

/// Runs `target`'s harness on every file under `fuzz/<kind>/<target>/`; returns how many ran
/// and the ones that panicked or were too slow.
fn replay(kind: &str, target: &str) -> (usize, Vec<String>) {
    let mut session = harness::lenet_session(&lenet());
    let mut failures = Vec::new();
    let inputs = files(&root().join("fuzz").join(kind).join(target));
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        let t0 = std::time::Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| match target {
            "model_open" => harness::model_open(&data),
            "onnx_import" => harness::onnx_import(&data),
            "input_decode" => harness::input_decode(&data),
            "session_run" => harness::session_run(&mut session, &data),
            _ => unreachable!(),
        }));
        let secs = t0.elapsed().as_secs_f64();
        if r.is_err() {
            failures.push(format!("{}: panicked", path.display()));
        } else if secs > MAX_SECONDS_PER_INPUT {
            failures.push(format!("{}: took {secs:.1} s", path.display()));
        }
    }
    (inputs.len(), failures)
}

#[test]
fn saved_crashes_stay_fixed() {
    let mut failures = Vec::new();
    for t in TARGETS {
        let (n, f) = replay("regressions", t);
        eprintln!("fuzz/regressions/{t}: {n} inputs");
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn seeds_run_without_panic() {
    let mut failures = Vec::new();
    for t in TARGETS {
        let (n, f) = replay("seeds", t);
        eprintln!("fuzz/seeds/{t}: {n} inputs");
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// npyz parses `.npy` headers with a backtracking parser, exponential in the nesting
/// depth (fuzz/regressions/input_decode/timeout-*: minutes), and allocates the declared
/// header length first. Both are refused before npyz sees them, with a message.
#[test]
fn npy_hostile_headers_are_refused() {
    let dir = root().join("fuzz/regressions/input_decode");
    for (file, expect) in [
        ("timeout-490d21b7-npy-nested-header", "nests brackets"),
        ("npy_header_nested_24.npy", "nests brackets 26 deep"),
        ("npy_v2_header_len_4g.npy", "header is 4294967280 bytes"),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let e = cnnrt::input::npy_from_bytes(&bytes).unwrap_err();
        assert!(e.contains(expect), "{file}: {e}");
        let e = cnnrt::input::read_npy(&dir.join(file), &[2, 3]).unwrap_err();
        assert!(e.to_string().contains(file), "{e}");
    }
}

/// The header checks must not refuse real files: every test input still decodes.
#[test]
fn real_npy_inputs_still_decode() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("tests/data/models")).unwrap() {
        let p = entry.unwrap().path().join("input.npy");
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            let (v, shape) = cnnrt::input::npy_from_bytes(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(v.len(), shape.iter().product::<usize>());
            n += 1;
        }
    }
    assert!(n > 10);
}

/// The committed `.cnnrt` seeds must stay valid, or the model_open fuzzer would start from
/// files that fail at the first check. Regenerate them with
/// `cargo test --test fuzz_regressions -- --ignored write_seeds`.
#[test]
fn model_open_seeds_are_valid_models() {
    let seeds = files(&root().join("fuzz/seeds/model_open"));
    assert!(!seeds.is_empty());
    for p in seeds {
        let bytes = std::fs::read(&p).unwrap();
        if let Err(e) = cnnrt::Model::from_bytes(&bytes) {
            panic!(
                "{}: {e} (regenerate: cargo test --test fuzz_regressions -- --ignored write_seeds)",
                p.display()
            );
        }
    }
}

/// Models from `tests/data/models` used as model_open seeds: small, and together they
/// cover every op, packed layout (GEMM, Winograd, depthwise) and fused activation.
const SEED_MODELS: &[&str] = &[
    "act_prelu",
    "activations",
    "activations_opset17",
    "concat_branches",
    "conv_depthwise",
    "conv_grouped",
    "conv_variety",
    "bn_standalone",
    "global_avg_pool",
    "global_max_pool",
    "gemm_alpha_beta",
    "layernorm_chw_opset18",
    "instancenorm",
    "linear_bn",
    "norms_heads",
    "pad_asym_conv",
    "pools",
    "softmax_channels",
];

/// Writes the generated seeds (small files, committed): `.cnnrt` conversions of
/// [`SEED_MODELS`] and the hand-built every-op model for model_open, held-out digits in the session_run input encoding, and
/// JPEG / RGBA-PNG versions of a sample digit for input_decode (the shipped samples are
/// grayscale PNGs; `fuzz/run.sh` copies those and the test `.npy` inputs itself).
#[test]
#[ignore = "writes fuzz/seeds/; run by hand after a format change"]
fn write_seeds() {
    let seeds = root().join("fuzz/seeds");
    let dir = seeds.join("model_open");
    std::fs::create_dir_all(&dir).unwrap();
    for name in SEED_MODELS {
        let onnx = root()
            .join("tests/data/models")
            .join(name)
            .join("model.onnx");
        let out = dir.join(format!("{name}.cnnrt"));
        cnnrt::convert::convert_file(&onnx, &out, &Default::default()).unwrap();
    }
    // The hand-built model that uses every op (plain weight layouts, residual, Mul).
    let z = common::zoo(1);
    let refs: Vec<&[f32]> = z.weights.iter().map(|w| w.as_slice()).collect();
    let meta = cnnrt::format::Metadata::default();
    let bytes = cnnrt::format::model_to_bytes(&z.graph, &refs, &meta).unwrap();
    std::fs::write(dir.join("zoo.cnnrt"), bytes).unwrap();

    // session_run: batch byte, then normalized f32 pixels of `batch` held-out digits.
    let dir = seeds.join("session_run");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(root().join("models/mnist_heldout_images.npy")).unwrap();
    let pixels: Vec<u8> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
    for batch in 1..=3u8 {
        let mut seed = vec![batch];
        for &p in &pixels[..batch as usize * 784] {
            let x = (p as f32 / 255.0 - 0.1307) / 0.3081;
            seed.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(dir.join(format!("digits_batch{batch}")), seed).unwrap();
    }

    // input_decode: the same digit as a color JPEG and an RGBA PNG.
    let dir = seeds.join("input_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let img = image::open(root().join("models/samples/digit_3.png")).unwrap();
    img.to_rgb8().save(dir.join("digit_3_rgb.jpg")).unwrap();
    img.to_rgba8().save(dir.join("digit_3_rgba.png")).unwrap();
}
