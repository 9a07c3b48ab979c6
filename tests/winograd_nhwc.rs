//! The channels-last Winograd F(4x4,3x3) kernel (`WinogradNhwc`) against the planar one
//! (`WinogradKernel`, itself checked against the reference in `prop_winograd`), bit for
//! bit, on every ISA tier this CPU supports: random shapes (channels 16–48, maps 1–20
//! with padding 0–2 a side, so partial tiles at every edge and windows that leave the
//! image on both sides), bias, residual, every activation, batch 1–2, 1–3 workers.

mod common;
use cnnrt::graph::{Activation, Conv};
use cnnrt::kernels::nhwc::{to_nhwc, to_planar};
use cnnrt::kernels::winograd::{WinogradKernel, WinogradNhwc, WinogradVariant};
use cnnrt::simd::Isa;
use common::{activations, values};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
struct Case {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    pads: [usize; 4],
    bias: bool,
    residual: bool,
    act: Activation,
    batch: usize,
    threads: usize,
    seed: u64,
}

impl Case {
    fn conv(&self) -> Conv {
        Conv {
            in_channels: self.cin,
            out_channels: self.cout,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pads: self.pads,
            groups: 1,
            weight: 0,
            bias: None,
            activation: self.act,
        }
    }
    fn out_hw(&self) -> (usize, usize) {
        (
            self.h + self.pads[0] + self.pads[2] - 2,
            self.w + self.pads[1] + self.pads[3] - 2,
        )
    }
}

fn cases() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=3),
        (1usize..=20, 1usize..=20),
        [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        (any::<bool>(), any::<bool>(), activations()),
        (1usize..=2, 1usize..=3, any::<u64>()),
    )
        .prop_filter_map(
            "kernel larger than the padded input",
            |((ci, co), (h, w), pads, (bias, residual, act), (batch, threads, seed))| {
                (h + pads[0] + pads[2] >= 3 && w + pads[1] + pads[3] >= 3).then_some(Case {
                    cin: 16 * ci,
                    cout: 16 * co,
                    h,
                    w,
                    pads,
                    bias,
                    residual,
                    act,
                    batch,
                    threads,
                    seed,
                })
            },
        )
}

/// `case` on `isa`: the channels-last kernel's output, back in planar order, equals the
/// planar kernel's bit for bit, sample by sample.
fn check(isa: Isa, case: &Case) -> Result<(), TestCaseError> {
    let conv = case.conv();
    let (oh, ow) = case.out_hw();
    let (n, cin, cout) = (case.batch, case.cin, case.cout);
    let (hw_in, hw_out) = (case.h * case.w, oh * ow);
    let ins = [cin, case.h, case.w];
    let outs = [cout, oh, ow];
    let planar = WinogradKernel::new(isa, &conv, ins, outs, WinogradVariant::F4x4).unwrap();
    let nhwc = WinogradNhwc::new(isa, &conv, ins, outs, case.threads).unwrap();

    let x = values(n * cin * hw_in, case.seed);
    let wts = values(cout * cin * 9, case.seed ^ 1);
    let bias = case.bias.then(|| values(cout, case.seed ^ 2));
    let res = case
        .residual
        .then(|| values(n * cout * hw_out, case.seed ^ 3));
    let mut packed = vec![0.0; planar.packed_weight_len()];
    planar.pack_weights(&wts, &mut packed);
    let mut panels = vec![0.0; nhwc.weights_len()];
    nhwc.panels_from_packed(&packed, &mut panels);

    let mut want = vec![0.0; n * cout * hw_out];
    let mut scr = vec![f32::NAN; planar.scratch_len()];
    for s in 0..n {
        let r = res
            .as_ref()
            .map(|r| &r[s * cout * hw_out..(s + 1) * cout * hw_out]);
        planar.run(
            &packed,
            bias.as_deref(),
            &x[s * cin * hw_in..(s + 1) * cin * hw_in],
            r,
            &mut want[s * cout * hw_out..(s + 1) * cout * hw_out],
            &mut scr,
        );
    }

    let mut x_nhwc = vec![0.0; x.len()];
    to_nhwc(isa, &x, n, cin, hw_in, &mut x_nhwc);
    let res_nhwc = res.as_ref().map(|r| {
        let mut t = vec![0.0; r.len()];
        to_nhwc(isa, r, n, cout, hw_out, &mut t);
        t
    });
    let mut got_nhwc = vec![f32::NAN; n * cout * hw_out];
    let mut scr = vec![f32::NAN; case.threads * nhwc.scratch_len()];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(case.threads)
        .build()
        .unwrap();
    pool.install(|| {
        nhwc.run(
            case.threads,
            n,
            &panels,
            bias.as_deref(),
            &x_nhwc,
            res_nhwc.as_deref(),
            &mut got_nhwc,
            &mut scr,
        )
    });
    let mut got = vec![0.0; got_nhwc.len()];
    to_planar(isa, &got_nhwc, n, cout, hw_out, &mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        prop_assert!(
            g.to_bits() == w.to_bits(),
            "{isa} {case:?}: element {i}: channels-last {g}, planar {w}"
        );
    }
    Ok(())
}

