//! The `cnnrt` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use cnnrt::format::{write_model, Metadata};
use cnnrt::graph::{Activation, Conv, Graph, Node, Op};

fn cnnrt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnrt"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnrt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn total_line(table: &str) -> &str {
    table
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .expect("a total line")
}

#[test]
fn inspect_lenet5_onnx_counts_params_and_macs() {
    let (ok, out, err) = cnnrt(&["inspect", "models/lenet5.onnx"]);
    assert!(ok, "{err}");
    let total = total_line(&out);
    assert!(total.contains("1,256,080"), "params in: {total}");
    assert!(total.contains("6,522,000"), "mult-adds in: {total}");
    for shape in [
        "20×28×28",
        "20×14×14",
        "50×14×14",
        "50×7×7",
        "2450",
        "500",
        "10",
    ] {
        assert!(out.contains(shape), "missing output size {shape} in\n{out}");
    }
    assert!(
        out.contains("20×1×5×5") && out.contains("50×20×5×5"),
        "weight shapes in\n{out}"
    );
}

#[test]
fn inspect_single_conv_matches_the_worked_example() {
    // Ten 5×5 filters, stride 1, pad 2, on 3×32×32: 10×32×32 out, 760 params, 768,000 MACs.
    let mut g = Graph::default();
    let x = g.add_value("image", vec![3, 32, 32]);
    let y = g.add_value("conv", vec![]);
    let w = g.add_weight("w", vec![10, 3, 5, 5]);
    let b = g.add_weight("b", vec![10]);
    let conv = Conv {
        in_channels: 3,
        out_channels: 10,
        kernel: [5, 5],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [2; 4],
        groups: 1,
        weight: w,
        bias: Some(b),
        activation: Activation::Identity,
    };
    g.nodes.push(Node {
        name: "conv1".into(),
        op: Op::Conv(conv),
        inputs: vec![x],
        output: y,
    });
    g.inputs = vec![x];
    g.outputs = vec![y];
    g.infer_shapes().unwrap();
    let path = tmp("conv.cnnrt");
    write_model(
        &path,
        &g,
        &[&vec![0.01; 750], &[0.0; 10]],
        &Metadata::default(),
    )
    .unwrap();
    let (ok, out, err) = cnnrt(&["inspect", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("10×32×32"), "{out}");
    let total = total_line(&out);
    assert!(
        total.contains("760") && total.contains("768,000"),
        "{total}"
    );
    assert!(out.contains("5×5"), "receptive field 5×5 in\n{out}");
}

#[test]
fn run_classifies_the_sample_digits() {
    let (ok, out, err) = cnnrt(&["run", "models/lenet5.cnnrt", "models/samples", "--top", "1"]);
    assert!(ok, "{err}");
    let mut seen = 0;
    for line in out.lines().filter(|l| l.contains("digit_")) {
        // "models/samples/digit_7.png: 7 (12.3)"
        let label = line.split("digit_").nth(1).unwrap().chars().next().unwrap();
        let predicted = line.split(": ").nth(1).unwrap().chars().next().unwrap();
        assert_eq!(label, predicted, "{line}");
        seen += 1;
    }
    assert_eq!(seen, 10, "{out}");
}

#[test]
fn run_writes_npy_and_reads_npy() {
    let out_path = tmp("logits.npy");
    let (ok, _, err) = cnnrt(&[
        "run",
        "models/lenet5.cnnrt",
        "models/samples/digit_3.png",
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (data, shape) = cnnrt::input::npy_from_bytes(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(shape, vec![1, 10]);
    let best = (0..10)
        .max_by(|&a, &b| data[a].total_cmp(&data[b]))
        .unwrap();
    assert_eq!(best, 3);
    // An .npy input of the wrong shape is a clear error, not a crash.
    let (ok, _, err) = cnnrt(&["run", "models/lenet5.cnnrt", out_path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("does not match the model input"), "{err}");
}

#[test]
fn bench_json_has_the_documented_fields() {
    let (ok, out, err) = cnnrt(&["bench", "models/lenet5.cnnrt", "--iters", "5", "--json"]);
    assert!(ok, "{err}");
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "open_ms",
        "first_run_ms",
        "median_ms",
        "p90_ms",
        "p99_ms",
        "images_per_s",
        "gflops",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {last}");
    }
    // Bytes on huge pages: a count where the OS tells (Linux), else null.
    let huge = &v["huge_page_bytes"];
    assert!(
        huge.is_u64() || (huge.is_null() && !cfg!(target_os = "linux")),
        "{last}"
    );
    assert!(out.contains("memory     5.2 MB mapped"), "{out}");
}

/// `--turns` times the bursts its standard input asks for, one JSON line each, and
/// refuses a line that is not a run count.
#[test]
fn bench_turns_times_the_bursts_it_is_asked_for() {
    use std::io::Write;
    use std::process::Stdio;
    let turns = |stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cnnrt"))
            .args(["bench", "models/lenet5.cnnrt", "--turns"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = turns("2\n3\n");
    assert!(ok, "{err}");
    let lens: Vec<usize> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let times = v["times_ms"].as_array().unwrap();
            assert!(
                times.iter().all(|t| t.as_f64().is_some_and(|t| t > 0.0)),
                "{l}"
            );
            times.len()
        })
        .collect();
    assert_eq!(lens, [2, 3], "{out}");
    let (ok, _, err) = turns("1\nmany\n");
    assert!(!ok);
    assert!(
        err.contains("expected a run count") && err.contains("many"),
        "{err}"
    );
}

/// `--copy` reads the model into private memory: same latency fields, and a damaged copy
/// is refused like a damaged mapping.
#[test]
fn bench_copy_reads_the_model_into_memory() {
    let (ok, out, err) = cnnrt(&[
        "bench",
        "models/lenet5.cnnrt",
        "--iters",
        "3",
        "--json",
        "--copy",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(v["median_ms"].as_f64().is_some_and(|x| x > 0.0), "{out}");
    let mut bad =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet5.cnnrt")).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let path = tmp("damaged_copy.cnnrt");
    std::fs::write(&path, &bad).unwrap();
    let (ok, _, err) = cnnrt(&["bench", path.to_str().unwrap(), "--iters", "1", "--copy"]);
    assert!(!ok);
    assert!(
        err.contains("damaged_copy.cnnrt") && err.contains("invalid cnnrt model"),
        "{err}"
    );
}

#[test]
fn damaged_model_gets_a_clear_error() {
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet5.cnnrt")).unwrap();
    let path = tmp("damaged.cnnrt");
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&path, &bad).unwrap();
    let (ok, _, err) = cnnrt(&["run", path.to_str().unwrap(), "models/samples/digit_1.png"]);
    assert!(!ok);
    assert!(
        err.contains("damaged.cnnrt") && err.contains("invalid cnnrt model"),
        "{err}"
    );
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let (ok, _, err) = cnnrt(&["inspect", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("invalid cnnrt model"), "{err}");
}

#[test]
fn convert_tuned_records_the_measured_rates() {
    let out = tmp("lenet5_tuned.cnnrt");
    let o = out.to_str().unwrap();
    let (ok, stdout, stderr) = cnnrt(&["convert", "models/lenet5.onnx", "-o", o, "--tune"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("tuned for this CPU"), "{stdout}");
    let m = cnnrt::Model::open(&out).unwrap();
    let r = m.metadata().cost_rates.expect("rates recorded");
    assert!(r.gemm_gflops > 0.0 && r.memory_gbps > 0.0, "{r:?}");
    let (ok, shown, stderr) = cnnrt(&["inspect", o]);
    assert!(ok, "{stderr}");
    assert!(
        shown.contains("measured by convert --tune"),
        "inspect does not show the rates:\n{shown}"
    );
    // Without --tune nothing is recorded or shown.
    let (ok, shown, _) = cnnrt(&["inspect", "models/lenet5.cnnrt"]);
    assert!(ok && !shown.contains("convert --tune"), "{shown}");
}

#[test]
fn convert_for_a_batch_is_recorded_and_shown() {
    let out = tmp("lenet5_b8.cnnrt");
    let o = out.to_str().unwrap();
    let (ok, stdout, stderr) = cnnrt(&["convert", "models/lenet5.onnx", "-o", o, "--batch", "8"]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, shown, stderr) = cnnrt(&["inspect", o]);
    assert!(ok, "{stderr}");
    assert!(
        shown.contains("algorithms chosen for batch 8"),
        "inspect does not show the batch:\n{shown}"
    );
    // `bench` at another batch than the file's says so.
    let (ok, timed, stderr) = cnnrt(&["bench", o, "--batch", "2", "--iters", "2"]);
    assert!(ok, "{stderr}");
    assert!(
        timed.contains("chosen for batch 8 (`cnnrt convert --batch 2`"),
        "{timed}"
    );
    let (ok, timed, _) = cnnrt(&["bench", o, "--batch", "8", "--iters", "2"]);
    assert!(ok && !timed.contains("chosen for batch"), "{timed}");
    // A batch-1 file says nothing about it; a batch of 0 is refused with the reason.
    let (ok, shown, _) = cnnrt(&["inspect", "models/lenet5.cnnrt"]);
    assert!(ok && !shown.contains("chosen for batch"), "{shown}");
    let (ok, _, stderr) = cnnrt(&["convert", "models/lenet5.onnx", "-o", o, "--batch", "0"]);
    assert!(!ok && stderr.contains("--batch"), "{stderr}");
}

/// stdout closed before anything is printed (`cnnrt convert ... | true`): no panic, the
/// file is still written, status 0; stdout on a full device: the error on stderr and
/// status 1, the work done all the same.
#[test]
fn a_closed_or_failing_stdout_neither_panics_nor_stops_the_work() {
    use std::process::Stdio;
    let out = tmp("lenet5_closed_stdout.cnnrt");
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnrt"))
        .args(["convert", "models/lenet5.onnx", "-o", out.to_str().unwrap()])
        .args(["--tune"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The read end closed now; --tune measures for a while before the first line.
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(cnnrt::Model::open(&out).is_ok());
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let done = Command::new(env!("CARGO_BIN_EXE_cnnrt"))
            .args(["inspect", "models/lenet5.cnnrt"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(!done.status.success(), "{stderr}");
        assert!(stderr.contains("writing to stdout"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
