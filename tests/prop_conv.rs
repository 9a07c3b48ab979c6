//! Fast convolution (and the GEMM under it) against `kernels::reference`, for every ISA
//! tier this CPU supports.
//!
//! Tolerance, per output element: `|got − ref| <= 2·(1e-5·sqrt(K)·S) + 1e-6`, where
//! `S = Σ|x·w| + |bias| + |residual|` over that element's reduction (computed by running
//! the reference on absolute values) and `K` its length. Why it is enough and not too
//! loose: the kernels sum K products sequentially in f32 (FMA or multiply-add), whose
//! worst-case error is about `(K+2)·u·S` with `u = 2^-24 ≈ 6e-8`; `1e-5·sqrt(K)` exceeds
//! `(K+2)·u` for every `K` below ~25 000 (ours stay under 1 100), and the typical error
//! grows like `sqrt(K)·u·S`, far below. The factor 2 covers the activation, whose slope is
//! at most 1.5 (HardSwish at x = 3; the others ≤ 1.1 with the parameters drawn here), and
//! the final rounding to f32.

mod common;
use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::gemm::{self, BMode, Bias, Epilogue, Gemm, SharedOut};
use cnnrt::simd::Isa;
use common::{activations, check_close, conv_reference, values};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
struct Case {
    conv: Conv,
    h: usize,
    w: usize,
    batch: usize,
    bias: bool,
    residual: bool,
    seed: u64,
    scratch_offset: usize,
}

fn out_dims(c: &Conv, h: usize, w: usize) -> (usize, usize) {
    let eh = c.dilation[0] * (c.kernel[0] - 1) + 1;
    let ew = c.dilation[1] * (c.kernel[1] - 1) + 1;
    (
        (h + c.pads[0] + c.pads[2] - eh) / c.stride[0] + 1,
        (w + c.pads[1] + c.pads[3] - ew) / c.stride[1] + 1,
    )
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop_oneof![4 => Just(1usize), 1 => Just(2), 1 => Just(3), 1 => Just(4)],
        1usize..=40,
        1usize..=40,
        (1usize..=20, 1usize..=20),
        (1usize..=5, 1usize..=5),
        (1usize..=3, 1usize..=3),
        (1usize..=2, 1usize..=2),
        [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        (any::<bool>(), any::<bool>(), activations()),
        (1usize..=2, any::<u64>(), 0usize..=3),
    )
        .prop_filter_map(
            "kernel larger than the padded input",
            |(
                g,
                ci,
                co,
                (h, w),
                kernel,
                stride,
                dil,
                pads,
                (bias, residual, act),
                (batch, seed, off),
            )| {
                let cig = ci.div_ceil(g);
                let cog = co.div_ceil(g);
                let conv = Conv {
                    in_channels: cig * g,
                    out_channels: cog * g,
                    kernel: [kernel.0, kernel.1],
                    stride: [stride.0, stride.1],
                    dilation: [dil.0, dil.1],
                    pads,
                    groups: g,
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
                    scratch_offset: off,
                })
            },
        )
}

