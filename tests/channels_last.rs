//! The channels-last kernels (`kernels::nhwc`) and the session's channels-last region
//! (`region`): the same bits as the planar kernels (the 1×1 GEMM always; the depthwise
//! layer where its chain is uniform), within tolerance of the f64 reference, on every
//! tier and for 1–3 workers.
//!
//! Tolerance against the reference, per output: `|got − want| ≤ 1e-5·mag + 1e-6·|want| +
//! 1e-6`, `mag = Σ|x·w| + |bias| + |residual|` (f32 accumulation in another order than the
//! f64 reference; the activations here have slope at most 1 or are applied after it).

mod common;

use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::depthwise::DepthwiseKernel;
use cnnrt::kernels::nhwc::{self, DepthwiseNhwc, PointwiseNhwc};
use cnnrt::kernels::reference::{self, run_graph};
use cnnrt::{Isa, SessionOptions, Threads};
use common::plain_conv;
use proptest::prelude::*;

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn to_nhwc(x: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    nhwc::to_nhwc(Isa::Scalar, x, x.len() / (c * hw), c, hw, &mut out);
    out
}

fn to_planar(x: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    nhwc::to_planar(Isa::Scalar, x, x.len() / (c * hw), c, hw, &mut out);
    out
}

/// Every output of `got` within the tolerance above of `want` (`mag` as above).
fn within(got: &[f32], want: &[f32], mag: &[f32]) -> Result<(), TestCaseError> {
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = 1e-5 * m + 1e-6 * w.abs() + 1e-6;
        prop_assert!(
            (g - w).abs() <= tol,
            "output {i}: got {g}, reference {w}, tolerance {tol}"
        );
    }
    Ok(())
}

/// The reference output and the magnitude bounding its rounding error.
#[allow(clippy::too_many_arguments)]
fn reference(
    conv: &Conv,
    n: usize,
    ins: [usize; 3],
    outs: [usize; 3],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    r: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let len = n * outs.iter().product::<usize>();
    let mut want = vec![0.0; len];
    reference::conv2d(x, n, &ins, conv, w, b, r, &outs, &mut want);
    let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    let plain = Conv {
        activation: Activation::Identity,
        ..conv.clone()
    };
    let (ab, ar) = (b.map(abs), r.map(abs));
    let mut mag = vec![0.0; len];
    reference::conv2d(
        &abs(x),
        n,
        &ins,
        &plain,
        &abs(w),
        ab.as_deref(),
        ar.as_deref(),
        &outs,
        &mut mag,
    );
    (want, mag)
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        Just(Activation::Clip { min: 0.0, max: 6.0 }),
        Just(Activation::Clip {
            min: -0.5,
            max: 0.5
        }),
        (0.0f32..1.0).prop_map(|alpha| Activation::LeakyRelu { alpha }),
        Just(Activation::HardSwish),
        Just(Activation::Sigmoid),
    ]
}

/// `CNNRT_PARALLEL_MIN_FLOPS=0`: small layers split over workers too.
fn split_small_layers() {
    std::env::set_var("CNNRT_PARALLEL_MIN_FLOPS", "0");
}

