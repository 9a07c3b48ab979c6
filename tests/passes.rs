//! The graph rewrites keep outputs: folded == BN(conv(x)), fused == unfused, on random
//! shapes and data, evaluated with the reference kernels.

use cnnrt::graph::{Activation, BinaryKind, Conv, Graph, Linear, Node, Op};
use cnnrt::kernels::reference::run_graph;
use cnnrt::passes::optimize;
use proptest::prelude::*;

fn rand_vec(seed: &mut u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((*seed >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn run(g: &Graph, w: &[Vec<f32>], x: &[f32], n: usize) -> Vec<f32> {
    let refs: Vec<&[f32]> = w.iter().map(|v| v.as_slice()).collect();
    run_graph(g, &refs, &[x], n).unwrap().remove(0)
}

/// max |a - b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f32, |e, (x, y)| e.max((x - y).abs()))
        / m
}

fn node(name: &str, op: Op, inputs: Vec<usize>, output: usize) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
        output,
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_bn_graph(
    seed: &mut u64,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
    groups: usize,
    bias: bool,
    act: Activation,
) -> (Graph, Vec<Vec<f32>>) {
    let mut g = Graph::default();
    let x = g.add_value("x", vec![cin, hw, hw]);
    let c_out = g.add_value("conv", vec![]);
    let bn_out = g.add_value("bn", vec![]);
    let act_out = g.add_value("act", vec![]);
    let mut w = Vec::new();
    let wid = g.add_weight("w", vec![cout, cin / groups, k, k]);
    w.push(rand_vec(seed, cout * cin / groups * k * k, -1.0, 1.0));
    let bid = bias.then(|| {
        w.push(rand_vec(seed, cout, -1.0, 1.0));
        g.add_weight("b", vec![cout])
    });
    let sid = g.add_weight("scale", vec![cout]);
    w.push(rand_vec(seed, cout, 0.2, 2.0));
    let tid = g.add_weight("shift", vec![cout]);
    w.push(rand_vec(seed, cout, -1.0, 1.0));
    let conv = Conv {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride, stride],
        dilation: [1, 1],
        pads: [k / 2; 4],
        groups,
        weight: wid,
        bias: bid,
        activation: Activation::Identity,
    };
    g.nodes.push(node("conv", Op::Conv(conv), vec![x], c_out));
    g.nodes.push(node(
        "bn",
        Op::ChannelAffine {
            scale: Some(sid),
            shift: Some(tid),
            activation: Activation::Identity,
        },
        vec![c_out],
        bn_out,
    ));
    g.nodes
        .push(node("act", Op::Activation(act), vec![bn_out], act_out));
    g.inputs = vec![x];
    g.outputs = vec![act_out];
    g.infer_shapes().unwrap();
    (g, w)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn batchnorm_folds_into_conv(seed in any::<u64>(), cin_g in 1usize..5, cout_g in 1usize..6, groups in 1usize..3,
                                 hw in 3usize..9, k in prop::sample::select(vec![1usize, 3, 5]), stride in 1usize..3,
                                 bias in any::<bool>(), n in 1usize..3,
                                 act in prop::sample::select(vec![Activation::Identity, Activation::Relu, Activation::Clip { min: 0.0, max: 6.0 }])) {
        let mut s = seed | 1;
        let (g, w) = conv_bn_graph(&mut s, cin_g * groups, cout_g * groups, hw.max(k), k, stride, groups, bias, act);
        let x = rand_vec(&mut s, n * cin_g * groups * hw.max(k) * hw.max(k), -2.0, 2.0);
        let expect = run(&g, &w, &x, n);
        let (mut g2, mut w2) = (g.clone(), w.clone());
        let report = optimize(&mut g2, &mut w2);
        g2.infer_shapes().unwrap();
        prop_assert_eq!(report.affines_folded, 1);
        prop_assert_eq!(report.activations_fused, 1);
        prop_assert_eq!(g2.nodes.len(), 1, "conv, bn and activation become one node");
        prop_assert_eq!(g2.weights.len(), 2, "only the folded weight and bias remain");
        let got = run(&g2, &w2, &x, n);
        // Folding rounds W·s to f32 once per weight: error ~ 2^-24 relative per term.
        prop_assert!(rel_err(&got, &expect) < 1e-5, "rel err {}", rel_err(&got, &expect));
    }
}

#[test]
fn batchnorm_folds_into_linear() {
    let mut s = 7u64;
    let mut g = Graph::default();
    let x = g.add_value("x", vec![12]);
    let y = g.add_value("fc", vec![]);
    let z = g.add_value("bn", vec![]);
    let wid = g.add_weight("w", vec![5, 12]);
    let sid = g.add_weight("s", vec![5]);
    let tid = g.add_weight("t", vec![5]);
    let w = vec![
        rand_vec(&mut s, 60, -1.0, 1.0),
        rand_vec(&mut s, 5, 0.5, 1.5),
        rand_vec(&mut s, 5, -1.0, 1.0),
    ];
    let lin = Linear {
        in_features: 12,
        out_features: 5,
        weight: wid,
        bias: None,
        activation: Activation::Identity,
    };
    g.nodes.push(node("fc", Op::Linear(lin), vec![x], y));
    g.nodes.push(node(
        "bn",
        Op::ChannelAffine {
            scale: Some(sid),
            shift: Some(tid),
            activation: Activation::Relu,
        },
        vec![y],
        z,
    ));
    g.inputs = vec![x];
    g.outputs = vec![z];
    g.infer_shapes().unwrap();
    let xin = rand_vec(&mut s, 36, -1.0, 1.0);
    let expect = run(&g, &w, &xin, 3);
    let (mut g2, mut w2) = (g.clone(), w.clone());
    optimize(&mut g2, &mut w2);
    assert_eq!(g2.nodes.len(), 1);
    assert!(
        matches!(&g2.nodes[0].op, Op::Linear(l) if l.activation == Activation::Relu && l.bias.is_some())
    );
    assert_eq!(g2.outputs, vec![z], "the graph output keeps its value id");
    assert!(rel_err(&run(&g2, &w2, &xin, 3), &expect) < 1e-5);
}

#[test]
fn residual_add_and_relu_fuse_into_the_later_conv() {
    // x -> convA -> a ; x -> convB -> b ; relu(a + b)   (ResNet downsample block shape)
    let mut s = 11u64;
    let mut g = Graph::default();
    let x = g.add_value("x", vec![3, 6, 6]);
    let a = g.add_value("a", vec![]);
    let b = g.add_value("b", vec![]);
    let sum = g.add_value("sum", vec![]);
    let out = g.add_value("out", vec![]);
    let mut w = Vec::new();
    let mut conv = |g: &mut Graph, name: &str, k: usize| {
        let wid = g.add_weight(name, vec![4, 3, k, k]);
        w.push(rand_vec(&mut s, 4 * 3 * k * k, -1.0, 1.0));
        Conv {
            in_channels: 3,
            out_channels: 4,
            kernel: [k, k],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [k / 2; 4],
            groups: 1,
            weight: wid,
            bias: None,
            activation: Activation::Identity,
        }
    };
    let ca = conv(&mut g, "wa", 3);
    let cb = conv(&mut g, "wb", 1);
    g.nodes.push(node("convA", Op::Conv(ca), vec![x], a));
    g.nodes.push(node("convB", Op::Conv(cb), vec![x], b));
    g.nodes.push(node(
        "add",
        Op::Binary {
            kind: BinaryKind::Add,
            activation: Activation::Identity,
        },
        vec![a, b],
        sum,
    ));
    g.nodes.push(node(
        "relu",
        Op::Activation(Activation::Relu),
        vec![sum],
        out,
    ));
    g.inputs = vec![x];
    g.outputs = vec![out];
    g.infer_shapes().unwrap();
    let xin = rand_vec(&mut s, 2 * 3 * 36, -1.0, 1.0);
    let expect = run(&g, &w, &xin, 2);
    let (mut g2, mut w2) = (g.clone(), w.clone());
    let r = optimize(&mut g2, &mut w2);
    g2.infer_shapes().unwrap();
    assert_eq!((r.activations_fused, r.residuals_fused), (1, 1));
    assert_eq!(g2.nodes.len(), 2);
    assert_eq!(
        g2.nodes[1].inputs,
        vec![x, a],
        "convB reads x and adds convA's output"
    );
    assert!(matches!(&g2.nodes[1].op, Op::Conv(c) if c.activation == Activation::Relu));
    assert!(rel_err(&run(&g2, &w2, &xin, 2), &expect) < 1e-6);
}

#[test]
fn shared_values_are_not_fused() {
    // conv output read by both BN and the graph output: folding would change an output.
    let mut s = 3u64;
    let (mut g, mut w) = conv_bn_graph(&mut s, 2, 3, 5, 3, 1, 1, true, Activation::Relu);
    let conv_out = g.nodes[0].output;
    g.outputs.push(conv_out);
    let before = g.clone();
    let r = optimize(&mut g, &mut w);
    assert_eq!(r.affines_folded, 0);
    assert_eq!(
        g.nodes.len(),
        2,
        "bn+relu fuse with each other, not into the conv"
    );
    assert_eq!(g.nodes[0], before.nodes[0]);
}

#[test]
fn denormal_weights_are_flushed() {
    let mut s = 5u64;
    let (mut g, mut w) = conv_bn_graph(&mut s, 1, 1, 3, 1, 1, 1, false, Activation::Identity);
    w[0][0] = f32::MIN_POSITIVE / 4.0;
    w[2][0] = 1.0; // shift
    let r = optimize(&mut g, &mut w);
    // the folded weight w*s is still denormal-sized for s in [0.2, 2]
    assert!(r.denormals_flushed >= 1);
    assert!(w.iter().flatten().all(|v| !v.is_subnormal()));
}
