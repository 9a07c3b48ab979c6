//! Which nodes of a graph run channels-last (`kernels::nhwc`,
//! `kernels::winograd::WinogradNhwc`), and which values then need a copy in the other
//! layout: decided when a session is planned (and by the converter, which stores those
//! 1×1 and F(4x4) layers' weights in the kernels' panels).
//!
//! A node may run channels-last when there is such a kernel for it ([`candidates`]: 1×1
//! convolutions and 3×3 depthwise ones on small maps, 3×3 layers stored for Winograd
//! F(4x4) with channels a multiple of 16 whose weights do not stream from memory). Of
//! those, kept:
//! - a depthwise node only if its input is made channels-last (no conversion of an
//!   expanded tensor at the region's edge);
//! - no node whose output is a graph output, except a Winograd one (its output then gets
//!   a planar copy, which the session returns);
//! - only groups of connected nodes that hold a depthwise or a Winograd node: the 1×1
//!   layers alone gain little, and a lone channels-last layer between planar ones would
//!   pay two conversions. A lone F(4x4) layer gains more than its conversions cost
//!   (ResNet-18's layer2.0.conv2, 28×28×128: 0.84 ms planar, 0.60 channels-last with the
//!   copy of its output, its input's copy 0.01 ms).
//!
//! Every other value stays planar. A reader that needs the other layout than its value
//! is stored in (a planar residual read by a channels-last projection, a channels-last
//! output read by a global pooling) reads a copy made right after the value's producer
//! runs (a [`Shadow`]). Values of one pixel per channel are the same in both layouts and
//! never need one.

use crate::graph::{Graph, Op, WeightLayout};
use crate::kernels::depthwise::DepthwiseKernel;
use crate::kernels::nhwc::{DepthwiseNhwc, PointwiseNhwc};
use crate::kernels::winograd::WinogradNhwc;
use crate::simd::Isa;

/// What a node can run channels-last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// A 1×1 convolution: any input layout, a channels-last residual.
    Pointwise,
    /// A depthwise convolution: channels-last input.
    Depthwise,
    /// A 3×3 convolution the file holds for Winograd F(4x4,3x3): channels-last input and
    /// residual.
    Winograd,
}

/// The layout a reader needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Planar,
    Nhwc,
    /// Either (reads in place whichever it is).
    Any,
}

/// A copy of `value` in the other layout than it is stored in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadow {
    pub value: usize,
    /// The copy is channels-last (else planar).
    pub to_nhwc: bool,
    /// The node after which it is made (`None`: a graph input, made before the first).
    pub after: Option<usize>,
    /// The last node that reads it.
    pub last: usize,
}

/// Widest output map (input map for a depthwise layer) a layer runs channels-last on:
/// `CNNRT_CHANNELS_LAST_MAX_W` (for tuning) or 28 (MobileNetV2's 28-, 14- and 7-wide
/// stages; its wider ones run as fused blocks).
pub fn max_width() -> usize {
    std::env::var("CNNRT_CHANNELS_LAST_MAX_W")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(28)
}

/// Whether F(4x4) Winograd layers may run channels-last: `CNNRT_WINO_NHWC=0` keeps them
/// planar (for comparisons).
pub fn winograd_enabled() -> bool {
    std::env::var("CNNRT_WINO_NHWC").map_or(true, |v| v != "0")
}

