//! The `cnnrt` command line: inspect, convert, run, bench.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// `println!` that does not panic when stdout is a closed pipe (`cnnrt inspect m.cnnrt |
/// head`) or a failing file: stdout only reports, so the work goes on (a conversion still
/// writes its file); a closed pipe is ignored, any other failure is reported once on
/// stderr and makes the exit status 1 ([`STDOUT_FAILED`]).
macro_rules! say {
    ($($t:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!`, the same way.
macro_rules! say_raw {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*)) };
}

/// Set when writing to stdout failed other than on a closed pipe.
static STDOUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && !STDOUT_FAILED.swap(true, Ordering::Relaxed)
        {
            eprintln!("error: writing to stdout: {e}");
        }
    }
}

use clap::{Parser, Subcommand};
use cnnrt::convert::{convert_file, convert_onnx, ConvertOptions};
use cnnrt::format::{ChannelOrder, OpenOptions, Storage};
use cnnrt::graph::stats::total_macs;
use cnnrt::inspect::{layer_table, thousands};
use cnnrt::{Error, Isa, Model, Result, SessionOptions, Threads};

#[derive(Parser)]
#[command(
    name = "cnnrt",
    version,
    about = "A CPU inference runtime for convolutional neural networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a per-layer table (output size, weights, parameters, multiply-adds,
    /// receptive field, output stride, kernel) of a .cnnrt or .onnx model.
    Inspect {
        model: PathBuf,
        /// Highest kernel tier to plan with (avx512, avx2, scalar); also CNNRT_MAX_ISA.
        #[arg(long)]
        isa: Option<Isa>,
    },
    /// Convert an ONNX model to .cnnrt (BatchNorm folded, activations fused).
    Convert {
        onnx: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Class labels, one per line.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Per-channel mean subtracted from pixels scaled to [0,1], e.g. 0.485,0.456,0.406.
        #[arg(long, value_delimiter = ',')]
        mean: Vec<f32>,
        /// Per-channel std dividing them, e.g. 0.229,0.224,0.225.
        #[arg(long, value_delimiter = ',')]
        std: Vec<f32>,
        /// The model expects BGR channel order (default RGB; gray for 1 channel).
        #[arg(long)]
        bgr: bool,
        /// Largest relative error accepted for a Winograd 3x3 layer, measured against
        /// direct convolution on a calibration input; 0 disables Winograd.
        #[arg(long, default_value_t = 1e-4)]
        winograd_max_error: f64,
        /// Batch size to choose each layer's algorithm for (the file runs any batch; at 8,
        /// say, Winograd F(4x4) on small maps with many channels, whose weights the batch
        /// shares: larger file, faster batches).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
        batch: u64,
        /// Measure this CPU's GEMM rate and memory read rate (about a second) and choose
        /// the algorithms for them instead of the defaults (150 GFLOP/s, 15 GB/s); the
        /// rates are recorded in the file. Convert on the machine that will serve.
        #[arg(long)]
        tune: bool,
    },
    /// Run a model on an .npy tensor, an image (PNG/JPEG) or a folder of images.
    Run {
        model: PathBuf,
        input: PathBuf,
        /// Write the raw output tensor here as .npy.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// How many classes to print per sample.
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long)]
        isa: Option<Isa>,
        /// Kernel threads (1 = the calling thread only).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Time a model: open, first run, latency percentiles, images/s, GFLOP/s.
    Bench {
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed runs (after 3 warm-up runs).
        #[arg(long, default_value_t = 50)]
        iters: usize,
        #[arg(long)]
        isa: Option<Isa>,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
        /// Also print per-layer time, share, GFLOP/s, % of peak and kernel (medians).
        #[arg(long)]
        profile: bool,
        /// FP32 peak of one core in GFLOP/s, for the profile's % of peak [default: measured
        /// on this core for the session's kernel tier, a register-only FMA loop].
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// What times runs and layers: `wall` (elapsed time), or `cpu` (the process's CPU
        /// time, which a busy shared machine disturbs far less; with several threads it
        /// is their sum, not a latency).
        #[arg(long, value_enum, default_value_t = Clock::Wall)]
        clock: Clock,
        /// Skip the weight checksum at open (structure is still validated); shows the
        /// open time a service gets with `OpenOptions::verify_weight_checksum = false`.
        #[arg(long)]
        no_verify: bool,
        /// Read the model into private memory, on huge pages where the OS grants them,
        /// instead of mapping it (`OpenOptions::storage = Storage::Copy`): a slower open,
        /// faster runs of models with large weights.
        #[arg(long)]
        copy: bool,
        /// Run MobileNet-style expansion → depthwise → projection blocks, first-layer
        /// convolutions with the pooling after them, and implicit-GEMM and F(2x2)
        /// Winograd convolutions with the 2×2 max pool after them, layer by layer instead
        /// of as one fused step (to compare, or to profile each layer).
        #[arg(long)]
        no_fuse: bool,
        /// Run every layer planar (channels in separate planes) instead of keeping
        /// MobileNet-style small-map layers channels-last between layers (to compare).
        #[arg(long)]
        no_channels_last: bool,
        /// Take turns with other processes, for comparisons paired in time on a noisy
        /// machine (`scripts/paired_peers.py`): after the warm-up runs, read a run count
        /// per line from standard input, time that many runs and print their times as one
        /// line `{"times_ms":[...]}`; stop at the end of the input.
        #[arg(long, conflicts_with_all = ["profile", "json"])]
        turns: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Clock {
    Wall,
    Cpu,
}

impl Clock {
    /// A monotonic reading of this clock, from an arbitrary origin.
    fn now(self, epoch: Instant) -> std::time::Duration {
        match self {
            Clock::Wall => epoch.elapsed(),
            Clock::Cpu => process_cpu_time().unwrap_or_else(|| epoch.elapsed()),
        }
    }
}

/// CPU time used by this process so far (all threads).
fn process_cpu_time() -> Option<std::time::Duration> {
    cpu_time::ProcessTime::try_now()
        .ok()
        .map(|t| t.as_duration())
}

/// `cnnrt bench`'s settings.
struct BenchOptions {
    threads: usize,
    batch: usize,
    iters: usize,
    isa: Option<Isa>,
    json: bool,
    /// Per-core peak GFLOP/s (None: measure it) when a per-layer profile is wanted.
    profile: Option<Option<f64>>,
    clock: Clock,
    verify: bool,
    copy: bool,
    fuse: bool,
    channels_last: bool,
    /// `--turns`: time runs in the bursts standard input asks for.
    turns: bool,
}

fn threads_option(n: usize) -> Threads {
    if n <= 1 {
        Threads::Caller
    } else {
        Threads::Count(n)
    }
}

fn is_onnx(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

fn inspect(model: &Path, isa: Option<Isa>) -> Result<()> {
    if is_onnx(model) {
        let bytes = std::fs::read(model).map_err(|e| Error::io(model, e))?;
        let c = convert_onnx(&bytes, &ConvertOptions::default())?;
        say!(
            "{} (ONNX, opset {}; shown after BatchNorm folding and fusion)",
            model.display(),
            c.metadata.source_opset
        );
        say_raw!("{}", layer_table(&c.graph, None, &[]));
        return Ok(());
    }
    let m = Model::open(model)?;
    let session = m.session(SessionOptions {
        max_isa: isa,
        ..Default::default()
    })?;
    let meta = m.metadata();
    say!("{}", model.display());
    say!("  producer: {}", meta.producer);
    say!(
        "  input '{}': {:?}, channel order {:?}, mean {:?}, std {:?}",
        meta.input_name,
        m.input_shape(),
        meta.channel_order,
        meta.mean,
        meta.std
    );
    say!(
        "  labels: {}",
        if meta.labels.is_empty() {
            "none".to_string()
        } else {
            format!("{} ({}, ...)", meta.labels.len(), meta.labels[0])
        }
    );
    let mut chosen_for = Vec::new();
    if meta.planned_batch > 1 {
        chosen_for.push(format!("batch {}", meta.planned_batch));
    }
    if let Some(r) = meta.cost_rates {
        chosen_for.push(format!(
            "GEMMs at {:.0} GFLOP/s and weights read at {:.1} GB/s (measured by convert --tune)",
            r.gemm_gflops, r.memory_gbps
        ));
    }
    if !chosen_for.is_empty() {
        say!("  algorithms chosen for {}", chosen_for.join(", "));
    }
    say!(
        "  kernels: {}, workspace {} bytes at batch 1",
        session.isa(),
        thousands(session.workspace_bytes())
    );
    let notes: Vec<(String, Option<f64>)> = meta
        .layer_notes
        .iter()
        .map(|n| (n.node.clone(), n.relative_error))
        .collect();
    say_raw!(
        "{}",
        layer_table(m.graph(), Some(&session.algorithms()), &notes)
    );
    Ok(())
}

fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn run(
    model: &Path,
    input: &Path,
    output: Option<&Path>,
    top: usize,
    isa: Option<Isa>,
    threads: usize,
) -> Result<()> {
    let m = Model::open(model)?;
    let batch = cnnrt::input::load_input(input, m.input_shape(), m.metadata())?;
    let mut session = m.session(SessionOptions {
        max_batch: batch.batch,
        max_isa: isa,
        threads: threads_option(threads),
        ..Default::default()
    })?;
    let out = session.run(&batch.data, batch.batch)?;
    let per = out.len() / batch.batch;
    let labels = &m.metadata().labels;
    for s in 0..batch.batch {
        let row = &out[s * per..(s + 1) * per];
        let name = batch
            .sources
            .get(s)
            .filter(|_| batch.sources.len() == batch.batch)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("sample {s}"));
        let mut idx: Vec<usize> = (0..per).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let shown: Vec<String> = idx
            .iter()
            .take(top.min(per))
            .map(|&i| match labels.get(i) {
                Some(l) => format!("{l} ({:.4})", row[i]),
                None => format!("#{i} ({:.4})", row[i]),
            })
            .collect();
        say!("{name}: {}", shown.join(", "));
    }
    if let Some(path) = output {
        let mut shape = vec![batch.batch];
        shape.extend_from_slice(m.output_shape());
        cnnrt::input::write_npy(path, out, &shape)?;
        say!("wrote {} {:?}", path.display(), shape);
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(model: &Path, o: &BenchOptions) -> Result<()> {
    let (threads, batch, iters, isa) = (o.threads, o.batch, o.iters, o.isa);
    let t0 = Instant::now();
    let m = Model::open_with(
        model,
        &OpenOptions {
            verify_weight_checksum: o.verify,
            storage: if o.copy { Storage::Copy } else { Storage::Mmap },
        },
    )?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut session = m.session(SessionOptions {
        max_batch: batch,
        max_isa: isa,
        threads: threads_option(threads),
        fuse_blocks: o.fuse,
        channels_last: o.channels_last,
        prefetch: None,
    })?;
    let session_ms = t1.elapsed().as_secs_f64() * 1e3;
    let sample: usize = m.input_shape().iter().product();
    // A fixed pseudo-random input: timings must not depend on the data, but zeros could.
    let mut state = 0x2545F4914F6CDD1Du64;
    let input: Vec<f32> = (0..sample * batch)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let t2 = Instant::now();
    session.run(&input, batch)?;
    let first_run_ms = t2.elapsed().as_secs_f64() * 1e3;
    for _ in 0..3 {
        session.run(&input, batch)?;
    }
    if o.turns {
        return take_turns(&mut session, &input, batch, o.clock);
    }
    let mut times = Vec::with_capacity(iters.max(1));
    let epoch = Instant::now();
    for _ in 0..iters.max(1) {
        let t = o.clock.now(epoch);
        session.run(&input, batch)?;
        times.push((o.clock.now(epoch) - t).as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&times, 0.5);
    let p90 = percentile(&times, 0.9);
    let p99 = percentile(&times, 0.99);
    let flops = 2.0 * total_macs(m.graph()) as f64 * batch as f64;
    let gflops = flops / (median * 1e-3) / 1e9;
    let ips = batch as f64 / (median * 1e-3);
    say!("model      {}", model.display());
    say!(
        "kernels    {} , threads {threads}, batch {batch}, workspace {} bytes, weight prefetch to {:?}",
        session.isa(),
        thousands(session.workspace_bytes()),
        session.prefetch_to()
    );
    let planned = m.metadata().planned_batch.max(1);
    if planned != batch {
        say!(
            "note       the file's algorithms were chosen for batch {planned} (`cnnrt convert --batch {batch}` chooses them for this one)"
        );
    }
    say!("open       {open_ms:.3} ms (+ session {session_ms:.3} ms)");
    say!("first run  {first_run_ms:.3} ms");
    let clock = match o.clock {
        Clock::Wall => "",
        Clock::Cpu => " (CPU time)",
    };
    say!(
        "latency    median {median:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms over {} runs{clock}",
        times.len()
    );
    say!(
        "throughput {ips:.1} images/s, {gflops:.1} GFLOP/s ({:.3} GFLOP per run)",
        flops / 1e9
    );
    let file = m.file();
    let held = if file.is_mapped() { "mapped" } else { "copied" };
    let huge = file.huge_page_bytes();
    match huge {
        Some(h) => say!(
            "memory     {:.1} MB {held}, {:.1} MB of it on huge pages",
            file.bytes().len() as f64 / 1e6,
            h as f64 / 1e6
        ),
        None => say!(
            "memory     {:.1} MB {held}",
            file.bytes().len() as f64 / 1e6
        ),
    }
    if let Some(peak) = o.profile {
        // Measured on this core for the tier the session runs, unless given.
        let peak = peak.unwrap_or_else(|| {
            let p = cnnrt::kernels::peak::fma_peak_gflops(session.isa(), 20);
            (p * 10.0).round() / 10.0
        });
        print_profile(&m, &mut session, &input, o, peak)?;
    }
    if o.json {
        say!(
            "{{\"model\":{:?},\"isa\":\"{}\",\"threads\":{threads},\"batch\":{batch},\"open_ms\":{open_ms:.4},\"session_ms\":{session_ms:.4},\"first_run_ms\":{first_run_ms:.4},\"median_ms\":{median:.4},\"p90_ms\":{p90:.4},\"p99_ms\":{p99:.4},\"images_per_s\":{ips:.2},\"gflops\":{gflops:.3},\"workspace_bytes\":{},\"huge_page_bytes\":{}}}",
            model.display().to_string(),
            session.isa(),
            session.workspace_bytes(),
            huge.map_or("null".to_string(), |h| h.to_string())
        );
    }
    Ok(())
}

/// `bench --turns`: per line of standard input (a run count), that many timed runs,
/// their times in ms printed as one JSON line.
fn take_turns(
    session: &mut cnnrt::Session,
    input: &[f32],
    batch: usize,
    clock: Clock,
) -> Result<()> {
    use std::io::{BufRead, Write};
    let epoch = Instant::now();
    let mut out = std::io::stdout().lock();
    let stdio = |e| Error::io("<standard input/output>", e);
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(stdio)?;
        let n: usize = line.trim().parse().map_err(|_| {
            Error::Other(format!(
                "bench --turns: expected a run count per line, got {line:?}"
            ))
        })?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = clock.now(epoch);
            session.run(input, batch)?;
            times.push(format!("{:.4}", (clock.now(epoch) - t).as_secs_f64() * 1e3));
        }
        writeln!(out, "{{\"times_ms\":[{}]}}", times.join(",")).map_err(stdio)?;
        out.flush().map_err(stdio)?;
    }
    Ok(())
}

/// Per-layer medians over `iters` profiled runs.
fn print_profile(
    m: &Model,
    session: &mut cnnrt::Session,
    input: &[f32],
    o: &BenchOptions,
    peak: f64,
) -> Result<()> {
    let (batch, iters, threads) = (o.batch, o.iters, o.threads);
    let epoch = Instant::now();
    let clock = o.clock;
    let graph = m.graph();
    let stats = cnnrt::graph::stats::layer_stats(graph);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); graph.nodes.len()];
    for _ in 0..iters.clamp(5, 50) {
        let times = session.profile_with_clock(input, batch, &|| clock.now(epoch))?;
        for (i, t) in times.iter().enumerate() {
            samples[i].push(t.as_secs_f64() * 1e3);
        }
    }
    let med: Vec<f64> = samples
        .iter_mut()
        .map(|v| {
            v.sort_by(|a, b| a.total_cmp(b));
            percentile(v, 0.5)
        })
        .collect();
    let total: f64 = med.iter().sum();
    let algos = session.algorithms();
    say!("\nper layer (median of profiled runs; peak {peak} GFLOP/s per core × {threads} threads)");
    say!(
        "{:<4} {:<28} {:<14} {:>9} {:>6} {:>8} {:>7}  kernel",
        "#",
        "layer",
        "op",
        "ms",
        "share",
        "GFLOP/s",
        "% peak"
    );
    // A fused block's time is on its last node; its other nodes' FLOPs count there.
    let mut in_block = 0.0;
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut flops = 2.0 * stats[i].macs as f64 * batch as f64;
        if algos[i] == "in_block" {
            in_block += flops;
            flops = 0.0;
        } else {
            flops += std::mem::take(&mut in_block);
        }
        let gf = if med[i] > 0.0 {
            flops / (med[i] * 1e-3) / 1e9
        } else {
            0.0
        };
        let name: String = node.name.chars().take(28).collect();
        say!(
            "{:<4} {:<28} {:<14} {:>9.4} {:>5.1}% {:>8.1} {:>6.1}%  {}",
            i + 1,
            name,
            node.op.name(),
            med[i],
            100.0 * med[i] / total,
            gf,
            100.0 * gf / (peak * threads as f64),
            algos[i]
        );
    }
    say!("sum of layer medians: {total:.3} ms");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { model, isa } => inspect(&model, isa),
        Command::Convert {
            onnx,
            output,
            labels,
            mean,
            std,
            bgr,
            winograd_max_error,
            batch,
            tune,
        } => (|| {
            let labels = labels
                .as_deref()
                .map(read_labels)
                .transpose()?
                .unwrap_or_default();
            let opts = ConvertOptions {
                labels,
                mean,
                std,
                channel_order: bgr.then_some(ChannelOrder::Bgr),
                winograd_max_error,
                batch: batch as usize,
                cost_rates: tune.then(|| {
                    let isa = Isa::select(None);
                    let r = cnnrt::tune::measure_cost_rates(isa);
                    say!(
                        "tuned for this CPU ({isa}): GEMMs at {:.0} GFLOP/s, memory reads at {:.1} GB/s",
                        r.gemm_gflops, r.memory_gbps
                    );
                    r
                }),
            };
            let c = convert_file(&onnx, &output, &opts)?;
            let p = &c.passes;
            say!(
                "wrote {}: {} nodes, {} parameters, {} mult-adds per sample",
                output.display(),
                c.graph.nodes.len(),
                thousands(cnnrt::graph::stats::total_params(&c.graph)),
                thousands(total_macs(&c.graph))
            );
            say!(
                "passes: {} BatchNorm/affine folded, {} activations fused, {} residual adds fused, {} pads folded, {} denormal weights flushed",
                p.affines_folded, p.activations_fused, p.residuals_fused, p.pads_folded, p.denormals_flushed
            );
            Ok(())
        })(),
        Command::Run {
            model,
            input,
            output,
            top,
            isa,
            threads,
        } => run(&model, &input, output.as_deref(), top, isa, threads),
        Command::Bench {
            model,
            threads,
            batch,
            iters,
            isa,
            json,
            profile,
            peak_gflops,
            clock,
            no_verify,
            copy,
            no_fuse,
            no_channels_last,
            turns,
        } => bench(
            &model,
            &BenchOptions {
                threads,
                batch,
                iters,
                isa,
                json,
                profile: profile.then_some(peak_gflops),
                clock,
                verify: !no_verify,
                copy,
                fuse: !no_fuse,
                channels_last: !no_channels_last,
                turns,
            },
        ),
    };
    match result {
        Ok(()) if STDOUT_FAILED.load(std::sync::atomic::Ordering::Relaxed) => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