#[test]
fn channels_last_matches_planar_bit_for_bit_every_tier() {
    for isa in Isa::supported() {
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        runner
            .run(&cases(), |case| check(isa, &case))
            .unwrap_or_else(|e| panic!("{isa}: {e}"));
    }
}

/// conv3x3_stress's and ResNet-18's layer shapes (56×56 with 64 channels, 28×28 with
/// 128, 14×14 with 256, whose 9.4 MB of weights take blocks across samples and chunks of
/// output channels; residual and ReLU), 1 and 2 workers, batch 1 and 3.
#[test]
fn network_shapes_match_planar_every_tier() {
    for isa in Isa::supported() {
        for (c, side, batch) in [(64, 56, 1), (128, 28, 1), (256, 14, 1), (256, 14, 3)] {
            for threads in [1, 2] {
                let case = Case {
                    cin: c,
                    cout: c,
                    h: side,
                    w: side,
                    pads: [1; 4],
                    bias: true,
                    residual: true,
                    act: Activation::Relu,
                    batch,
                    threads,
                    seed: 7,
                };
                check(isa, &case).unwrap_or_else(|e| panic!("{isa}: {e}"));
            }
        }
    }
}

#[test]
fn declines_what_it_does_not_run() {
    let case = Case {
        cin: 16,
        cout: 16,
        h: 8,
        w: 8,
        pads: [1; 4],
        bias: false,
        residual: false,
        act: Activation::Identity,
        batch: 1,
        threads: 1,
        seed: 0,
    };
    let ok = case.conv();
    let (ins, outs) = ([16, 8, 8], [16, 8, 8]);
    assert!(WinogradNhwc::new(Isa::detect(), &ok, ins, outs, 1).is_some());
    let odd = Conv {
        in_channels: 12,
        ..ok.clone()
    };
    assert!(WinogradNhwc::new(Isa::detect(), &odd, [12, 8, 8], outs, 1).is_none());
    let strided = Conv {
        stride: [2, 2],
        ..ok.clone()
    };
    assert!(WinogradNhwc::new(Isa::detect(), &strided, ins, [16, 4, 4], 1).is_none());
    let wrong_out = WinogradNhwc::new(Isa::detect(), &ok, ins, [16, 7, 8], 1);
    assert!(wrong_out.is_none());
}

