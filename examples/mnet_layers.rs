//! Every layer of torchvision MobileNetV2 (batch 1) as a standalone kernel, timed alone:
//! the best thread-CPU time over many short trials, so that other processes on a shared
//! machine barely count. Prints one line per layer and the sum per kernel family.
//!
//! `cargo run --release --example mnet_layers [-- FILTER]`; `CNNRT_MAX_ISA` caps the tier,
//! `MNET_NHWC=1` times the channels-last kernels instead of the planar ones.
//! Inputs stay in cache between trials, so layers whose data exceed L2 read faster here
//! than inside the model, where the previous layer just wrote them.

use std::hint::black_box;
use std::time::Duration;

use cnnrt::graph::{Activation, Conv, Linear};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::depthwise::DepthwiseKernel;
use cnnrt::kernels::linear::{LinearKernel, Sweep};
use cnnrt::kernels::nhwc::{DepthwiseNhwc, PointwiseNhwc};
use cnnrt::simd::Isa;

#[path = "common/timing.rs"]
mod timing;
use timing::{thread_cpu_ns, values};

#[path = "common/aligned.rs"]
mod aligned;
use aligned::Aligned;

/// [`values`] in a 64-byte aligned buffer, for the data the kernels read.
fn aligned_values(len: usize, seed: u32) -> Aligned {
    values(len, seed).into()
}

/// Best time of one run in ns: many trials of about 0.5 ms each, for about 0.4 s.
fn best(run: &mut dyn FnMut()) -> f64 {
    timing::best(run, 500_000, Duration::from_millis(400))
}

struct Layer {
    name: String,
    family: &'static str,
    flops: u64,
    run: Box<dyn FnMut()>,
}

/// `MNET_NHWC=1`: the 1×1 stride-1 and depthwise layers through the channels-last
/// kernels (`kernels::nhwc`) instead of the planar ones.
fn nhwc() -> bool {
    std::env::var("MNET_NHWC").is_ok_and(|v| v == "1")
}

fn relu6() -> Activation {
    Activation::Clip { min: 0.0, max: 6.0 }
}

#[allow(clippy::too_many_arguments)]
fn conv(
    isa: Isa,
    name: String,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    hw: usize,
    act: Activation,
    residual: bool,
) -> Layer {
    let pad = k / 2;
    let o = (hw + 2 * pad - k) / stride + 1;
    let c = Conv {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride, stride],
        dilation: [1, 1],
        pads: [pad; 4],
        groups: 1,
        weight: 0,
        bias: Some(1),
        activation: act,
    };
    if k == 1 && stride == 1 && nhwc() {
        let kern = PointwiseNhwc::new(isa, &c, hw * hw, true, 1).unwrap();
        let mut packed = Aligned::zeroed(cout * cin);
        let plain = ConvKernel::new(isa, &c, [cin, hw, hw], [cout, o, o]);
        plain.pack_weights(&values(cout * cin, 3), &mut packed);
        let mut wt = Aligned::zeroed(kern.weights_len());
        cnnrt::kernels::nhwc::panels_from_conv_gemm(cin, cout, &packed, &mut wt);
        let bias = aligned_values(cout, 4);
        let x = aligned_values(cin * hw * hw, 5);
        let res = residual.then(|| aligned_values(cout * o * o, 6));
        let mut y = Aligned::zeroed(cout * o * o);
        return Layer {
            name,
            family: "gemm1x1_nhwc",
            flops: kern.flops(),
            run: Box::new(move || {
                kern.run(
                    1,
                    1,
                    &wt,
                    Some(&bias),
                    black_box(&x),
                    res.as_deref(),
                    &mut y,
                )
            }),
        };
    }
    let kern = match std::env::var("MNET_ALGO") {
        Ok(a) if k == 1 => ConvKernel::with_algorithm(isa, &c, [cin, hw, hw], [cout, o, o], &a),
        _ => ConvKernel::new(isa, &c, [cin, hw, hw], [cout, o, o]),
    };
    let w = values(cout * cin * k * k, 3);
    let mut packed = Aligned::zeroed(kern.packed_weight_len());
    kern.pack_weights(&w, &mut packed);
    let bias = aligned_values(cout, 4);
    let x = aligned_values(cin * hw * hw, 5);
    let res = residual.then(|| aligned_values(cout * o * o, 6));
    let mut y = Aligned::zeroed(cout * o * o);
    let mut scratch = Aligned::zeroed(kern.scratch_len());
    Layer {
        name,
        family: kern.algorithm(),
        flops: kern.flops(),
        run: Box::new(move || {
            kern.run(
                &packed,
                Some(&bias),
                black_box(&x),
                res.as_deref(),
                &mut y,
                &mut scratch,
            )
        }),
    }
}

