//! Fused expansion → depthwise → projection blocks (`kernels::fused`): the same bits as
//! the three layers run one by one, for any band size and worker count, on every tier;
//! and the session fuses such chains (and only when asked).

mod common;

use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::depthwise::DepthwiseKernel;
use cnnrt::kernels::fused::{BlockKernel, BlockWeights};
use cnnrt::kernels::reference::{self, run_graph};
use cnnrt::{Isa, SessionOptions, Threads};
use proptest::prelude::*;

const RELU6: Activation = Activation::Clip { min: 0.0, max: 6.0 };

use common::plain_conv as conv;

fn out_len(h: usize, k: usize, s: usize, p0: usize, p1: usize) -> usize {
    (h + p0 + p1 - k) / s + 1
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// `(cin, cexp, cout, h, w, kernel, stride, pads [t, l, b, r])`: odd widths, channel
/// counts off the micro-kernel sizes, stride 2 with even and odd heights, asymmetric
/// padding, a 5×5 depthwise kernel.
type Case = (usize, usize, usize, usize, usize, usize, usize, [usize; 4]);

/// The channel counts that are multiples of 16 (and 8, 4) also run the channels-last
/// band path on every tier (3×3 depthwise only): rows wider and narrower than two
/// micro-kernel tiles, widths off the vector, no padding on one side; more than 384
/// expanded channels (the projection's K in blocks, which the depthwise part writes its
/// packed panels for: 512 as 2 × 256, 400 as 2 × 200, a multiple of 8 but not of 16).
const CASES: [Case; 11] = [
    (8, 50, 8, 23, 19, 3, 1, [1; 4]),
    (6, 36, 10, 24, 21, 3, 2, [1; 4]),
    (5, 30, 7, 25, 17, 3, 2, [0, 1, 1, 1]),
    (4, 26, 4, 17, 33, 5, 1, [2; 4]),
    (7, 21, 9, 14, 12, 3, 1, [0, 0, 2, 1]),
    (8, 48, 8, 23, 19, 3, 1, [1; 4]),
    (6, 32, 10, 24, 29, 3, 2, [1; 4]),
    (5, 64, 7, 9, 7, 3, 2, [0, 1, 1, 0]),
    (3, 80, 9, 6, 13, 3, 1, [1, 0, 0, 1]),
    (4, 512, 6, 5, 11, 3, 1, [1; 4]),
    (6, 400, 5, 6, 9, 3, 2, [1; 4]),
];

#[test]
fn block_kernel_equals_the_layers_bit_for_bit() {
    let mut seed = 11u64;
    let mut channels_last = 0;
    for (cin, cexp, cout, h, w, k, s, pads) in CASES {
        let e = conv(cin, cexp, 1, 1, [0; 4], 1, RELU6);
        let d = conv(cexp, cexp, k, s, pads, cexp, RELU6);
        let (fused, cl) = check_block(&mut seed, cin, cout, h, w, &e, &d);
        assert_eq!(
            fused,
            Isa::supported().len(),
            "every tier fuses a 1x1 expansion"
        );
        if k == 3 && cexp % 16 == 0 {
            assert_eq!(
                cl,
                Isa::supported().len(),
                "every tier takes the channels-last path with {cexp} channels"
            );
        }
        channels_last += cl;
    }
    assert!(channels_last >= 4 * Isa::supported().len());
}

/// A strided 3×3 (or 5×5) expansion, as a network's stem before its first depthwise
/// layer: run as im2col band by band, the same bits as the layers one by one.
/// `(cin, cexp, cout, h, w, expansion kernel, stride, pads, depthwise stride)`.
#[test]
fn block_kernel_with_a_stem_expansion_equals_the_layers_bit_for_bit() {
    type StemCase = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 4],
        usize,
    );
    const STEM_CASES: [StemCase; 5] = [
        (3, 32, 16, 29, 31, 3, 2, [1; 4], 1),
        (3, 20, 8, 24, 20, 3, 2, [0, 1, 1, 0], 2),
        (8, 12, 6, 17, 13, 5, 1, [2; 4], 1),
        (6, 18, 5, 20, 26, 3, 1, [1, 0, 0, 1], 2),
        (3, 48, 8, 27, 35, 3, 2, [0, 1, 1, 0], 2),
    ];
    let mut seed = 23u64;
    let (mut fused, mut channels_last) = (0, 0);
    for (cin, cexp, cout, h, w, k, s, pads, ds) in STEM_CASES {
        let e = conv(cin, cexp, k, s, pads, 1, RELU6);
        let d = conv(cexp, cexp, 3, ds, [1; 4], cexp, RELU6);
        let (f, cl) = check_block(&mut seed, cin, cout, h, w, &e, &d);
        fused += f;
        channels_last += cl;
    }
    // The tiers that plan these layers as im2col_gemm fuse them (the scalar one always).
    assert!(fused >= STEM_CASES.len(), "only {fused} stem blocks fused");
    assert!(
        channels_last >= 2,
        "only {channels_last} stem blocks channels-last"
    );
}

