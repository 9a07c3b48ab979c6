//! `cnnrt convert --batch`: the converter chooses each layer's algorithm for a batch size.
//! A 3×3 layer of 256 channels on a 14×14 map is stored as Winograd F(2x2) for batch 1
//! (its F(4x4) weights take longer to stream than its products to compute) and as F(4x4)
//! for batch 8 (the samples share one pass over the weights); both files give the plain
//! model's outputs within the Winograd tolerance at batch 1 and 8, and the batch is
//! recorded in the file's metadata.

mod common;
use cnnrt::convert::{convert_onnx, ConvertOptions};
use cnnrt::format::{model_to_bytes, CostRates, Metadata};
use cnnrt::graph::{Activation, Graph, Node, Op, WeightLayout};
use cnnrt::SessionOptions;
use common::{plain_conv, rand_vec, rel_err};

/// input 256×14×14 → 3×3 256→256 (pad 1, bias, ReLU).
fn wide_3x3_layer() -> common::Zoo {
    let mut g = Graph::default();
    let mut seed = 77u64;
    let c = 256;
    let x = g.add_value("input", vec![c, 14, 14]);
    let y = g.add_value("output", vec![c, 14, 14]);
    let mut cv = plain_conv(c, c, 3, 1, [1; 4], 1, Activation::Relu);
    cv.weight = g.add_weight("w", vec![c, c, 3, 3]);
    cv.bias = Some(g.add_weight("b", vec![c]));
    let weights = vec![
        rand_vec(&mut seed, c * c * 9, -0.05, 0.05),
        rand_vec(&mut seed, c, -0.2, 0.2),
    ];
    g.nodes.push(Node {
        name: "conv".into(),
        op: Op::Conv(cv),
        inputs: vec![x],
        output: y,
    });
    g.inputs = vec![x];
    g.outputs = vec![y];
    common::Zoo { graph: g, weights }
}

#[test]
fn the_layers_algorithm_follows_the_batch_it_is_converted_for() {
    let zoo = wide_3x3_layer();
    let plain = zoo.model();
    let n = 8;
    let mut seed = 3u64;
    let x = rand_vec(&mut seed, n * 256 * 196, -1.0, 1.0);
    let want = plain
        .session(SessionOptions::default().max_batch(n))
        .unwrap()
        .run(&x, n)
        .unwrap()
        .to_vec();
    for (batch, layout, algorithm) in [
        (1, WeightLayout::WinogradF2x2, "winograd_f2x2"),
        (8, WeightLayout::WinogradF4x4, "winograd_f4x4"),
    ] {
        let converted = zoo.converted(batch);
        let (graph, weights, notes) = converted.packed_for_file();
        let Op::Conv(c) = &graph.nodes[0].op else {
            panic!("{:?}", graph.nodes[0].op)
        };
        assert_eq!(graph.weights[c.weight].layout, layout, "batch {batch}");
        assert_eq!(notes[0].algorithm, algorithm, "batch {batch}");
        assert!(
            notes[0].relative_error.is_some_and(|e| e > 0.0 && e < 1e-4),
            "{:?}",
            notes[0]
        );
        let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
        let bytes = model_to_bytes(&graph, &refs, &Metadata::default()).unwrap();
        let model = cnnrt::Model::from_bytes(&bytes).unwrap();
        // Any file runs any batch.
        for run in [1, n] {
            let mut s = model
                .session(SessionOptions::default().max_batch(run))
                .unwrap();
            // An F(4x4) layer whose weights stream from memory stays planar (`region`).
            assert_eq!(s.algorithms(), [algorithm], "batch {batch}, run {run}");
            let got = s.run(&x[..run * 256 * 196], run).unwrap();
            let e = rel_err(got, &want[..run * 256 * 196]);
            assert!(e < 1e-4, "converted for {batch}, run at {run}: error {e}");
        }
    }
}

#[test]
fn the_batch_is_recorded_in_the_metadata() {
    let onnx = std::fs::read("models/lenet5.onnx").unwrap();
    for (batch, recorded) in [(0, 1), (1, 1), (8, 8)] {
        let options = ConvertOptions {
            batch,
            ..Default::default()
        };
        let converted = convert_onnx(&onnx, &options).unwrap();
        assert_eq!(converted.metadata.planned_batch, recorded);
        let (graph, weights, _) = converted.packed_for_file();
        let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
        let bytes = model_to_bytes(&graph, &refs, &converted.metadata).unwrap();
        let model = cnnrt::Model::from_bytes(&bytes).unwrap();
        assert_eq!(model.metadata().planned_batch, recorded);
    }
    // Files written before the field read 0, which counts as 1.
    assert_eq!(Metadata::default().planned_batch, 0);
}

/// The machine rates (`cnnrt convert --tune`) move the same layer's choice at batch 1:
/// F(2x2) for the defaults (a Xeon core: fast GEMMs, 15 GB/s), F(4x4) for an AMD EPYC
/// Zen 4 core's measured rates (slower GEMMs, faster reads), as measured on each machine
/// (docs/KERNELS.md, session 35). The rates are recorded; invalid ones are refused.
#[test]
fn the_layers_algorithm_follows_the_machine_rates() {
    let zoo = wide_3x3_layer();
    let zen4 = CostRates {
        gemm_gflops: 110.0,
        memory_gbps: 19.0,
    };
    // Its F(4x4) weights stream from memory, so it stays planar (`region`).
    for (rates, layout) in [
        (None, WeightLayout::WinogradF2x2),
        (Some(zen4), WeightLayout::WinogradF4x4),
    ] {
        let mut converted = zoo.converted(1);
        converted.metadata.cost_rates = rates;
        let (graph, _, _) = converted.packed_for_file();
        let Op::Conv(c) = &graph.nodes[0].op else {
            panic!("{:?}", graph.nodes[0].op)
        };
        assert_eq!(graph.weights[c.weight].layout, layout, "{rates:?}");
    }
    let onnx = std::fs::read("models/lenet5.onnx").unwrap();
    let options = ConvertOptions {
        cost_rates: Some(zen4),
        ..Default::default()
    };
    let converted = convert_onnx(&onnx, &options).unwrap();
    assert_eq!(converted.metadata.cost_rates, Some(zen4));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let options = ConvertOptions {
            cost_rates: Some(CostRates {
                memory_gbps: bad,
                ..zen4
            }),
            ..Default::default()
        };
        let e = convert_onnx(&onnx, &options).unwrap_err().to_string();
        assert!(e.contains("cost rates"), "{bad}: {e}");
    }
}
