//! Pooling against `reference::pool` / `reference::global_pool`, on every ISA tier this CPU
//! has, with NaN and ±inf in the inputs.
//!
//! Tolerances: max pooling is exact (same value, or both NaN). Average pooling:
//! `|got - want| <= 2e-6 * avg(|x|)` over the same window (f32 sums of at most 16 terms
//! against f64), exact for ±inf and NaN. Global average (summed in f64):
//! `|got - want| <= 1e-6 * mean(|x|)`; global max exact.

use cnnrt::graph::shape::window_output;
use cnnrt::graph::{Pool, PoolKind};
use cnnrt::kernels::pool::{global_pool, PoolKernel};
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
    /// Uniform in [-4, 4), with NaN, +inf and -inf each with probability `special / 3`.
    fn value(&mut self, special: f64) -> f32 {
        let u = self.next();
        let p = (u >> 11) as f64 / (1u64 << 53) as f64;
        if p < special {
            [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][(u % 3) as usize]
        } else {
            ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 4.0
        }
    }
    fn vec(&mut self, n: usize, special: f64) -> Vec<f32> {
        (0..n).map(|_| self.value(special)).collect()
    }
}

fn same(got: f32, want: f32) -> bool {
    got == want || (got.is_nan() && want.is_nan())
}

#[derive(Clone, Debug)]
struct Case {
    pool: Pool,
    c: usize,
    h: usize,
    w: usize,
    special: f64,
    seed: u64,
}

impl Case {
    fn out_hw(&self) -> Option<(usize, usize)> {
        let p = &self.pool;
        let oh = window_output(self.h, p.kernel[0], p.stride[0], p.dilation[0], p.pads[0], p.pads[2], p.ceil_mode)?;
        let ow = window_output(self.w, p.kernel[1], p.stride[1], p.dilation[1], p.pads[1], p.pads[3], p.ceil_mode)?;
        Some((oh, ow))
    }
}

fn case() -> impl Strategy<Value = Case> {
    let kind = prop_oneof![Just(PoolKind::Max), Just(PoolKind::Average)];
    let kernel = prop_oneof![2 => Just([2usize, 2]), 2 => Just([3usize, 3]), 2 => (1usize..=4, 1usize..=4).prop_map(|(a, b)| [a, b])];
    let stride = prop_oneof![3 => Just([2usize, 2]), 1 => Just([1, 1]), 2 => (1usize..=3, 1usize..=3).prop_map(|(a, b)| [a, b])];
    let dilation = prop_oneof![4 => Just([1usize, 1]), 1 => (1usize..=2, 1usize..=2).prop_map(|(a, b)| [a, b])];
    let pads = prop_oneof![1 => Just([0usize; 4]), 1 => Just([1usize; 4]), 2 => [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2]];
    let special = prop_oneof![2 => Just(0.0), 1 => Just(0.01), 1 => Just(0.1)];
    (kind, kernel, stride, dilation, pads, any::<bool>(), any::<bool>(), 1usize..=33, 1usize..=20, 1usize..=72, special, any::<u64>())
        .prop_map(|(kind, kernel, stride, dilation, pads, ceil_mode, count_include_pad, c, h, w, special, seed)| Case {
            pool: Pool { kind, kernel, stride, dilation, pads, ceil_mode, count_include_pad },
            c,
            h,
            w,
            special,
            seed,
        })
        .prop_filter("window larger than the padded input", |c| c.out_hw().is_some())
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let (oh, ow) = case.out_hw().unwrap();
    let x = Rng(case.seed).vec(case.c * case.h * case.w, case.special);
    let (in_shape, out_shape) = ([case.c, case.h, case.w], [case.c, oh, ow]);
    let mut want = vec![0.0; case.c * oh * ow];
    reference::pool(&x, 1, &in_shape, &case.pool, &out_shape, &mut want);
    let mut mag = vec![0.0; want.len()];
    if case.pool.kind == PoolKind::Average {
        let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        reference::pool(&ax, 1, &in_shape, &case.pool, &out_shape, &mut mag);
    }
    for isa in Isa::supported() {
        let k = PoolKernel::new(isa, &case.pool, in_shape, out_shape).expect("pool");
        prop_assert_eq!(k.isa(), isa);
        let mut got = vec![0.5; want.len()];
        k.run(&x, &mut got);
        for i in 0..want.len() {
            let ok = match case.pool.kind {
                PoolKind::Max => same(got[i], want[i]),
                PoolKind::Average => same(got[i], want[i]) || (got[i] - want[i]).abs() <= 2e-6 * mag[i],
            };
            prop_assert!(ok, "{} {}: out[{}] = {} want {}, {:?}", isa, k.algorithm(), i, got[i], want[i], case);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference(case in case()) {
        check(&case)?;
    }

    /// Shifting the input by one stride along W (or H) shifts the output by one column
    /// (row) wherever both windows lie inside the input: exactly for max, to rounding for
    /// average (whole-vector and masked bodies sum in different orders).
    #[test]
    fn translation_equivariance(case in case(), vertical in any::<bool>()) {
        let (oh, ow) = case.out_hw().unwrap();
        let (c, h, w) = (case.c, case.h, case.w);
        let x = Rng(case.seed).vec(c * h * w, case.special);
        let ax = if vertical { 0 } else { 1 };
        let p = &case.pool;
        let s = p.stride[ax];
        let in_len = if vertical { h } else { w };
        prop_assume!(in_len > s);
        let mut x2 = x.clone();
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let (sy, sx) = if vertical { (y.wrapping_sub(s), xx) } else { (y, xx.wrapping_sub(s)) };
                    if sy < h && sx < w {
                        x2[(ch * h + y) * w + xx] = x[(ch * h + sy) * w + sx];
                    }
                }
            }
        }
        let ax_abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let mut mag = vec![0.0; c * oh * ow];
        reference::pool(&ax_abs, 1, &[c, h, w], p, &[c, oh, ow], &mut mag);
        for isa in Isa::supported() {
            let k = PoolKernel::new(isa, p, [c, h, w], [c, oh, ow]).unwrap();
            let (mut o1, mut o2) = (vec![0.0; c * oh * ow], vec![0.0; c * oh * ow]);
            k.run(&x, &mut o1);
            k.run(&x2, &mut o2);
            let (kk, dil, pad) = (p.kernel[ax], p.dilation[ax], p.pads[ax]);
            let out_len = if vertical { oh } else { ow };
            let inside = |i: usize| i * s >= pad && (i + 1) * s + (kk - 1) * dil < in_len + pad;
            for ch in 0..c {
                for y in 0..oh {
                    for xx in 0..ow {
                        let i = if vertical { y } else { xx };
                        if i + 1 >= out_len || !inside(i) {
                            continue;
                        }
                        let (y2, x2i) = if vertical { (y + 1, xx) } else { (y, xx + 1) };
                        let idx = (ch * oh + y) * ow + xx;
                        let (a, b) = (o1[idx], o2[(ch * oh + y2) * ow + x2i]);
                        let ok = same(a, b) || (p.kind == PoolKind::Average && (a - b).abs() <= 2e-6 * mag[idx]);
                        prop_assert!(ok, "{} {}: {} != {} at c{} y{} x{}", isa, k.algorithm(), a, b, ch, y, xx);
                    }
                }
            }
        }
    }

    #[test]
    fn global_matches_reference(max in any::<bool>(), c in 1usize..=33, hw in 1usize..=300, special in prop_oneof![Just(0.0), Just(0.01)], seed in any::<u64>()) {
        let kind = if max { PoolKind::Max } else { PoolKind::Average };
        let x = Rng(seed).vec(c * hw, special);
        let mut want = vec![0.0; c];
        reference::global_pool(&x, 1, &[c, hw], kind, &mut want);
        let mut mag = vec![0.0; c];
        let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        reference::global_pool(&ax, 1, &[c, hw], PoolKind::Average, &mut mag);
        for isa in Isa::supported() {
            let mut got = vec![0.5; c];
            global_pool(isa, kind, &x, c, hw, &mut got);
            for i in 0..c {
                let ok = same(got[i], want[i]) || (!max && (got[i] - want[i]).abs() <= 1e-6 * mag[i]);
                prop_assert!(ok, "{} {:?}: plane {} = {} want {}", isa, kind, i, got[i], want[i]);
            }
        }
    }
}

