//! Per-layer statistics for `cnnrt inspect` and the benchmarks' FLOP counts: output shape,
//! parameters, multiply-adds, receptive field and output stride.

use super::{Graph, Op};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerStats {
    pub node: usize,
    pub params: usize,
    /// Multiply-adds per sample (convolution and fully connected layers only).
    pub macs: usize,
    /// Receptive field of one output cell, in input pixels `[h, w]`.
    pub receptive_field: [usize; 2],
    /// Distance in input pixels between neighbouring output cells `[h, w]`.
    pub output_stride: [usize; 2],
}

/// Statistics for every node, in node order.
pub fn layer_stats(graph: &Graph) -> Vec<LayerStats> {
    // Per value: receptive field and jump (output stride) along h and w.
    let mut rf = vec![[1usize; 2]; graph.values.len()];
    let mut jump = vec![[1usize; 2]; graph.values.len()];
    let full = graph
        .inputs
        .first()
        .map(|&v| {
            let s = graph.shape(v);
            if s.len() >= 3 {
                [s[s.len() - 2], s[s.len() - 1]]
            } else {
                [1, 1]
            }
        })
        .unwrap_or([1, 1]);
    let mut out = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let ins = &node.inputs;
        let mut r = [0usize; 2];
        let mut j = [0usize; 2];
        for &v in ins {
            for a in 0..2 {
                r[a] = r[a].max(rf[v][a]);
                j[a] = j[a].max(jump[v][a]);
            }
        }
        let params: usize = node
            .op
            .weight_ids()
            .iter()
            .map(|&w| graph.weights[w].numel())
            .sum();
        let out_numel: usize = graph.shape(node.output).iter().product();
        let mut macs = 0;
        let window = |k: [usize; 2],
                      s: [usize; 2],
                      d: [usize; 2],
                      r: &mut [usize; 2],
                      j: &mut [usize; 2]| {
            for a in 0..2 {
                r[a] += (d[a] * (k[a] - 1)) * j[a];
                j[a] *= s[a];
            }
        };
        match &node.op {
            Op::Conv(c) => {
                macs = out_numel * (c.in_channels / c.groups) * c.kernel[0] * c.kernel[1];
                window(c.kernel, c.stride, c.dilation, &mut r, &mut j);
            }
            Op::Pool(p) => window(p.kernel, p.stride, p.dilation, &mut r, &mut j),
            Op::Linear(l) => {
                macs = l.in_features * l.out_features;
                r = full;
            }
            Op::GlobalPool { .. } => r = full,
            _ => {}
        }
        // Windows may reach past the image through padding; clamp to the image for display.
        let r = [r[0].min(full[0].max(1)), r[1].min(full[1].max(1))];
        rf[node.output] = r;
        jump[node.output] = j;
        out.push(LayerStats {
            node: i,
            params,
            macs,
            receptive_field: r,
            output_stride: j,
        });
    }
    out
}

/// Total multiply-adds per sample; FLOPs are twice this.
pub fn total_macs(graph: &Graph) -> usize {
    layer_stats(graph).iter().map(|s| s.macs).sum()
}

/// Total weight elements.
pub fn total_params(graph: &Graph) -> usize {
    graph.weights.iter().map(|w| w.numel()).sum()
}