/// Runs expansion `e` → depthwise `d` → a 1×1 projection to `cout` channels on 2 samples
/// of `[cin, h, w]`, layer by layer and as a [`BlockKernel`] with several band sizes and
/// worker counts, on every tier and on both band paths (planar, and channels-last where
/// the block can take it), with and without biases, and requires the same bits. Returns
/// on how many tiers the block was fused (a tier that does not run `e` as im2col must
/// refuse it) and on how many it also ran channels-last.
fn check_block(
    seed: &mut u64,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    e: &Conv,
    d: &Conv,
) -> (usize, usize) {
    let cexp = e.out_channels;
    let eh = out_len(h, e.kernel[0], e.stride[0], e.pads[0], e.pads[2]);
    let ew = out_len(w, e.kernel[1], e.stride[1], e.pads[1], e.pads[3]);
    let (k, s) = (d.kernel[0], d.stride[0]);
    let oh = out_len(eh, k, s, d.pads[0], d.pads[2]);
    let ow = out_len(ew, k, s, d.pads[1], d.pads[3]);
    let p = conv(cexp, cout, 1, 1, [0; 4], 1, Activation::Identity);
    let ek_len = cexp * cin * e.kernel[0] * e.kernel[1];
    let x = common::rand_vec(seed, 2 * cin * h * w, -2.0, 2.0);
    let res = common::rand_vec(seed, 2 * cout * oh * ow, -1.0, 1.0);
    let ew_plain = common::rand_vec(seed, ek_len, -0.5, 0.5);
    let dw = common::rand_vec(seed, cexp * k * k, -0.5, 0.5);
    let pw = common::rand_vec(seed, cout * cexp, -0.5, 0.5);
    let eb = common::rand_vec(seed, cexp, -0.2, 0.2);
    let db = common::rand_vec(seed, cexp, -0.2, 0.2);
    let pb = common::rand_vec(seed, cout, -0.2, 0.2);
    let (mut fused, mut channels_last) = (0, 0);
    for isa in Isa::supported() {
        let ek = ConvKernel::new(isa, e, [cin, h, w], [cexp, eh, ew]);
        let plan = |threads: usize, band_bytes: usize| {
            BlockKernel::new(
                isa,
                e,
                d,
                &p,
                [cin, h, w],
                [cout, oh, ow],
                threads,
                band_bytes,
            )
        };
        if !ek.algorithm().starts_with("gemm1x1") && ek.algorithm() != "im2col_gemm" {
            assert!(
                plan(1, 64 << 20).is_none(),
                "[{isa}] fused a {} expansion",
                ek.algorithm()
            );
            continue;
        }
        let dk = DepthwiseKernel::new(isa, d, [cexp, eh, ew], [cexp, oh, ow]).unwrap();
        let pk = ConvKernel::new(isa, &p, [cexp, oh, ow], [cout, oh, ow]);
        let mut ep = vec![0.0; ek.packed_weight_len()];
        ek.pack_weights(&ew_plain, &mut ep);
        let mut pp = vec![0.0; pk.packed_weight_len()];
        pk.pack_weights(&pw, &mut pp);
        let can_channels_last = plan(1, 64 << 20)
            .and_then(|b| b.with_channels_last(true))
            .is_some();
        for biases in [true, false] {
            let (eb, db, pb) = if biases {
                (Some(&eb[..]), Some(&db[..]), Some(&pb[..]))
            } else {
                (None, None, None)
            };
            // The layers one by one, sample by sample.
            let mut want = vec![0.0; 2 * cout * oh * ow];
            let mut scratch = vec![0.0; ek.scratch_len().max(pk.scratch_len())];
            for n in 0..2 {
                let mut mid = vec![0.0; cexp * eh * ew];
                let mut mid2 = vec![0.0; cexp * oh * ow];
                let xs = &x[n * cin * h * w..(n + 1) * cin * h * w];
                let o = n * cout * oh * ow..(n + 1) * cout * oh * ow;
                ek.run(&ep, eb, xs, None, &mut mid, &mut scratch);
                dk.run(&dw, db, &mid, None, &mut mid2);
                pk.run(
                    &pp,
                    pb,
                    &mid2,
                    Some(&res[o.clone()]),
                    &mut want[o],
                    &mut scratch,
                );
            }
            // The layers against the f64 reference chain (they are property-tested one by
            // one; this ties the chain's wiring and shapes to the spec too).
            let mut r_mid = vec![0.0; 2 * cexp * eh * ew];
            let mut r_mid2 = vec![0.0; 2 * cexp * oh * ow];
            let mut r_out = vec![0.0; want.len()];
            reference::conv2d(
                &x,
                2,
                &[cin, h, w],
                e,
                &ew_plain,
                eb,
                None,
                &[cexp, eh, ew],
                &mut r_mid,
            );
            reference::conv2d(
                &r_mid,
                2,
                &[cexp, eh, ew],
                d,
                &dw,
                db,
                None,
                &[cexp, oh, ow],
                &mut r_mid2,
            );
            reference::conv2d(
                &r_mid2,
                2,
                &[cexp, oh, ow],
                &p,
                &pw,
                pb,
                Some(&res),
                &[cout, oh, ow],
                &mut r_out,
            );
            let err = common::rel_err(&want, &r_out);
            assert!(
                err < 1e-4,
                "[{isa}] layers against the reference: relative error {err:.2e}"
            );
            // Bands of 1 row, of a few rows (halo rows carried over), and the whole map.
            for band_bytes in [1, 4 * cexp * (6 * ew + 3 * ow), 64 << 20] {
                for threads in [1usize, 2, 3] {
                    for layout_cl in [false, true] {
                        let Some(block) = plan(threads, band_bytes)
                            .expect("a fusable block")
                            .with_channels_last(layout_cl)
                        else {
                            assert!(layout_cl && !can_channels_last);
                            continue;
                        };
                        let mut weights = BlockWeights {
                            expand: &ep,
                            expand_bias: eb,
                            depthwise: &dw,
                            depthwise_bias: db,
                            project: &pp,
                            project_bias: pb,
                            channels_last: None,
                        };
                        let clw = block.channels_last_weights(&weights);
                        assert_eq!(clw.is_some(), layout_cl);
                        weights.channels_last = clw.as_deref();
                        let mut got = vec![f32::NAN; want.len()];
                        // Scratch full of junk: neither path may rely on zeros in it.
                        let mut scratch = vec![f32::NAN; threads * block.scratch_len()];
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        pool.install(|| {
                            block.run(threads, 2, &weights, &x, Some(&res), &mut got, &mut scratch)
                        });
                        assert!(
                            same_bits(&got, &want),
                            "[{isa}] expansion {:?} s{:?} on {:?}, depthwise k{k} s{s}, band \
                             rows {}, {threads} threads, channels-last {layout_cl}, biases \
                             {biases}: fused differs",
                            e.kernel,
                            e.stride,
                            [cin, h, w],
                            block.band_rows()
                        );
                        // One worker meeting the bands in other orders: back to front (a
                        // worker helping from the far end of another's run) and shuffled,
                        // so rows are reused from the band above, from the band below,
                        // or not at all.
                        let parts = 2 * block.band_count();
                        let mut shuffled: Vec<usize> = (0..parts).collect();
                        for i in (1..parts).rev() {
                            let r = common::rand_vec(seed, 1, 0.0, 1.0)[0];
                            shuffled.swap(i, ((r * (i + 1) as f32) as usize).min(i));
                        }
                        for order in [(0..parts).rev().collect(), shuffled] {
                            let mut got = vec![f32::NAN; want.len()];
                            let mut scratch = vec![f32::NAN; block.scratch_len()];
                            block.run_in_order(
                                2,
                                &weights,
                                &x,
                                Some(&res),
                                &mut got,
                                &mut scratch,
                                &order,
                            );
                            assert!(
                                same_bits(&got, &want),
                                "[{isa}] band rows {}, channels-last {layout_cl}, parts in \
                                 order {order:?}: fused differs",
                                block.band_rows()
                            );
                        }
                    }
                }
            }
        }
        fused += 1;
        channels_last += usize::from(can_channels_last);
    }
    (fused, channels_last)
}

