//! 5×5 stride-1 layers through the converter: those with at least 20 input channels are
//! stored as Winograd F(4x4,5x5) (layout `winograd_f4x4_k5`) on maps up to 32 wide and
//! F(2x2,5x5) (`winograd_f2x2_k5`) on wider ones, and run it; the narrower ones keep the
//! direct GEMM; the session's outputs stay within the Winograd tolerance of the plain
//! file's, on every tier and worker count, and bit-identical across worker counts.

mod common;
use cnnrt::format::{model_to_bytes, Metadata};
use cnnrt::graph::{Activation, Graph, Node, Op, WeightLayout};
use cnnrt::simd::Isa;
use cnnrt::{SessionOptions, Threads};
use common::{plain_conv, rand_vec, rel_err};

/// input 16×side×side → 5×5 16→40 (pad 2, ReLU) → 5×5 40→24 (pad 2).
fn two_5x5_layers(side: usize) -> common::Zoo {
    let mut g = Graph::default();
    let mut w: Vec<Vec<f32>> = Vec::new();
    let mut seed = 31u64;
    let x = g.add_value("input", vec![16, side, side]);
    let mid = g.add_value("mid", vec![40, side, side]);
    let out = g.add_value("output", vec![24, side, side]);
    for (name, (cin, cout, act), inp, outp) in [
        ("narrow", (16, 40, Activation::Relu), x, mid),
        ("wide", (40, 24, Activation::Identity), mid, out),
    ] {
        let mut cv = plain_conv(cin, cout, 5, 1, [2; 4], 1, act);
        cv.weight = g.add_weight(format!("{name}.w"), vec![cout, cin, 5, 5]);
        w.push(rand_vec(&mut seed, cout * cin * 25, -0.2, 0.2));
        let b = g.add_weight(format!("{name}.b"), vec![cout]);
        w.push(rand_vec(&mut seed, cout, -0.2, 0.2));
        cv.bias = Some(b);
        g.nodes.push(Node {
            name: name.into(),
            op: Op::Conv(cv),
            inputs: vec![inp],
            output: outp,
        });
    }
    g.inputs = vec![x];
    g.outputs = vec![out];
    common::Zoo {
        graph: g,
        weights: w,
    }
}

#[test]
fn wide_5x5_layers_are_stored_and_run_as_winograd() {
    for (side, layout, algorithm) in [
        (14, WeightLayout::WinogradF4x4K5, "winograd_f4x4_5x5"),
        (36, WeightLayout::WinogradF2x2K5, "winograd_f2x2_5x5"),
    ] {
        check(side, layout, algorithm);
    }
}

fn check(side: usize, wide_layout: WeightLayout, algorithm: &str) {
    let zoo = two_5x5_layers(side);
    let converted = zoo.converted(1);
    let (graph, weights, notes) = converted.packed_for_file();
    let layout = |name: &str| {
        let node = graph.nodes.iter().find(|n| n.name == name).unwrap();
        let Op::Conv(c) = &node.op else { panic!() };
        graph.weights[c.weight].layout
    };
    assert!(!matches!(
        layout("narrow"),
        WeightLayout::WinogradF2x2K5 | WeightLayout::WinogradF4x4K5
    ));
    assert_eq!(layout("wide"), wide_layout, "side {side}");
    let note = notes.iter().find(|n| n.node == "wide").unwrap();
    assert_eq!(note.algorithm, algorithm);
    assert!(
        note.relative_error.is_some_and(|e| e > 0.0 && e < 1e-4),
        "{note:?}"
    );

    let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
    let packed =
        cnnrt::Model::from_bytes(&model_to_bytes(&graph, &refs, &Metadata::default()).unwrap())
            .unwrap();
    let plain = zoo.model();
    let n = 2;
    let mut seed = 9u64;
    let x = rand_vec(&mut seed, n * 16 * side * side, -1.0, 1.0);
    for isa in Isa::supported() {
        let opts = SessionOptions::default().max_batch(n).max_isa(isa);
        let want = plain
            .session(opts.clone())
            .unwrap()
            .run(&x, n)
            .unwrap()
            .to_vec();
        let mut first: Option<Vec<f32>> = None;
        for threads in [1usize, 2, 3] {
            let mut s = packed
                .session(opts.clone().threads(Threads::Count(threads)))
                .unwrap();
            assert!(
                s.algorithms().contains(&algorithm),
                "[{isa}] {:?}",
                s.algorithms()
            );
            let got = s.run(&x, n).unwrap().to_vec();
            let e = rel_err(&got, &want);
            assert!(e < 1e-4, "[{isa}] {threads} threads: relative error {e}");
            match &first {
                None => first = Some(got),
                Some(f) => assert!(
                    f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "[{isa}] {threads} threads differ from 1"
                ),
            }
        }
    }
}
