//! MobileNetV2's inverted-residual blocks as fused block kernels (`kernels::fused`),
//! timed alone on one thread on the planar and the channels-last band path where the
//! block can take both: the best thread-CPU time over many short trials.
//!
//! `cargo run --release --example fused_blocks`; `CNNRT_MAX_ISA` caps the tier.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::fused::{BlockKernel, BlockWeights, DEFAULT_BAND_BYTES};
use cnnrt::simd::Isa;

#[cfg(target_os = "linux")]
fn thread_cpu_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clk: i32, tp: *mut Timespec) -> i32;
    }
    let mut t = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { clock_gettime(3, &mut t) };
    assert_eq!(rc, 0);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Best time of one run in ns: trials of about 2 ms each, for about 0.6 s.
fn best(run: &mut dyn FnMut()) -> f64 {
    run();
    let t0 = thread_cpu_ns();
    run();
    let one = (thread_cpu_ns() - t0).max(1);
    let reps = (2_000_000 / one).clamp(1, 10_000);
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut trials = 0;
    while trials < 10 || (start.elapsed() < Duration::from_millis(600) && trials < 1000) {
        let t = thread_cpu_ns();
        for _ in 0..reps {
            run();
        }
        best = best.min((thread_cpu_ns() - t) as f64 / reps as f64);
        trials += 1;
    }
    best
}

fn conv(cin: usize, cout: usize, k: usize, s: usize, groups: usize, act: Activation) -> Conv {
    let p = k / 2;
    Conv {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [s, s],
        dilation: [1, 1],
        pads: [p; 4],
        groups,
        weight: 0,
        bias: None,
        activation: act,
    }
}

fn main() {
    let isa = Isa::select(None);
    let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
    // (name, cin, expansion kernel / stride, cexp, dw stride, cout, input side)
    let blocks = [
        ("features.0-1 (stem)", 3, 3, 2, 32, 1, 16, 224),
        ("features.2", 16, 1, 1, 96, 2, 24, 112),
        ("features.3", 24, 1, 1, 144, 1, 24, 56),
        ("features.4", 24, 1, 1, 144, 2, 32, 56),
        ("features.5", 32, 1, 1, 192, 1, 32, 28),
        ("features.8", 64, 1, 1, 384, 1, 64, 14),
        ("features.12", 96, 1, 1, 576, 1, 96, 14),
        ("features.15", 160, 1, 1, 960, 1, 160, 7),
    ];
    println!("tier {isa}, 1 thread, best of trials; µs");
    println!("| block | planar | channels-last | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, cin, ek, es, cexp, ds, cout, side) in blocks {
        let e = conv(cin, cexp, ek, es, 1, relu6);
        let d = conv(cexp, cexp, 3, ds, cexp, relu6);
        let p = conv(cexp, cout, 1, 1, 1, Activation::Identity);
        let eside = (side + 2 * (ek / 2) - ek) / es + 1;
        let oside = (eside + 2 - 3) / ds + 1;
        let ekern = ConvKernel::new(isa, &e, [cin, side, side], [cexp, eside, eside]);
        let pkern = ConvKernel::new(isa, &p, [cexp, oside, oside], [cout, oside, oside]);
        let mut ep = vec![0.0; ekern.packed_weight_len()];
        ekern.pack_weights(&values(cexp * cin * ek * ek, 1), &mut ep);
        let mut pp = vec![0.0; pkern.packed_weight_len()];
        pkern.pack_weights(&values(cout * cexp, 2), &mut pp);
        let dw = values(cexp * 9, 3);
        let (eb, db, pb) = (values(cexp, 4), values(cexp, 5), values(cout, 6));
        let x = values(cin * side * side, 7);
        let res = (cin == cout && ds == 1).then(|| values(cout * oside * oside, 8));
        let Some(plan) = BlockKernel::new(
            isa,
            &e,
            &d,
            &p,
            [cin, side, side],
            [cout, oside, oside],
            1,
            DEFAULT_BAND_BYTES,
        ) else {
            println!("| {name} | not fused | | |");
            continue;
        };
        let mut times = Vec::new();
        for on in [false, true] {
            let Some(k) = plan.clone().with_channels_last(on) else {
                times.push(f64::NAN);
                continue;
            };
            let mut weights = BlockWeights {
                expand: &ep,
                expand_bias: Some(&eb),
                depthwise: &dw,
                depthwise_bias: Some(&db),
                project: &pp,
                project_bias: Some(&pb),
                channels_last: None,
            };
            let clw = k.channels_last_weights(&weights);
            weights.channels_last = clw.as_deref();
            let mut out = vec![0.0; cout * oside * oside];
            let mut scratch = vec![0.0; k.scratch_len()];
            let t = best(&mut || {
                k.run(
                    1,
                    1,
                    &weights,
                    black_box(&x),
                    res.as_deref(),
                    &mut out,
                    &mut scratch,
                );
                black_box(&out);
            });
            times.push(t / 1e3);
        }
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} |",
            times[0],
            times[1],
            times[1] / times[0]
        );
    }
}