fn pool(kind: PoolKind, kernel: [usize; 2], stride: [usize; 2], pads: [usize; 4], ceil_mode: bool, count_include_pad: bool) -> Pool {
    Pool { kind, kernel, stride, dilation: [1, 1], pads, ceil_mode, count_include_pad }
}

/// Each body is chosen where the module docs say, and each is right on ResNet / VGG-sized
/// planes, with and without NaN.
#[test]
fn algorithms_and_network_shapes() {
    use PoolKind::*;
    let cases = [
        (pool(Max, [3, 3], [2, 2], [1, 1, 1, 1], false, false), 112, "pool3x3_s2"),
        (pool(Average, [3, 3], [2, 2], [1, 1, 1, 1], false, true), 57, "pool3x3_s2"),
        (pool(Max, [3, 3], [2, 2], [0, 0, 0, 0], true, false), 55, "pool3x3_s2"),
        (pool(Max, [2, 2], [2, 2], [0, 0, 0, 0], false, false), 56, "pool2x2_s2"),
        (pool(Average, [2, 2], [2, 2], [0, 0, 0, 0], true, false), 75, "pool2x2_s2"),
        (pool(Max, [3, 3], [1, 1], [1, 1, 1, 1], false, false), 40, "pool_rows_s1"),
        (pool(Average, [5, 5], [2, 2], [2, 2, 2, 2], true, false), 41, "pool_rows_s2"),
        (pool(Max, [3, 3], [3, 3], [1, 1, 1, 1], true, false), 40, "pool_generic"),
    ];
    for (p, hw, algo) in cases {
        for special in [0.0, 0.001] {
            let case = Case { pool: p.clone(), c: 3, h: hw, w: hw, special, seed: 11 };
            let (oh, ow) = case.out_hw().unwrap();
            for isa in Isa::supported() {
                let k = PoolKernel::new(isa, &p, [3, hw, hw], [3, oh, ow]).unwrap();
                assert_eq!(k.algorithm(), algo, "{p:?}");
            }
            check(&case).unwrap();
        }
    }
}

#[test]
fn refuses_mismatched_shapes() {
    let p = pool(PoolKind::Max, [3, 3], [2, 2], [1, 1, 1, 1], false, false);
    assert!(PoolKernel::new(Isa::Scalar, &p, [4, 112, 112], [4, 56, 56]).is_some());
    assert!(PoolKernel::new(Isa::Scalar, &p, [4, 112, 112], [4, 57, 56]).is_none());
    assert!(PoolKernel::new(Isa::Scalar, &p, [4, 112, 112], [3, 56, 56]).is_none());
}
