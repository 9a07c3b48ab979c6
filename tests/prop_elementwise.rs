//! Element-wise kernels against `kernels::reference`, on every ISA tier this CPU has, with
//! NaN, ±inf and ±0 among the inputs.
//!
//! Tolerances (NaN must match NaN, ±inf must match exactly, everywhere):
//! * activations: `|got - want| <= 1e-6 * |want| + 1e-37` for the transcendental ones
//!   (sigmoid, SiLU, tanh: measured max 1.7e-7 relative, see `elementwise` docs; the floor
//!   covers results that the f64 reference leaves denormal), `2.5e-7 * |want|` for the
//!   piecewise-linear ones, plus, for HardSigmoid / HardSwish, an ulp of the terms of
//!   `alpha * x + beta` (`1.2e-7 * (|alpha x| + |beta|)`: the sum may cancel);
//! * affine / binary with an activation: the activation's tolerance plus
//!   `4e-7 * (|x·a| + |b|)` for the rounding of the pre-activation (slopes at most 2);
//! * PReLU: `1.2e-7 * |want|`;
//! * softmax: `(1e-6 + 1.2e-7 * |x - max|) * want + 1e-37` (f32 `x - max` before `exp`);
//! * layer / instance norm: `2e-6 * (|want| + 2 * |bias|) + 1e-6 * |scale| + 1e-7`.

use cnnrt::graph::{Activation, BinaryKind};
use cnnrt::kernels::{elementwise as el, reference};
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
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// Mostly uniform in ±`scale`; with probability `special`, one of NaN, ±inf, ±0,
    /// a huge or a tiny value.
    fn value(&mut self, scale: f32, special: f64) -> f32 {
        let u = self.next();
        if ((u >> 11) as f64 / (1u64 << 53) as f64) < special {
            [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, 1e-30, -95.0, 95.0][(u % 10) as usize]
        } else {
            self.unit() * scale
        }
    }
    fn vec(&mut self, n: usize, scale: f32, special: f64) -> Vec<f32> {
        (0..n).map(|_| self.value(scale, special)).collect()
    }
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        (0.0f32..2.0).prop_map(|alpha| Activation::LeakyRelu { alpha }),
        (-3.0f32..0.0, 0.0f32..6.0).prop_map(|(min, max)| Activation::Clip { min, max }),
        Just(Activation::Sigmoid),
        (0.0f32..1.0, 0.0f32..1.0).prop_map(|(alpha, beta)| Activation::HardSigmoid { alpha, beta }),
        Just(Activation::HardSwish),
        Just(Activation::Silu),
        Just(Activation::Tanh),
    ]
}

/// The tolerance of `act(x)` against the f64 reference `want` (see the file docs).
fn act_tol(act: Activation, x: f32, want: f32) -> f32 {
    let x = if x.is_finite() { x.abs() } else { 0.0 };
    match act {
        Activation::Sigmoid | Activation::Silu | Activation::Tanh => 1e-6 * want.abs() + 1e-37,
        // alpha * x + beta in f32 loses up to an ulp of the larger term.
        Activation::HardSigmoid { alpha, beta } => 2.5e-7 * want.abs() + 1.2e-7 * (alpha.abs() * x + beta.abs()),
        Activation::HardSwish => 2.5e-7 * want.abs() + 1.2e-7 * x * (x / 6.0 + 0.5),
        _ => 2.5e-7 * want.abs(),
    }
}

