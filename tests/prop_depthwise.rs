//! Depthwise convolution against `reference::conv2d`, on every ISA tier this CPU has.
//!
//! Tolerance, per output: `|got - want| <= 1e-5 * mag + 1e-6 * |want| + 1e-6`, where
//! `mag = sum |x·w|` over the window `+ |bias| + |residual|` (f32 accumulation in a different
//! order than the f64 reference; the activations used here have slope at most 1).

use cnnrt::graph::shape::window_output;
use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::depthwise::DepthwiseKernel;
use cnnrt::kernels::reference;
use cnnrt::simd::Isa;
use proptest::prelude::*;

/// SplitMix64: test data from one seed, so proptest shrinks shapes, not thousands of floats.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

#[derive(Clone, Debug)]
struct Case {
    c: usize,
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
    act: Activation,
    bias: bool,
    residual: bool,
    seed: u64,
}

impl Case {
    fn conv(&self) -> Conv {
        Conv {
            in_channels: self.c,
            out_channels: self.c,
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
            pads: self.pads,
            groups: self.c,
            weight: 0,
            bias: None,
            activation: self.act,
        }
    }

    fn out_hw(&self) -> Option<(usize, usize)> {
        let oh = window_output(
            self.h,
            self.kernel[0],
            self.stride[0],
            self.dilation[0],
            self.pads[0],
            self.pads[2],
            false,
        )?;
        let ow = window_output(
            self.w,
            self.kernel[1],
            self.stride[1],
            self.dilation[1],
            self.pads[1],
            self.pads[3],
            false,
        )?;
        Some((oh, ow))
    }
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
        Just(Activation::Sigmoid),
        Just(Activation::HardSwish),
        Just(Activation::Silu),
        Just(Activation::Tanh),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let kernel = prop_oneof![3 => Just([3usize, 3]), 1 => (1usize..=5, 1usize..=5).prop_map(|(a, b)| [a, b])];
    let stride = prop_oneof![2 => Just([1usize, 1]), 2 => Just([2, 2]), 1 => (1usize..=3, 1usize..=3).prop_map(|(a, b)| [a, b])];
    let dilation = prop_oneof![4 => Just([1usize, 1]), 1 => (1usize..=3, 1usize..=3).prop_map(|(a, b)| [a, b])];
    let pads = prop_oneof![2 => Just([1usize, 1, 1, 1]), 2 => [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3]];
    (
        1usize..=33,
        1usize..=24,
        1usize..=70,
        kernel,
        stride,
        dilation,
        pads,
        activation(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(c, h, w, kernel, stride, dilation, pads, act, bias, residual, seed)| Case {
                c,
                h,
                w,
                kernel,
                stride,
                dilation,
                pads,
                act,
                bias,
                residual,
                seed,
            },
        )
        .prop_filter("window larger than the padded input", |c| {
            c.out_hw().is_some()
        })
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    r: Option<Vec<f32>>,
}

fn data(case: &Case) -> Data {
    let (oh, ow) = case.out_hw().unwrap();
    let mut rng = Rng(case.seed);
    Data {
        x: rng.vec(case.c * case.h * case.w),
        w: rng.vec(case.c * case.kernel[0] * case.kernel[1]),
        b: case.bias.then(|| rng.vec(case.c)),
        r: case.residual.then(|| rng.vec(case.c * oh * ow)),
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let (oh, ow) = case.out_hw().unwrap();
    let d = data(case);
    let conv = case.conv();
    let in_shape = [case.c, case.h, case.w];
    let out_shape = [case.c, oh, ow];
    let mut want = vec![0.0; case.c * oh * ow];
    reference::conv2d(
        &d.x,
        1,
        &in_shape,
        &conv,
        &d.w,
        d.b.as_deref(),
        d.r.as_deref(),
        &out_shape,
        &mut want,
    );
    // The magnitude that bounds the rounding error of each output.
    let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    let mut mag = vec![0.0; want.len()];
    let plain = Conv {
        activation: Activation::Identity,
        ..conv.clone()
    };
    let (ab, ar) = (d.b.as_deref().map(abs), d.r.as_deref().map(abs));
    reference::conv2d(
        &abs(&d.x),
        1,
        &in_shape,
        &plain,
        &abs(&d.w),
        ab.as_deref(),
        ar.as_deref(),
        &out_shape,
        &mut mag,
    );
    for isa in Isa::supported() {
        let k = DepthwiseKernel::new(isa, &conv, in_shape, out_shape).expect("depthwise");
        prop_assert_eq!(k.isa(), isa);
        let mut got = vec![f32::NAN; want.len()];
        k.run(&d.w, d.b.as_deref(), &d.x, d.r.as_deref(), &mut got);
        if k.algorithm().contains("interleaved") {
            // The interleaved path repeats the row path's operations exactly.
            let rows = k.clone().without_interleaved();
            let mut by_rows = vec![f32::NAN; want.len()];
            rows.run(&d.w, d.b.as_deref(), &d.x, d.r.as_deref(), &mut by_rows);
            prop_assert!(
                got.iter()
                    .zip(&by_rows)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {} differs from {}: {:?}",
                isa,
                k.algorithm(),
                rows.algorithm(),
                case
            );
        }
        for i in 0..want.len() {
            let tol = 1e-5 * mag[i] + 1e-6 * want[i].abs() + 1e-6;
            prop_assert!(
                (got[i] - want[i]).abs() <= tol,
                "{} {}: out[{}] = {} want {} (tol {:e}), {:?}",
                isa,
                k.algorithm(),
                i,
                got[i],
                want[i],
                tol,
                case
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference(case in case()) {
        check(&case)?;
    }

    /// Shifting the input by one stride along W (or H) shifts the output by one column
    /// (row), exactly, wherever both windows lie inside the input.
    #[test]
    fn translation_equivariance(case in case(), vertical in any::<bool>()) {
        let (oh, ow) = case.out_hw().unwrap();
        let d = data(&case);
        let conv = case.conv();
        let (h, w) = (case.h, case.w);
        let ax = if vertical { 0 } else { 1 };
        let s = case.stride[ax];
        let in_len = if vertical { h } else { w };
        prop_assume!(in_len > s);
        // x2[.., i] = x[.., i - s] along the axis.
        let mut x2 = d.x.clone();
        for ch in 0..case.c {
            for y in 0..h {
                for xx in 0..w {
                    let (sy, sx) = if vertical { (y.wrapping_sub(s), xx) } else { (y, xx.wrapping_sub(s)) };
                    if sy < h && sx < w {
                        x2[(ch * h + y) * w + xx] = d.x[(ch * h + sy) * w + sx];
                    }
                }
            }
        }
        let out_shape = [case.c, oh, ow];
        for isa in Isa::supported() {
            let k = DepthwiseKernel::new(isa, &conv, [case.c, h, w], out_shape).unwrap();
            let (mut o1, mut o2) = (vec![0.0; case.c * oh * ow], vec![0.0; case.c * oh * ow]);
            k.run(&d.w, d.b.as_deref(), &d.x, None, &mut o1);
            k.run(&d.w, d.b.as_deref(), &x2, None, &mut o2);
            let (k_, dil, pad) = (case.kernel[ax], case.dilation[ax], case.pads[ax]);
            let out_len = if vertical { oh } else { ow };
            // Output i of x (window i*s - pad ..) and output i+1 of x2 see the same data
            // when the window lies inside the input in both.
            let inside = |i: usize| i * s >= pad && (i + 1) * s + (k_ - 1) * dil < in_len + pad;
            for ch in 0..case.c {
                for y in 0..oh {
                    for xx in 0..ow {
                        let i = if vertical { y } else { xx };
                        if i + 1 >= out_len || !inside(i) {
                            continue;
                        }
                        let (y2, x2i) = if vertical { (y + 1, xx) } else { (y, xx + 1) };
                        let (a, b) = (o1[(ch * oh + y) * ow + xx], o2[(ch * oh + y2) * ow + x2i]);
                        prop_assert!(a == b, "{} {}: {} != {} at c{} y{} x{}", isa, k.algorithm(), a, b, ch, y, xx);
                    }
                }
            }
        }
    }
}

fn mk(
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
    c: usize,
    h: usize,
    w: usize,
) -> Case {
    Case {
        c,
        h,
        w,
        kernel,
        stride,
        dilation,
        pads,
        act: Activation::Clip { min: 0.0, max: 6.0 },
        bias: true,
        residual: true,
        seed: 7,
    }
}

/// Each body is chosen where the module docs say, and each is right on MobileNet-sized
/// planes (long rows: many whole vectors, then a tail).
#[test]
fn algorithms_and_mobilenet_shapes() {
    let cases = [
        (
            mk([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 4, 56, 56),
            "dw3x3_s1",
        ),
        (
            mk([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], 4, 57, 57),
            "dw3x3_s2",
        ),
        (
            mk([3, 3], [2, 2], [1, 1], [0, 0, 1, 1], 3, 56, 56),
            "dw3x3_s2",
        ),
        (
            mk([3, 3], [1, 2], [1, 1], [1, 1, 1, 1], 2, 9, 71),
            "dw3x3_s2",
        ),
        (
            mk([5, 5], [1, 1], [1, 1], [2, 2, 2, 2], 3, 28, 28),
            "dw_rows_s1",
        ),
        (
            mk([3, 3], [1, 1], [2, 2], [2, 2, 2, 2], 3, 20, 40),
            "dw_rows_s1",
        ),
        (
            mk([5, 5], [2, 2], [1, 1], [2, 2, 2, 2], 3, 29, 45),
            "dw_rows_s2",
        ),
        (
            mk([3, 3], [3, 3], [1, 1], [1, 1, 1, 1], 3, 20, 20),
            "dw_generic",
        ),
    ];
    for (case, algo) in cases {
        let (oh, ow) = case.out_hw().unwrap();
        for isa in Isa::supported() {
            let k = DepthwiseKernel::new(
                isa,
                &case.conv(),
                [case.c, case.h, case.w],
                [case.c, oh, ow],
            )
            .unwrap();
            assert_eq!(k.algorithm(), algo, "{case:?}");
        }
        check(&case).unwrap();
    }
}

#[test]
fn refuses_what_is_not_depthwise() {
    let mut conv = mk([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 4, 8, 8).conv();
    assert!(DepthwiseKernel::new(Isa::Scalar, &conv, [4, 8, 8], [4, 8, 8]).is_some());
    assert!(
        DepthwiseKernel::new(Isa::Scalar, &conv, [4, 8, 8], [4, 7, 8]).is_none(),
        "wrong output shape"
    );
    conv.groups = 2;
    assert!(
        DepthwiseKernel::new(Isa::Scalar, &conv, [4, 8, 8], [4, 8, 8]).is_none(),
        "grouped"
    );
    conv.groups = 4;
    conv.out_channels = 8;
    assert!(
        DepthwiseKernel::new(Isa::Scalar, &conv, [4, 8, 8], [8, 8, 8]).is_none(),
        "multiplier 2"
    );
}

/// Splitting a sample by channels gives the same result as running it whole.
#[test]
fn run_channels_matches_run() {
    let case = mk([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], 7, 13, 21);
    let (oh, ow) = case.out_hw().unwrap();
    let d = data(&case);
    let plane = oh * ow;
    for isa in Isa::supported() {
        let k = DepthwiseKernel::new(isa, &case.conv(), [7, 13, 21], [7, oh, ow]).unwrap();
        let mut whole = vec![0.0; 7 * plane];
        k.run(&d.w, d.b.as_deref(), &d.x, d.r.as_deref(), &mut whole);
        let mut parts = vec![0.0; 7 * plane];
        let (a, b) = parts.split_at_mut(3 * plane);
        let r = d.r.as_deref().unwrap();
        k.run_channels(0..3, &d.w, d.b.as_deref(), &d.x, Some(&r[..3 * plane]), a);
        k.run_channels(3..7, &d.w, d.b.as_deref(), &d.x, Some(&r[3 * plane..]), b);
        assert_eq!(whole, parts, "{isa}");
    }
}

/// 3×3 shapes for the padded-row path (stride along W 1 or 2, left and right padding at
/// most 1, rows up to 512 wide): widths around the vector widths and the 512 limit, every
/// stride and padding combination, and planes tall enough for several bands of rows.
fn padded_case() -> impl Strategy<Value = Case> {
    let width = prop_oneof![
        3 => 1usize..=40,
        1 => 100usize..=130,
        1 => 500usize..=520,
    ];
    case_3x3(1usize..=5, 1usize..=40, width, 1usize..=3)
}

/// 3×3 depthwise cases over the given channel counts, heights, widths and strides along
/// H (stride along W 1 or 2, left / right padding 0 or 1, top / bottom 0 to 2).
fn case_3x3(
    c: impl Strategy<Value = usize>,
    h: impl Strategy<Value = usize>,
    w: impl Strategy<Value = usize>,
    sh: impl Strategy<Value = usize>,
) -> impl Strategy<Value = Case> {
    (
        c,
        h,
        w,
        (1usize..=2, sh),
        (0usize..=1, 0usize..=1, 0usize..=2, 0usize..=2),
        activation(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(c, h, w, (sw, sh), (pl, pr, pt, pb), act, bias, residual, seed)| Case {
                c,
                h,
                w,
                kernel: [3, 3],
                stride: [sh, sw],
                dilation: [1, 1],
                pads: [pt, pl, pb, pr],
                act,
                bias,
                residual,
                seed,
            },
        )
        .prop_filter("window larger than the padded input", |c| {
            c.out_hw().is_some()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn padded_rows_match_reference(case in padded_case()) {
        check(&case)?;
    }
}

/// The padded-row 3×3 path at its edges: widths a vector short of, at and past the
/// vector widths and the 512 limit, planes of several bands of buffered rows (short rows
/// need many), one-row and one-column planes, every padding of 0 and 1.
#[test]
fn padded_rows_edges() {
    let mut cases = vec![];
    for &(h, w) in &[
        (1, 1),
        (1, 9),
        (5, 1),
        (3, 2),
        (7, 7),
        (9, 8),
        (6, 15),
        (6, 16),
        (6, 17),
        (4, 31),
        (4, 33),
        (40, 112),
        (33, 113),
        (470, 16),
        (300, 35),
        (40, 511),
        (40, 512),
        (20, 513),
    ] {
        for stride in [[1, 1], [2, 2], [1, 2], [2, 1]] {
            for pads in [
                [1, 1, 1, 1],
                [0, 0, 0, 0],
                [0, 0, 1, 1],
                [1, 1, 0, 0],
                [2, 0, 1, 1],
            ] {
                let mut case = mk([3, 3], stride, [1, 1], pads, 2, h, w);
                case.seed = (h * 1000 + w) as u64;
                if case.out_hw().is_some() {
                    cases.push(case);
                }
            }
        }
    }
    for case in &cases {
        check(case).unwrap_or_else(|e| panic!("{case:?}: {e}"));
    }
    // Every activation (those other than clamps take another epilogue) and no bias or
    // residual, on a plane with a tail.
    for act in [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::HardSwish,
        Activation::Sigmoid,
    ] {
        for stride in [[1, 1], [2, 2]] {
            let mut case = mk([3, 3], stride, [1, 1], [1, 1, 1, 1], 3, 13, 29);
            case.act = act;
            case.bias = false;
            case.residual = false;
            check(&case).unwrap_or_else(|e| panic!("{case:?}: {e}"));
        }
    }
}

/// 3×3 shapes for the channel-interleaved path (small planes, at least a vector of
/// channels): channel counts off the vector widths (groups with a remainder), planes whose
/// pixel count is not a multiple of the vector width, strides 1 and 2 along each axis,
/// paddings 0 and 1 (0 to 2 along H), planes split by channels.
fn interleaved_case() -> impl Strategy<Value = Case> {
    case_3x3(16usize..=41, 1usize..=20, 1usize..=16, 1usize..=2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_matches_reference_and_rows(case in interleaved_case()) {
        check(&case)?;
        let (oh, ow) = case.out_hw().unwrap();
        for isa in Isa::supported() {
            let k = DepthwiseKernel::new(isa, &case.conv(), [case.c, case.h, case.w], [case.c, oh, ow]).unwrap();
            prop_assert!(k.algorithm().contains("interleaved"), "{} {}: {:?}", isa, k.algorithm(), case);
        }
    }
}

/// The interleaved path over a channel split that cuts its groups: the same bits as the
/// whole sample (which the threads rely on).
#[test]
fn interleaved_run_channels_matches_run() {
    let case = mk([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 37, 14, 14);
    let (oh, ow) = case.out_hw().unwrap();
    let d = data(&case);
    let plane = oh * ow;
    for isa in Isa::supported() {
        let k = DepthwiseKernel::new(isa, &case.conv(), [37, 14, 14], [37, oh, ow]).unwrap();
        assert!(k.algorithm().contains("interleaved"), "{isa}");
        let mut whole = vec![0.0; 37 * plane];
        k.run(&d.w, d.b.as_deref(), &d.x, d.r.as_deref(), &mut whole);
        let mut parts = vec![0.0; 37 * plane];
        let (a, b) = parts.split_at_mut(11 * plane);
        let r = d.r.as_deref().unwrap();
        k.run_channels(0..11, &d.w, d.b.as_deref(), &d.x, Some(&r[..11 * plane]), a);
        k.run_channels(
            11..37,
            &d.w,
            d.b.as_deref(),
            &d.x,
            Some(&r[11 * plane..]),
            b,
        );
        assert_eq!(whole, parts, "{isa}");
    }
}
