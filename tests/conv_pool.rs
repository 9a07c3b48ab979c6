//! A `direct` convolution and the pooling layer after it as one step
//! (`kernels::conv_pool`): the same bits as the two layers one by one, for any band
//! size, worker count and batch, on every tier that runs `direct`; and the session
//! fuses such pairs (and only when asked); LeNet-5's implicit-GEMM conv2 with its 2×2
//! max pool in the store likewise.

mod common;

use cnnrt::graph::shape::window_output;
use cnnrt::graph::{Activation, Conv, Graph, Node, Op, Pool, PoolKind};
use cnnrt::kernels::conv::ConvKernel;
use cnnrt::kernels::conv_pool::ConvPoolKernel;
use cnnrt::kernels::pool::PoolKernel;
use cnnrt::kernels::reference::run_graph;
use cnnrt::{Isa, SessionOptions, Threads};
use proptest::prelude::*;

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Small layers go to the workers too, so that 2 and 3 slots really split.
fn split_small_layers() {
    std::env::set_var("CNNRT_PARALLEL_MIN_FLOPS", "0");
}

struct Case {
    conv: Conv,
    pool: Pool,
    input: [usize; 3],
}

impl Case {
    fn conv_out(&self) -> Option<[usize; 3]> {
        let c = &self.conv;
        let dim = |i: usize| {
            window_output(
                self.input[1 + i],
                c.kernel[i],
                c.stride[i],
                c.dilation[i],
                c.pads[i],
                c.pads[i + 2],
                false,
            )
        };
        Some([c.out_channels, dim(0)?, dim(1)?])
    }

    fn pool_out(&self) -> Option<[usize; 3]> {
        let [c, h, w] = self.conv_out()?;
        let p = &self.pool;
        let dim = |i: usize, input: usize| {
            window_output(
                input,
                p.kernel[i],
                p.stride[i],
                p.dilation[i],
                p.pads[i],
                p.pads[i + 2],
                p.ceil_mode,
            )
        };
        Some([c, dim(0, h)?, dim(1, w)?]).filter(|s| s[1] > 0 && s[2] > 0)
    }
}

/// Runs the pair fused and layer by layer on every tier that plans it `direct`, with
/// the bands of 1–3 threads and 1–3 workers, batch `n`; returns how many tiers fused.
fn check(case: &Case, n: usize, seed: &mut u64) -> usize {
    let cs = case.conv_out().expect("conv shape");
    let ps = case.pool_out().expect("pool shape");
    let c = &case.conv;
    let k = c.in_channels * c.kernel[0] * c.kernel[1];
    let w = common::rand_vec(seed, c.out_channels * k, -0.5, 0.5);
    let bias = common::rand_vec(seed, c.out_channels, -0.3, 0.3);
    let sin: usize = case.input.iter().product();
    let (sconv, sout) = (cs.iter().product::<usize>(), ps.iter().product::<usize>());
    let x = common::rand_vec(seed, n * sin, -2.0, 2.0);
    let mut fused_tiers = 0;
    for isa in Isa::supported() {
        for threads in 1..=3 {
            let conv = ConvKernel::new(isa, c, case.input, cs).split_for_threads(threads);
            let pool = PoolKernel::new(isa, &case.pool, cs, ps).expect("pool plans");
            let Some(pair) = ConvPoolKernel::new(conv.clone(), pool.clone()) else {
                assert_ne!(
                    conv.algorithm(),
                    "direct",
                    "[{isa}] a direct layer not fused"
                );
                continue;
            };
            let mut packed = vec![0.0; conv.packed_weight_len()];
            conv.pack_weights(&w, &mut packed);
            let mut want = vec![f32::NAN; n * sout];
            let mut mid = vec![f32::NAN; sconv];
            let mut scratch = vec![f32::NAN; conv.scratch_len()];
            for s in 0..n {
                conv.run(
                    &packed,
                    Some(&bias),
                    &x[s * sin..(s + 1) * sin],
                    None,
                    &mut mid,
                    &mut scratch,
                );
                pool.run(&mid, &mut want[s * sout..(s + 1) * sout]);
            }
            for slots in 1..=3 {
                let mut got = vec![f32::NAN; n * sout];
                let mut scratch = vec![f32::NAN; slots * pair.scratch_len()];
                pair.run(slots, n, &packed, Some(&bias), &x, &mut got, &mut scratch);
                assert!(
                    same_bits(&got, &want),
                    "[{isa}] bands for {threads} threads, {slots} workers, batch {n}: \
                     fused differs ({:?} {:?} {:?})",
                    case.input,
                    case.conv,
                    case.pool
                );
            }
        }
        fused_tiers += 1;
    }
    fused_tiers
}