/// `got` matches `want` within `tol`, NaN for NaN and ±inf exactly.
fn close(got: f32, want: f32, tol: f32) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= tol
    }
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..=40, 41usize..=300]
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        (1usize..=33, 1usize..=9, 1usize..=19).prop_map(|(c, h, w)| vec![c, h, w]),
        (1usize..=40).prop_map(|c| vec![c]),
        (1usize..=5, 1usize..=40).prop_map(|(c, i)| vec![c, i]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn activation_matches(act in activation(), len in len_strategy(), scale in prop_oneof![Just(4.0f32), Just(30.0), Just(100.0)], special in prop_oneof![Just(0.0), Just(0.1)], seed in any::<u64>()) {
        let x = Rng(seed).vec(len, scale, special);
        let mut want = vec![0.0; len];
        reference::activation(&x, act, &mut want);
        for isa in Isa::supported() {
            let mut got = vec![0.5; len];
            el::activation(isa, &x, act, &mut got);
            for i in 0..len {
                prop_assert!(close(got[i], want[i], act_tol(act, x[i], want[i])), "{} {:?}: f({}) = {} want {}", isa, act, x[i], got[i], want[i]);
            }
            let mut inplace = x.clone();
            el::activation_in_place(isa, &mut inplace, act);
            prop_assert!(inplace.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} in place", isa);
        }
    }

    #[test]
    fn channel_affine_matches(shape in shape(), n in 1usize..=2, scale_kind in 0usize..3, shift_kind in 0usize..3, act in activation(), special in prop_oneof![Just(0.0), Just(0.05)], seed in any::<u64>()) {
        let c = shape[0];
        let numel: usize = shape.iter().product::<usize>() * n;
        let mut rng = Rng(seed);
        let x = rng.vec(numel, 4.0, special);
        let mut pick = |k: usize| match k { 0 => None, 1 => Some(rng.vec(1, 2.0, 0.0)), _ => Some(rng.vec(c, 2.0, 0.0)) };
        let (scale, shift) = (pick(scale_kind), pick(shift_kind));
        let mut want = vec![0.0; numel];
        reference::channel_affine(&x, n, &shape, scale.as_deref(), shift.as_deref(), act, &mut want);
        let inner = numel / (n * c);
        let at = |v: &Option<Vec<f32>>, ch: usize, d: f32| v.as_ref().map_or(d, |v| if v.len() == 1 { v[0] } else { v[ch] });
        for isa in Isa::supported() {
            let mut got = vec![0.5; numel];
            el::channel_affine(isa, &x, n, &shape, scale.as_deref(), shift.as_deref(), act, &mut got);
            for i in 0..numel {
                let ch = (i / inner) % c;
                let pre = (x[i] * at(&scale, ch, 1.0)).abs() + at(&shift, ch, 0.0).abs();
                let tol = act_tol(act, 0.0, want[i]) + 4e-7 * pre + 1e-37;
                prop_assert!(close(got[i], want[i], tol), "{} {:?}: {} -> {} want {}", isa, act, x[i], got[i], want[i]);
            }
            let mut inplace = x.clone();
            el::channel_affine_in_place(isa, &mut inplace, n, &shape, scale.as_deref(), shift.as_deref(), act);
            prop_assert!(inplace.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} in place", isa);
        }
    }

    #[test]
    fn binary_matches(shape in shape(), n in 1usize..=2, broadcast in any::<bool>(), mul in any::<bool>(), act in activation(), special in prop_oneof![Just(0.0), Just(0.05)], seed in any::<u64>()) {
        let c = shape[0];
        let numel: usize = shape.iter().product::<usize>() * n;
        let b_shape: Vec<usize> = if broadcast { std::iter::once(c).chain(shape[1..].iter().map(|_| 1)).collect() } else { shape.clone() };
        let mut rng = Rng(seed);
        let a = rng.vec(numel, 4.0, special);
        let b = rng.vec(if broadcast { n * c } else { numel }, 4.0, special);
        let kind = if mul { BinaryKind::Mul } else { BinaryKind::Add };
        let mut want = vec![0.0; numel];
        reference::binary(&a, &b, n, &shape, &b_shape, kind, act, &mut want);
        let inner = numel / (n * c);
        for isa in Isa::supported() {
            let mut got = vec![0.5; numel];
            el::binary(isa, &a, &b, n, &shape, &b_shape, kind, act, &mut got);
            for i in 0..numel {
                let bv = if broadcast { b[i / inner] } else { b[i] };
                // The reference forms a·b in f64: where that overflows f32 (1e30 · 1e30),
                // an f32 kernel cannot follow it.
                let exact = if mul { a[i] as f64 * bv as f64 } else { a[i] as f64 + bv as f64 };
                if exact.is_finite() && exact.abs() > f32::MAX as f64 {
                    continue;
                }
                let pre = if mul { (a[i] * bv).abs() } else { a[i].abs() + bv.abs() };
                let tol = act_tol(act, 0.0, want[i]) + 4e-7 * pre + 1e-37;
                prop_assert!(close(got[i], want[i], tol), "{} {:?} {:?}: {} {} -> {} want {}", isa, kind, act, a[i], bv, got[i], want[i]);
            }
            let mut inplace = a.clone();
            el::binary_in_place(isa, &mut inplace, &b, n, &shape, &b_shape, kind, act);
            prop_assert!(inplace.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()), "{} in place", isa);
        }
    }

    #[test]
    fn prelu_matches(shape in shape(), n in 1usize..=2, per_channel in any::<bool>(), special in prop_oneof![Just(0.0), Just(0.05)], seed in any::<u64>()) {
        let c = shape[0];
        let numel: usize = shape.iter().product::<usize>() * n;
        let mut rng = Rng(seed);
        let x = rng.vec(numel, 4.0, special);
        let slope = rng.vec(if per_channel { c } else { 1 }, 1.0, 0.0);
        let mut want = vec![0.0; numel];
        reference::prelu(&x, n, &shape, &slope, &mut want);
        for isa in Isa::supported() {
            let mut got = vec![0.5; numel];
            el::prelu(isa, &x, n, &shape, &slope, &mut got);
            for i in 0..numel {
                prop_assert!(close(got[i], want[i], 1.2e-7 * want[i].abs()), "{}: {} -> {} want {}", isa, x[i], got[i], want[i]);
            }
            let mut inplace = x.clone();
            el::prelu_in_place(isa, &mut inplace, n, &shape, &slope);
            prop_assert!(inplace.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} in place", isa);
        }
    }

    #[test]
    fn softmax_matches(dims in (1usize..=4, 1usize..=40, 1usize..=20), n in 1usize..=2, axis in 0usize..3, flatten in any::<bool>(), scale in prop_oneof![Just(3.0f32), Just(20.0)], special in prop_oneof![8 => Just(0.0), 1 => Just(0.02)], seed in any::<u64>()) {
        let shape = vec![dims.0, dims.1, dims.2];
        let numel: usize = shape.iter().product::<usize>() * n;
        let x = Rng(seed).vec(numel, scale, special);
        let mut want = vec![0.0; numel];
        reference::softmax(&x, n, &shape, axis, flatten, &mut want);
        // max over each softmax group, for the tolerance.
        let outer = n * shape[..axis].iter().product::<usize>();
        let (len, inner) = if flatten { (shape[axis..].iter().product::<usize>(), 1) } else { (shape[axis], shape[axis + 1..].iter().product()) };
        let mut gmax = vec![f32::NEG_INFINITY; numel];
        for o in 0..outer {
            for i in 0..inner {
                let m = (0..len).map(|k| x[(o * len + k) * inner + i]).fold(f32::NEG_INFINITY, f32::max);
                for k in 0..len {
                    gmax[(o * len + k) * inner + i] = m;
                }
            }
        }
        for isa in Isa::supported() {
            let mut got = vec![0.5; numel];
            el::softmax(isa, &x, n, &shape, axis, flatten, &mut got);
            for i in 0..numel {
                let spread = if (x[i] - gmax[i]).is_finite() { (x[i] - gmax[i]).abs() } else { 0.0 };
                let tol = (1e-6 + 1.2e-7 * spread) * want[i].abs() + 1e-37;
                prop_assert!(close(got[i], want[i], tol), "{}: [{}] {} -> {} want {}", isa, i, x[i], got[i], want[i]);
            }
        }
    }

    #[test]
    fn layer_norm_matches(dims in (1usize..=3, 1usize..=9, 1usize..=70), n in 1usize..=2, axis in 0usize..3, offset in prop_oneof![Just(0.0f32), Just(1000.0)], bias in any::<bool>(), seed in any::<u64>()) {
        let shape = vec![dims.0, dims.1, dims.2];
        let numel: usize = shape.iter().product::<usize>() * n;
        let inner: usize = shape[axis..].iter().product();
        let mut rng = Rng(seed);
        let x: Vec<f32> = rng.vec(numel, 3.0, 0.0).into_iter().map(|v| v + offset).collect();
        let scale = rng.vec(inner, 2.0, 0.0);
        let b = bias.then(|| rng.vec(inner, 2.0, 0.0));
        let mut want = vec![0.0; numel];
        reference::layer_norm(&x, n, &shape, axis, 1e-5, &scale, b.as_deref(), &mut want);
        for isa in Isa::supported() {
            let mut got = vec![0.5; numel];
            el::layer_norm(isa, &x, n, &shape, axis, 1e-5, &scale, b.as_deref(), &mut got);
            for i in 0..numel {
                let j = i % inner;
                let bj = b.as_ref().map_or(0.0, |b| b[j]);
                let tol = 2e-6 * (want[i].abs() + 2.0 * bj.abs()) + 1e-6 * scale[j].abs() + 1e-7;
                prop_assert!(close(got[i], want[i], tol), "{}: [{}] {} -> {} want {}", isa, i, x[i], got[i], want[i]);
            }
        }
    }

    #[test]
    fn instance_norm_matches(c in 1usize..=9, hw in (1usize..=12, 1usize..=40), n in 1usize..=2, offset in prop_oneof![Just(0.0f32), Just(-500.0)], seed in any::<u64>()) {
        let shape = vec![c, hw.0, hw.1];
        let numel = n * c * hw.0 * hw.1;
        let mut rng = Rng(seed);
        let x: Vec<f32> = rng.vec(numel, 3.0, 0.0).into_iter().map(|v| v + offset).collect();
        let (scale, bias) = (rng.vec(c, 2.0, 0.0), rng.vec(c, 2.0, 0.0));
        let mut want = vec![0.0; numel];
        reference::instance_norm(&x, n, &shape, 1e-5, &scale, &bias, &mut want);
        for isa in Isa::supported() {
            let mut got = vec![0.5; numel];
            el::instance_norm(isa, &x, n, &shape, 1e-5, &scale, &bias, &mut got);
            for i in 0..numel {
                let ch = (i / (hw.0 * hw.1)) % c;
                let tol = 2e-6 * (want[i].abs() + 2.0 * bias[ch].abs()) + 1e-6 * scale[ch].abs() + 1e-7;
                prop_assert!(close(got[i], want[i], tol), "{}: [{}] {} -> {} want {}", isa, i, x[i], got[i], want[i]);
            }
        }
    }
}