/// What each node could run channels-last on `isa`: 1×1 convolutions on maps up to
/// [`max_width`] wide, except the projection of a depthwise layer that stays planar (a
/// block on a wider map, which fuses; its input would need converting); 3×3 depthwise
/// convolutions whose planar layer is the same chain (`DepthwiseKernel::uniform_chain`,
/// so that both paths give the same bits) on inputs up to [`max_width`] wide; 3×3
/// layers stored for F(4x4) that `WinogradNhwc` runs, except those whose weights stream
/// from memory (`WinogradNhwc::streams_weights`): planar, those run as fast at one thread
/// and batch 1 and faster at two threads or batch 8 (ResNet-18's 14×14 layers, session 38:
/// 0.46–0.51 ms against 0.59–0.68 channels-last at 2 threads, `docs/KERNELS.md`).
pub fn candidates(graph: &Graph, isa: Isa) -> Vec<Option<Candidate>> {
    let max_w = max_width();
    let winograd = winograd_enabled();
    // Per node: whether it is a depthwise layer the planar plan runs as one
    // (`DepthwiseKernel`), and whether the channels-last kernel takes it.
    let (planar_dw, depthwise): (Vec<bool>, Vec<bool>) = graph
        .nodes
        .iter()
        .map(|node| {
            let Op::Conv(c) = &node.op else {
                return (false, false);
            };
            let (Ok(ins), Ok(outs)) = (
                <[usize; 3]>::try_from(graph.shape(node.inputs[0])),
                <[usize; 3]>::try_from(graph.shape(node.output)),
            ) else {
                return (false, false);
            };
            let Some(k) = DepthwiseKernel::new(isa, c, ins, outs)
                .filter(|_| graph.weights[c.weight].layout == WeightLayout::Plain)
            else {
                return (false, false);
            };
            let nhwc = node.inputs.len() == 1
                && ins[2] <= max_w
                && k.uniform_chain()
                && DepthwiseNhwc::new(isa, c, ins, outs, 1).is_some();
            (true, nhwc)
        })
        .unzip();
    let mut producer = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        producer[node.output] = Some(i);
    }
    graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            if depthwise[i] {
                return Some(Candidate::Depthwise);
            }
            let Op::Conv(c) = &node.op else { return None };
            let outs = graph.shape(node.output);
            if matches!(
                graph.weights[c.weight].layout,
                WeightLayout::WinogradF4x4 | WeightLayout::WinogradF4x4Nhwc
            ) {
                let ins = graph.shape(node.inputs[0]);
                let fits = |s: &[usize]| <[usize; 3]>::try_from(s).ok();
                let runs = match (fits(ins), fits(outs)) {
                    (Some(i), Some(o)) => {
                        WinogradNhwc::new(isa, c, i, o, 1).is_some_and(|k| !k.streams_weights())
                    }
                    _ => false,
                };
                return (winograd && runs && node.inputs.len() <= 2).then_some(Candidate::Winograd);
            }
            let after_planar_dw =
                producer[node.inputs[0]].is_some_and(|p| planar_dw[p] && !depthwise[p]);
            let stored = matches!(
                graph.weights[c.weight].layout,
                WeightLayout::Plain | WeightLayout::ConvGemm | WeightLayout::LinearGemm
            );
            (stored
                && !after_planar_dw
                && outs.len() == 3
                && outs[2] <= max_w
                && PointwiseNhwc::new(isa, c, outs[1] * outs[2], true, 1).is_some())
            .then_some(Candidate::Pointwise)
        })
        .collect()
}

/// The nodes that run channels-last, given what each could (`candidates`, one per node).
pub fn select(graph: &Graph, candidates: &[Option<Candidate>]) -> Vec<bool> {
    let nn = graph.nodes.len();
    let mut producer = vec![usize::MAX; graph.values.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        producer[n.output] = i;
    }
    let mut on: Vec<bool> = candidates.iter().map(|c| c.is_some()).collect();
    on.resize(nn, false);
    for (i, n) in graph.nodes.iter().enumerate() {
        if graph.outputs.contains(&n.output) && candidates[i] != Some(Candidate::Winograd) {
            on[i] = false;
        }
    }
    loop {
        let mut changed = false;
        for (i, n) in graph.nodes.iter().enumerate() {
            if on[i] && candidates[i] == Some(Candidate::Depthwise) {
                let p = producer[n.inputs[0]];
                if p == usize::MAX || !on[p] {
                    on[i] = false;
                    changed = true;
                }
            }
        }
        // Connected groups (a node and the channels-last producers of its inputs).
        let mut group: Vec<usize> = (0..nn).collect();
        fn root(g: &mut [usize], mut i: usize) -> usize {
            while g[i] != i {
                g[i] = g[g[i]];
                i = g[i];
            }
            i
        }
        for (i, n) in graph.nodes.iter().enumerate() {
            if !on[i] {
                continue;
            }
            for &v in &n.inputs {
                let p = producer[v];
                if p != usize::MAX && on[p] {
                    let (a, b) = (root(&mut group, i), root(&mut group, p));
                    group[a] = b;
                }
            }
        }
        // Per group: depthwise layers, Winograd layers.
        let mut count = vec![(0usize, 0usize); nn];
        for i in 0..nn {
            if on[i] {
                let r = root(&mut group, i);
                match candidates[i] {
                    Some(Candidate::Depthwise) => count[r].0 += 1,
                    Some(Candidate::Winograd) => count[r].1 += 1,
                    _ => {}
                }
            }
        }
        for i in 0..nn {
            let (dw, wino) = count[root(&mut group, i)];
            if on[i] && dw == 0 && wino == 0 {
                on[i] = false;
                changed = true;
            }
        }
        if !changed {
            return on;
        }
    }
}

/// Whether value `v` is the same in both layouts (one pixel per channel, or not a map).
pub fn layout_free(graph: &Graph, v: usize) -> bool {
    let s = &graph.values[v].shape;
    s.len() != 3 || s[1] * s[2] == 1
}

