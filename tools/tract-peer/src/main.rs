//! tract-onnx as a benchmark peer for cnnrt.
//!
//!     tract-peer MODEL.onnx [--iters N] [--batch B] [--threads T] [--input X.npy] [--output Y.npy]
//!
//! Loads and optimises the model with tract-onnx (input batch fixed to B, the rest of the
//! input shape from the ONNX file), runs it once (first run), 3 warm-up runs, then N timed
//! runs, and prints the same fields as `cnnrt bench --json`, one JSON object on the last line.
//! Threads > 1 use tract's multithreaded matmul executor (a private rayon pool of T threads,
//! feature `multithread-mm`); 1 = tract's default single-threaded executor.
//! `--input` (an f32 .npy) replaces the pseudo-random input, `--output` writes the first output
//! as f32 .npy — used by `scripts/compare_peers.py` to check outputs.

use std::time::Instant;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, DimLike, TractErrorContext};
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;

struct Args {
    model: String,
    iters: usize,
    batch: usize,
    threads: usize,
    input: Option<String>,
    output: Option<String>,
}

fn usage() -> ! {
    eprintln!("usage: tract-peer MODEL.onnx [--iters N] [--batch B] [--threads T] [--input X.npy] [--output Y.npy]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args { model: String::new(), iters: 50, batch: 1, threads: 1, input: None, output: None };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| {
            eprintln!("{name} needs a value");
            usage()
        });
        match s.as_str() {
            "--iters" => a.iters = val("--iters").parse().unwrap_or_else(|_| usage()),
            "--batch" => a.batch = val("--batch").parse().unwrap_or_else(|_| usage()),
            "--threads" => a.threads = val("--threads").parse().unwrap_or_else(|_| usage()),
            "--input" => a.input = Some(val("--input")),
            "--output" => a.output = Some(val("--output")),
            "-h" | "--help" => usage(),
            _ if s.starts_with('-') => usage(),
            _ if a.model.is_empty() => a.model = s,
            _ => usage(),
        }
    }
    if a.model.is_empty() {
        usage()
    }
    a.batch = a.batch.max(1);
    a.threads = a.threads.max(1);
    a
}

/// Minimal reader for a little-endian f32 C-order .npy (version 1/2/3).
fn read_npy_f32(path: &str) -> TractResult<(Vec<usize>, Vec<f32>)> {
    let b = std::fs::read(path)?;
    ensure!(b.len() > 10 && &b[..6] == b"\x93NUMPY", "{path}: not an .npy file");
    let (hlen, off) = if b[6] == 1 { (u16::from_le_bytes([b[8], b[9]]) as usize, 10) } else { (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12) };
    let header = std::str::from_utf8(&b[off..off + hlen])?;
    ensure!(header.contains("'<f4'"), "{path}: only little-endian f32 is supported ({header})");
    ensure!(!header.contains("'fortran_order': True"), "{path}: Fortran order not supported");
    let s = header.split("'shape':").nth(1).context("no shape")?;
    let s = &s[s.find('(').context("no shape")? + 1..s.find(')').context("no shape")?];
    let shape: Vec<usize> = s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| x.parse()).collect::<Result<_, _>>()?;
    let data: Vec<f32> = b[off + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    ensure!(data.len() == shape.iter().product::<usize>(), "{path}: size does not match shape");
    Ok((shape, data))
}

