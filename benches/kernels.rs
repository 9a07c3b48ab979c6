//! GEMM / convolution / linear kernels, one thread, every ISA tier this CPU supports.
//!
//! Throughput is reported in elements/s where one element is one FLOP (2 per
//! multiply-add), so criterion's "Gelem/s" reads as GFLOP/s; the linear layers at batch 1
//! are memory-bound and count bytes of weights instead (GB/s).
//!
//! `cargo bench --bench kernels` (all), or with a filter: `cargo bench --bench kernels --
//! resnet18`. Peak of one Zen 4 core: 117 GFLOP/s (shared/design/toolchain.md §2).

use cnnrt::graph::{Activation, Conv, Linear};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::gemm::{self, BMode, Epilogue, Gemm};
use cnnrt::kernels::linear::LinearKernel;
use cnnrt::simd::Isa;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
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

const fn cs(name: &'static str, cin: usize, cout: usize, k: usize, stride: usize, pad: usize, hw: usize) -> ConvShape {
    ConvShape { name, cin, cout, k, stride, pad, hw }
}

const CONVS: &[ConvShape] = &[
    // ResNet-18
    cs("resnet18/stem_7x7s2_3-64_224", 3, 64, 7, 2, 3, 224),
    cs("resnet18/3x3_64-64_56", 64, 64, 3, 1, 1, 56),
    cs("resnet18/3x3_128-128_28", 128, 128, 3, 1, 1, 28),
    cs("resnet18/3x3_256-256_14", 256, 256, 3, 1, 1, 14),
    cs("resnet18/3x3_512-512_7", 512, 512, 3, 1, 1, 7),
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
];

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20)
}

fn bench_gemm(c: &mut Criterion) {
    cnnrt::simd::set_flush_denormals();
    let mut g = c.benchmark_group("gemm");
    for isa in Isa::supported() {
        for (m, n, k) in [(512, 512, 512)] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let mut ap = vec![0.0; m * k];
            gemm::pack_a(m, k, &a, k, &mut ap);
            let plan = Gemm::with_mode(isa, m, n, k, BMode::Packed);
            let mut scratch = vec![0.0; plan.scratch_len()];
            let mut cm = vec![0.0; m * n];
            g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            g.bench_function(BenchmarkId::new(format!("{m}x{n}x{k}"), isa.name()), |bch| {
                bch.iter(|| plan.run(&ap, black_box(&b), n, &mut cm, n, &Epilogue::default(), &mut scratch))
            });
        }
    }
    g.finish();
}

fn bench_conv(c: &mut Criterion) {
    cnnrt::simd::set_flush_denormals();
    let mut g = c.benchmark_group("conv");
    for isa in Isa::supported() {
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
            let w = values(s.cout * s.cin * s.k * s.k, 3);
            let mut packed = vec![0.0; kern.packed_weight_len()];
            kern.pack_weights(&w, &mut packed);
            let bias = values(s.cout, 4);
            let x = values(s.cin * s.hw * s.hw, 5);
            let mut out = vec![0.0; s.cout * o * o];
            let mut scratch = vec![0.0; kern.scratch_len()];
            g.throughput(Throughput::Elements(kern.flops()));
            g.bench_function(BenchmarkId::new(format!("{}/{}", s.name, kern.algorithm()), isa.name()), |bch| {
                bch.iter(|| kern.run(&packed, Some(&bias), black_box(&x), None, &mut out, &mut scratch))
            });
        }
    }
    g.finish();
}

fn bench_linear(c: &mut Criterion) {
    cnnrt::simd::set_flush_denormals();
    let mut g = c.benchmark_group("linear");
    for isa in Isa::supported() {
        for (fi, fo, n) in [(512, 1000, 1), (1280, 1000, 1), (4096, 4096, 1), (1280, 1000, 16)] {
            let l = Linear { in_features: fi, out_features: fo, weight: 0, bias: Some(1), activation: Activation::Identity };
            let kern = LinearKernel::new(isa, &l, n);
            let w = values(fi * fo, 6);
            let mut packed = vec![0.0; kern.packed_weight_len()];
            kern.pack_weights(&w, &mut packed);
            let bias = values(fo, 7);
            let x = values(n * fi, 8);
            let mut out = vec![0.0; n * fo];
            let mut scratch = vec![0.0; kern.scratch_len()];
            if n == 1 {
                g.throughput(Throughput::Bytes((4 * fi * fo) as u64));
            } else {
                g.throughput(Throughput::Elements(kern.flops(n)));
            }
            g.bench_function(BenchmarkId::new(format!("{fi}-{fo}_batch{n}"), isa.name()), |bch| {
                bch.iter(|| kern.run(&packed, Some(&bias), black_box(&x), n, None, &mut out, &mut scratch))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_gemm, bench_conv, bench_linear
}
criterion_main!(benches);