fn dw(isa: Isa, name: String, ch: usize, stride: usize, hw: usize) -> Layer {
    let o = (hw - 1) / stride + 1;
    let c = Conv {
        in_channels: ch,
        out_channels: ch,
        kernel: [3, 3],
        stride: [stride, stride],
        dilation: [1, 1],
        pads: [1; 4],
        groups: ch,
        weight: 0,
        bias: Some(1),
        activation: relu6(),
    };
    if nhwc() {
        let kern = DepthwiseNhwc::new(isa, &c, [ch, hw, hw], [ch, o, o], 1).unwrap();
        let (x, b) = (aligned_values(ch * hw * hw, 1), aligned_values(ch, 3));
        let mut w = Aligned::zeroed(ch * 9);
        kern.transpose_weights(&values(ch * 9, 2), &mut w);
        let mut y = Aligned::zeroed(ch * o * o);
        return Layer {
            name,
            family: "dw3x3_nhwc",
            flops: (18 * ch * o * o) as u64,
            run: Box::new(move || kern.run(1, 1, black_box(&w), Some(&b), black_box(&x), &mut y)),
        };
    }
    let kern = DepthwiseKernel::new(isa, &c, [ch, hw, hw], [ch, o, o]).unwrap();
    let (x, w, b) = (
        aligned_values(ch * hw * hw, 1),
        aligned_values(ch * 9, 2),
        aligned_values(ch, 3),
    );
    let mut y = Aligned::zeroed(ch * o * o);
    Layer {
        name,
        family: kern.algorithm(),
        flops: (18 * ch * o * o) as u64,
        run: Box::new(move || kern.run(black_box(&w), Some(&b), black_box(&x), None, &mut y)),
    }
}

fn layers(isa: Isa) -> Vec<Layer> {
    let mut v = vec![conv(
        isa,
        "features.0".into(),
        3,
        32,
        3,
        2,
        224,
        relu6(),
        false,
    )];
    // (expansion t, output channels c, repeats n, first stride s)
    let cfg = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let (mut cin, mut hw, mut idx) = (32usize, 112usize, 1);
    for (t, c, n, s) in cfg {
        for r in 0..n {
            let stride = if r == 0 { s } else { 1 };
            let hidden = cin * t;
            let f = format!("features.{idx}");
            if t != 1 {
                v.push(conv(
                    isa,
                    format!("{f}.expand {cin}->{hidden} @{hw}"),
                    cin,
                    hidden,
                    1,
                    1,
                    hw,
                    relu6(),
                    false,
                ));
            }
            v.push(dw(
                isa,
                format!("{f}.dw {hidden} s{stride} @{hw}"),
                hidden,
                stride,
                hw,
            ));
            let ohw = (hw - 1) / stride + 1;
            let res = stride == 1 && cin == c;
            v.push(conv(
                isa,
                format!("{f}.project {hidden}->{c} @{ohw}"),
                hidden,
                c,
                1,
                1,
                ohw,
                Activation::Identity,
                res,
            ));
            cin = c;
            hw = ohw;
            idx += 1;
        }
    }
    v.push(conv(
        isa,
        format!("features.18 {cin}->1280 @{hw}"),
        cin,
        1280,
        1,
        1,
        hw,
        relu6(),
        false,
    ));
    let l = Linear {
        in_features: 1280,
        out_features: 1000,
        weight: 0,
        bias: Some(1),
        activation: Activation::Identity,
    };
    let kern = LinearKernel::new(isa, &l, 1);
    let mut packed = Aligned::zeroed(kern.packed_weight_len());
    kern.pack_weights(&values(1280 * 1000, 7), &mut packed);
    let (bias, x) = (aligned_values(1000, 8), aligned_values(1280, 9));
    let mut y = Aligned::zeroed(1000);
    v.push(Layer {
        name: "classifier 1280->1000".into(),
        family: kern.algorithm(),
        flops: kern.flops(1),
        run: Box::new(move || {
            kern.run(
                &packed,
                Some(&bias),
                black_box(&x),
                1,
                None,
                &mut y,
                &mut [],
                Sweep::Forward,
            )
        }),
    });
    v
}

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

fn isa_of() -> Isa {
    Isa::select(None)
}

