//! Shape inference and structural validation.
//!
//! Run by the converter after import and again by `Model::open` on the stored graph, so a
//! file whose graph passes here cannot make a kernel index out of bounds: every value's
//! shape, every weight's shape and every id is checked against the op that uses it.

use super::{Graph, Node, Op};
use crate::error::{Error, Result};
use crate::limits;

/// Output size of a sliding window along one axis: `(W + P - D(K-1) - 1) / S + 1`.
/// With `ceil_mode` the division rounds up, but the last window must start inside the
/// input or the leading padding (the ONNX / PyTorch rule).
pub fn window_output(input: usize, kernel: usize, stride: usize, dilation: usize, pad_begin: usize, pad_end: usize, ceil_mode: bool) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let padded = input.checked_add(pad_begin)?.checked_add(pad_end)?;
    let effective = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
    if padded < effective {
        return None;
    }
    let span = padded - effective;
    let mut out = if ceil_mode { span.div_ceil(stride) + 1 } else { span / stride + 1 };
    if ceil_mode && out > 1 && (out - 1).checked_mul(stride).is_none_or(|s| s >= input + pad_begin) {
        out -= 1;
    }
    Some(out)
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

impl Graph {
    /// Checks ids and topological order, infers every node's output shape from its inputs
    /// and weights, and checks the limits. Graph inputs must already have shapes.
    pub fn infer_shapes(&mut self) -> Result<()> {
        if self.nodes.len() > limits::MAX_NODES {
            return Err(Error::Limit(format!("{} nodes (at most {})", self.nodes.len(), limits::MAX_NODES)));
        }
        if self.values.len() > limits::MAX_VALUES {
            return Err(Error::Limit(format!("{} values (at most {})", self.values.len(), limits::MAX_VALUES)));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(Error::Graph("the graph needs at least one input and one output".into()));
        }
        for w in &self.weights {
            check_shape(&w.shape, &format!("weight '{}'", w.name))?;
        }
        let mut known = vec![false; self.values.len()];
        for &i in &self.inputs {
            if i >= self.values.len() {
                return Err(Error::Graph(format!("graph input id {i} out of range")));
            }
            check_shape(&self.values[i].shape, &format!("input '{}'", self.values[i].name))?;
            known[i] = true;
        }
        for idx in 0..self.nodes.len() {
            let node = &self.nodes[idx];
            for &v in &node.inputs {
                if v >= self.values.len() || !known[v] {
                    return Err(Error::Graph(format!(
                        "node '{}' reads value {v} which is not produced before it",
                        node.name
                    )));
                }
            }
            for w in node.op.weight_ids() {
                if w >= self.weights.len() {
                    return Err(Error::Graph(format!("node '{}' uses weight id {w} out of range", node.name)));
                }
            }
            if node.output >= self.values.len() || known[node.output] {
                return Err(Error::Graph(format!("node '{}' writes value {} twice or out of range", node.name, node.output)));
            }
            let shape = infer_node(self, node)?;
            check_shape(&shape, &format!("output of node '{}'", node.name))?;
            let out = node.output;
            self.values[out].shape = shape;
            known[out] = true;
        }
        for &o in &self.outputs {
            if o >= self.values.len() || !known[o] {
                return Err(Error::Graph(format!("graph output {o} is never produced")));
            }
        }
        Ok(())
    }
}

fn check_shape(shape: &[usize], what: &str) -> Result<()> {
    if shape.len() > limits::MAX_RANK {
        return Err(Error::Limit(format!("{what} has rank {} (at most {})", shape.len(), limits::MAX_RANK)));
    }
    if shape.iter().any(|&d| d > limits::MAX_DIM) {
        return Err(Error::Limit(format!("{what} has a dimension above {}: {shape:?}", limits::MAX_DIM)));
    }
    match numel(shape) {
        Some(n) if n <= limits::MAX_TENSOR_ELEMENTS => Ok(()),
        _ => Err(Error::Limit(format!(
            "{what} has shape {shape:?}, more than {} elements",
            limits::MAX_TENSOR_ELEMENTS
        ))),
    }
}

