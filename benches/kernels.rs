//! GEMM / convolution / linear kernels, one thread, every ISA tier this CPU supports.
//!
//! Throughput is reported in elements/s where one element is one FLOP (2 per
//! multiply-add), so criterion's "Gelem/s" reads as GFLOP/s; the linear layers at batch 1
//! are memory-bound and count bytes of weights instead (GB/s).
//!
//! `cargo bench --bench kernels` (all), or with a filter: `cargo bench --bench kernels --
//! resnet18`. The table mode (below) prints each case's share of this core's FMA peak on
//! its tier, measured first (`kernels::peak`).

use cnnrt::graph::{Activation, Conv, Linear};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::gemm::{self, BMode, Epilogue, Gemm};
use cnnrt::kernels::linear::{LinearKernel, Sweep};
use cnnrt::kernels::nhwc::{self, DepthwiseNhwc, PointwiseNhwc};
use cnnrt::simd::Isa;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), so that time slices taken
/// by other processes on a shared machine do not count (cache pollution by them still
/// does). Every benchmark here uses it.
#[derive(Clone, Copy)]
struct ThreadCpu;

// The thread-CPU clock and the best-of-trials loop, shared with the examples.
#[path = "../examples/common/timing.rs"]
#[allow(dead_code)]
mod timing;
use timing::thread_cpu_ns;