fn main() {
    cnnrt::simd::set_flush_denormals();
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.is_supported() {
        // SAFETY: AVX2 and FMA are present (checked just above).
        let ns = best(&mut || {
            black_box(unsafe { fma_peak_avx2(black_box(1 << 14)) });
        });
        println!(
            "register-only FMA peak: {:.1} GFLOP/s",
            (1u64 << 14) as f64 * 12.0 * 16.0 / ns
        );
    }
    let filter = std::env::args().nth(1);
    if let Ok(path) = std::env::var("MNET_MODEL") {
        // Whole model, one thread: thread-CPU time per run, median and minimum.
        let iters: usize = std::env::var("MNET_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let m = cnnrt::Model::open(&path).unwrap();
        let mut session = m
            .session(cnnrt::SessionOptions {
                max_batch: 1,
                max_isa: None,
                threads: cnnrt::Threads::Caller,
                ..Default::default()
            })
            .unwrap();
        let input = values(m.input_shape().iter().product(), 11);
        for _ in 0..5 {
            session.run(&input, 1).unwrap();
        }
        let mut t: Vec<f64> = (0..iters)
            .map(|_| {
                let t0 = thread_cpu_ns();
                session.run(black_box(&input), 1).unwrap();
                (thread_cpu_ns() - t0) as f64 / 1e6
            })
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        println!(
            "model {path}: thread-CPU ms per run: min {:.3}, p25 {:.3}, median {:.3} over {iters}",
            t[0],
            t[iters / 4],
            t[iters / 2]
        );
        return;
    }
    if let Ok(spec) = std::env::var("MNET_DW") {
        // "c,hw,stride;..." depthwise 3x3 planes, data in cache.
        for t in spec.split(';') {
            let d: Vec<usize> = t.split(',').map(|x| x.parse().unwrap()).collect();
            let mut l = dw(isa_of(), format!("dw {t}"), d[0], d[2], d[1]);
            let ns = best(&mut *l.run);
            println!(
                "dw c{} hw{} s{}: {:.0} ns, {:.1} ns/channel, {:.2} ns per output vector of 8",
                d[0],
                d[1],
                d[2],
                ns,
                ns / d[0] as f64,
                ns / (d[0] * (d[1].div_ceil(d[2])).pow(2)) as f64 * 8.0
            );
        }
        return;
    }
    if let Ok(spec) = std::env::var("MNET_GEMM") {
        // "m,n,k;m,n,k;..." packed-B GEMMs with data in cache.
        use cnnrt::kernels::gemm::{pack_a, BMode, Epilogue, Gemm};
        for t in spec.split(';') {
            let d: Vec<usize> = t.split(',').map(|x| x.parse().unwrap()).collect();
            let (m, n, k) = (d[0], d[1], d[2]);
            let mut ap = Aligned::zeroed(m * k);
            pack_a(m, k, &values(m * k, 1), k, &mut ap);
            let b = aligned_values(k * n, 2);
            let plan = Gemm::with_mode(Isa::select(None), m, n, k, BMode::Packed);
            let mut scratch = Aligned::zeroed(plan.scratch_len());
            let mut c = Aligned::zeroed(m * n);
            let ns = best(&mut || {
                plan.run(
                    &ap,
                    black_box(&b),
                    n,
                    &mut c,
                    n,
                    &Epilogue::default(),
                    &mut scratch,
                )
            });
            println!(
                "gemm {m}x{n}x{k}: {:.1} GFLOP/s",
                2.0 * (m * n * k) as f64 / ns
            );
        }
        return;
    }
    let isa = Isa::select(None);
    // "% of peak" against this core's register-only FMA loop on the tier that runs.
    let peak = cnnrt::kernels::peak::fma_peak_gflops(isa, 20);
    println!("tier {isa}, FMA peak {peak:.1} GFLOP/s; best thread-CPU time per layer\n");
    let mut fam: Vec<(&'static str, f64, u64)> = Vec::new();
    let mut total = 0.0;
    for mut l in layers(isa) {
        if filter.as_deref().is_some_and(|f| !l.name.contains(f)) {
            continue;
        }
        let ns = best(&mut *l.run);
        let gf = l.flops as f64 / ns;
        println!(
            "{:<36} {:<16} {:8.4} ms {:7.1} GFLOP/s {:5.1}%",
            l.name,
            l.family,
            ns / 1e6,
            gf,
            100.0 * gf / peak
        );
        total += ns;
        match fam.iter_mut().find(|f| f.0 == l.family) {
            Some(f) => {
                f.1 += ns;
                f.2 += l.flops;
            }
            None => fam.push((l.family, ns, l.flops)),
        }
    }
    println!();
    for (f, ns, flops) in fam {
        let gf = flops as f64 / ns;
        println!(
            "{f:<16} {:8.4} ms {:7.1} GFLOP/s {:5.1}%",
            ns / 1e6,
            gf,
            100.0 * gf / peak
        );
    }
    println!("{:<16} {:8.4} ms", "total", total / 1e6);
}
