//! Graph rewrites run by the converter, in this order:
//!
//! 1. fold zero `Pad` into the following convolution's padding;
//! 2. fold per-channel affine ops (imported BatchNorm, constant Mul/Add) into the conv or
//!    linear layer before them: `W'[o] = W[o]·s[o]`, `b'[o] = b[o]·s[o] + t[o]`;
//! 3. fuse standalone activations into the store of the layer before;
//! 4. fuse a residual `Add` into the convolution producing one of its operands;
//! 5. flush denormal weights to zero; drop unused values and weights.
//!
//! A rewrite fires only where the intermediate value has exactly one reader and is not a
//! graph output, so no observable value changes. Folding happens in f64.

use crate::graph::{BinaryKind, Graph, Op, ValueId, WeightId};

/// What the passes did, for the converter's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub pads_folded: usize,
    pub affines_folded: usize,
    pub activations_fused: usize,
    pub residuals_fused: usize,
    pub denormals_flushed: usize,
    pub weights_dropped: usize,
}

/// Runs every pass; `weights[i]` is the data of `graph.weights[i]`.
pub fn optimize(graph: &mut Graph, weights: &mut Vec<Vec<f32>>) -> PassReport {
    let mut report = PassReport {
        pads_folded: fold_pads(graph),
        ..Default::default()
    };
    report.affines_folded = fold_affines(graph, weights);
    report.activations_fused = fuse_activations(graph);
    report.residuals_fused = fuse_residuals(graph);
    report.denormals_flushed = flush_denormals(weights);
    report.weights_dropped = drop_unused(graph, weights);
    report
}

/// Node index whose only reader is node `reader`, via `value`; None if shared or an output.
fn sole_reader(graph: &Graph, value: ValueId, reader: usize) -> bool {
    !graph.outputs.contains(&value)
        && graph
            .nodes
            .iter()
            .enumerate()
            .all(|(i, n)| i == reader || !n.inputs.contains(&value))
        && graph.nodes[reader]
            .inputs
            .iter()
            .filter(|&&v| v == value)
            .count()
            == 1
}

/// Merges node `second` into node `first`: `first` takes over `second`'s output value and
/// `second` is removed. Valid when `second`'s only input from `first` is read by it alone.
fn absorb(graph: &mut Graph, first: usize, second: usize) {
    graph.nodes[first].output = graph.nodes[second].output;
    graph.nodes.remove(second);
}

fn producer_of(graph: &Graph, value: ValueId) -> Option<usize> {
    graph.nodes.iter().position(|n| n.output == value)
}

fn fold_pads(graph: &mut Graph) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let Op::Pad { pads, value } = graph.nodes[i].op else {
            i += 1;
            continue;
        };
        let out = graph.nodes[i].output;
        let reader = graph
            .nodes
            .iter()
            .position(|n| n.inputs.first() == Some(&out));
        let foldable = value == 0.0
            && reader.is_some_and(|r| {
                sole_reader(graph, out, r) && matches!(graph.nodes[r].op, Op::Conv(_))
            });
        if let (true, Some(r)) = (foldable, reader) {
            let src = graph.nodes[i].inputs[0];
            if let Op::Conv(c) = &mut graph.nodes[r].op {
                for (p, extra) in c.pads.iter_mut().zip(pads) {
                    *p += extra;
                }
            }
            graph.nodes[r].inputs[0] = src;
            graph.nodes.remove(i);
            count += 1;
        } else {
            i += 1;
        }
    }
    count
}

fn push_weight(
    graph: &mut Graph,
    weights: &mut Vec<Vec<f32>>,
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
) -> WeightId {
    let id = graph.add_weight(name, shape);
    weights.push(data);
    id
}

