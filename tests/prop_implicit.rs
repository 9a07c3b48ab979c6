//! Property tests of the implicit-GEMM convolution (`conv::implicit`) against the
//! reference convolution, on every ISA tier this CPU has: column strides 1 and 2, any
//! row stride, kernel sizes, dilation, odd and asymmetric padding, output channels that
//! are not a multiple of the tier's panel, output rows of any width (tile remainders),
//! bias, residual and every activation, batch > 1. Every split of the work (bands of
//! rows, channel panels with the shared padded input) gives the same bits as one part,
//! and the layer with a 2×2 max pool in its store the same bits as pooling its output.
//!
//! Tolerance: `2·1e-5·sqrt(K + 2)` times the same convolution of absolute values (plus
//! 1e-6), `K = cin·kh·kw` the reduction length, as for the other convolution kernels.

mod common;
use cnnrt::graph::{Activation, Conv, Pool, PoolKind};
use cnnrt::kernels::conv::ImplicitConv;
use cnnrt::kernels::gemm;
use cnnrt::simd::Isa;
use common::{activations, check_close, conv_reference, values};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
struct Case {
    conv: Conv,
    h: usize,
    w: usize,
    batch: usize,
    bias: bool,
    residual: bool,
    seed: u64,
}

fn out_dims(c: &Conv, h: usize, w: usize) -> (usize, usize) {
    let eh = c.dilation[0] * (c.kernel[0] - 1) + 1;
    let ew = c.dilation[1] * (c.kernel[1] - 1) + 1;
    (
        (h + c.pads[0] + c.pads[2] - eh) / c.stride[0] + 1,
        (w + c.pads[1] + c.pads[3] - ew) / c.stride[1] + 1,
    )
}