fn conv(cin: usize, cout: usize, k: usize, s: usize, pads: [usize; 4], act: Activation) -> Conv {
    common::plain_conv(cin, cout, k, s, pads, 1, act)
}

fn max_pool(k: usize, s: usize, pads: [usize; 4], ceil_mode: bool) -> Pool {
    Pool {
        kind: PoolKind::Max,
        kernel: [k; 2],
        stride: [s; 2],
        dilation: [1; 2],
        pads,
        ceil_mode,
        count_include_pad: false,
    }
}

#[test]
fn resnet_and_lenet_stems_equal_the_layers_bit_for_bit() {
    split_small_layers();
    let mut seed = 5u64;
    let cases = [
        // ResNet's stem at a quarter of the size: 7×7 stride 2, 3×3 stride-2 max pool.
        Case {
            conv: conv(3, 64, 7, 2, [3; 4], Activation::Relu),
            pool: max_pool(3, 2, [1; 4], false),
            input: [3, 56, 56],
        },
        // LeNet-5's first layer: 5×5, one channel, 2×2 max pool.
        Case {
            conv: conv(1, 20, 5, 1, [2; 4], Activation::Relu),
            pool: max_pool(2, 2, [0; 4], false),
            input: [1, 28, 28],
        },
        // Odd sizes, ceil mode (the last window runs past the map), average pooling.
        Case {
            conv: conv(4, 13, 3, 1, [1, 0, 2, 1], Activation::Identity),
            pool: Pool {
                kind: PoolKind::Average,
                count_include_pad: true,
                ..max_pool(3, 2, [1, 1, 0, 0], true)
            },
            input: [4, 21, 19],
        },
    ];
    let mut fused = 0;
    for case in &cases {
        for n in [1, 2] {
            fused += check(case, n, &mut seed);
        }
    }
    if cfg!(target_arch = "x86_64") && Isa::detect() >= Isa::Avx2 {
        assert!(fused > 0, "no tier fused the pairs");
    }
}