/// Every variant on every tier, at the values where the functions bend or saturate.
#[test]
fn activation_special_values() {
    let xs = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -3.0, 3.0, 6.0, -6.0, 0.625, -0.625, 88.8, -88.8, -104.5, 1e-20, f32::MAX, f32::MIN];
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::Clip { min: 0.0, max: 6.0 },
        Activation::Sigmoid,
        Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Activation::HardSwish,
        Activation::Silu,
        Activation::Tanh,
    ];
    for isa in Isa::supported() {
        for act in acts {
            let mut want = [0.0; 17];
            reference::activation(&xs, act, &mut want);
            let mut got = [0.0; 17];
            el::activation(isa, &xs, act, &mut got);
            for i in 0..xs.len() {
                assert!(close(got[i], want[i], act_tol(act, xs[i], want[i])), "{isa} {act:?}: f({}) = {} want {}", xs[i], got[i], want[i]);
            }
        }
    }
}

/// The classifier head: 1000 logits, softmax over the contiguous last axis.
#[test]
fn softmax_classifier_head() {
    let x = Rng(3).vec(2000, 10.0, 0.0);
    let mut want = vec![0.0; 2000];
    reference::softmax(&x, 2, &[1000], 0, false, &mut want);
    for isa in Isa::supported() {
        let mut got = vec![0.0; 2000];
        el::softmax(isa, &x, 2, &[1000], 0, false, &mut got);
        for i in 0..2000 {
            assert!(close(got[i], want[i], 4e-6 * want[i]), "{isa}: {} want {}", got[i], want[i]);
        }
        let sum: f64 = got[..1000].iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{isa}: sum {sum}");
    }
}