fn write_npy_f32(path: &str, shape: &[usize], data: &[f32]) -> TractResult<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// Multiply-adds of the optimised model's convolutions and matmuls are not easy to read back
/// from tract, so FLOPs come from the ONNX graph: 2 × MACs of Conv / Gemm / MatMul nodes,
/// computed with tract's own shape analysis of the *inference* model (before optimisation).
fn onnx_flops(model: &InferenceModel) -> f64 {
    let mut macs = 0f64;
    for node in model.nodes() {
        let op = node.op.name();
        let out_shape = |slot: usize| -> Option<Vec<usize>> {
            model.outlet_fact(OutletId::new(node.id, slot)).ok()?.shape.as_concrete_finite().ok()?.map(|v| v.to_vec())
        };
        let in_shape = |i: usize| -> Option<Vec<usize>> { model.outlet_fact(*node.inputs.get(i)?).ok()?.shape.as_concrete_finite().ok()?.map(|v| v.to_vec()) };
        match op.as_ref() {
            "Conv" | "ConvHir" => {
                if let (Some(y), Some(w)) = (out_shape(0), in_shape(1)) {
                    macs += y.iter().product::<usize>() as f64 * w[1..].iter().product::<usize>() as f64;
                }
            }
            "Gemm" | "MatMul" | "MatMulInference" => {
                if let (Some(y), Some(a)) = (out_shape(0), in_shape(0)) {
                    // Gemm with transA is rare in CNN exports; K = last dim of A otherwise.
                    let k = if op == "Gemm" && a.len() == 2 && y.len() == 2 && a[0] != y[0] { a[0] } else { *a.last().unwrap_or(&1) };
                    macs += y.iter().product::<usize>() as f64 * k as f64;
                }
            }
            _ => {}
        }
    }
    2.0 * macs
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> TractResult<()> {
    let a = parse_args();
    let t0 = Instant::now();
    let mut model = tract_onnx::onnx().model_for_path(&a.model)?;
    // Input shape: the ONNX input's shape with dim 0 (batch, fixed or symbolic) set to --batch.
    let fact = model.input_fact(0)?.clone();
    let rank = fact.shape.rank().concretize().context("input rank unknown")? as usize;
    let mut shape = Vec::with_capacity(rank);
    for (i, d) in fact.shape.dims().enumerate() {
        if i == 0 {
            shape.push(a.batch);
        } else {
            let d = d.concretize().context("non-batch input dim is not fixed")?;
            shape.push(d.to_usize().context("non-batch input dim is symbolic")?);
        }
    }
    model.set_input_fact(0, f32::fact(&shape).into())?;
    let model = model.into_typed()?;
    let flops = {
        // FLOPs from the inference model with the concrete input shape.
        let mut m = tract_onnx::onnx().model_for_path(&a.model)?;
        m.set_input_fact(0, f32::fact(&shape).into())?;
        m.analyse(false)?;
        onnx_flops(&m)
    };
    let model = model.into_optimized()?;
    let opts = RunOptions { executor: if a.threads > 1 { Some(Executor::multithread(a.threads)) } else { None }, ..Default::default() };
    let plan = model.into_runnable_with_options(&opts)?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;

    let n: usize = shape.iter().product();
    let input: Vec<f32> = match &a.input {
        Some(p) => {
            let (s, d) = read_npy_f32(p)?;
            ensure!(d.len() == n, "{p}: shape {s:?} does not match the model input {shape:?}");
            d
        }
        None => {
            // Same generator as `cnnrt bench`.
            let mut state = 0x2545F4914F6CDD1Du64;
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        }
    };
    let x: TValue = Tensor::from_shape(&shape, &input)?.into();
    let mut state = plan.spawn()?;

    let t2 = Instant::now();
    let out = state.run(tvec!(x.clone()))?;
    let first_run_ms = t2.elapsed().as_secs_f64() * 1e3;
    if let Some(p) = &a.output {
        let y = out[0].clone().into_tensor();
        write_npy_f32(p, y.shape(), y.try_as_plain_ram()?.as_slice::<f32>()?)?;
    }
    drop(out);
    for _ in 0..3 {
        state.run(tvec!(x.clone()))?;
    }
    let mut times = Vec::with_capacity(a.iters.max(1));
    for _ in 0..a.iters.max(1) {
        let xi = x.clone();
        let t = Instant::now();
        let out = state.run(tvec!(xi))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    times.sort_by(|p, q| p.total_cmp(q));
    let median = percentile(&times, 0.5);
    let p90 = percentile(&times, 0.9);
    let p99 = percentile(&times, 0.99);
    let gflops = flops / (median * 1e-3) / 1e9;
    let ips = a.batch as f64 / (median * 1e-3);
    println!("model      {}", a.model);
    println!("runtime    tract-onnx 0.23.9, threads {}, batch {}", a.threads, a.batch);
    println!("open       {open_ms:.3} ms (load + optimise + plan)");
    println!("first run  {first_run_ms:.3} ms");
    println!("latency    median {median:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms over {} runs", times.len());
    println!("throughput {ips:.1} images/s, {gflops:.1} GFLOP/s ({:.3} GFLOP per run)", flops / 1e9);
    println!(
        "{{\"model\":{:?},\"runtime\":\"tract-onnx 0.23.9\",\"threads\":{},\"batch\":{},\"open_ms\":{open_ms:.4},\"first_run_ms\":{first_run_ms:.4},\"median_ms\":{median:.4},\"p90_ms\":{p90:.4},\"p99_ms\":{p99:.4},\"images_per_s\":{ips:.2},\"gflops\":{gflops:.3},\"runs\":{}}}",
        a.model,
        a.threads,
        a.batch,
        times.len()
    );
    Ok(())
}