/// Runs `case` through `algorithm` (or the default choice) on `isa` and checks it.
fn check_conv(isa: Isa, case: &Case, algorithm: Option<&str>) -> Result<(), TestCaseError> {
    let c = &case.conv;
    let (oh, ow) = out_dims(c, case.h, case.w);
    let in_shape = [c.in_channels, case.h, case.w];
    let out_shape = [c.out_channels, oh, ow];
    let kernel = match algorithm {
        Some(a) => ConvKernel::with_algorithm(isa, c, in_shape, out_shape, a),
        None => ConvKernel::new(isa, c, in_shape, out_shape),
    };
    prop_assert_eq!(kernel.isa(), isa);
    let cig = c.in_channels / c.groups;
    let k = cig * c.kernel[0] * c.kernel[1];
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

    let mut packed = vec![0.0; kernel.packed_weight_len()];
    kernel.pack_weights(&wts, &mut packed);
    let mut scratch_buf = vec![0.0; kernel.scratch_len() + case.scratch_offset];
    let scratch = &mut scratch_buf[case.scratch_offset..];
    let mut got = vec![f32::NAN; case.batch * n_out];
    for s in 0..case.batch {
        kernel.run(
            &packed,
            bias.as_deref(),
            &x[s * n_in..(s + 1) * n_in],
            res.as_deref().map(|r| &r[s * n_out..(s + 1) * n_out]),
            &mut got[s * n_out..(s + 1) * n_out],
            scratch,
        );
    }
    check_close(
        &got,
        &want,
        &scale,
        k,
        &format!("{isa} {} {c:?} in {in_shape:?}", kernel.algorithm()),
    )?;

    // Whether running every tile of `k` (in reverse order or not) reproduces `run` bit for
    // bit (scratch at the case's misaligned offset, as above).
    let r0 = res.as_deref().map(|r| &r[..n_out]);
    let tiles_match = |k: &ConvKernel, reverse: bool| {
        let mut tiled = vec![f32::NAN; n_out];
        let mut scr = vec![0.0; k.scratch_len() + case.scratch_offset];
        let mut ts: Vec<usize> = (0..k.tiles()).collect();
        if reverse {
            ts.reverse();
        }
        for t in ts {
            k.run_tile(
                &packed,
                bias.as_deref(),
                &x[..n_in],
                r0,
                &mut tiled,
                &mut scr[case.scratch_offset..],
                t,
            );
        }
        tiled
            .iter()
            .zip(&got[..n_out])
            .all(|(a, b)| a.to_bits() == b.to_bits())
    };
    // Tiles forward and in reverse give bit-identical results, equal to `run`'s.
    for reverse in [false, true] {
        prop_assert!(
            tiles_match(&kernel, reverse),
            "{isa}: tiles (reverse={reverse}) differ from run; {} tiles",
            kernel.tiles()
        );
    }
    // The tiles planned for several threads cover the output the same way, bit for bit.
    for threads in [2, 3, 4] {
        let split = kernel.clone().split_for_threads(threads);
        prop_assert!(
            tiles_match(&split, true),
            "{isa}: {threads}-thread tiles differ from run; {} tiles",
            split.tiles()
        );
        // So does the shared-B plan (forced, whatever the heuristics choose): every pack
        // part, then every multiply tile, each phase in reverse order (panels start as
        // NaN, so a part left out shows).
        let split = kernel.clone().with_shared_b(threads);
        let len = split.shared_b_len();
        if len > 0 {
            SHARED_B_CHECKED.fetch_add(1, Ordering::Relaxed);
            let mut panels = vec![f32::NAN; len];
            let al = panels.as_ptr().align_offset(64).min(16);
            let mut tmp = vec![0.0; split.scratch_len()];
            {
                let shared = SharedOut::new(&mut panels[al..]);
                for p in (0..split.pack_parts()).rev() {
                    // SAFETY: one part at a time; panels read only after the loop.
                    unsafe { split.pack_part(&x[..n_in], shared, &mut tmp, p) };
                }
            }
            let mut out = vec![f32::NAN; n_out];
            let shared_out = SharedOut::new(&mut out);
            for t in (0..split.multiply_tiles()).rev() {
                // SAFETY: the panels are complete; one tile at a time; `out` read after.
                unsafe {
                    split.multiply_tile(&packed, bias.as_deref(), r0, &panels[al..], shared_out, t)
                };
            }
            prop_assert!(
                out.iter()
                    .zip(&got[..n_out])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa}: {threads}-thread shared-B plan differs from run ({} pack parts, {} tiles)",
                split.pack_parts(),
                split.multiply_tiles()
            );
        }
    }
    Ok(())
}

