//! Reference kernels: the specification every fast kernel is tested against.
//!
//! Plain loops over NCHW data, accumulation in f64, no blocking, no SIMD, no tricks. They
//! are slow on purpose; clarity is their only job. All take the batch `n` and per-sample
//! shapes (batch excluded) as the graph stores them; the caller guarantees slice lengths
//! (checked by shape inference), and each kernel asserts them again.

use crate::error::{Error, Result};
use crate::graph::{Activation, BinaryKind, Conv, Graph, Linear, Op, Pool, PoolKind, WeightId};

/// Anything that hands out weight data by id: a slice of slices in tests and the
/// converter, the mapped file in a loaded model.
pub trait WeightSource {
    fn weight(&self, id: WeightId) -> &[f32];
}

impl WeightSource for [&[f32]] {
    fn weight(&self, id: WeightId) -> &[f32] {
        self[id]
    }
}

impl WeightSource for [Vec<f32>] {
    fn weight(&self, id: WeightId) -> &[f32] {
        &self[id]
    }
}

/// Most inputs a Concat may have (checked when a session is planned).
pub const MAX_CONCAT_INPUTS: usize = 64;

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Convolution: `out = act(conv(x, w) + b + residual)`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    n: usize,
    in_shape: &[usize],
    c: &Conv,
    w: &[f32],
    b: Option<&[f32]>,
    residual: Option<&[f32]>,
    out_shape: &[usize],
    out: &mut [f32],
) {
    let (ci, h, wd) = (in_shape[0], in_shape[1], in_shape[2]);
    let (co, oh, ow) = (out_shape[0], out_shape[1], out_shape[2]);
    let [kh, kw] = c.kernel;
    let cig = ci / c.groups;
    let cog = co / c.groups;
    assert_eq!(x.len(), n * ci * h * wd);
    assert_eq!(out.len(), n * co * oh * ow);
    assert_eq!(w.len(), co * cig * kh * kw);
    for s in 0..n {
        for o in 0..co {
            let g = o / cog;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[o] as f64);
                    for i in 0..cig {
                        let ic = g * cig + i;
                        for ky in 0..kh {
                            let iy = (y * c.stride[0] + ky * c.dilation[0]) as isize - c.pads[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (xo * c.stride[1] + kx * c.dilation[1]) as isize - c.pads[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((s * ci + ic) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((o * cig + i) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let idx = ((s * co + o) * oh + y) * ow + xo;
                    if let Some(r) = residual {
                        acc += r[idx] as f64;
                    }
                    out[idx] = c.activation.apply_f64(acc) as f32;
                }
            }
        }
    }
}

/// Fully connected: `out[s, o] = act(sum_i x[s, i] * w[o, i] + b[o] + residual[s, o])`.
pub fn linear(x: &[f32], n: usize, l: &Linear, w: &[f32], b: Option<&[f32]>, residual: Option<&[f32]>, out: &mut [f32]) {
    let (fi, fo) = (l.in_features, l.out_features);
    assert_eq!(x.len(), n * fi);
    assert_eq!(w.len(), fo * fi);
    assert_eq!(out.len(), n * fo);
    for s in 0..n {
        for o in 0..fo {
            let mut acc = b.map_or(0.0, |b| b[o] as f64);
            for i in 0..fi {
                acc += x[s * fi + i] as f64 * w[o * fi + i] as f64;
            }
            if let Some(r) = residual {
                acc += r[s * fo + o] as f64;
            }
            out[s * fo + o] = l.activation.apply_f64(acc) as f32;
        }
    }
}

/// Per-channel `act(x * scale[c] + shift[c])`; a 1-element scale or shift broadcasts.
pub fn channel_affine(x: &[f32], n: usize, shape: &[usize], scale: Option<&[f32]>, shift: Option<&[f32]>, act: Activation, out: &mut [f32]) {
    let c = shape[0];
    let inner = numel(&shape[1..]);
    assert_eq!(x.len(), n * c * inner);
    let pick = |v: &[f32], ch: usize| if v.len() == 1 { v[0] } else { v[ch] } as f64;
    for s in 0..n {
        for ch in 0..c {
            let a = scale.map_or(1.0, |v| pick(v, ch));
            let b = shift.map_or(0.0, |v| pick(v, ch));
            for i in 0..inner {
                let idx = (s * c + ch) * inner + i;
                out[idx] = act.apply_f64(x[idx] as f64 * a + b) as f32;
            }
        }
    }
}

pub fn activation(x: &[f32], act: Activation, out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = act.apply_f64(v as f64) as f32;
    }
}

pub fn prelu(x: &[f32], n: usize, shape: &[usize], slope: &[f32], out: &mut [f32]) {
    let c = shape.first().copied().unwrap_or(1);
    let inner = numel(shape.get(1..).unwrap_or(&[]));
    assert_eq!(x.len(), n * c * inner);
    for s in 0..n {
        for ch in 0..c {
            let a = if slope.len() == 1 { slope[0] } else { slope[ch] } as f64;
            for i in 0..inner {
                let idx = (s * c + ch) * inner + i;
                let v = x[idx] as f64;
                out[idx] = if v < 0.0 { v * a } else { v } as f32;
            }
        }
    }
}

/// Windowed max / average pooling. Padding never wins a max; average divides by the
/// window clipped to the padded input (`count_include_pad`) or to the real input.
pub fn pool(x: &[f32], n: usize, in_shape: &[usize], p: &Pool, out_shape: &[usize], out: &mut [f32]) {
    let (c, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    let (oh, ow) = (out_shape[1], out_shape[2]);
    assert_eq!(x.len(), n * c * h * w);
    assert_eq!(out.len(), n * c * oh * ow);
    let (ph, pw) = (h + p.pads[0] + p.pads[2], w + p.pads[1] + p.pads[3]);
    for s in 0..n {
        for ch in 0..c {
            let plane = &x[(s * c + ch) * h * w..][..h * w];
            for y in 0..oh {
                for xo in 0..ow {
                    let mut max = f64::NEG_INFINITY;
                    let mut sum = 0.0f64;
                    let mut nan = false;
                    let mut real = 0usize;
                    let mut padded = 0usize;
                    for ky in 0..p.kernel[0] {
                        let py = y * p.stride[0] + ky * p.dilation[0];
                        for kx in 0..p.kernel[1] {
                            let px = xo * p.stride[1] + kx * p.dilation[1];
                            // ceil_mode windows may run past the padded input: those cells
                            // count for nothing, not even for count_include_pad.
                            if py >= ph || px >= pw {
                                continue;
                            }
                            padded += 1;
                            let (iy, ix) = (py as isize - p.pads[0] as isize, px as isize - p.pads[1] as isize);
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            real += 1;
                            let v = plane[iy as usize * w + ix as usize] as f64;
                            nan |= v.is_nan();
                            max = max.max(v);
                            sum += v;
                        }
                    }
                    let r = match p.kind {
                        PoolKind::Max if nan => f64::NAN,
                        PoolKind::Max => max,
                        PoolKind::Average => {
                            let d = if p.count_include_pad { padded } else { real };
                            sum / d.max(1) as f64
                        }
                    };
                    out[((s * c + ch) * oh + y) * ow + xo] = r as f32;
                }
            }
        }
    }
}

pub fn global_pool(x: &[f32], n: usize, shape: &[usize], kind: PoolKind, out: &mut [f32]) {
    let c = shape[0];
    let inner = numel(&shape[1..]);
    assert_eq!(out.len(), n * c);
    for (o, plane) in out.iter_mut().zip(x.chunks_exact(inner.max(1))) {
        *o = match kind {
            PoolKind::Average => (plane.iter().map(|&v| v as f64).sum::<f64>() / inner as f64) as f32,
            PoolKind::Max => {
                if plane.iter().any(|v| v.is_nan()) {
                    f32::NAN
                } else {
                    plane.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
                }
            }
        };
    }
}

/// `act(a op b)` where `b` has `a`'s shape or is a per-channel broadcast.
pub fn binary(a: &[f32], b: &[f32], n: usize, a_shape: &[usize], b_shape: &[usize], kind: BinaryKind, act: Activation, out: &mut [f32]) {
    let c = a_shape[0];
    let inner = numel(&a_shape[1..]);
    let same = a_shape == b_shape;
    assert_eq!(a.len(), n * c * inner);
    for s in 0..n {
        for ch in 0..c {
            for i in 0..inner {
                let idx = (s * c + ch) * inner + i;
                let bv = if same { b[idx] } else { b[s * c + ch] } as f64;
                let av = a[idx] as f64;
                let r = match kind {
                    BinaryKind::Add => av + bv,
                    BinaryKind::Mul => av * bv,
                };
                out[idx] = act.apply_f64(r) as f32;
            }
        }
    }
}

/// Concatenation along per-sample `axis`: `inputs[i]` has shape `shapes[i]`.
pub fn concat(inputs: &[&[f32]], shapes: &[&[usize]], n: usize, axis: usize, out: &mut [f32]) {
    let outer: usize = numel(&shapes[0][..axis]);
    let mut pos = 0;
    for s in 0..n {
        for o in 0..outer {
            for (x, shape) in inputs.iter().zip(shapes) {
                let chunk = numel(&shape[axis..]);
                let start = (s * outer + o) * chunk;
                out[pos..pos + chunk].copy_from_slice(&x[start..start + chunk]);
                pos += chunk;
            }
        }
    }
    assert_eq!(pos, out.len());
}

/// Normalizes each sample over dims `axis..`, then `* scale + bias` element-wise.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(x: &[f32], n: usize, shape: &[usize], axis: usize, eps: f32, scale: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let inner = numel(&shape[axis..]);
    let groups = n * numel(&shape[..axis]);
    for gi in 0..groups {
        let v = &x[gi * inner..][..inner];
        let mean = v.iter().map(|&a| a as f64).sum::<f64>() / inner as f64;
        let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for i in 0..inner {
            let y = (v[i] as f64 - mean) * inv * scale[i] as f64 + bias.map_or(0.0, |b| b[i] as f64);
            out[gi * inner + i] = y as f32;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn instance_norm(x: &[f32], n: usize, shape: &[usize], eps: f32, scale: &[f32], bias: &[f32], out: &mut [f32]) {
    let c = shape[0];
    let inner = numel(&shape[1..]);
    for s in 0..n {
        for ch in 0..c {
            let base = (s * c + ch) * inner;
            let v = &x[base..base + inner];
            let mean = v.iter().map(|&a| a as f64).sum::<f64>() / inner as f64;
            let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / inner as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for i in 0..inner {
                out[base + i] = ((v[i] as f64 - mean) * inv * scale[ch] as f64 + bias[ch] as f64) as f32;
            }
        }
    }
}

/// Softmax over per-sample `axis` (or over all dims from `axis` on, flattened).
pub fn softmax(x: &[f32], n: usize, shape: &[usize], axis: usize, flatten_from_axis: bool, out: &mut [f32]) {
    let outer = n * numel(&shape[..axis]);
    let (len, inner) = if flatten_from_axis { (numel(&shape[axis..]), 1) } else { (shape[axis], numel(&shape[axis + 1..])) };
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let max = (0..len).map(|k| x[at(k)] as f64).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..len).map(|k| (x[at(k)] as f64 - max).exp()).sum();
            for k in 0..len {
                out[at(k)] = ((x[at(k)] as f64 - max).exp() / sum) as f32;
            }
        }
    }
}

pub fn pad(x: &[f32], n: usize, in_shape: &[usize], pads: [usize; 4], value: f32, out: &mut [f32]) {
    let (c, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    let (oh, ow) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
    out.fill(value);
    for sc in 0..n * c {
        for y in 0..h {
            let src = &x[(sc * h + y) * w..][..w];
            out[(sc * oh + y + pads[0]) * ow + pads[1]..][..w].copy_from_slice(src);
        }
    }
}

/// Runs one node with reference kernels. `inputs` are the node's input tensors (batch
/// `n`), `weights` the graph's weight data; returns the output tensor.
pub fn run_node(graph: &Graph, node_index: usize, weights: &(impl WeightSource + ?Sized), inputs: &[&[f32]], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * numel(graph.shape(graph.nodes[node_index].output))];
    run_node_into(graph, node_index, weights, inputs, n, &mut out);
    out
}

/// [`run_node`] writing into a caller-provided output of `n × numel(output shape)`.
pub fn run_node_into(graph: &Graph, node_index: usize, weights: &(impl WeightSource + ?Sized), inputs: &[&[f32]], n: usize, out: &mut [f32]) {
    let node = &graph.nodes[node_index];
    let in_shape = graph.shape(node.inputs[0]);
    let out_shape = graph.shape(node.output);
    let x = inputs[0];
    let second = inputs.get(1).copied();
    match &node.op {
        Op::Conv(c) => conv2d(x, n, in_shape, c, weights.weight(c.weight), c.bias.map(|b| weights.weight(b)), second, out_shape, out),
        Op::Linear(l) => linear(x, n, l, weights.weight(l.weight), l.bias.map(|b| weights.weight(b)), second, out),
        Op::ChannelAffine { scale, shift, activation } => {
            channel_affine(x, n, in_shape, scale.map(|s| weights.weight(s)), shift.map(|s| weights.weight(s)), *activation, out)
        }
        Op::Activation(a) => activation(x, *a, out),
        Op::PRelu { slope } => prelu(x, n, in_shape, weights.weight(*slope), out),
        Op::Pool(p) => pool(x, n, in_shape, p, out_shape, out),
        Op::GlobalPool { kind } => global_pool(x, n, in_shape, *kind, out),
        Op::Flatten { .. } => out.copy_from_slice(x),
        Op::Binary { kind, activation: act } => {
            binary(x, inputs[1], n, in_shape, graph.shape(node.inputs[1]), *kind, *act, out)
        }
        Op::Concat { axis } => {
            // A fixed array, not a Vec: sessions run this with no heap allocation.
            let mut shapes: [&[usize]; MAX_CONCAT_INPUTS] = [&[]; MAX_CONCAT_INPUTS];
            for (slot, &v) in shapes.iter_mut().zip(&node.inputs) {
                *slot = graph.shape(v);
            }
            concat(inputs, &shapes[..inputs.len()], n, *axis, out)
        }
        Op::LayerNorm { axis, epsilon, scale, bias } => {
            layer_norm(x, n, in_shape, *axis, *epsilon, weights.weight(*scale), bias.map(|b| weights.weight(b)), out)
        }
        Op::InstanceNorm { epsilon, scale, bias } => instance_norm(x, n, in_shape, *epsilon, weights.weight(*scale), weights.weight(*bias), out),
        Op::Softmax { axis, flatten_from_axis } => softmax(x, n, in_shape, *axis, *flatten_from_axis, out),
        Op::Pad { pads, value } => pad(x, n, in_shape, *pads, *value, out),
    }
}

/// Runs a whole graph with reference kernels: the oracle for end-to-end tests.
/// `inputs` follow `graph.inputs`, outputs follow `graph.outputs`; all flat NCHW with
/// batch `n` leading.
pub fn run_graph(graph: &Graph, weights: &[&[f32]], inputs: &[&[f32]], n: usize) -> Result<Vec<Vec<f32>>> {
    if inputs.len() != graph.inputs.len() {
        return Err(Error::Input(format!("the graph has {} inputs, {} given", graph.inputs.len(), inputs.len())));
    }
    if weights.len() != graph.weights.len() {
        return Err(Error::Graph(format!("{} weight tensors for {} declared", weights.len(), graph.weights.len())));
    }
    for (w, info) in weights.iter().zip(&graph.weights) {
        if w.len() != info.numel() {
            return Err(Error::Graph(format!("weight '{}' has {} elements, shape {:?}", info.name, w.len(), info.shape)));
        }
    }
    let mut values: Vec<Option<Vec<f32>>> = vec![None; graph.values.len()];
    for (&v, data) in graph.inputs.iter().zip(inputs) {
        let want = n * numel(graph.shape(v));
        if data.len() != want {
            return Err(Error::Input(format!(
                "input '{}' has {} elements, expected {} (batch {n} × {:?})",
                graph.values[v].name,
                data.len(),
                want,
                graph.shape(v)
            )));
        }
        values[v] = Some(data.to_vec());
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        let ins: Vec<&[f32]> = node
            .inputs
            .iter()
            .map(|&v| values[v].as_deref().ok_or_else(|| Error::Graph(format!("node '{}' reads an unset value", node.name))))
            .collect::<Result<_>>()?;
        let out = run_node(graph, i, weights, &ins, n);
        values[node.output] = Some(out);
    }
    graph
        .outputs
        .iter()
        .map(|&o| values[o].clone().ok_or_else(|| Error::Graph(format!("output {o} never computed"))))
        .collect()
}
