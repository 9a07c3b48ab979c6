//! Depthwise, pooling and element-wise kernels on the shapes of MobileNetV2 and ResNet,
//! one thread, every ISA tier this CPU has.
//!
//! `cargo bench --bench small_kernels [-- FILTER]`: criterion, throughput in bytes read +
//! written (decimal GB/s); each benchmark's id says its shape and tier.
//! `CNNRT_BENCH_TABLE=1 cargo bench --bench small_kernels [-- FILTER]` prints a markdown
//! table instead (µs, GB/s, GFLOP/s, share of 20 GB/s and of a same-size copy); see [`table`].
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) on Linux, so that
//! other processes on a shared machine do not count; for one thread on an idle machine it
//! equals wall time. `CNNRT_BENCH_WALL=1` measures wall time instead (criterion mode).

use std::hint::black_box;
use std::time::Duration;

use cnnrt::graph::{Activation, Conv, Pool, PoolKind};
use cnnrt::kernels::depthwise::DepthwiseKernel;
use cnnrt::kernels::elementwise::{activation, channel_affine};
use cnnrt::kernels::pool::{global_pool, PoolKernel};
use cnnrt::simd::{set_flush_denormals, Isa};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput};

fn data(n: usize, seed: u32) -> Aligned {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect::<Vec<f32>>()
        .into()
}

/// One benchmark: a kernel call on prepared data.
struct Case {
    group: &'static str,
    id: String,
    /// Bytes read + written by one call.
    bytes: usize,
    /// Arithmetic operations of one call (an FMA counts 2; compares / adds for pooling).
    flops: usize,
    run: Box<dyn FnMut()>,
}

fn case(
    group: &'static str,
    id: String,
    bytes: usize,
    flops: usize,
    run: impl FnMut() + 'static,
) -> Case {
    Case {
        group,
        id,
        bytes,
        flops,
        run: Box::new(run),
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let dw = [
        (
            1usize,
            &[
                (32usize, 112usize),
                (144, 56),
                (192, 28),
                (576, 14),
                (960, 7),
            ][..],
        ),
        (2, &[(96, 112), (144, 56), (192, 28), (576, 14)][..]),
    ];
    for (stride, shapes) in dw {
        for &(ch, hw) in shapes {
            let conv = Conv {
                in_channels: ch,
                out_channels: ch,
                kernel: [3, 3],
                stride: [stride, stride],
                dilation: [1, 1],
                pads: [1, 1, 1, 1],
                groups: ch,
                weight: 0,
                bias: Some(1),
                activation: Activation::Clip { min: 0.0, max: 6.0 },
            };
            let o = (hw - 1) / stride + 1;
            for isa in Isa::supported() {
                let (x, w, b) = (data(ch * hw * hw, 1), data(ch * 9, 2), data(ch, 3));
                let mut out = Aligned::zeroed(ch * o * o);
                let bytes = 4 * (x.len() + out.len() + w.len() + b.len());
                let k = DepthwiseKernel::new(isa, &conv, [ch, hw, hw], [ch, o, o]).unwrap();
                let group = if stride == 1 { "dw3x3_s1" } else { "dw3x3_s2" };
                let run = move || k.run(black_box(&w), Some(&b), black_box(&x), None, &mut out);
                v.push(case(
                    group,
                    format!("{ch}x{hw}x{hw}/{isa}"),
                    bytes,
                    18 * ch * o * o,
                    run,
                ));
            }
        }
    }
    let p = Pool {
        kind: PoolKind::Max,
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [1, 1, 1, 1],
        ceil_mode: false,
        count_include_pad: false,
    };
    for isa in Isa::supported() {
        let x = data(64 * 112 * 112, 4);
        let mut out = Aligned::zeroed(64 * 56 * 56);
        let k = PoolKernel::new(isa, &p, [64, 112, 112], [64, 56, 56]).unwrap();
        let (bytes, flops) = (4 * (x.len() + out.len()), 8 * out.len());
        v.push(case(
            "maxpool3x3_s2",
            format!("64x112x112/{isa}"),
            bytes,
            flops,
            move || k.run(black_box(&x), &mut out),
        ));
    }
    for isa in Isa::supported() {
        let x = data(512 * 49, 5);
        let mut out = Aligned::zeroed(512);
        let (bytes, flops) = (4 * (x.len() + out.len()), x.len());
        v.push(case(
            "global_avgpool",
            format!("512x7x7/{isa}"),
            bytes,
            flops,
            move || global_pool(isa, PoolKind::Average, black_box(&x), 512, 49, &mut out),
        ));
    }
    let shape = [64usize, 56, 56];
    let n: usize = shape.iter().product();
    for isa in Isa::supported() {
        let x = data(n, 6);
        let mut out = Aligned::zeroed(n);
        v.push(case(
            "relu",
            format!("64x56x56/{isa}"),
            8 * n,
            n,
            move || activation(isa, black_box(&x), Activation::Relu, &mut out),
        ));
    }
    // The exp-based activations, on a map that stays in L2 (their arithmetic, not the
    // memory, is what they cost: SiLU was about a quarter of EfficientNet-B0's time).
    let small = 32 * 28 * 28;
    for (name, act) in [
        ("silu", Activation::Silu),
        ("sigmoid", Activation::Sigmoid),
        ("tanh", Activation::Tanh),
    ] {
        for isa in Isa::supported() {
            let x = data(small, 9);
            let mut out = Aligned::zeroed(small);
            v.push(case(
                name,
                format!("32x28x28/{isa}"),
                8 * small,
                small,
                move || activation(isa, black_box(&x), act, &mut out),
            ));
        }
    }
    for isa in Isa::supported() {
        let (x, scale, shift) = (data(n, 6), data(64, 7), data(64, 8));
        let mut out = Aligned::zeroed(n);
        let run = move || {
            channel_affine(
                isa,
                black_box(&x),
                1,
                &shape,
                Some(&scale),
                Some(&shift),
                Activation::Relu,
                &mut out,
            )
        };
        v.push(case(
            "affine_relu",
            format!("64x56x56/{isa}"),
            8 * n,
            3 * n,
            run,
        ));
    }
    v
}

fn run<M: Measurement>(mut c: Criterion<M>) {
    let mut all = cases();
    let mut i = 0;
    while i < all.len() {
        let name = all[i].group;
        let mut g = c.benchmark_group(name);
        g.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20);
        while i < all.len() && all[i].group == name {
            let case = &mut all[i];
            g.throughput(Throughput::BytesDecimal(case.bytes as u64));
            let f = &mut case.run;
            g.bench_function(case.id.clone(), |b| b.iter(&mut *f));
            i += 1;
        }
        g.finish();
    }
    c.final_summary();
}

