//! Winograd F(4x4,5x5) (`WinogradF4x4K5`), with and without the 2×2 max pool after it,
//! against `kernels::reference::conv2d` (+ `reference::pool`) on every ISA tier this CPU
//! supports.
//!
//! Tolerance, per output element of one sample (as `prop_winograd`):
//! `|got − ref| <= ε · sqrt(cin) · S_max · 1.5 + 1e-6`, `S_max` the largest over the
//! sample's convolution outputs of `Σ|x·w| + |bias|`, 1.5 the steepest activation's slope.
//! `ε` = 2e-5: F(4x4,5x5)'s 8-point transforms amplify rounding more than F(4x4,3x3)'s
//! (whose `ε` is 1e-5); `WINO_REPORT=1 cargo test --release --test winograd_k5 --
//! --nocapture` prints the largest `|err| / (sqrt(cin) · S_max)` seen (`K5_CASES=1500`: 4.2e-6,
//! 4.8× inside the bound, over the three tiers of an AMD EPYC). A max pool moves
//! no error bound (it selects one of four values, each within the bound).

mod common;
use cnnrt::graph::{Activation, Conv, Pool, PoolKind};
use cnnrt::kernels::reference;
use cnnrt::kernels::winograd::WinogradF4x4K5;
use cnnrt::simd::Isa;
use common::{abs, activations, values};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::Mutex;

const EPS: f64 = 2e-5;

static WORST: Mutex<f64> = Mutex::new(0.0);

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    pads: [usize; 4],
    bias: bool,
    pool: bool,
    act: Activation,
    threads: usize,
    seed: u64,
}

impl Case {
    fn conv(&self) -> Conv {
        Conv {
            in_channels: self.cin,
            out_channels: self.cout,
            kernel: [5, 5],
            stride: [1, 1],
            dilation: [1, 1],
            pads: self.pads,
            groups: 1,
            weight: 0,
            bias: None,
            activation: self.act,
        }
    }
    /// The convolution's output size.
    fn conv_hw(&self) -> (usize, usize) {
        (
            self.h + self.pads[0] + self.pads[2] - 4,
            self.w + self.pads[1] + self.pads[3] - 4,
        )
    }
    fn out_shape(&self) -> [usize; 3] {
        let (oh, ow) = self.conv_hw();
        if self.pool {
            [self.cout, oh / 2, ow / 2]
        } else {
            [self.cout, oh, ow]
        }
    }
}

fn cases() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, 1usize..=40, 1usize..=60),
        (1usize..=22, 1usize..=22),
        [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        (any::<bool>(), any::<bool>(), activations()),
        (1usize..=3, any::<u64>()),
    )
        .prop_filter_map(
            "the padded input smaller than the filter (or the pool's window)",
            |((n, cin, cout), (h, w), pads, (bias, pool, act), (threads, seed))| {
                let case = Case {
                    n,
                    cin,
                    cout,
                    h,
                    w,
                    pads,
                    bias,
                    pool,
                    act,
                    threads,
                    seed,
                };
                let fits = h + pads[0] + pads[2] >= 5 && w + pads[1] + pads[3] >= 5;
                (fits && {
                    let s = case.out_shape();
                    s[1] > 0 && s[2] > 0
                })
                .then_some(case)
            },
        )
}