/// Shared-B plans `check_conv` has compared (every im2col layer of one group has one).
static SHARED_B_CHECKED: AtomicUsize = AtomicUsize::new(0);

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn conv_matches_reference_every_tier() {
    for isa in Isa::supported() {
        runner()
            .run(&cases(), |case| {
                check_conv(isa, &case, None)?;
                let c = &case.conv;
                if c.kernel == [1, 1] && c.stride == [1, 1] && c.pads == [0; 4] {
                    for a in ["gemm1x1", "gemm1x1_rows", "gemm1x1_packed", "im2col_gemm"] {
                        check_conv(isa, &case, Some(a))?;
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
}

/// The first-layer direct kernel (few input channels read in place through tap offsets,
/// `direct`) on the tiers that have it, over the shapes it accepts: any kernel size,
/// stride, dilation and padding (asymmetric too), rows not a multiple of 16 (masked
/// tails; one-vector kernels for tails of at most half a tile, e.g. 8–16 of AVX-512's
/// 32 columns), heights that the bands of 8 rows do not divide, output channels not a
/// multiple of the 12-row panels or 6-row slivers, bias, residual, activations, batch.
#[test]
fn direct_first_layer_every_tier() {
    let strat = (
        1usize..=4,
        1usize..=30,
        (
            (1usize..=7, 1usize..=7),
            (1usize..=3, 1usize..=3),
            (1usize..=2, 1usize..=2),
        ),
        [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        (1usize..=30, 8usize..=60),
        (any::<bool>(), any::<bool>(), activations()),
        (1usize..=2, any::<u64>(), 0usize..=3),
    )
        .prop_filter_map(
            "not a direct-kernel shape",
            |(
                ci,
                co,
                (kernel, stride, dil),
                pads,
                (h, w),
                (bias, residual, act),
                (batch, seed, off),
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
                let fits = h + pads[0] + pads[2] >= eh && w + pads[1] + pads[3] >= ew;
                let ow = if fits { out_dims(&conv, h, w).1 } else { 0 };
                (fits && conv.kernel != [1, 1] && ow >= 8).then_some(Case {
                    conv,
                    h,
                    w,
                    batch,
                    bias,
                    residual,
                    seed,
                    scratch_offset: off,
                })
            },
        );
    for isa in Isa::supported().into_iter().filter(|&i| i >= Isa::Avx2) {
        runner()
            .run(&strat, |case| check_conv(isa, &case, Some("direct")))
            .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
}

/// Shapes random sampling rarely reaches: M split into several tiles (many output
/// channels, few pixels), many N tiles, K split into several blocks, grouped 1×1.
#[test]
fn conv_large_shapes_every_tier() {
    let mk = |cin, cout, k: usize, s, p, g| Conv {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [s, s],
        dilation: [1, 1],
        pads: [p; 4],
        groups: g,
        weight: 0,
        bias: None,
        activation: Activation::Relu,
    };
    let shapes = [
        (mk(64, 200, 3, 1, 1, 1), 5, 5),
        (mk(96, 400, 1, 1, 0, 1), 7, 7),
        (mk(48, 64, 3, 1, 1, 1), 30, 30),
        (mk(130, 50, 3, 2, 1, 1), 9, 11),
        (mk(64, 64, 1, 1, 0, 4), 13, 13),
        (mk(3, 16, 7, 2, 3, 1), 40, 40),
        (mk(24, 24, 3, 1, 1, 24), 10, 10),
        // Stride-2 3×3 layers like those that get shared-B plans, with K in several
        // blocks (the last one shorter for cin = 43) and a short last panel.
        (mk(64, 128, 3, 2, 1, 1), 19, 19),
        (mk(43, 128, 3, 2, 1, 1), 15, 15),
        // Pixels outweighing weights on few panels: LeNet-5's conv2 (14×14) and a 10×10
        // variant, which 2 workers split by pixels on both x86 tiers.
        (mk(20, 50, 5, 1, 2, 1), 14, 14),
        (mk(20, 50, 5, 1, 2, 1), 10, 10),
    ];
    for isa in Isa::supported() {
        for (conv, h, w) in &shapes {
            let case = Case {
                conv: conv.clone(),
                h: *h,
                w: *w,
                batch: 1,
                bias: true,
                residual: true,
                seed: 7,
                scratch_offset: 1,
            };
            check_conv(isa, &case, None).unwrap_or_else(|e| panic!("{isa} {conv:?}: {e}"));
        }
    }
    assert!(
        SHARED_B_CHECKED.load(Ordering::Relaxed) > 0,
        "no shared-B plan checked"
    );
}

/// One GEMM against the f64 reference (tolerance as `check_close`), then its tiles run in
/// reverse order: bit-identical. Returns C.
#[allow(clippy::too_many_arguments)]
fn check_gemm(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    (pad_b, pad_c): (usize, usize),
    (bias_kind, residual, accumulate, act): (u8, bool, bool, Activation),
    (direct, seed): (bool, u64),
) -> Result<Vec<f32>, TestCaseError> {
    let (ldb, ldc) = (n + pad_b, n + pad_c);
    let a = values(m * k, seed);
    let b = values(k * ldb, seed ^ 1);
    let c0 = values(m * ldc, seed ^ 2);
    let bias = match bias_kind {
        1 => Some(values(m, seed ^ 3)),
        2 => Some(values(n, seed ^ 3)),
        _ => None,
    };
    let res = residual.then(|| values(m * ldc, seed ^ 4));
    // Reference in f64, and the |·| scale.
    let mut want = vec![0f32; m * ldc];
    let mut scale = vec![0f32; m * ldc];
    for i in 0..m {
        for j in 0..n {
            let (mut acc, mut s) = (0f64, 0f64);
            for kk in 0..k {
                let p = a[i * k + kk] as f64 * b[kk * ldb + j] as f64;
                acc += p;
                s += p.abs();
            }
            let mut add = |v: f32| {
                acc += v as f64;
                s += (v as f64).abs();
            };
            if accumulate {
                add(c0[i * ldc + j]);
            }
            match (bias_kind, &bias) {
                (1, Some(bv)) => add(bv[i]),
                (2, Some(bv)) => add(bv[j]),
                _ => {}
            }
            if let Some(r) = &res {
                add(r[i * ldc + j]);
            }
            want[i * ldc + j] = act.apply_f64(acc) as f32;
            scale[i * ldc + j] = s as f32;
        }
    }
    let mode = if direct { BMode::Direct } else { BMode::Packed };
    let g = Gemm::with_mode(isa, m, n, k, mode);
    let mut ap = vec![0.0; gemm::packed_a_len(m, k)];
    gemm::pack_a(m, k, &a, k, &mut ap);
    let epi = Epilogue {
        bias: match (bias_kind, &bias) {
            (1, Some(bv)) => Bias::Row(bv),
            (2, Some(bv)) => Bias::Col(bv),
            _ => Bias::None,
        },
        residual: res.as_deref(),
        activation: act,
        accumulate,
    };
    let mut scratch = vec![0.0; g.scratch_len()];
    let mut c = c0.clone();
    g.run(&ap, &b, ldb, &mut c, ldc, &epi, &mut scratch);
    let (mut gv, mut wv, mut sv) = (vec![], vec![], vec![]);
    for i in 0..m {
        for j in 0..ldc {
            if j < n {
                gv.push(c[i * ldc + j]);
                wv.push(want[i * ldc + j]);
                sv.push(scale[i * ldc + j]);
            } else {
                // Padding columns of C are never touched.
                prop_assert_eq!(c[i * ldc + j].to_bits(), c0[i * ldc + j].to_bits());
            }
        }
    }
    check_close(
        &gv,
        &wv,
        &sv,
        k,
        &format!("{isa} gemm {m}x{n}x{k} {mode:?}"),
    )?;
    // Tiles in reverse order: bit-identical.
    let mut c2 = c0.clone();
    for t in (0..g.tiles()).rev() {
        g.run_tile(&ap, &b, ldb, &mut c2, ldc, &epi, &mut scratch, t);
    }
    prop_assert!(
        c.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{isa}: tiles differ"
    );
    Ok(c)
}

#[test]
fn gemm_matches_reference_every_tier() {
    let strat = (
        (1usize..=60, 1usize..=150, 0usize..=600),
        (0usize..=3, 0usize..=3),
        (0u8..3, any::<bool>(), any::<bool>(), activations()),
        (any::<bool>(), any::<u64>()),
    );
    for isa in Isa::supported() {
        runner()
            .run(&strat, |(dims, pads, epi, mode)| {
                check_gemm(isa, dims, pads, epi, mode).map(|_| ())
            })
            .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
}

/// One- and two-column tails (`n = 16q + 1`, `16q + 2`, as a 7×7 map's 49 pixels) over
/// many row panels, where the column-tail kernels run several panels per call: against
/// the reference, and bit for bit against the same columns computed inside full tiles
/// (the same B with 16 more columns), since every kernel runs the same FMA chain.
#[test]
fn gemm_column_tails_every_tier() {
    let strat = (
        (24usize..=110, 0usize..=3, 1usize..=2, 1usize..=300),
        (0u8..3, any::<bool>(), any::<bool>(), activations()),
        (any::<bool>(), any::<u64>()),
    );
    for isa in Isa::supported() {
        runner()
            .run(&strat, |((m, q, r, k), epi, (direct, seed))| {
                let n = 16 * q + r;
                // Both runs have ldb = ldc = n + 16, so they draw the same A, B, C,
                // residual and bias (a prefix of the same sequence); the narrow run's
                // last 16 columns are padding (checked untouched).
                let narrow = check_gemm(isa, (m, n, k), (16, 16), epi, (direct, seed))?;
                let wide = check_gemm(isa, (m, n + 16, k), (0, 0), epi, (direct, seed))?;
                for i in 0..m {
                    for j in 0..n {
                        prop_assert_eq!(
                            narrow[i * (n + 16) + j].to_bits(),
                            wide[i * (n + 16) + j].to_bits(),
                            "{} gemm {}x{}x{}: element ({}, {}) differs from a full tile's",
                            isa,
                            m,
                            n,
                            k,
                            i,
                            j
                        );
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
}

#[test]
fn pack_a_layout_is_documented_one() {
    // Element (i, k) of panel p (height h) at p·12·K + k·h + (i − p·12).
    let (m, k) = (29, 5);
    let a: Vec<f32> = (0..m * k).map(|v| v as f32).collect();
    let mut p = vec![0.0; m * k];
    gemm::pack_a(m, k, &a, k, &mut p);
    for i in 0..m {
        let p0 = i / 12 * 12;
        let h = 12.min(m - p0);
        for kk in 0..k {
            assert_eq!(p[p0 * k + kk * h + (i - p0)], a[i * k + kk]);
        }
    }
}

#[test]
fn nan_propagates_through_relu_and_clip() {
    for isa in Isa::supported() {
        for act in [
            Activation::Relu,
            Activation::Clip { min: 0.0, max: 6.0 },
            Activation::LeakyRelu { alpha: 0.1 },
        ] {
            let conv = Conv {
                in_channels: 2,
                out_channels: 3,
                kernel: [1, 1],
                stride: [1, 1],
                dilation: [1, 1],
                pads: [0; 4],
                groups: 1,
                weight: 0,
                bias: None,
                activation: act,
            };
            let k = ConvKernel::new(isa, &conv, [2, 3, 3], [3, 3, 3]);
            let mut x = vec![1.0f32; 18];
            x[4] = f32::NAN;
            let w = vec![1.0f32; 6];
            let mut packed = vec![0.0; k.packed_weight_len()];
            k.pack_weights(&w, &mut packed);
            let mut out = vec![0.0; 27];
            let mut scratch = vec![0.0; k.scratch_len()];
            k.run(&packed, None, &x, None, &mut out, &mut scratch);
            for o in 0..3 {
                assert!(out[o * 9 + 4].is_nan(), "{isa} {act:?}");
                assert_eq!(out[o * 9 + 3], 2.0f32.min(6.0));
            }
        }
    }
}

/// 1×1 convolutions with short K (the MobileNet shapes): output channels around the
/// micro-tile heights (6, 12) and the in-place limit (32), planes whose size leaves every
/// remainder modulo the tile widths, several N blocks, K split into blocks, every
/// algorithm.
#[test]
fn conv1x1_short_k_every_tier() {
    let strat = (
        prop_oneof![
            3 => 1usize..=24,
            1 => 25usize..=64,
            1 => Just(400usize),
        ],
        prop_oneof![
            2 => 1usize..=14,
            2 => 30usize..=34,
            1 => 46usize..=50,
            1 => 94usize..=98,
        ],
        prop_oneof![
            3 => (1usize..=20, 1usize..=20),
            1 => (60usize..=75, 60usize..=75),
        ],
        (any::<bool>(), any::<bool>(), activations()),
        (any::<u64>(), 0usize..=3),
    );
    for isa in Isa::supported() {
        runner()
            .run(
                &strat,
                |(cin, cout, (h, w), (bias, residual, act), (seed, off))| {
                    // Keep the big planes to short K (the reference is slow).
                    prop_assume!(h * w <= 400 || cin <= 24);
                    let case = Case {
                        conv: Conv {
                            in_channels: cin,
                            out_channels: cout,
                            kernel: [1, 1],
                            stride: [1, 1],
                            dilation: [1, 1],
                            pads: [0; 4],
                            groups: 1,
                            weight: 0,
                            bias: None,
                            activation: act,
                        },
                        h,
                        w,
                        batch: 1,
                        bias,
                        residual,
                        seed,
                        scratch_offset: off,
                    };
                    check_conv(isa, &case, None)?;
                    for a in ["gemm1x1", "gemm1x1_rows", "gemm1x1_packed", "im2col_gemm"] {
                        check_conv(isa, &case, Some(a))?;
                    }
                    Ok(())
                },
            )
            .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
}