/// The 10th percentile of the thread CPU time of one call of `f`, over about 0.3 s of
/// calls, in seconds (a low percentile rather than the minimum: a virtual machine's clock
/// now and then reads the same value twice).
fn fast_time(f: &mut dyn FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut times = Vec::new();
    let mut spent = 0u64;
    while (spent < 300_000_000 || times.len() < 20) && times.len() < 100_000 {
        let t = thread_cpu_ns();
        f();
        let d = thread_cpu_ns() - t;
        times.push(d);
        spent += d;
    }
    times.sort_unstable();
    times[times.len() / 10] as f64 * 1e-9
}

/// `CNNRT_BENCH_TABLE=1` (`-- FILTER` keeps the cases whose name or id contains it):
/// instead of criterion, a markdown table of the fast end (10th
/// percentile) of the CPU time per call over ~0.3 s of calls. Beside each case, a copy of the same number of bytes
/// (half read, half written) timed the same way right after it: what the memory system
/// gave at that moment, for that working-set size.
fn table() {
    println!(
        "| kernel | shape / tier | µs | GB/s | GFLOP/s | % of 20 GB/s | copy GB/s | % of copy |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    // As the kernels bench: the first argument that is not an option filters by name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let keep = |c: &Case| {
        filter
            .as_deref()
            .is_none_or(|f| c.group.contains(f) || c.id.contains(f))
    };
    for mut c in cases().into_iter().filter(keep) {
        let t = fast_time(&mut c.run);
        let half = c.bytes / 8;
        let (src, mut dst) = (data(half, 9), Aligned::zeroed(half));
        let tc = fast_time(&mut || dst.copy_from_slice(black_box(&src)));
        let (gbs, copy) = (c.bytes as f64 / t * 1e-9, c.bytes as f64 / tc * 1e-9);
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.1} | {:.0}% |",
            c.group,
            c.id,
            t * 1e6,
            gbs,
            c.flops as f64 / t * 1e-9,
            gbs / 20.0 * 100.0,
            copy,
            gbs / copy * 100.0
        );
    }
}

fn main() {
    set_flush_denormals();
    if std::env::var_os("CNNRT_BENCH_TABLE").is_some() {
        table();
    } else if cfg!(target_os = "linux") && std::env::var_os("CNNRT_BENCH_WALL").is_none() {
        run(Criterion::default()
            .with_measurement(CpuTime)
            .configure_from_args());
    } else {
        run(Criterion::default()
            .with_measurement(WallTime)
            .configure_from_args());
    }
}

// The calling thread's CPU time, shared with the examples and the kernels bench.
#[path = "../examples/common/timing.rs"]
#[allow(dead_code)]
mod timing;
use timing::thread_cpu_ns;

// 64-byte aligned buffers for the kernels, shared with the examples.
#[path = "../examples/common/aligned.rs"]
mod aligned;
use aligned::Aligned;

/// Thread CPU time as a criterion measurement (nanoseconds).
struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e3, "µs")
        } else if typical < 1e9 {
            (1e6, "ms")
        } else {
            (1e9, "s")
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (amount, unit) = match *throughput {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => (b as f64 / 1e9, "GB/s"),
            Throughput::Elements(e) | Throughput::ElementsAndBytes { elements: e, .. } => {
                (e as f64 / 1e9, "Gelem/s")
            }
            Throughput::Bits(b) => (b as f64 / 1e9, "Gbit/s"),
        };
        // values are ns per iteration: amount / (ns * 1e-9) / 1e9 = amount / ns * 1e9.
        values.iter_mut().for_each(|v| *v = amount / *v * 1e9);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
