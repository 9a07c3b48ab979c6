//! Depthwise, pooling and element-wise kernels on the shapes of MobileNetV2 and ResNet,
//! one thread, every ISA tier this CPU has.
//!
//! `cargo bench --bench small_kernels [-- FILTER]`. Throughput is bytes read + written
//! (decimal GB/s); each benchmark's id says its shape and tier, and the bench prints the
//! FLOP count of each case once so GFLOP/s = FLOP / time.

use std::hint::black_box;
use std::time::Duration;

use cnnrt::graph::{Activation, Conv, Pool, PoolKind};
use cnnrt::kernels::depthwise::DepthwiseKernel;
use cnnrt::kernels::elementwise::{activation, channel_affine};
use cnnrt::kernels::pool::{global_pool, PoolKernel};
use cnnrt::simd::{set_flush_denormals, Isa};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20);
    g
}

fn depthwise(c: &mut Criterion) {
    set_flush_denormals();
    for (stride, shapes) in [(1usize, &[(32usize, 112usize), (144, 56), (192, 28), (576, 14), (960, 7)][..]), (2, &[(96, 112), (144, 56), (192, 28), (576, 14)][..])] {
        let mut g = group(c, &format!("dw3x3_s{stride}"));
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
            let (x, w, b) = (data(ch * hw * hw, 1), data(ch * 9, 2), data(ch, 3));
            let mut out = vec![0.0; ch * o * o];
            let bytes = 4 * (x.len() + out.len() + w.len() + b.len());
            println!("dw3x3_s{stride} {ch}x{hw}x{hw}: {} FLOP, {bytes} bytes", 18 * ch * o * o);
            g.throughput(Throughput::BytesDecimal(bytes as u64));
            for isa in Isa::supported() {
                let k = DepthwiseKernel::new(isa, &conv, [ch, hw, hw], [ch, o, o]).unwrap();
                g.bench_function(format!("{ch}x{hw}x{hw}/{isa}"), |bch| bch.iter(|| k.run(black_box(&w), Some(&b), black_box(&x), None, &mut out)));
            }
        }
        g.finish();
    }
}

fn pools(c: &mut Criterion) {
    set_flush_denormals();
    let mut g = group(c, "maxpool3x3_s2");
    let p = Pool { kind: PoolKind::Max, kernel: [3, 3], stride: [2, 2], dilation: [1, 1], pads: [1, 1, 1, 1], ceil_mode: false, count_include_pad: false };
    let x = data(64 * 112 * 112, 4);
    let mut out = vec![0.0; 64 * 56 * 56];
    println!("maxpool3x3_s2 64x112x112: {} compares", 8 * out.len());
    g.throughput(Throughput::BytesDecimal(4 * (x.len() + out.len()) as u64));
    for isa in Isa::supported() {
        let k = PoolKernel::new(isa, &p, [64, 112, 112], [64, 56, 56]).unwrap();
        g.bench_function(format!("64x112x112/{isa}"), |b| b.iter(|| k.run(black_box(&x), &mut out)));
    }
    g.finish();

    let mut g = group(c, "global_avgpool");
    let x = data(512 * 49, 5);
    let mut out = vec![0.0; 512];
    println!("global_avgpool 512x7x7: {} adds", x.len());
    g.throughput(Throughput::BytesDecimal(4 * (x.len() + out.len()) as u64));
    for isa in Isa::supported() {
        g.bench_function(format!("512x7x7/{isa}"), |b| b.iter(|| global_pool(isa, PoolKind::Average, black_box(&x), 512, 49, &mut out)));
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    set_flush_denormals();
    let shape = [64usize, 56, 56];
    let n: usize = shape.iter().product();
    let x = data(n, 6);
    let (scale, shift) = (data(64, 7), data(64, 8));
    let mut out = vec![0.0; n];
    println!("relu / affine+relu 64x56x56: {n} / {} FLOP", 3 * n);
    let mut g = group(c, "relu");
    g.throughput(Throughput::BytesDecimal(8 * n as u64));
    for isa in Isa::supported() {
        g.bench_function(format!("64x56x56/{isa}"), |b| b.iter(|| activation(isa, black_box(&x), Activation::Relu, &mut out)));
    }
    g.finish();
    let mut g = group(c, "affine_relu");
    g.throughput(Throughput::BytesDecimal(8 * n as u64));
    for isa in Isa::supported() {
        g.bench_function(format!("64x56x56/{isa}"), |b| {
            b.iter(|| channel_affine(isa, black_box(&x), 1, &shape, Some(&scale), Some(&shift), Activation::Relu, &mut out))
        });
    }
    g.finish();
}

criterion_group!(benches, depthwise, pools, elementwise);
criterion_main!(benches);
