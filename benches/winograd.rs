//! Winograd 3×3 stride-1 convolution next to `im2col_gemm` on the same layers, one thread,
//! every ISA tier this CPU supports.
//!
//! Throughput counts the FLOPs of the *direct* convolution (`2·cout·cin·9·oh·ow`) for
//! every algorithm, so criterion's "Gelem/s" reads as effective GFLOP/s and can exceed the
//! FP32 peak (117 GFLOP/s for one Zen 4 core). Before the timings, the relative error
//! (`max|diff| / max|ref|` against the f64 reference, N(0,1)-like data) of each layer is
//! printed (skip it with `WINO_NO_ERR=1`; it runs the slow reference).
//!
//! `cargo bench --bench winograd` (all), or with a filter: `cargo bench --bench winograd --
//! 64-64_56`.

use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::winograd::{measure_relative_error, WinogradKernel, WinogradVariant};
use cnnrt::simd::Isa;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

// 64-byte aligned buffers for the kernels, shared with the examples.
#[path = "../examples/common/aligned.rs"]
mod aligned;
use aligned::Aligned;

/// Approximately N(0, 1): the sum of four uniforms on [-√3, √3], halved.
fn normal(len: usize, seed: u64) -> Aligned {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uni = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    (0..len)
        .map(|_| (uni() + uni() + uni() + uni()) * 0.5 * 3f32.sqrt())
        .collect::<Vec<f32>>()
        .into()
}

struct Layer {
    name: &'static str,
    c: usize,
    hw: usize,
}

const LAYERS: &[Layer] = &[
    Layer {
        name: "conv3x3_stress/64-64_56",
        c: 64,
        hw: 56,
    },
    Layer {
        name: "resnet18/128-128_28",
        c: 128,
        hw: 28,
    },
    Layer {
        name: "resnet18/256-256_14",
        c: 256,
        hw: 14,
    },
    Layer {
        name: "resnet18/512-512_7",
        c: 512,
        hw: 7,
    },
];

fn conv(c: usize, act: Activation) -> Conv {
    Conv {
        in_channels: c,
        out_channels: c,
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [1; 4],
        groups: 1,
        weight: 0,
        bias: None,
        activation: act,
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn bench(c: &mut Criterion) {
    cnnrt::simd::set_flush_denormals();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let mut g = c.benchmark_group("winograd");
    for l in LAYERS {
        // The ResNet-18 64→64 layer is the same shape as conv3x3_stress's (with ReLU).
        let cv = conv(l.c, Activation::Relu);
        let shape = [l.c, l.hw, l.hw];
        let w = normal(l.c * l.c * 9, 1);
        let b = normal(l.c, 2);
        let x = normal(l.c * l.hw * l.hw, 3);
        let flops = 2 * (l.c * l.c * 9 * l.hw * l.hw) as u64;
        g.throughput(Throughput::Elements(flops));
        if wanted(l.name) && std::env::var_os("WINO_NO_ERR").is_none() {
            for v in WinogradVariant::ALL
                .into_iter()
                .filter(|v| v.kernel_size() == 3)
            {
                let e = measure_relative_error(
                    Isa::select(None),
                    &cv,
                    shape,
                    shape,
                    v,
                    &w,
                    Some(&b),
                    &x,
                );
                println!("{} {}: relative error {e:.2e}", l.name, v.algorithm());
            }
        }
        for isa in Isa::supported() {
            let mut out = Aligned::zeroed(l.c * l.hw * l.hw);
            for v in WinogradVariant::ALL
                .into_iter()
                .filter(|v| v.kernel_size() == 3)
            {
                let k = WinogradKernel::new(isa, &cv, shape, shape, v).unwrap();
                let mut packed = Aligned::zeroed(k.packed_weight_len());
                k.pack_weights(&w, &mut packed);
                let mut scratch = Aligned::zeroed(k.scratch_len());
                g.bench_with_input(
                    BenchmarkId::new(format!("{}/{}", l.name, v.algorithm()), isa),
                    &isa,
                    |bch, _| {
                        bch.iter(|| {
                            k.run(
                                &packed,
                                Some(&b),
                                black_box(&x),
                                None,
                                &mut out,
                                &mut scratch,
                            )
                        })
                    },
                );
            }
            let k = ConvKernel::with_algorithm(isa, &cv, shape, shape, "im2col_gemm");
            let mut packed = Aligned::zeroed(k.packed_weight_len());
            k.pack_weights(&w, &mut packed);
            let mut scratch = Aligned::zeroed(k.scratch_len());
            g.bench_with_input(
                BenchmarkId::new(format!("{}/im2col_gemm", l.name), isa),
                &isa,
                |bch, _| {
                    bch.iter(|| {
                        k.run(
                            &packed,
                            Some(&b),
                            black_box(&x),
                            None,
                            &mut out,
                            &mut scratch,
                        )
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