#[test]
fn session_fuses_conv_and_pool_with_the_same_results() {
    split_small_layers();
    // input 3×40×40 → conv 7×7 s2 (16, ReLU) → max pool 3×3 s2 p1 → global average.
    let mut g = Graph::default();
    let mut seed = 21u64;
    let x = g.add_value("input", vec![3, 40, 40]);
    let wid = g.add_weight("w", vec![16, 3, 7, 7]);
    let bid = g.add_weight("b", vec![16]);
    let weights = [
        common::rand_vec(&mut seed, 16 * 3 * 49, -0.3, 0.3),
        common::rand_vec(&mut seed, 16, -0.2, 0.2),
    ];
    let c = g.add_value("conv", vec![16, 20, 20]);
    let p = g.add_value("pool", vec![16, 10, 10]);
    let y = g.add_value("out", vec![16, 1, 1]);
    g.nodes.push(Node {
        name: "stem".into(),
        op: Op::Conv(Conv {
            weight: wid,
            bias: Some(bid),
            ..conv(3, 16, 7, 2, [3; 4], Activation::Relu)
        }),
        inputs: vec![x],
        output: c,
    });
    g.nodes.push(Node {
        name: "pool".into(),
        op: Op::Pool(max_pool(3, 2, [1; 4], false)),
        inputs: vec![c],
        output: p,
    });
    g.nodes.push(Node {
        name: "gap".into(),
        op: Op::GlobalPool {
            kind: PoolKind::Average,
        },
        inputs: vec![p],
        output: y,
    });
    g.inputs = vec![x];
    g.outputs = vec![y];
    let zoo = common::Zoo {
        graph: g,
        weights: weights.to_vec(),
    };
    let (g, model) = (&zoo.graph, zoo.model());
    let refs: Vec<&[f32]> = zoo.weights.iter().map(|w| w.as_slice()).collect();
    let n = 3;
    let input = common::rand_vec(&mut seed, n * 3 * 40 * 40, -2.0, 2.0);
    let expect = run_graph(g, &refs, &[&input], n).unwrap().remove(0);
    for isa in Isa::supported() {
        let opts = SessionOptions::default().max_batch(n).max_isa(isa);
        let mut plain = model.session(opts.clone().fuse_blocks(false)).unwrap();
        assert!(!plain.algorithms().contains(&"conv_pool"));
        let want = plain.run(&input, n).unwrap().to_vec();
        let err = common::rel_err(&want, &expect);
        assert!(err < 1e-4, "[{isa}] unfused rel err {err:.2e}");
        let direct = plain.algorithms().contains(&"direct");
        for threads in [1usize, 2, 3] {
            let mut fused = model
                .session(opts.clone().threads(Threads::Count(threads)))
                .unwrap();
            let algos = fused.algorithms();
            assert_eq!(algos.contains(&"conv_pool"), direct, "[{isa}] {algos:?}");
            if direct {
                assert!(fused.workspace_bytes() < plain.workspace_bytes());
            }
            for batch in [1, n] {
                let got = fused.run(&input[..batch * 3 * 40 * 40], batch).unwrap();
                assert!(
                    same_bits(got, &want[..batch * 16]),
                    "[{isa}] fused, {threads} threads, batch {batch}, differs from unfused"
                );
            }
        }
    }
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        Just(Activation::LeakyRelu { alpha: 0.1 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random pairs through `check`: 1–4 input channels, channel counts on and off the
    /// micro-kernel's rows, 3×3 to 7×7 kernels at stride 1 or 2 with any padding below
    /// the kernel size on each side, then max or average pools of 1×1 to 3×3 windows,
    /// strides 1–3, dilation 1 or 2, padding, ceil mode; maps from one output row up.
    #[test]
    fn random_pairs_equal_the_layers_bit_for_bit(
        cin in 1usize..=4,
        cout in 1usize..=40,
        k in prop_oneof![Just(3usize), Just(5usize), Just(7usize)],
        s in 1usize..=2,
        conv_pads in prop::array::uniform4(0usize..=6),
        h in 1usize..=30,
        w in 8usize..=50,
        act in activation(),
        max in any::<bool>(),
        pk in 1usize..=3,
        ps in 1usize..=3,
        pd in prop_oneof![3 => Just(1usize), 1 => Just(2usize)],
        pool_pads in prop::array::uniform4(0usize..=2),
        ceil_mode in any::<bool>(),
        include_pad in any::<bool>(),
        n in 1usize..=2,
        seed in any::<u64>(),
    ) {
        let conv_pads = conv_pads.map(|p| p % k);
        let pool_pads = pool_pads.map(|p| p % pk);
        let case = Case {
            conv: conv(cin, cout, k, s, conv_pads, act),
            pool: Pool {
                kind: if max { PoolKind::Max } else { PoolKind::Average },
                kernel: [pk; 2],
                stride: [ps; 2],
                dilation: [pd; 2],
                pads: pool_pads,
                ceil_mode,
                count_include_pad: include_pad,
            },
            input: [cin, h, w],
        };
        prop_assume!(case.conv_out().is_some_and(|s| s[1] > 0 && s[2] >= 8));
        prop_assume!(case.pool_out().is_some());
        let mut seed = seed;
        check(&case, n, &mut seed);
    }
}

/// `PoolKernel::run_rows` writes rows `oys` of every plane and nothing else, even where
/// its vector stores run past a short row (the next row may belong to another worker),
/// with the same values as pooling whole planes; every tier, max and average, maps
/// narrower and wider than a vector.
#[test]
fn pool_rows_write_only_their_rows() {
    let mut seed = 77u64;
    for isa in Isa::supported() {
        for (h, w, kind) in [
            (14, 7, PoolKind::Max),
            (28, 20, PoolKind::Max),
            (23, 37, PoolKind::Average),
            (9, 5, PoolKind::Max),
        ] {
            let pool = Pool {
                kind,
                ..max_pool(3, 2, [1; 4], false)
            };
            let planes = 3;
            let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
            let k = PoolKernel::new(isa, &pool, [planes, h, w], [planes, oh, ow]).unwrap();
            let x = common::rand_vec(&mut seed, planes * h * w, -3.0, 3.0);
            let mut whole = vec![0.0; planes * oh * ow];
            k.run(&x, &mut whole);
            for (a, b) in [(0, 1), (1, oh - 1), (oh / 2, oh / 2 + 1), (oh - 1, oh)] {
                const SENTINEL: f32 = 12345.0;
                let mut out = vec![SENTINEL; planes * oh * ow];
                // SAFETY: nothing else uses `out` during the call.
                unsafe {
                    k.run_rows(
                        &x,
                        0,
                        h,
                        planes,
                        cnnrt::kernels::gemm::SharedOut::new(&mut out),
                        a..b,
                    )
                };
                for (i, (&got, &want)) in out.iter().zip(&whole).enumerate() {
                    let row = (i / ow) % oh;
                    if (a..b).contains(&row) {
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "[{isa}] {h}x{w} rows {a}..{b}"
                        );
                    } else {
                        assert_eq!(
                            got, SENTINEL,
                            "[{isa}] {h}x{w} rows {a}..{b} wrote row {row}"
                        );
                    }
                }
            }
        }
    }
}

/// LeNet-5's conv2 → 2×2 max pool runs as one step with the pool in the convolution's
/// store, with the same bits as the two layers apart (fusion off), on every tier, worker
/// count and batch: as shipped (Winograd F(2x2,5x5), the pool in the output transform)
/// and converted with Winograd off (implicit GEMM, the pool before the transpose).
#[test]
fn session_pools_lenet5_conv2_in_its_store_with_the_same_results() {
    split_small_layers();
    let shipped = cnnrt::Model::open("models/lenet5.cnnrt").unwrap();
    let onnx = std::fs::read("models/lenet5.onnx").unwrap();
    let options = cnnrt::convert::ConvertOptions {
        winograd_max_error: 0.0,
        ..Default::default()
    };
    let (graph, weights, _) = cnnrt::convert::convert_onnx(&onnx, &options)
        .unwrap()
        .packed_for_file();
    let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
    let bytes = cnnrt::format::model_to_bytes(&graph, &refs, &Default::default()).unwrap();
    let direct = cnnrt::Model::from_bytes(&bytes).unwrap();
    let n = 3;
    let mut seed = 5u64;
    let input = common::rand_vec(&mut seed, n * 28 * 28, -1.0, 3.0);
    for (model, step) in [
        (&shipped, "winograd_f4x4_5x5_pool"),
        (&direct, "implicit_gemm_pool"),
    ] {
        for isa in Isa::supported() {
            let opts = SessionOptions::default().max_batch(n).max_isa(isa);
            let mut plain = model.session(opts.clone().fuse_blocks(false)).unwrap();
            assert!(!plain.algorithms().contains(&step));
            let want = plain.run(&input, n).unwrap().to_vec();
            for threads in [1usize, 2, 3] {
                let mut fused = model
                    .session(opts.clone().threads(Threads::Count(threads)))
                    .unwrap();
                let algos = fused.algorithms();
                assert!(algos.contains(&step), "[{isa}] {algos:?}");
                for batch in [1, n] {
                    let got = fused.run(&input[..batch * 28 * 28], batch).unwrap();
                    assert!(
                        same_bits(got, &want[..batch * 10]),
                        "[{isa}] {step}, {threads} threads, batch {batch}, differs from unfused"
                    );
                }
            }
        }
    }
}