#[test]
fn block_kernel_rejects_chains_it_cannot_run() {
    let e = conv(8, 48, 1, 1, [0; 4], 1, RELU6);
    let d = conv(48, 48, 3, 1, [1; 4], 48, RELU6);
    let p = conv(48, 8, 1, 1, [0; 4], 1, Activation::Identity);
    let plan = |e: &Conv, d: &Conv, p: &Conv, out: [usize; 3]| {
        BlockKernel::new(Isa::Scalar, e, d, p, [8, 10, 10], out, 1, 1 << 20)
    };
    assert!(plan(&e, &d, &p, [8, 10, 10]).is_some());
    // A grouped expansion, a grouped (not depthwise) middle layer, a strided projection,
    // a wrong output shape.
    let e3 = conv(8, 48, 3, 1, [1; 4], 2, RELU6);
    assert!(plan(&e3, &d, &p, [8, 10, 10]).is_none());
    let g2 = conv(48, 48, 3, 1, [1; 4], 2, RELU6);
    assert!(plan(&e, &g2, &p, [8, 10, 10]).is_none());
    let p2 = conv(48, 8, 1, 2, [0; 4], 1, Activation::Identity);
    assert!(plan(&e, &d, &p2, [8, 10, 10]).is_none());
    assert!(plan(&e, &d, &p, [8, 9, 10]).is_none());
}