fn cases(max_hw: usize, max_c: usize) -> impl Strategy<Value = Case> {
    (
        (1usize..=max_c, 1usize..=max_c),
        (1usize..=max_hw, 1usize..=max_hw),
        (1usize..=5, 1usize..=5),
        (1usize..=3, 1usize..=2),
        (1usize..=2, 1usize..=2),
        [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        (any::<bool>(), any::<bool>(), activations()),
        (1usize..=2, any::<u64>()),
    )
        .prop_filter_map(
            "kernel larger than the padded input",
            |(
                (ci, co),
                (h, w),
                kernel,
                stride,
                dil,
                pads,
                (bias, residual, act),
                (batch, seed),
            )| {
                let conv = Conv {
                    in_channels: ci,
                    out_channels: co,
                    kernel: [kernel.0, kernel.1],
                    stride: [stride.0, stride.1],
                    dilation: [dil.0, dil.1],
                    pads,
                    groups: 1,
                    weight: 0,
                    bias: None,
                    activation: act,
                };
                let eh = dil.0 * (kernel.0 - 1) + 1;
                let ew = dil.1 * (kernel.1 - 1) + 1;
                (h + pads[0] + pads[2] >= eh && w + pads[1] + pads[3] >= ew).then_some(Case {
                    conv,
                    h,
                    w,
                    batch,
                    bias,
                    residual,
                    seed,
                })
            },
        )
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs `kernel` on the case's batch on `slots` workers (NaN-filled output and scratch,
/// so anything left unwritten or read before written shows).
#[allow(clippy::too_many_arguments)]
fn run(
    kernel: &ImplicitConv,
    slots: usize,
    case: &Case,
    wt: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    res: Option<&[f32]>,
    n_out: usize,
) -> Vec<f32> {
    let mut got = vec![f32::NAN; case.batch * n_out];
    let mut scratch =
        vec![f32::NAN; slots.max(1) * kernel.scratch_len() + kernel.shared_scratch_len()];
    kernel.run(slots, case.batch, wt, bias, x, res, &mut got, &mut scratch);
    got
}

fn check(isa: Isa, case: &Case) -> Result<(), TestCaseError> {
    let c = &case.conv;
    let (oh, ow) = out_dims(c, case.h, case.w);
    let in_shape = [c.in_channels, case.h, case.w];
    let out_shape = [c.out_channels, oh, ow];
    let kernel = ImplicitConv::new(isa, c, in_shape, out_shape, 1)
        .ok_or_else(|| TestCaseError::fail(format!("{c:?} not planned")))?;
    prop_assert_eq!(kernel.isa(), isa);
    let k = c.in_channels * c.kernel[0] * c.kernel[1];
    let n_in = c.in_channels * case.h * case.w;
    let n_out = c.out_channels * oh * ow;
    let wts = values(c.out_channels * k, case.seed);
    let bias = case.bias.then(|| values(c.out_channels, case.seed ^ 1));
    let x = values(case.batch * n_in, case.seed ^ 2);
    let res = case
        .residual
        .then(|| values(case.batch * n_out, case.seed ^ 3));

    let (want, scale) = conv_reference(
        &x,
        case.batch,
        &in_shape,
        c,
        &wts,
        bias.as_deref(),
        res.as_deref(),
        &out_shape,
    );

    let mut packed = vec![0.0; kernel.weights_len()];
    gemm::pack_b_transposed(c.out_channels, k, &wts, k, &mut packed);
    let run_on = |plan: &ImplicitConv, slots: usize| {
        run(
            plan,
            slots,
            case,
            &packed,
            bias.as_deref(),
            &x,
            res.as_deref(),
            n_out,
        )
    };
    let got = run_on(&kernel, 1);
    check_close(
        &got,
        &want,
        &scale,
        k,
        &format!("{isa} {c:?} in {in_shape:?}"),
    )?;
    // Every split (bands × channel panels, the shared input when panels split), on one
    // worker and on three, gives the same bits.
    for (rows, cols) in [(2, 1), (3, 2), (1, 4), (5, 3)] {
        let split = kernel.clone().with_parts(rows, cols);
        for slots in [1, 3] {
            let other = run_on(&split, slots);
            prop_assert!(
                same_bits(&other, &got),
                "{isa} {c:?}: split {rows}×{cols} on {slots} workers differs from one part"
            );
        }
    }
    // Planned for 8 and 16 workers (thinner bands where bands × panels are fewer than
    // the workers), run on three: the same bits.
    for threads in [8, 16] {
        let plan = ImplicitConv::new(isa, c, in_shape, out_shape, threads)
            .ok_or_else(|| TestCaseError::fail("not planned for threads"))?;
        let other = run_on(&plan, 3);
        prop_assert!(
            same_bits(&other, &got),
            "{isa} {c:?}: planned for {threads} workers differs from one"
        );
    }
    if !case.residual && oh >= 2 && ow >= 2 {
        check_pooled(&kernel, case, &packed, bias.as_deref(), &x, &got, [oh, ow])?;
    }
    Ok(())
}

/// A `k × k` stride-`s` max pool without padding, floor mode.
fn max_pool(k: usize, s: usize) -> Pool {
    Pool {
        kind: PoolKind::Max,
        kernel: [k, k],
        stride: [s, s],
        dilation: [1, 1],
        pads: [0; 4],
        ceil_mode: false,
        count_include_pad: false,
    }
}

/// A 2×2 stride-2 max pool (floor) of planar `[n, c, h, w]`, NaN where any input of the
/// window is.
fn max_pool_2x2(x: &[f32], n: usize, c: usize, [h, w]: [usize; 2]) -> Vec<f32> {
    let (ph, pw) = (h / 2, w / 2);
    let mut out = Vec::with_capacity(n * c * ph * pw);
    for plane in x.chunks(h * w).take(n * c) {
        for py in 0..ph {
            for px in 0..pw {
                let at = |dy: usize, dx: usize| plane[(2 * py + dy) * w + 2 * px + dx];
                let win = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                out.push(if win.iter().any(|v| v.is_nan()) {
                    f32::NAN
                } else {
                    win.into_iter().fold(f32::NEG_INFINITY, f32::max)
                });
            }
        }
    }
    out
}

/// The layer with its 2×2 max pool done in the store gives, bit for bit (up to the sign
/// of a tied zero), the pool of what it gives without (`unpooled`), for every split of
/// the work.
#[allow(clippy::too_many_arguments)]
fn check_pooled(
    kernel: &ImplicitConv,
    case: &Case,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    unpooled: &[f32],
    [oh, ow]: [usize; 2],
) -> Result<(), TestCaseError> {
    let c = &case.conv;
    let want = max_pool_2x2(unpooled, case.batch, c.out_channels, [oh, ow]);
    let pool_out = [c.out_channels, oh / 2, ow / 2];
    let pooled = kernel
        .clone()
        .with_max_pool(&max_pool(2, 2), pool_out)
        .ok_or_else(|| TestCaseError::fail("pool not planned"))?;
    prop_assert_eq!(pooled.out_shape(), pool_out);
    let n_out = c.out_channels * (oh / 2) * (ow / 2);
    // Bit for bit, but for which of tied zeros of either sign wins (as between the
    // planar pool's own paths) and NaN payloads.
    let same = |a: &[f32], b: &[f32]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(a, b)| a.to_bits() == b.to_bits() || a == b || (a.is_nan() && b.is_nan()))
    };
    for (rows, cols) in [(1, 1), (2, 1), (3, 2), (1, 4)] {
        let split = pooled.clone().with_parts(rows, cols);
        for slots in [1, 3] {
            let got = run(&split, slots, case, packed, bias, x, None, n_out);
            prop_assert!(
                same(&got, &want),
                "{c:?}: pooled, split {rows}×{cols} on {slots} workers, differs from the pool \
                 of the unpooled output"
            );
        }
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn implicit_conv_matches_reference_every_tier() {
    for isa in Isa::supported() {
        runner(64)
            .run(&cases(24, 40), |case| check(isa, &case))
            .unwrap();
    }
}

/// Shapes of ResNet-18's stride-2 layers, scaled down in channels, and wide rows (several
/// tiles per row, K in several blocks).
#[test]
fn implicit_conv_wide_shapes_every_tier() {
    for isa in Isa::supported() {
        runner(8)
            .run(&cases(60, 80), |case| check(isa, &case))
            .unwrap();
        for (ci, co, hw, stride) in [(64, 96, 29, 2), (96, 40, 15, 2), (72, 33, 7, 1)] {
            let case = Case {
                conv: Conv {
                    in_channels: ci,
                    out_channels: co,
                    kernel: [3, 3],
                    stride: [stride, stride],
                    dilation: [1, 1],
                    pads: [1; 4],
                    groups: 1,
                    weight: 0,
                    bias: None,
                    activation: Activation::Relu,
                },
                h: hw,
                w: hw,
                batch: 2,
                bias: true,
                residual: true,
                seed: ci as u64,
            };
            check(isa, &case).unwrap();
        }
    }
}

/// Only column strides 1 and 2 and one group are planned, and only a 2×2 stride-2 max pool
/// in the store.
#[test]
fn implicit_conv_declines_what_it_cannot_run() {
    let conv = |stride: usize, groups: usize| Conv {
        in_channels: 8,
        out_channels: 8,
        kernel: [3, 3],
        stride: [1, stride],
        dilation: [1, 1],
        pads: [1; 4],
        groups,
        weight: 0,
        bias: None,
        activation: Activation::Identity,
    };
    let plan = |c: &Conv, ow: usize| ImplicitConv::new(Isa::Scalar, c, [8, 9, 9], [8, 9, ow], 1);
    assert!(plan(&conv(1, 1), 9).is_some());
    assert!(plan(&conv(2, 1), 5).is_some());
    assert!(plan(&conv(3, 1), 3).is_none());
    assert!(plan(&conv(1, 2), 9).is_none());
    // Output shapes that disagree with the convolution are refused, not trusted.
    assert!(plan(&conv(1, 1), 10).is_none());
    // The pool in the store: a 2×2 stride-2 max pool without padding, with the output
    // shape that gives (9×9 → 4×4), and nothing else.
    let layer = || plan(&conv(1, 1), 9).unwrap();
    assert!(layer().with_max_pool(&max_pool(2, 2), [8, 4, 4]).is_some());
    assert!(layer().with_max_pool(&max_pool(2, 2), [8, 5, 5]).is_none());
    assert!(layer().with_max_pool(&max_pool(3, 2), [8, 4, 4]).is_none());
    assert!(layer().with_max_pool(&max_pool(2, 1), [8, 4, 4]).is_none());
    let average = Pool {
        kind: PoolKind::Average,
        ..max_pool(2, 2)
    };
    assert!(layer().with_max_pool(&average, [8, 4, 4]).is_none());
    let padded = Pool {
        pads: [1, 1, 0, 0],
        ..max_pool(2, 2)
    };
    assert!(layer().with_max_pool(&padded, [8, 4, 4]).is_none());
}

/// NaNs in the input reach the pooled output as they reach the pool of the unpooled one
/// (the in-store pool's NaN path), on every tier; LeNet-5's conv2 → pool shape.
#[test]
fn implicit_conv_pool_propagates_nan_every_tier() {
    for isa in Isa::supported() {
        let case = Case {
            conv: Conv {
                in_channels: 20,
                out_channels: 50,
                kernel: [5, 5],
                stride: [1, 1],
                dilation: [1, 1],
                pads: [2; 4],
                groups: 1,
                weight: 0,
                bias: None,
                activation: Activation::Relu,
            },
            h: 14,
            w: 14,
            batch: 2,
            bias: true,
            residual: false,
            seed: 7,
        };
        let c = &case.conv;
        let kernel = ImplicitConv::new(isa, c, [20, 14, 14], [50, 14, 14], 2).unwrap();
        let k = 20 * 25;
        let wts = values(50 * k, 1);
        let bias = values(50, 2);
        let mut x = values(2 * 20 * 14 * 14, 3);
        x[5 * 14 + 6] = f32::NAN;
        x[20 * 14 * 14 + 3 * 196 + 13] = f32::NAN;
        let mut packed = vec![0.0; kernel.weights_len()];
        gemm::pack_b_transposed(50, k, &wts, k, &mut packed);
        let unpooled = run(&kernel, 1, &case, &packed, Some(&bias), &x, None, 50 * 196);
        assert!(unpooled.iter().any(|v| v.is_nan()));
        check_pooled(
            &kernel,
            &case,
            &packed,
            Some(&bias),
            &x,
            &unpooled,
            [14, 14],
        )
        .unwrap();
    }
}
