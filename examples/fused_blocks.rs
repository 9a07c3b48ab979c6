//! MobileNetV2's inverted-residual blocks as fused block kernels (`kernels::fused`),
//! timed alone on one thread on the planar and the channels-last band path where the
//! block can take both: the best thread-CPU time over many short trials.
//!
//! `cargo run --release --example fused_blocks`; `CNNRT_MAX_ISA` caps the tier.

use std::hint::black_box;
use std::time::Duration;

use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::fused::{BlockKernel, BlockWeights, DEFAULT_BAND_BYTES};
use cnnrt::simd::Isa;

#[path = "common/timing.rs"]
mod timing;
use timing::values;

#[path = "common/aligned.rs"]
mod aligned;
use aligned::Aligned;

/// [`values`] in a 64-byte aligned buffer, for the data the kernels read.
fn aligned_values(len: usize, seed: u32) -> Aligned {
    values(len, seed).into()
}

/// Best time of one run in ns: trials of about 2 ms each, for about 0.6 s.
fn best(run: &mut dyn FnMut()) -> f64 {
    timing::best(run, 2_000_000, Duration::from_millis(600))
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
        let mut ep = Aligned::zeroed(ekern.packed_weight_len());
        ekern.pack_weights(&values(cexp * cin * ek * ek, 1), &mut ep);
        let mut pp = Aligned::zeroed(pkern.packed_weight_len());
        pkern.pack_weights(&values(cout * cexp, 2), &mut pp);
        let dw = aligned_values(cexp * 9, 3);
        let (eb, db, pb) = (
            aligned_values(cexp, 4),
            aligned_values(cexp, 5),
            aligned_values(cout, 6),
        );
        let x = aligned_values(cin * side * side, 7);
        let res = (cin == cout && ds == 1).then(|| aligned_values(cout * oside * oside, 8));
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
            let clw = k.channels_last_weights(&weights).map(Aligned::from);
            weights.channels_last = clw.as_deref();
            let mut out = Aligned::zeroed(cout * oside * oside);
            let mut scratch = Aligned::zeroed(k.scratch_len());
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