fn check(isa: Isa, case: &Case) -> Result<(), TestCaseError> {
    let conv = case.conv();
    let (oh, ow) = case.conv_hw();
    let in_shape = [case.cin, case.h, case.w];
    let conv_shape = [case.cout, oh, ow];
    let out_shape = case.out_shape();
    let kernel = WinogradF4x4K5::new(isa, &conv, in_shape, out_shape, case.pool, case.threads)
        .expect("a 5×5 stride-1 layer with at most 64 input channels");
    prop_assert_eq!(kernel.isa(), isa);
    let n = case.n;
    let n_in = case.cin * case.h * case.w;
    let n_conv = case.cout * oh * ow;
    let n_out: usize = out_shape.iter().product();
    let wts = values(case.cout * case.cin * 25, case.seed);
    let bias = case.bias.then(|| values(case.cout, case.seed ^ 1));
    let x = values(n * n_in, case.seed ^ 2);

    let mut packed = vec![0.0; kernel.weights_len()];
    kernel.pack_weights(&wts, &mut packed);
    let mut scratch = vec![f32::NAN; case.threads * kernel.scratch_len()];
    let mut got = vec![f32::NAN; n * n_out];
    kernel.run(
        case.threads,
        n,
        &packed,
        bias.as_deref(),
        &x,
        &mut got,
        &mut scratch,
    );
    // One worker gives the same bits (each element's arithmetic does not depend on the
    // split).
    let mut one = vec![f32::NAN; n * n_out];
    let mut scr1 = vec![f32::NAN; kernel.scratch_len()];
    kernel.run(1, n, &packed, bias.as_deref(), &x, &mut one, &mut scr1);
    prop_assert!(
        got.iter()
            .zip(&one)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{isa} {case:?}: {} workers differ from one",
        case.threads
    );

    let cabs = Conv {
        activation: Activation::Identity,
        ..conv.clone()
    };
    let pool = Pool {
        kind: PoolKind::Max,
        kernel: [2, 2],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [0; 4],
        ceil_mode: false,
        count_include_pad: false,
    };
    for s in 0..n {
        let xs = &x[s * n_in..][..n_in];
        let mut want = vec![0.0; n_conv];
        reference::conv2d(
            xs,
            1,
            &in_shape,
            &conv,
            &wts,
            bias.as_deref(),
            None,
            &conv_shape,
            &mut want,
        );
        let mut scale = vec![0.0; n_conv];
        let (xa, wa, ba) = (abs(xs), abs(&wts), bias.as_deref().map(abs));
        reference::conv2d(
            &xa,
            1,
            &in_shape,
            &cabs,
            &wa,
            ba.as_deref(),
            None,
            &conv_shape,
            &mut scale,
        );
        let s_max = scale.iter().fold(0f64, |m, &v| m.max(v as f64));
        let want = if case.pool {
            let mut pooled = vec![0.0; n_out];
            reference::pool(&want, 1, &conv_shape, &pool, &out_shape, &mut pooled);
            pooled
        } else {
            want
        };
        let unit = (case.cin as f64).sqrt() * s_max;
        let tol = EPS * unit * 1.5 + 1e-6;
        let mut worst = 0f64;
        for (i, (&g, &r)) in got[s * n_out..][..n_out].iter().zip(&want).enumerate() {
            let d = (g as f64 - r as f64).abs();
            prop_assert!(
                d <= tol,
                "{isa} {case:?}: sample {s} element {i}: got {g}, want {r}, |diff| {d} > {tol}"
            );
            worst = worst.max(d / unit);
        }
        let mut w = WORST.lock().unwrap();
        *w = w.max(worst);
    }
    Ok(())
}

#[test]
fn f4x4_k5_matches_reference_every_tier() {
    for isa in Isa::supported() {
        let mut runner = TestRunner::new(Config {
            cases: std::env::var("K5_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64),
            ..Config::default()
        });
        runner
            .run(&cases(), |case| check(isa, &case))
            .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
    if std::env::var_os("WINO_REPORT").is_some() {
        println!(
            "largest |err| / (sqrt(cin) S_max): {:e}",
            *WORST.lock().unwrap()
        );
    }
}

/// LeNet-5's conv2 (20 → 50 on 14×14, pad 2, ReLU) with and without its pool, batch 1
/// and 3, one to three workers.
#[test]
fn lenet_conv2_every_tier() {
    for isa in Isa::supported() {
        for pool in [false, true] {
            for (n, threads) in [(1, 1), (1, 2), (3, 3)] {
                let case = Case {
                    n,
                    cin: 20,
                    cout: 50,
                    h: 14,
                    w: 14,
                    pads: [2; 4],
                    bias: true,
                    pool,
                    act: Activation::Relu,
                    threads,
                    seed: 5,
                };
                check(isa, &case).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// What it declines: other kernel sizes, strides, groups, too many input channels, a
/// wrong output shape.
#[test]
fn declines_what_it_does_not_run() {
    let case = Case {
        n: 1,
        cin: 8,
        cout: 8,
        h: 10,
        w: 10,
        pads: [2; 4],
        bias: false,
        pool: false,
        act: Activation::Identity,
        threads: 1,
        seed: 0,
    };
    let ok = case.conv();
    let ins = [8, 10, 10];
    assert!(WinogradF4x4K5::new(Isa::Scalar, &ok, ins, [8, 10, 10], false, 1).is_some());
    assert!(WinogradF4x4K5::new(Isa::Scalar, &ok, ins, [8, 5, 5], true, 1).is_some());
    assert!(WinogradF4x4K5::new(Isa::Scalar, &ok, ins, [8, 9, 10], false, 1).is_none());
    for bad in [
        Conv {
            kernel: [3, 3],
            ..ok.clone()
        },
        Conv {
            stride: [2, 2],
            ..ok.clone()
        },
        Conv {
            dilation: [2, 2],
            ..ok.clone()
        },
        Conv {
            groups: 2,
            ..ok.clone()
        },
    ] {
        assert!(WinogradF4x4K5::new(Isa::Scalar, &bad, ins, [8, 10, 10], false, 1).is_none());
    }
    // A plane too large for the gathers' i32 offsets (a hostile file's shapes).
    let huge = [8, 50_000, 50_000];
    assert!(WinogradF4x4K5::new(Isa::Scalar, &ok, huge, huge, false, 1).is_none());
    let wide = Conv {
        in_channels: 65,
        ..ok
    };
    assert!(WinogradF4x4K5::new(Isa::Scalar, &wide, [65, 10, 10], [8, 10, 10], false, 1).is_none());
}