/// The copies the reads need. `stored_nhwc[v]`: value `v` is stored channels-last;
/// `reads(i)`: the (value, need) pairs node `i` reads when it runs (none for nodes run
/// inside another's step).
pub fn shadows(
    graph: &Graph,
    stored_nhwc: &[bool],
    reads: impl Fn(usize) -> Vec<(usize, Need)>,
) -> Vec<Shadow> {
    let mut producer = vec![None; graph.values.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        producer[n.output] = Some(i);
    }
    let mut out: Vec<Shadow> = Vec::new();
    for i in 0..graph.nodes.len() {
        for (v, need) in reads(i) {
            let wrong = match need {
                Need::Any => false,
                Need::Planar => stored_nhwc[v],
                Need::Nhwc => !stored_nhwc[v],
            };
            if !wrong || layout_free(graph, v) {
                continue;
            }
            match out.iter_mut().find(|s| s.value == v) {
                Some(s) => s.last = s.last.max(i),
                None => out.push(Shadow {
                    value: v,
                    to_nhwc: need == Need::Nhwc,
                    after: producer[v],
                    last: i,
                }),
            }
        }
    }
    // Graph outputs are planar: a channels-last one gets a copy kept to the end.
    let last = graph.nodes.len().saturating_sub(1);
    for &v in &graph.outputs {
        if !stored_nhwc[v] || layout_free(graph, v) {
            continue;
        }
        match out.iter_mut().find(|s| s.value == v) {
            Some(s) => s.last = last,
            None => out.push(Shadow {
                value: v,
                to_nhwc: false,
                after: producer[v],
                last,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, PoolKind};

    /// A chain `input → n0 → n1 → …`, every value `[c, 7, 7]`, the last one the output;
    /// global pooling as the ops (only the wiring matters here).
    fn chain(len: usize, residual: Option<(usize, usize)>) -> Graph {
        let mut g = Graph::default();
        let mut prev = g.add_value("x", vec![8, 7, 7]);
        g.inputs = vec![prev];
        let first = prev;
        let mut outs = vec![first];
        for i in 0..len {
            let v = g.add_value(format!("v{i}"), vec![8, 7, 7]);
            let mut inputs = vec![prev];
            if let Some((node, from)) = residual {
                if node == i {
                    inputs.push(outs[from]);
                }
            }
            g.nodes.push(Node {
                name: format!("n{i}"),
                op: Op::GlobalPool {
                    kind: PoolKind::Average,
                },
                inputs,
                output: v,
            });
            outs.push(v);
            prev = v;
        }
        g.outputs = vec![prev];
        g
    }

    use Candidate::{Depthwise as D, Pointwise as P};

    #[test]
    fn keeps_connected_groups_with_a_depthwise_layer() {
        let g = chain(6, None);
        // n0 planar; n1..n4 a group with a depthwise layer; n5 is the graph output.
        let on = select(&g, &[None, Some(P), Some(D), Some(P), Some(P), Some(P)]);
        assert_eq!(on, [false, true, true, true, true, false]);
    }

    #[test]
    fn keeps_winograd_layers_and_their_groups_even_at_the_output() {
        let g = chain(8, None);
        // n0..n1 Winograd layers; n3 a 1×1 layer alone; n5 a 1×1 layer before the
        // Winograd layers n6 and n7, the graph output.
        let w = Some(Candidate::Winograd);
        let on = select(&g, &[w, w, None, Some(P), None, Some(P), w, w]);
        assert_eq!(on, [true, true, false, false, false, true, true, true]);
        // Its output gets a planar copy kept to the end.
        let mut stored = vec![false; g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            stored[n.output] = on[i];
        }
        let out = g.nodes[7].output;
        let shadows = shadows(&g, &stored, |_| Vec::new());
        assert_eq!(
            shadows,
            [Shadow {
                value: out,
                to_nhwc: false,
                after: Some(7),
                last: 7
            }]
        );
    }

    #[test]
    fn drops_groups_without_depthwise_layers_and_depthwise_layers_after_planar_ones() {
        let g = chain(7, None);
        // n0..n1 pointwise only; n3 depthwise after a planar node; n5 pointwise alone.
        let on = select(&g, &[Some(P), Some(P), None, Some(D), None, Some(P), None]);
        assert_eq!(on, [false; 7]);
    }

    #[test]
    fn copies_what_readers_need_in_the_other_layout() {
        // n2 reads the graph input as a residual; n3 (planar) reads n2's output.
        let g = chain(5, Some((2, 0)));
        let on = select(&g, &[Some(P), Some(D), Some(P), None, None]);
        assert_eq!(on, [true, true, true, false, false]);
        let mut stored = vec![false; g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            stored[n.output] = on[i];
        }
        let reads = |i: usize| -> Vec<(usize, Need)> {
            let n = &g.nodes[i];
            match i {
                0 => vec![(n.inputs[0], Need::Any)],
                1 => vec![(n.inputs[0], Need::Nhwc)],
                2 => vec![(n.inputs[0], Need::Any), (n.inputs[1], Need::Nhwc)],
                _ => vec![(n.inputs[0], Need::Planar)],
            }
        };
        let shadows = shadows(&g, &stored, reads);
        assert_eq!(
            shadows,
            [
                Shadow {
                    value: g.inputs[0],
                    to_nhwc: true,
                    after: None,
                    last: 2
                },
                Shadow {
                    value: g.nodes[2].output,
                    to_nhwc: false,
                    after: Some(2),
                    last: 3
                },
            ]
        );
    }
}