#[test]
fn session_fuses_blocks_with_the_same_results() {
    let zoo = common::inverted_residuals();
    let refs: Vec<&[f32]> = zoo.weights.iter().map(|w| w.as_slice()).collect();
    let model = zoo.model();
    let graph = &zoo.graph;
    let mut seed = 9u64;
    let n = 2;
    let x = common::rand_vec(&mut seed, n * 8 * 66 * 66, -2.0, 2.0);
    let expect = run_graph(graph, &refs, &[&x], n).unwrap().remove(0);
    for isa in Isa::supported() {
        let opts = SessionOptions::default().max_batch(n).max_isa(isa);
        let mut plain = model.session(opts.clone().fuse_blocks(false)).unwrap();
        assert!(!plain.algorithms().contains(&"fused_block"));
        let want = plain.run(&x, n).unwrap().to_vec();
        let err = common::rel_err(&want, &expect);
        assert!(err < 1e-4, "[{isa}] unfused rel err {err:.2e}");
        for threads in [1usize, 2, 3] {
            let mut fused = model
                .session(opts.clone().threads(Threads::Count(threads)))
                .unwrap();
            let algos = fused.algorithms();
            assert_eq!(
                algos.iter().filter(|a| **a == "fused_block").count(),
                2,
                "[{isa}] {algos:?}"
            );
            assert!(fused.workspace_bytes() < plain.workspace_bytes());
            let got = fused.run(&x, n).unwrap();
            assert!(
                same_bits(got, &want),
                "[{isa}] fused, {threads} threads, differs from unfused"
            );
        }
    }
}