fn fold_affines(graph: &mut Graph, weights: &mut Vec<Vec<f32>>) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let Op::ChannelAffine {
            scale,
            shift,
            activation,
        } = graph.nodes[i].op.clone()
        else {
            i += 1;
            continue;
        };
        let src = graph.nodes[i].inputs[0];
        let Some(p) = producer_of(graph, src) else {
            i += 1;
            continue;
        };
        let (out_channels, weight, bias, prev_act, inputs) = match &graph.nodes[p].op {
            Op::Conv(c) => (
                c.out_channels,
                c.weight,
                c.bias,
                c.activation,
                graph.nodes[p].inputs.len(),
            ),
            Op::Linear(l) => (
                l.out_features,
                l.weight,
                l.bias,
                l.activation,
                graph.nodes[p].inputs.len(),
            ),
            _ => {
                i += 1;
                continue;
            }
        };
        // An activation or residual already in the producer sits between it and the affine.
        if !prev_act.is_identity() || inputs != 1 || !sole_reader(graph, src, i) {
            i += 1;
            continue;
        }
        let per = |w: Option<WeightId>, o: usize, default: f64| {
            w.map_or(default, |id| {
                let v = &weights[id];
                (if v.len() == 1 { v[0] } else { v[o] }) as f64
            })
        };
        let plain = &weights[weight];
        let per_out = plain.len() / out_channels;
        let mut new_w = vec![0.0f32; plain.len()];
        let mut new_b = vec![0.0f32; out_channels];
        for o in 0..out_channels {
            let s = per(scale, o, 1.0);
            let t = per(shift, o, 0.0);
            for k in 0..per_out {
                new_w[o * per_out + k] = (plain[o * per_out + k] as f64 * s) as f32;
            }
            let b = bias.map_or(0.0, |b| weights[b][o] as f64);
            new_b[o] = (b * s + t) as f32;
        }
        let wname = format!("{}.folded", graph.weights[weight].name);
        let wshape = graph.weights[weight].shape.clone();
        let new_wid = push_weight(graph, weights, wname, wshape, new_w);
        let bname = format!("{}.bias.folded", graph.nodes[p].name);
        let new_bid = push_weight(graph, weights, bname, vec![out_channels], new_b);
        match &mut graph.nodes[p].op {
            Op::Conv(c) => {
                c.weight = new_wid;
                c.bias = Some(new_bid);
                c.activation = activation;
            }
            Op::Linear(l) => {
                l.weight = new_wid;
                l.bias = Some(new_bid);
                l.activation = activation;
            }
            _ => unreachable!("matched above"),
        }
        absorb(graph, p, i);
        count += 1;
        // The producer stays at index p < i; re-examine the node now at i.
    }
    count
}

fn fuse_activations(graph: &mut Graph) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let Op::Activation(act) = graph.nodes[i].op else {
            i += 1;
            continue;
        };
        let src = graph.nodes[i].inputs[0];
        let fusable = producer_of(graph, src).filter(|&p| {
            sole_reader(graph, src, i)
                && graph.nodes[p]
                    .op
                    .clone()
                    .fused_activation_mut()
                    .is_some_and(|a| a.is_identity())
        });
        match fusable {
            Some(p) => {
                if let Some(a) = graph.nodes[p].op.fused_activation_mut() {
                    *a = act;
                }
                absorb(graph, p, i);
                count += 1;
            }
            None => i += 1,
        }
    }
    count
}

fn fuse_residuals(graph: &mut Graph) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let Op::Binary {
            kind: BinaryKind::Add,
            activation,
        } = graph.nodes[i].op
        else {
            i += 1;
            continue;
        };
        let (a, b) = (graph.nodes[i].inputs[0], graph.nodes[i].inputs[1]);
        if graph.shape(a) != graph.shape(b) || a == b {
            i += 1;
            continue;
        }
        // Fuse into the later conv of the two, so the other operand already exists when it runs.
        let candidates = [(a, b), (b, a)];
        let best = candidates
            .iter()
            .filter_map(|&(conv_out, other)| {
                let p = producer_of(graph, conv_out)?;
                let ok = matches!(&graph.nodes[p].op, Op::Conv(c) if c.activation.is_identity())
                    && graph.nodes[p].inputs.len() == 1
                    && sole_reader(graph, conv_out, i)
                    && producer_of(graph, other).is_none_or(|q| q < p);
                ok.then_some((p, other))
            })
            .max_by_key(|&(p, _)| p);
        match best {
            Some((p, other)) => {
                graph.nodes[p].inputs.push(other);
                if let Op::Conv(c) = &mut graph.nodes[p].op {
                    c.activation = activation;
                }
                absorb(graph, p, i);
                count += 1;
            }
            None => i += 1,
        }
    }
    count
}

fn flush_denormals(weights: &mut [Vec<f32>]) -> usize {
    let mut count = 0;
    for v in weights.iter_mut().flatten() {
        if v.is_subnormal() {
            *v = 0.0;
            count += 1;
        }
    }
    count
}

/// Removes weights no node reads, renumbering the rest.
fn drop_unused(graph: &mut Graph, weights: &mut Vec<Vec<f32>>) -> usize {
    let mut used = vec![false; graph.weights.len()];
    for n in &graph.nodes {
        for w in n.op.weight_ids() {
            used[w] = true;
        }
    }
    let mut remap = vec![usize::MAX; used.len()];
    let mut next = 0;
    for (i, &u) in used.iter().enumerate() {
        if u {
            remap[i] = next;
            next += 1;
        }
    }
    let dropped = used.len() - next;
    if dropped == 0 {
        return 0;
    }
    let mut k = 0;
    graph.weights.retain(|_| {
        k += 1;
        used[k - 1]
    });
    let mut k = 0;
    weights.retain(|_| {
        k += 1;
        used[k - 1]
    });
    for n in &mut graph.nodes {
        for w in n.op.weight_ids_mut() {
            *w = remap[*w];
        }
    }
    dropped
}
