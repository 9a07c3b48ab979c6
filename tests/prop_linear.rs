//! Fast fully connected layers against `kernels::reference::linear`, for every ISA tier
//! this CPU supports.
//!
//! Tolerance, per output element: `|got − ref| <= 2·(1e-5·sqrt(K)·S) + 1e-6` with
//! `S = Σ|x·w| + |bias| + |residual|` and `K = in_features` — the same bound, with the
//! same justification, as in `prop_conv.rs`: it exceeds the worst-case error `(K+2)·2^-24·S`
//! of a sequential f32 sum for all K here, and the factor 2 covers the activation's slope
//! (≤ 1.5) and the final rounding.

mod common;
use cnnrt::graph::{Activation, Linear};
use cnnrt::kernels::linear::{LinearKernel, Sweep};
use cnnrt::kernels::reference;
use cnnrt::simd::Isa;
use common::{abs, activations, values};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[allow(clippy::too_many_arguments)]
fn check(
    isa: Isa,
    fi: usize,
    fo: usize,
    n: usize,
    max_batch: usize,
    bias: bool,
    residual: bool,
    act: Activation,
    seed: u64,
) -> Result<(), TestCaseError> {
    let l = Linear {
        in_features: fi,
        out_features: fo,
        weight: 0,
        bias: None,
        activation: act,
    };
    let kern = LinearKernel::new(isa, &l, max_batch);
    prop_assert_eq!(kern.isa(), isa);
    let w = values(fo * fi, seed);
    let b = bias.then(|| values(fo, seed ^ 1));
    let x = values(n * fi, seed ^ 2);
    let r = residual.then(|| values(n * fo, seed ^ 3));
    let mut want = vec![0.0; n * fo];
    reference::linear(&x, n, &l, &w, b.as_deref(), r.as_deref(), &mut want);
    let mut scale = vec![0.0; n * fo];
    let la = Linear {
        activation: Activation::Identity,
        ..l.clone()
    };
    let (ba, ra) = (b.as_deref().map(abs), r.as_deref().map(abs));
    reference::linear(
        &abs(&x),
        n,
        &la,
        &abs(&w),
        ba.as_deref(),
        ra.as_deref(),
        &mut scale,
    );

    let mut packed = vec![0.0; kern.packed_weight_len()];
    kern.pack_weights(&w, &mut packed);
    let mut scratch = vec![0.0; kern.scratch_len()];
    let mut got = vec![f32::NAN; n * fo];
    kern.run(
        &packed,
        b.as_deref(),
        &x,
        n,
        r.as_deref(),
        &mut got,
        &mut scratch,
        Sweep::Forward,
    );
    let tol_k = 1e-5 * ((fi + 2) as f32).sqrt();
    for (i, ((&g, &v), &s)) in got.iter().zip(&want).zip(&scale).enumerate() {
        let tol = 2.0 * tol_k * s + 1e-6;
        prop_assert!(
            (g - v).abs() <= tol,
            "{isa} {fi}->{fo} batch {n}: element {i}: got {g}, want {v}, tol {tol}"
        );
    }
    // Tiles in reverse order, and each tile's weights swept backwards: bit-identical to
    // `run`.
    let mut tiled = vec![f32::NAN; n * fo];
    for t in (0..kern.tiles()).rev() {
        kern.run_tile(
            &packed,
            b.as_deref(),
            &x,
            n,
            r.as_deref(),
            &mut tiled,
            &mut scratch,
            t,
            Sweep::Backward,
        );
    }
    prop_assert!(
        got.iter()
            .zip(&tiled)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{isa}: tiles differ"
    );
    let mut backward = vec![f32::NAN; n * fo];
    kern.run(
        &packed,
        b.as_deref(),
        &x,
        n,
        r.as_deref(),
        &mut backward,
        &mut scratch,
        Sweep::Backward,
    );
    prop_assert!(
        got.iter()
            .zip(&backward)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{isa}: the backward sweep differs"
    );
    // Tiles sized for more workers (narrower, down to one panel): the same bits.
    for threads in [3, 16] {
        let narrow = kern.clone().for_threads(threads);
        let mut by_tile = vec![f32::NAN; n * fo];
        for t in 0..narrow.tiles() {
            narrow.run_tile(
                &packed,
                b.as_deref(),
                &x,
                n,
                r.as_deref(),
                &mut by_tile,
                &mut scratch,
                t,
                Sweep::alternate(t as u64),
            );
        }
        prop_assert!(
            got.iter()
                .zip(&by_tile)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{isa}: tiles for {threads} threads differ"
        );
    }
    Ok(())
}

#[test]
fn linear_matches_reference_every_tier() {
    let strat = (
        (0usize..=300, 1usize..=100, 1usize..=20),
        (any::<bool>(), any::<bool>(), activations()),
        any::<u64>(),
    );
    for isa in Isa::supported() {
        TestRunner::new(Config {
            cases: 64,
            failure_persistence: None,
            ..Config::default()
        })
        .run(&strat, |((fi, fo, n), (bias, residual, act), seed)| {
            check(isa, fi, fo, n, n + 3, bias, residual, act, seed)
        })
        .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
}

/// Batch 1 (the GEMV path: on AVX-512 its weight panels two at a time, an odd last one
/// alone) with many output tiles, and a large batch with K blocking.
#[test]
fn linear_large_shapes_every_tier() {
    for isa in Isa::supported() {
        for (fi, fo, n) in [
            (512, 1000, 1),
            (2450, 500, 1),
            (777, 300, 1),
            (300, 530, 1),
            (260, 70, 29),
            (1, 1, 1),
        ] {
            check(isa, fi, fo, n, n, true, true, Activation::Relu, 11)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