// 64-byte aligned buffers for the kernels, shared with the examples.
#[path = "../examples/common/aligned.rs"]
mod aligned;
use aligned::Aligned;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = Duration;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> Duration {
        Duration::from_nanos(thread_cpu_ns() - i)
    }
    fn add(&self, v1: &Duration, v2: &Duration) -> Duration {
        *v1 + *v2
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, val: &Duration) -> f64 {
        val.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

fn values(len: usize, seed: u64) -> Aligned {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect::<Vec<f32>>()
        .into()
}

struct ConvShape {
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    hw: usize,
}

const fn cs(
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    hw: usize,
) -> ConvShape {
    ConvShape {
        name,
        cin,
        cout,
        k,
        stride,
        pad,
        hw,
    }
}

const CONVS: &[ConvShape] = &[
    // ResNet-18
    cs("resnet18/stem_7x7s2_3-64_224", 3, 64, 7, 2, 3, 224),
    cs("resnet18/3x3_64-64_56", 64, 64, 3, 1, 1, 56),
    cs("resnet18/3x3_128-128_28", 128, 128, 3, 1, 1, 28),
    cs("resnet18/3x3_256-256_14", 256, 256, 3, 1, 1, 14),
    cs("resnet18/3x3_512-512_7", 512, 512, 3, 1, 1, 7),
    cs("resnet18/3x3s2_64-128_56", 64, 128, 3, 2, 1, 56),
    cs("resnet18/3x3s2_128-256_28", 128, 256, 3, 2, 1, 28),
    cs("resnet18/3x3s2_256-512_14", 256, 512, 3, 2, 1, 14),
    cs("resnet18/1x1s2_64-128_56", 64, 128, 1, 2, 0, 56),
    cs("resnet18/1x1s2_128-256_28", 128, 256, 1, 2, 0, 28),
    cs("resnet18/1x1s2_256-512_14", 256, 512, 1, 2, 0, 14),
    // MobileNetV2 pointwise
    cs("mobilenetv2/1x1_32-16_112", 32, 16, 1, 1, 0, 112),
    cs("mobilenetv2/1x1_96-24_56", 96, 24, 1, 1, 0, 56),
    cs("mobilenetv2/1x1_144-24_56", 144, 24, 1, 1, 0, 56),
    cs("mobilenetv2/1x1_192-64_14", 192, 64, 1, 1, 0, 14),
    cs("mobilenetv2/1x1_960-320_7", 960, 320, 1, 1, 0, 7),
    cs("mobilenetv2/1x1_320-1280_7", 320, 1280, 1, 1, 0, 7),
    // LeNet-5 (small maps: im2col rows of a few short pieces)
    cs("lenet5/5x5_1-20_28", 1, 20, 5, 1, 2, 28),
    cs("lenet5/5x5_20-50_14", 20, 50, 5, 1, 2, 14),
];

fn config() -> Criterion<ThreadCpu> {
    Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

/// Register-only FMA loop: 12 independent accumulators, `iters` × 12 FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_peak_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let (a, b) = (_mm256_set1_ps(0.999), _mm256_set1_ps(0.001));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    _mm256_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_peak_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(0.001));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}

/// The FMA peak of one core, to read the other numbers against.
fn bench_peak(c: &mut Criterion<ThreadCpu>) {
    // Only the x86-64 tiers have a register-only FMA loop to time.
    #[cfg(target_arch = "x86_64")]
    {
        let mut g = c.benchmark_group("peak");
        let iters = 1 << 16;
        for isa in Isa::supported() {
            let lanes = match isa {
                Isa::Avx512 => 16,
                Isa::Avx2 => 8,
                Isa::Scalar => continue,
            };
            g.throughput(Throughput::Elements((iters * 12 * lanes * 2) as u64));
            g.bench_function(BenchmarkId::new("fma_registers", isa.name()), |bch| {
                bch.iter(|| {
                    // SAFETY: `isa` is in Isa::supported(), so the CPU has its features.
                    unsafe {
                        if isa == Isa::Avx512 {
                            fma_peak_avx512(black_box(iters))
                        } else {
                            fma_peak_avx2(black_box(iters))
                        }
                    }
                })
            });
        }
        g.finish();
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

/// One benchmark: a closure that runs the kernel once, and how much work that is.
struct Case {
    group: &'static str,
    name: String,
    isa: Isa,
    algorithm: &'static str,
    /// FLOPs per run, or bytes of weights for the memory-bound GEMV cases.
    work: u64,
    bytes: bool,
    /// Builds the data and returns the closure that runs the kernel once.
    make: Box<dyn FnOnce() -> Box<dyn FnMut()>>,
}

impl Case {
    fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.group,
            self.name,
            self.algorithm,
            self.isa.name()
        )
    }
}

fn gemm_cases(isa: Isa, out: &mut Vec<Case>) {
    for (m, n, k, mode) in [
        (12, 32, 256, BMode::Packed),
        (96, 256, 256, BMode::Packed),
        (512, 512, 512, BMode::Packed),
        (512, 512, 512, BMode::Direct),
        (64, 3136, 576, BMode::Packed),
        (64, 3136, 576, BMode::Direct),
        (64, 224, 288, BMode::Packed),
        (64, 224, 288, BMode::Direct),
        (512, 49, 4608, BMode::Packed),
        (24, 49, 4608, BMode::Packed),
        (24, 64, 4608, BMode::Packed),
    ] {
        out.push(Case {
            group: "gemm",
            name: format!("{m}x{n}x{k}"),
            isa,
            algorithm: if mode == BMode::Packed {
                "sgemm_packed_a"
            } else {
                "sgemm_packed_a_direct_b"
            },
            work: 2 * (m * n * k) as u64,
            bytes: false,
            make: Box::new(move || {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let mut ap = Aligned::zeroed(m * k);
                gemm::pack_a(m, k, &a, k, &mut ap);
                let plan = Gemm::with_mode(isa, m, n, k, mode);
                let mut scratch = Aligned::zeroed(plan.scratch_len());
                let mut cm = Aligned::zeroed(m * n);
                Box::new(move || {
                    plan.run(
                        &ap,
                        black_box(&b),
                        n,
                        &mut cm,
                        n,
                        &Epilogue::default(),
                        &mut scratch,
                    )
                })
            }),
        });
    }
}

fn conv_cases(isa: Isa, out: &mut Vec<Case>) {
    for s in CONVS {
        let conv = Conv {
            in_channels: s.cin,
            out_channels: s.cout,
            kernel: [s.k, s.k],
            stride: [s.stride, s.stride],
            dilation: [1, 1],
            pads: [s.pad; 4],
            groups: 1,
            weight: 0,
            bias: Some(1),
            activation: Activation::Relu,
        };
        let o = (s.hw + 2 * s.pad - s.k) / s.stride + 1;
        let kern = ConvKernel::new(isa, &conv, [s.cin, s.hw, s.hw], [s.cout, o, o]);
        out.push(Case {
            group: "conv",
            name: s.name.to_string(),
            isa,
            algorithm: kern.algorithm(),
            work: kern.flops(),
            bytes: false,
            make: Box::new({
                let kern = kern.clone();
                move || {
                    let w = values(s.cout * s.cin * s.k * s.k, 3);
                    let mut packed = Aligned::zeroed(kern.packed_weight_len());
                    kern.pack_weights(&w, &mut packed);
                    let bias = values(s.cout, 4);
                    let x = values(s.cin * s.hw * s.hw, 5);
                    let mut y = Aligned::zeroed(s.cout * o * o);
                    let mut scratch = Aligned::zeroed(kern.scratch_len());
                    Box::new(move || {
                        kern.run(
                            &packed,
                            Some(&bias),
                            black_box(&x),
                            None,
                            &mut y,
                            &mut scratch,
                        )
                    })
                }
            }),
        });
        if kern.algorithm() == "im2col_gemm" {
            // The im2col packing alone; "FLOP/s" here = the conv's FLOPs over the packing
            // time, i.e. how fast the packing would let the conv run if it were free.
            out.push(Case {
                group: "im2col_only",
                name: s.name.to_string(),
                isa,
                algorithm: "pack",
                work: kern.flops(),
                bytes: false,
                make: Box::new(move || {
                    let x = values(s.cin * s.hw * s.hw, 5);
                    let mut scratch = Aligned::zeroed(kern.scratch_len());
                    Box::new(move || kern.pack_only(black_box(&x), &mut scratch))
                }),
            });
        }
    }
}

fn linear_cases(isa: Isa, out: &mut Vec<Case>) {
    for (fi, fo, n) in [
        (512, 1000, 1),
        (1280, 1000, 1),
        (4096, 4096, 1),
        (1280, 1000, 16),
    ] {
        let l = Linear {
            in_features: fi,
            out_features: fo,
            weight: 0,
            bias: Some(1),
            activation: Activation::Identity,
        };
        let kern = LinearKernel::new(isa, &l, n);
        out.push(Case {
            group: "linear",
            name: format!("{fi}-{fo}_batch{n}"),
            isa,
            algorithm: kern.algorithm(),
            work: if n == 1 {
                (4 * fi * fo) as u64
            } else {
                kern.flops(n)
            },
            bytes: n == 1,
            make: Box::new(move || {
                let w = values(fi * fo, 6);
                let mut packed = Aligned::zeroed(kern.packed_weight_len());
                kern.pack_weights(&w, &mut packed);
                let bias = values(fo, 7);
                let x = values(n * fi, 8);
                let mut y = Aligned::zeroed(n * fo);
                let mut scratch = Aligned::zeroed(kern.scratch_len());
                // Sweeps alternate as in a session's runs.
                let mut runs = 0u64;
                Box::new(move || {
                    runs += 1;
                    kern.run(
                        &packed,
                        Some(&bias),
                        black_box(&x),
                        n,
                        None,
                        &mut y,
                        &mut scratch,
                        Sweep::alternate(runs),
                    )
                })
            }),
        });
    }
}

/// The channels-last kernels (`kernels::nhwc`) on MobileNetV2's small-map shapes: its
/// 1×1 layers on 28-, 14- and 7-wide maps and its 3×3 depthwise layers there.
fn nhwc_cases(isa: Isa, out: &mut Vec<Case>) {
    for (name, cin, cout, hw) in [
        ("mobilenetv2/1x1_32-192_28", 32, 192, 28),
        ("mobilenetv2/1x1_96-576_14", 96, 576, 14),
        ("mobilenetv2/1x1_576-96_14", 576, 96, 14),
        ("mobilenetv2/1x1_160-960_7", 160, 960, 7),
        ("mobilenetv2/1x1_960-320_7", 960, 320, 7),
        ("mobilenetv2/1x1_320-1280_7", 320, 1280, 7),
    ] {
        let conv = Conv {
            in_channels: cin,
            out_channels: cout,
            kernel: [1, 1],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
            groups: 1,
            weight: 0,
            bias: Some(1),
            activation: Activation::Relu,
        };
        let kern = PointwiseNhwc::new(isa, &conv, hw * hw, true, 1).expect("1x1");
        out.push(Case {
            group: "nhwc",
            name: name.to_string(),
            isa,
            algorithm: "gemm1x1_nhwc",
            work: kern.flops(),
            bytes: false,
            make: Box::new(move || {
                let plain = ConvKernel::new(isa, &conv, [cin, hw, hw], [cout, hw, hw]);
                let mut packed = Aligned::zeroed(plain.packed_weight_len());
                plain.pack_weights(&values(cout * cin, 3), &mut packed);
                let mut wt = Aligned::zeroed(kern.weights_len());
                nhwc::panels_from_conv_gemm(cin, cout, &packed, &mut wt);
                let bias = values(cout, 4);
                let x = values(cin * hw * hw, 5);
                let mut y = Aligned::zeroed(cout * hw * hw);
                Box::new(move || kern.run(1, 1, &wt, Some(&bias), black_box(&x), None, &mut y))
            }),
        });
    }
    for (name, c, hw, stride) in [
        ("mobilenetv2/dw3x3_192_s1_28", 192, 28, 1),
        ("mobilenetv2/dw3x3_192_s2_28", 192, 28, 2),
        ("mobilenetv2/dw3x3_576_s1_14", 576, 14, 1),
        ("mobilenetv2/dw3x3_960_s1_7", 960, 7, 1),
    ] {
        let conv = Conv {
            in_channels: c,
            out_channels: c,
            kernel: [3, 3],
            stride: [stride, stride],
            dilation: [1, 1],
            pads: [1; 4],
            groups: c,
            weight: 0,
            bias: Some(1),
            activation: Activation::Clip { min: 0.0, max: 6.0 },
        };
        let o = (hw - 1) / stride + 1;
        let kern = DepthwiseNhwc::new(isa, &conv, [c, hw, hw], [c, o, o], 1).expect("dw");
        out.push(Case {
            group: "nhwc",
            name: name.to_string(),
            isa,
            algorithm: "dw3x3_nhwc",
            work: kern.flops(),
            bytes: false,
            make: Box::new(move || {
                let mut w = Aligned::zeroed(9 * c);
                kern.transpose_weights(&values(9 * c, 3), &mut w);
                let bias = values(c, 4);
                let x = values(c * hw * hw, 5);
                let mut y = Aligned::zeroed(c * o * o);
                Box::new(move || kern.run(1, 1, &w, Some(&bias), black_box(&x), &mut y))
            }),
        });
    }
}

fn all_cases() -> Vec<Case> {
    cnnrt::simd::set_flush_denormals();
    let mut v = Vec::new();
    for isa in Isa::supported() {
        gemm_cases(isa, &mut v);
        conv_cases(isa, &mut v);
        linear_cases(isa, &mut v);
        nhwc_cases(isa, &mut v);
    }
    v
}

fn bench_kernels(c: &mut Criterion<ThreadCpu>) {
    for case in all_cases() {
        let mut g = c.benchmark_group(case.group);
        g.throughput(if case.bytes {
            Throughput::Bytes(case.work)
        } else {
            Throughput::Elements(case.work)
        });
        let id = BenchmarkId::new(format!("{}/{}", case.name, case.algorithm), case.isa.name());
        let mut run: Option<Box<dyn FnMut()>> = None;
        let mut make = Some(case.make);
        g.bench_function(id, |b| {
            // Build the data only if criterion's filter selected this benchmark.
            let r = run.get_or_insert_with(|| (make.take().unwrap())());
            b.iter(&mut *r)
        });
        g.finish();
    }
}

/// `CNNRT_BENCH_TABLE=1 cargo bench --bench kernels [-- FILTER]`: instead of criterion,
/// the best thread-CPU time of many short trials per case, printed as the markdown table of docs/KERNELS.md.
fn table(filter: Option<&str>) {
    // Minimum over many short trials (~1 ms each, ~1.5 s in all): on a shared machine
    // the shortest trials are the ones no other process interrupted.
    let best = |run: &mut dyn FnMut()| -> f64 {
        timing::best(run, 1_000_000, Duration::from_millis(1500))
    };
    // Each tier's register-only FMA peak on this core, measured first.
    let peaks: Vec<(Isa, f64)> = Isa::supported()
        .into_iter()
        .map(|isa| (isa, cnnrt::kernels::peak::fma_peak_gflops(isa, 20)))
        .collect();
    for (isa, p) in &peaks {
        println!("measured register-only FMA peak of this core, {isa}: {p:.1} GFLOP/s");
    }
    println!();
    let peak_of = |isa: Isa| {
        peaks
            .iter()
            .find(|(i, _)| *i == isa)
            .map_or(f64::NAN, |p| p.1)
    };
    println!(
        "| kernel | shape | algorithm | tier | time | GFLOP/s (GB/s) | % of the tier's peak |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in all_cases() {
        if filter.is_some_and(|f| !case.id().contains(f)) {
            continue;
        }
        let mut run = (case.make)();
        let ns = best(&mut *run);
        let rate = case.work as f64 / ns;
        let (unit, pct) = if case.bytes {
            ("GB/s", "—".to_string())
        } else {
            ("", format!("{:.0}%", 100.0 * rate / peak_of(case.isa)))
        };
        println!(
            "| {} | {} | {} | {} | {:.3} ms | {:.1} {unit} | {pct} |",
            case.group,
            case.name,
            case.algorithm,
            case.isa.name(),
            ns / 1e6,
            rate
        );
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_peak, bench_kernels
}

fn main() {
    if std::env::var_os("CNNRT_BENCH_TABLE").is_some() {
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        table(filter.as_deref());
    } else {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