/// Activations a fused block's expansion and depthwise layers may carry: the clamps
/// (which the channels-last path takes) and one that is not a clamp (planar only).
fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        Just(RELU6),
        Just(Activation::LeakyRelu { alpha: 0.1 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random blocks, each through `check_block` (both band paths, every tier, 1–3
    /// workers, three band sizes, with and without biases: the same bits as the layers,
    /// which match the reference within 1e-4): channel counts on and off the vector
    /// widths (multiples of 16 reach the channels-last path), 1×1 or strided 3×3
    /// expansions, 3×3 and 5×5 depthwise layers at stride 1 or 2 with any padding up to
    /// the kernel's size − 1 on each side, maps from one pixel up.
    #[test]
    fn random_blocks_equal_the_layers_bit_for_bit(
        cin in 1usize..=9,
        cexp in prop_oneof![1usize..=40, (1usize..=5).prop_map(|m| 16 * m)],
        cout in 1usize..=12,
        h in 1usize..=20,
        w in 1usize..=26,
        stem in prop_oneof![3 => Just(false), 1 => Just(true)],
        stem_pads in prop::array::uniform4(0usize..=1),
        k in prop_oneof![3 => Just(3usize), 1 => Just(5usize)],
        s in 1usize..=2,
        pad_seed in any::<[u8; 4]>(),
        acts in (activation(), activation()),
        seed in any::<u64>(),
    ) {
        let e = if stem {
            conv(cin, cexp, 3, 2, stem_pads, 1, acts.0)
        } else {
            conv(cin, cexp, 1, 1, [0; 4], 1, acts.0)
        };
        let (eh, ew) = if stem {
            let side = |n: usize, p0: usize, p1: usize| (n + p0 + p1).checked_sub(3).map(|v| v / 2 + 1);
            match (side(h, stem_pads[0], stem_pads[2]), side(w, stem_pads[1], stem_pads[3])) {
                (Some(a), Some(b)) => (a, b),
                _ => return Ok(()),
            }
        } else {
            (h, w)
        };
        let pads = pad_seed.map(|b| b as usize % k);
        // The depthwise output must have at least one pixel.
        prop_assume!(eh + pads[0] + pads[2] >= k && ew + pads[1] + pads[3] >= k);
        let d = conv(cexp, cexp, k, s, pads, cexp, acts.1);
        let mut seed = seed | 1;
        let (fused, channels_last) = check_block(&mut seed, cin, cout, h, w, &e, &d);
        if !stem {
            prop_assert_eq!(fused, Isa::supported().len(), "every tier fuses a 1x1 expansion");
        }
        // Where the layer's depthwise body is the uniform chain (3×3, left and right
        // padding ≤ 1) with a clamp and whole vectors of channels on every tier, every
        // tier that fuses also takes the channels-last path.
        let clamp = !matches!(acts.1, Activation::LeakyRelu { .. });
        if k == 3 && pads[1] <= 1 && pads[3] <= 1 && clamp && cexp % 16 == 0 {
            prop_assert_eq!(channels_last, fused);
        } else if k == 5 || pads[1] > 1 || pads[3] > 1 || !clamp {
            prop_assert_eq!(channels_last, 0);
        }
    }
}