/// A 1×1 convolution: `(cin, cout, h, w, batch)` with channel counts off the tiers'
/// tile widths (tails of 1 to 31 columns) and pixel counts from 1 (row tiles of 1 to 12).
fn check_pointwise(
    (cin, cout, h, w, n): (usize, usize, usize, usize, usize),
    act: Activation,
    bias: bool,
    residual: bool,
    threads: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    split_small_layers();
    let hw = h * w;
    let mut s = seed | 1;
    let conv = plain_conv(cin, cout, 1, 1, [0; 4], 1, act);
    let x = common::rand_vec(&mut s, n * cin * hw, -1.0, 1.0);
    let wts = common::rand_vec(&mut s, cout * cin, -1.0, 1.0);
    let b = bias.then(|| common::rand_vec(&mut s, cout, -1.0, 1.0));
    let r = residual.then(|| common::rand_vec(&mut s, n * cout * hw, -1.0, 1.0));
    let (ins, outs) = ([cin, h, w], [cout, h, w]);
    let (want, mag) = reference(&conv, n, ins, outs, &x, &wts, b.as_deref(), r.as_deref());
    for isa in Isa::supported() {
        let planar = ConvKernel::new(isa, &conv, ins, outs);
        let mut packed = vec![0.0; planar.packed_weight_len()];
        planar.pack_weights(&wts, &mut packed);
        let mut scratch = vec![0.0; planar.scratch_len()];
        let mut expect = vec![f32::NAN; n * cout * hw];
        for s in 0..n {
            let (xs, os) = (s * cin * hw, s * cout * hw);
            planar.run(
                &packed,
                b.as_deref(),
                &x[xs..xs + cin * hw],
                r.as_deref().map(|r| &r[os..os + cout * hw]),
                &mut expect[os..os + cout * hw],
                &mut scratch,
            );
        }
        let r_nhwc = r.as_deref().map(|r| to_nhwc(r, cout, hw));
        for input_nhwc in [false, true] {
            let k = PointwiseNhwc::new(isa, &conv, hw, input_nhwc, threads).expect("1x1");
            let mut wt = vec![f32::NAN; k.weights_len()];
            nhwc::panels_from_conv_gemm(cin, cout, &packed, &mut wt);
            let xin = if input_nhwc {
                to_nhwc(&x, cin, hw)
            } else {
                x.clone()
            };
            let mut got = vec![f32::NAN; n * cout * hw];
            k.run(
                threads,
                n,
                &wt,
                b.as_deref(),
                &xin,
                r_nhwc.as_deref(),
                &mut got,
            );
            let got = to_planar(&got, cout, hw);
            prop_assert!(
                same_bits(&got, &expect),
                "[{}] input nhwc {}, {} threads: differs from the planar kernel ({})",
                isa,
                input_nhwc,
                threads,
                planar.algorithm()
            );
            within(&got, &want, &mag)?;
        }
    }
    Ok(())
}

/// A 3×3 depthwise convolution: channels a multiple of every tier's lanes (16), maps from
/// one pixel, stride 1 or 2, each side padded 0 or 1.
#[allow(clippy::too_many_arguments)]
fn check_depthwise(
    (c, h, w, n): (usize, usize, usize, usize),
    stride: usize,
    pads: [usize; 4],
    act: Activation,
    bias: bool,
    threads: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    split_small_layers();
    let (oh, ow) = match (
        (h + pads[0] + pads[2]).checked_sub(3),
        (w + pads[1] + pads[3]).checked_sub(3),
    ) {
        (Some(a), Some(b)) => (a / stride + 1, b / stride + 1),
        _ => return Ok(()),
    };
    let mut s = seed | 1;
    let conv = plain_conv(c, c, 3, stride, pads, c, act);
    let x = common::rand_vec(&mut s, n * c * h * w, -1.0, 1.0);
    let wts = common::rand_vec(&mut s, c * 9, -1.0, 1.0);
    let b = bias.then(|| common::rand_vec(&mut s, c, -1.0, 1.0));
    let (ins, outs) = ([c, h, w], [c, oh, ow]);
    let (want, mag) = reference(&conv, n, ins, outs, &x, &wts, b.as_deref(), None);
    let x_nhwc = to_nhwc(&x, c, h * w);
    for isa in Isa::supported() {
        let k = DepthwiseNhwc::new(isa, &conv, ins, outs, threads).expect("depthwise 3x3");
        let mut wt = vec![f32::NAN; 9 * c];
        k.transpose_weights(&wts, &mut wt);
        let mut got = vec![f32::NAN; n * c * oh * ow];
        k.run(threads, n, &wt, b.as_deref(), &x_nhwc, &mut got);
        let got = to_planar(&got, c, oh * ow);
        within(&got, &want, &mag)?;
        let planar = DepthwiseKernel::new(isa, &conv, ins, outs).expect("depthwise");
        if planar.uniform_chain() {
            let mut expect = vec![f32::NAN; n * c * oh * ow];
            let (si, so) = (c * h * w, c * oh * ow);
            for s in 0..n {
                planar.run(
                    &wts,
                    b.as_deref(),
                    &x[s * si..(s + 1) * si],
                    None,
                    &mut expect[s * so..(s + 1) * so],
                );
            }
            prop_assert!(
                same_bits(&got, &expect),
                "[{}] {} threads: differs from the planar kernel ({})",
                isa,
                threads,
                planar.algorithm()
            );
        }
    }
    Ok(())
}