/// A chain of three F(4x4) layers (16 → 32 → 32 with a residual → 16, the last one the
/// graph's output) stored as the planar kernel's `WinogradF4x4` and as the channels-last
/// `WinogradF4x4Nhwc`: a session runs them channels-last (its output from the planar
/// copy) or planar (reordering the second file's weights back), on every tier, 1–3
/// threads, batch 2 then 1, with the same bits each way, and near the reference.
#[test]
fn session_runs_winograd_chains_channels_last_with_the_same_bits() {
    use cnnrt::format::{model_to_bytes, Metadata};
    use cnnrt::graph::{Graph, Node, Op, WeightLayout};
    use cnnrt::kernels::reference::run_graph;
    use cnnrt::kernels::winograd::nhwc_panels_from_packed;
    use cnnrt::{Model, SessionOptions, Threads};

    let (side, n) = (20, 2);
    let mut g = Graph::default();
    let mut plain: Vec<Vec<f32>> = Vec::new();
    let x_id = g.add_value("x", vec![16, side, side]);
    g.inputs = vec![x_id];
    let mut prev = x_id;
    let mut first_out = x_id;
    let chans = [(16, 32), (32, 32), (32, 16)];
    for (i, &(cin, cout)) in chans.iter().enumerate() {
        let wid = g.add_weight(format!("w{i}"), vec![cout, cin, 3, 3]);
        plain.push(
            values(cout * cin * 9, 10 + i as u64)
                .iter()
                .map(|v| 0.3 * v)
                .collect(),
        );
        let bid = g.add_weight(format!("b{i}"), vec![cout]);
        plain.push(values(cout, 20 + i as u64));
        let out = g.add_value(format!("v{i}"), vec![cout, side, side]);
        let mut inputs = vec![prev];
        if i == 1 {
            inputs.push(first_out);
        }
        g.nodes.push(Node {
            name: format!("conv{i}"),
            op: Op::Conv(Conv {
                weight: wid,
                bias: Some(bid),
                activation: if i < 2 {
                    Activation::Relu
                } else {
                    Activation::Identity
                },
                ..Case {
                    cin,
                    cout,
                    h: side,
                    w: side,
                    pads: [1; 4],
                    bias: true,
                    residual: false,
                    act: Activation::Identity,
                    batch: 1,
                    threads: 1,
                    seed: 0,
                }
                .conv()
            }),
            inputs,
            output: out,
        });
        if i == 0 {
            first_out = out;
        }
        prev = out;
    }
    g.outputs = vec![prev];
    let x = values(n * 16 * side * side, 99);
    let refs: Vec<&[f32]> = plain.iter().map(|w| w.as_slice()).collect();
    let expect = run_graph(&g, &refs, &[&x], n).unwrap().remove(0);

    // The two stored forms.
    let (mut g4, mut gn) = (g.clone(), g.clone());
    let (mut w4, mut wn) = (plain.clone(), plain.clone());
    for (i, &(cin, cout)) in chans.iter().enumerate() {
        let Op::Conv(c) = &g.nodes[i].op else {
            unreachable!()
        };
        let s = [cin, side, side];
        let k = WinogradKernel::new(Isa::Scalar, c, s, [cout, side, side], WinogradVariant::F4x4)
            .unwrap();
        let mut packed = vec![0.0; k.packed_weight_len()];
        k.pack_weights(&plain[c.weight], &mut packed);
        let mut panels = vec![0.0; packed.len()];
        nhwc_panels_from_packed(cin, cout, &packed, &mut panels);
        w4[c.weight] = packed;
        wn[c.weight] = panels;
        g4.weights[c.weight].layout = WeightLayout::WinogradF4x4;
        gn.weights[c.weight].layout = WeightLayout::WinogradF4x4Nhwc;
    }
    let open = |g: &Graph, w: &[Vec<f32>]| {
        let refs: Vec<&[f32]> = w.iter().map(|w| w.as_slice()).collect();
        Model::from_bytes(&model_to_bytes(g, &refs, &Metadata::default()).unwrap()).unwrap()
    };
    let models = [open(&g4, &w4), open(&gn, &wn)];
    for isa in Isa::supported() {
        let opts = SessionOptions::default().max_batch(n).max_isa(isa);
        let mut planar = models[0]
            .session(opts.clone().channels_last(false))
            .unwrap();
        let want = planar.run(&x, n).unwrap().to_vec();
        let err = common::rel_err(&want, &expect);
        assert!(err < 1e-4, "[{isa}] planar rel err {err:.2e}");
        for model in &models {
            let mut other = model.session(opts.clone().channels_last(false)).unwrap();
            assert!(!other.algorithms().iter().any(|a| a.ends_with("_nhwc")));
            let got = other.run(&x, n).unwrap();
            assert!(same(got, &want), "[{isa}] planar from either file");
            for threads in [1usize, 2, 3] {
                let mut s = model
                    .session(opts.clone().threads(Threads::Count(threads)))
                    .unwrap();
                let algos = s.algorithms();
                assert_eq!(
                    algos.iter().filter(|a| **a == "winograd_f4x4_nhwc").count(),
                    3,
                    "[{isa}] {algos:?}"
                );
                for _ in 0..2 {
                    let got = s.run(&x, n).unwrap();
                    assert!(same(got, &want), "[{isa}] {threads} threads");
                }
                let per = want.len() / n;
                let got = s.run(&x[..16 * side * side], 1).unwrap();
                assert!(same(got, &want[..per]), "[{isa}] batch 1");
            }
        }
    }
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