pub(crate) fn infer_node(g: &Graph, node: &Node) -> Result<Vec<usize>> {
    let op = node.op.name();
    let err = |reason: String| Error::shape(&node.name, op, reason);
    let arity = |n: usize| -> Result<()> {
        if node.inputs.len() != n {
            return Err(err(format!("expects {n} input(s), has {}", node.inputs.len())));
        }
        Ok(())
    };
    let wshape = |w: usize| g.weights[w].shape.as_slice();
    let x = g.shape(node.inputs.first().copied().ok_or_else(|| err("has no input".into()))?);
    match &node.op {
        Op::Conv(c) => {
            if node.inputs.len() != 1 && node.inputs.len() != 2 {
                return Err(err(format!("expects 1 or 2 inputs, has {}", node.inputs.len())));
            }
            if x.len() != 3 {
                return Err(err(format!("input must be C×H×W per sample, got {x:?}")));
            }
            if c.groups == 0 || c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                return Err(err(format!(
                    "groups {} must divide in_channels {} and out_channels {}",
                    c.groups, c.in_channels, c.out_channels
                )));
            }
            if x[0] != c.in_channels {
                return Err(err(format!("input has {} channels, the layer expects {}", x[0], c.in_channels)));
            }
            let expect_w = [c.out_channels, c.in_channels / c.groups, c.kernel[0], c.kernel[1]];
            if wshape(c.weight) != expect_w {
                return Err(err(format!("weight shape {:?}, expected {expect_w:?}", wshape(c.weight))));
            }
            if let Some(b) = c.bias {
                if wshape(b) != [c.out_channels] {
                    return Err(err(format!("bias shape {:?}, expected [{}]", wshape(b), c.out_channels)));
                }
            }
            let oh = window_output(x[1], c.kernel[0], c.stride[0], c.dilation[0], c.pads[0], c.pads[2], false);
            let ow = window_output(x[2], c.kernel[1], c.stride[1], c.dilation[1], c.pads[1], c.pads[3], false);
            let (Some(oh), Some(ow)) = (oh, ow) else {
                return Err(err(format!(
                    "kernel {:?} (dilation {:?}, stride {:?}) does not fit input {}×{} with pads {:?}",
                    c.kernel, c.dilation, c.stride, x[1], x[2], c.pads
                )));
            };
            let out = vec![c.out_channels, oh, ow];
            if node.inputs.len() == 2 && g.shape(node.inputs[1]) != out.as_slice() {
                return Err(err(format!("residual shape {:?} differs from output {out:?}", g.shape(node.inputs[1]))));
            }
            Ok(out)
        }
        Op::Linear(l) => {
            if node.inputs.len() != 1 && node.inputs.len() != 2 {
                return Err(err(format!("expects 1 or 2 inputs, has {}", node.inputs.len())));
            }
            if x != [l.in_features] {
                return Err(err(format!("input per sample is {x:?}, the layer expects [{}]", l.in_features)));
            }
            if wshape(l.weight) != [l.out_features, l.in_features] {
                return Err(err(format!(
                    "weight shape {:?}, expected [{}, {}]",
                    wshape(l.weight),
                    l.out_features,
                    l.in_features
                )));
            }
            if let Some(b) = l.bias {
                if wshape(b) != [l.out_features] {
                    return Err(err(format!("bias shape {:?}, expected [{}]", wshape(b), l.out_features)));
                }
            }
            let out = vec![l.out_features];
            if node.inputs.len() == 2 && g.shape(node.inputs[1]) != out.as_slice() {
                return Err(err(format!("residual shape {:?} differs from output {out:?}", g.shape(node.inputs[1]))));
            }
            Ok(out)
        }
        Op::ChannelAffine { scale, shift, .. } => {
            arity(1)?;
            let c = *x.first().ok_or_else(|| err("input is a scalar per sample".into()))?;
            for w in scale.iter().chain(shift.iter()) {
                let n: usize = wshape(*w).iter().product();
                if n != c && n != 1 {
                    return Err(err(format!("per-channel weight has {n} elements, input has {c} channels")));
                }
            }
            Ok(x.to_vec())
        }
        Op::Activation(_) => {
            arity(1)?;
            Ok(x.to_vec())
        }
        Op::PRelu { slope } => {
            arity(1)?;
            let n: usize = wshape(*slope).iter().product();
            let c = x.first().copied().unwrap_or(1);
            if n != c && n != 1 {
                return Err(err(format!("slope has {n} elements, input has {c} channels")));
            }
            Ok(x.to_vec())
        }
        Op::Pool(p) => {
            arity(1)?;
            if x.len() != 3 {
                return Err(err(format!("input must be C×H×W per sample, got {x:?}")));
            }
            // A window made only of padding has no value, so pads must be smaller than the kernel.
            if p.pads.iter().zip([p.kernel[0], p.kernel[1], p.kernel[0], p.kernel[1]]).any(|(&pd, k)| pd >= k) {
                return Err(err(format!("pads {:?} must be smaller than the kernel {:?}", p.pads, p.kernel)));
            }
            let oh = window_output(x[1], p.kernel[0], p.stride[0], p.dilation[0], p.pads[0], p.pads[2], p.ceil_mode);
            let ow = window_output(x[2], p.kernel[1], p.stride[1], p.dilation[1], p.pads[1], p.pads[3], p.ceil_mode);
            let (Some(oh), Some(ow)) = (oh, ow) else {
                return Err(err(format!(
                    "window {:?} (stride {:?}) does not fit input {}×{} with pads {:?}",
                    p.kernel, p.stride, x[1], x[2], p.pads
                )));
            };
            Ok(vec![x[0], oh, ow])
        }
        Op::GlobalPool { .. } => {
            arity(1)?;
            if x.len() < 2 {
                return Err(err(format!("input must be C×spatial per sample, got {x:?}")));
            }
            let mut out = vec![x[0]];
            out.extend(std::iter::repeat_n(1, x.len() - 1));
            Ok(out)
        }
        Op::Flatten { axis } => {
            arity(1)?;
            if *axis == 0 || *axis > x.len() + 1 {
                return Err(err(format!("flatten axis {axis} must be between 1 and {} (batch stays first)", x.len() + 1)));
            }
            let split = *axis - 1;
            let inner: usize = x[split..].iter().product();
            if split == 0 {
                Ok(vec![inner])
            } else {
                Ok(vec![x[..split].iter().product(), inner])
            }
        }
        Op::Binary { kind, .. } => {
            arity(2)?;
            let y = g.shape(node.inputs[1]);
            if x == y || is_channel_broadcast(x, y) {
                Ok(x.to_vec())
            } else {
                Err(err(format!(
                    "cannot broadcast {y:?} to {x:?}: cnnrt supports equal shapes or a per-channel [C,1,1] operand ({kind:?})"
                )))
            }
        }
        Op::Concat { axis } => {
            if node.inputs.is_empty() {
                return Err(err("has no inputs".into()));
            }
            if *axis >= x.len() {
                return Err(err(format!("axis {} out of range for per-sample rank {}", axis.saturating_add(1), x.len())));
            }
            let mut out = x.to_vec();
            out[*axis] = 0;
            for &v in &node.inputs {
                let s = g.shape(v);
                if s.len() != x.len() || s.iter().enumerate().any(|(i, &d)| i != *axis && d != x[i]) {
                    return Err(err(format!("input shapes {x:?} and {s:?} differ outside axis {}", axis + 1)));
                }
                out[*axis] += s[*axis];
            }
            Ok(out)
        }
        Op::LayerNorm { axis, scale, bias, .. } => {
            arity(1)?;
            if *axis >= x.len() {
                return Err(err(format!("axis {} out of range for per-sample rank {}", axis.saturating_add(1), x.len())));
            }
            let n: usize = x[*axis..].iter().product();
            for w in std::iter::once(*scale).chain(*bias) {
                let wn: usize = wshape(w).iter().product();
                if wn != n {
                    return Err(err(format!("scale/bias has {wn} elements, normalized size is {n}")));
                }
            }
            Ok(x.to_vec())
        }
        Op::InstanceNorm { scale, bias, .. } => {
            arity(1)?;
            if x.len() < 2 {
                return Err(err(format!("input must be C×spatial per sample, got {x:?}")));
            }
            for w in [*scale, *bias] {
                let wn: usize = wshape(w).iter().product();
                if wn != x[0] {
                    return Err(err(format!("scale/bias has {wn} elements, input has {} channels", x[0])));
                }
            }
            Ok(x.to_vec())
        }
        Op::Softmax { axis, .. } => {
            arity(1)?;
            if *axis >= x.len() {
                return Err(err(format!("axis {} out of range for per-sample rank {}", axis.saturating_add(1), x.len())));
            }
            Ok(x.to_vec())
        }
        Op::Pad { pads, .. } => {
            arity(1)?;
            if x.len() != 3 {
                return Err(err(format!("cnnrt pads C×H×W inputs only, got {x:?}")));
            }
            let grow = |d: usize, a: usize, b: usize| a.checked_add(b).and_then(|p| d.checked_add(p));
            let h = grow(x[1], pads[0], pads[2]).ok_or_else(|| err("padding overflows".into()))?;
            let w = grow(x[2], pads[1], pads[3]).ok_or_else(|| err("padding overflows".into()))?;
            Ok(vec![x[0], h, w])
        }
    }
}

/// `y` broadcasts per channel over `x`: `[C,1,1,...]` or `[C]` against `[C, ...]`.
pub fn is_channel_broadcast(x: &[usize], y: &[usize]) -> bool {
    if x.is_empty() || y.is_empty() || y[0] != x[0] {
        return false;
    }
    (y.len() == 1 || y.len() == x.len()) && y[1..].iter().all(|&d| d == 1)
}