#[test]
fn pointwise_edge_shapes() {
    // One pixel, one channel; a row tile of 1 after 12s; tails of 1, 15, 17 and 31
    // columns; MobileNetV2's 7×7 and 14×14 shapes; K in several blocks on every tier
    // (blocks of 192, 384 and 768 steps on AVX-512, AVX2 and portable: later blocks
    // start from C); a 7×7 projection (split by rows, each row group tiled on its own).
    for shape in [
        (400, 47, 3, 5, 2),
        (1600, 20, 2, 3, 1),
        (1, 1, 1, 1, 1),
        (3, 33, 1, 13, 2),
        (17, 47, 5, 5, 1),
        (9, 15, 2, 3, 3),
        (160, 960, 7, 7, 1),
        (960, 160, 7, 7, 1),
        (64, 96, 14, 14, 1),
        (24, 31, 4, 9, 2),
    ] {
        for threads in [1, 3] {
            check_pointwise(shape, Activation::Relu, true, true, threads, 5).unwrap();
        }
    }
}

#[test]
fn depthwise_edge_shapes() {
    for (shape, stride, pads) in [
        ((16, 1, 1, 1), 1, [1; 4]),
        ((32, 7, 7, 2), 1, [1; 4]),
        ((48, 14, 14, 1), 2, [1; 4]),
        ((16, 2, 9, 1), 2, [0, 1, 1, 0]),
        ((64, 3, 3, 1), 1, [0; 4]),
        ((16, 28, 28, 1), 2, [1; 4]),
        ((32, 5, 30, 2), 1, [1, 0, 0, 1]),
        // Several channel blocks (`DepthwiseNhwc::rows`: 192 or 112 channels on AVX-512,
        // 200 or 112 on AVX2, 204 or 112 on the portable tier), the last one short.
        ((400, 7, 9, 1), 1, [1; 4]),
        ((240, 9, 20, 2), 2, [1, 0, 1, 1]),
    ] {
        for threads in [1, 3] {
            let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
            check_depthwise(shape, stride, pads, relu6, true, threads, 7).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// The layout copies on every tier against the element-by-element transpose: whole
    /// 8 × 8 blocks and edges of 1 to 7 rows or columns, several samples.
    #[test]
    fn layout_copies_equal_the_plain_transpose(
        c in 1usize..=40,
        hw in 1usize..=40,
        n in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let mut s = seed | 1;
        let x = common::rand_vec(&mut s, n * c * hw, -1.0, 1.0);
        let mut want = vec![0.0; x.len()];
        for b in 0..n {
            for ch in 0..c {
                for p in 0..hw {
                    want[b * c * hw + p * c + ch] = x[b * c * hw + ch * hw + p];
                }
            }
        }
        for isa in Isa::supported() {
            let mut got = vec![f32::NAN; x.len()];
            nhwc::to_nhwc(isa, &x, n, c, hw, &mut got);
            prop_assert!(same_bits(&got, &want), "[{isa}] to_nhwc {c}x{hw}, {n} samples");
            let mut back = vec![f32::NAN; x.len()];
            nhwc::to_planar(isa, &got, n, c, hw, &mut back);
            prop_assert!(same_bits(&back, &x), "[{isa}] to_planar {c}x{hw}, {n} samples");
        }
    }

    #[test]
    fn pointwise_equals_the_planar_gemm_and_the_reference(
        shape in (1usize..=70, 1usize..=100, 1usize..=9, 1usize..=15, 1usize..=2),
        act in activation(),
        bias in any::<bool>(),
        residual in any::<bool>(),
        threads in 1usize..=3,
        seed in any::<u64>(),
    ) {
        check_pointwise(shape, act, bias, residual, threads, seed)?;
    }

    #[test]
    fn depthwise_equals_the_planar_layer_and_the_reference(
        shape in (1usize..=4, 1usize..=16, 1usize..=31, 1usize..=2),
        stride in 1usize..=2,
        pads in [0usize..=1, 0usize..=1, 0usize..=1, 0usize..=1],
        act in prop_oneof![
            Just(Activation::Identity),
            Just(Activation::Relu),
            Just(Activation::Clip { min: 0.0, max: 6.0 }),
        ],
        bias in any::<bool>(),
        threads in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let (groups, h, w, n) = shape;
        check_depthwise((16 * groups, h, w, n), stride, pads, act, bias, threads, seed)?;
    }
}

#[test]
fn session_runs_small_maps_channels_last_with_the_same_bits() {
    let zoo = common::small_map_blocks();
    let refs: Vec<&[f32]> = zoo.weights.iter().map(|w| w.as_slice()).collect();
    let model = zoo.model();
    let mut seed = 4u64;
    let n = 2;
    let x = common::rand_vec(&mut seed, n * 16 * 14 * 14, -2.0, 2.0);
    let expect = run_graph(&zoo.graph, &refs, &[&x], n).unwrap().remove(0);
    for isa in Isa::supported() {
        let opts = SessionOptions::default().max_batch(n).max_isa(isa);
        let mut planar = model.session(opts.clone().channels_last(false)).unwrap();
        assert!(!planar.algorithms().iter().any(|a| a.ends_with("_nhwc")));
        let want = planar.run(&x, n).unwrap().to_vec();
        let err = common::rel_err(&want, &expect);
        assert!(err < 1e-4, "[{isa}] planar rel err {err:.2e}");
        for threads in [1usize, 2, 3] {
            let mut s = model
                .session(opts.clone().threads(Threads::Count(threads)))
                .unwrap();
            let algos = s.algorithms();
            assert_eq!(
                algos.iter().filter(|a| **a == "gemm1x1_nhwc").count(),
                5,
                "[{isa}] {algos:?}"
            );
            assert_eq!(
                algos.iter().filter(|a| **a == "dw3x3_nhwc").count(),
                2,
                "[{isa}] {algos:?}"
            );
            // Twice: the second run must not depend on what the first left behind.
            for _ in 0..2 {
                let got = s.run(&x, n).unwrap();
                assert!(
                    same_bits(got, &want),
                    "[{isa}] channels-last, {threads} threads, differs from planar"
                );
            }
            // A smaller batch than planned.
            let got = s.run(&x[..16 * 14 * 14], 1).unwrap();
            assert!(same_bits(got, &want[..48]), "[{isa}] batch 1");
        }
    }
}

/// The converter stores the region's 1×1 weights in the panels the channels-last kernel
/// reads in place (`LinearGemm`); a session that runs them planar repacks them. Same bits
/// either way, and as the plain file.
#[test]
fn converted_file_stores_the_region_weights_in_panels() {
    use cnnrt::format::{model_to_bytes, Metadata};
    use cnnrt::graph::{Op, WeightLayout};
    let zoo = common::small_map_blocks();
    let converted = zoo.converted(1);
    let (graph, weights, _) = converted.packed_for_file();
    let mut panels = 0;
    for node in &graph.nodes {
        if let Op::Conv(c) = &node.op {
            if c.kernel == [1, 1] {
                assert_eq!(graph.weights[c.weight].layout, WeightLayout::LinearGemm);
                panels += 1;
            }
        }
    }
    assert_eq!(panels, 5);
    let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
    let bytes = model_to_bytes(&graph, &refs, &Metadata::default()).unwrap();
    let packed = cnnrt::Model::from_bytes(&bytes).unwrap();
    let plain = zoo.model();
    let mut seed = 8u64;
    let n = 2;
    let x = common::rand_vec(&mut seed, n * 16 * 14 * 14, -2.0, 2.0);
    for isa in Isa::supported() {
        let opts = SessionOptions::default().max_batch(n).max_isa(isa);
        let want = plain
            .session(opts.clone())
            .unwrap()
            .run(&x, n)
            .unwrap()
            .to_vec();
        for channels_last in [true, false] {
            for threads in [1usize, 2] {
                let mut s = packed
                    .session(
                        opts.clone()
                            .channels_last(channels_last)
                            .threads(Threads::Count(threads)),
                    )
                    .unwrap();
                let nhwc = s
                    .algorithms()
                    .iter()
                    .filter(|a| a.ends_with("_nhwc"))
                    .count();
                assert_eq!(nhwc, if channels_last { 7 } else { 0 }, "[{isa}]");
                let got = s.run(&x, n).unwrap();
                assert!(
                    same_bits(got, &want),
                    "[{isa}] channels-last {channels_last}, {threads} threads: differs"
                );
            }
        }
    }
}
