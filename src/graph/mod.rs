//! The graph IR: a topologically ordered list of nodes over values with per-sample shapes.
//!
//! Shapes exclude the batch dimension: every value is `[N, shape...]` at run time and the
//! batch `N` is chosen per run. This is what lets one plan serve any batch up to its limit,
//! and why operators that mix samples (softmax over axis 0, flatten at axis 0) are refused.
//!
//! Weights are described here (shape, layout) but their data lives elsewhere: owned vectors
//! in the converter, slices of the memory map in a loaded [`crate::Model`].

pub mod shape;
pub mod stats;

use serde::{Deserialize, Serialize};

/// Index into [`Graph::values`].
pub type ValueId = usize;
/// Index into [`Graph::weights`].
pub type WeightId = usize;

/// An element-wise activation, either standalone or fused into the store of the layer before.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Identity,
    Relu,
    LeakyRelu {
        alpha: f32,
    },
    /// `min(max(x, min), max)`; ReLU6 is `Clip { min: 0, max: 6 }`.
    Clip {
        min: f32,
        max: f32,
    },
    Sigmoid,
    /// `max(0, min(1, alpha * x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * max(0, min(1, x / 6 + 1/2))`.
    HardSwish,
    /// `x * sigmoid(x)` (a.k.a. swish).
    Silu,
    Tanh,
}

impl Activation {
    pub fn is_identity(&self) -> bool {
        matches!(self, Activation::Identity)
    }

    /// The function itself, in f64; the reference kernels and the fast kernels' scalar
    /// remainders use it.
    pub fn apply_f64(&self, x: f64) -> f64 {
        match *self {
            Activation::Identity => x,
            // NaN stays NaN (x > 0 is false for NaN, so test it explicitly).
            Activation::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 || x.is_nan() {
                    x
                } else {
                    x * alpha as f64
                }
            }
            Activation::Clip { min, max } => {
                if x.is_nan() {
                    x
                } else {
                    x.max(min as f64).min(max as f64)
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::HardSigmoid { alpha, beta } => {
                if x.is_nan() {
                    x
                } else {
                    (alpha as f64 * x + beta as f64).clamp(0.0, 1.0)
                }
            }
            Activation::HardSwish => {
                if x.is_nan() {
                    x
                } else {
                    x * (x / 6.0 + 0.5).clamp(0.0, 1.0)
                }
            }
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Activation::Identity => "Identity",
            Activation::Relu => "Relu",
            Activation::LeakyRelu { .. } => "LeakyRelu",
            Activation::Clip { .. } => "Clip",
            Activation::Sigmoid => "Sigmoid",
            Activation::HardSigmoid { .. } => "HardSigmoid",
            Activation::HardSwish => "HardSwish",
            Activation::Silu => "Silu",
            Activation::Tanh => "Tanh",
        }
    }
}

/// 2-D convolution, NCHW, weights `[out_channels, in_channels / groups, kh, kw]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    /// `[kh, kw]`
    pub kernel: [usize; 2],
    /// `[sh, sw]`
    pub stride: [usize; 2],
    /// `[dh, dw]`
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`
    pub pads: [usize; 4],
    pub groups: usize,
    pub weight: WeightId,
    pub bias: Option<WeightId>,
    /// Applied after bias and the fused residual (if the node has a second input).
    #[serde(default)]
    pub activation: Activation,
}

/// Fully connected: `y = x · Wᵀ + b` with `W` stored `[out_features, in_features]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: WeightId,
    pub bias: Option<WeightId>,
    #[serde(default)]
    pub activation: Activation,
}

/// Max or average pooling over a window, NCHW.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub kind: PoolKind,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`
    pub pads: [usize; 4],
    pub ceil_mode: bool,
    /// Average pooling only: divide by the full window even where it covers padding.
    pub count_include_pad: bool,
}

impl Pool {
    /// A 2×2 stride-2 max pool without padding or dilation: one window per 2×2 block
    /// (the kind the convolution kernels can fold into their stores).
    pub fn is_plain_max_2x2(&self) -> bool {
        self.kind == PoolKind::Max
            && self.kernel == [2, 2]
            && self.stride == [2, 2]
            && self.dilation == [1, 1]
            && self.pads == [0; 4]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Max,
    Average,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryKind {
    Add,
    Mul,
}

/// The operators. Each node has one output; inputs are listed in [`Node::inputs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Inputs: `[x]` or `[x, residual]` (residual added before the activation).
    Conv(Conv),
    /// Inputs: `[x]` with per-sample shape `[in_features]`, or `[x, residual]`.
    Linear(Linear),
    /// Standalone BatchNorm (one that could not be folded), stored as
    /// `y = x * scale[c] + shift[c]`; also serves per-channel constant Mul / Add.
    ChannelAffine {
        scale: Option<WeightId>,
        shift: Option<WeightId>,
        #[serde(default)]
        activation: Activation,
    },
    Activation(Activation),
    /// `y = x` where `x >= 0`, else `slope[c] * x`; slope has C or 1 elements.
    PRelu {
        slope: WeightId,
    },
    Pool(Pool),
    GlobalPool {
        kind: PoolKind,
    },
    /// Per-sample reshape to `[prod(dims[..axis-1]), prod(dims[axis-1..])]` in ONNX terms;
    /// `axis == 1` is the usual flatten to `[features]`.
    Flatten {
        axis: usize,
    },
    /// Both inputs are activations. The second has the same per-sample shape as the
    /// first, or is a per-channel `[C, 1, 1]` / `[C]` broadcast (squeeze-excite).
    Binary {
        kind: BinaryKind,
        #[serde(default)]
        activation: Activation,
    },
    /// Concatenate along a per-sample axis (0 = channels).
    Concat {
        axis: usize,
    },
    /// Normalize over per-sample dims `axis..` (ONNX axis minus one), then scale and shift
    /// element-wise by tensors of the normalized shape.
    LayerNorm {
        axis: usize,
        epsilon: f32,
        scale: WeightId,
        bias: Option<WeightId>,
    },
    /// Normalize each (sample, channel) plane, then per-channel scale and shift.
    InstanceNorm {
        epsilon: f32,
        scale: WeightId,
        bias: WeightId,
    },
    /// Softmax over per-sample axis `axis`; with `flatten_from_axis` (opset < 13) over
    /// all dims from `axis` on, flattened.
    Softmax {
        axis: usize,
        flatten_from_axis: bool,
    },
    /// Constant padding of the spatial dims: `[top, left, bottom, right]`.
    Pad {
        pads: [usize; 4],
        value: f32,
    },
}

impl Op {
    /// The operator's name as `inspect` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(c)
                if c.groups == c.in_channels && c.groups == c.out_channels && c.groups > 1 =>
            {
                "ConvDw"
            }
            Op::Conv(_) => "Conv",
            Op::Linear(_) => "Linear",
            Op::ChannelAffine { .. } => "BatchNorm",
            Op::Activation(a) => a.name(),
            Op::PRelu { .. } => "PRelu",
            Op::Pool(p) => match p.kind {
                PoolKind::Max => "MaxPool",
                PoolKind::Average => "AvgPool",
            },
            Op::GlobalPool {
                kind: PoolKind::Max,
            } => "GlobalMaxPool",
            Op::GlobalPool {
                kind: PoolKind::Average,
            } => "GlobalAvgPool",
            Op::Flatten { .. } => "Flatten",
            Op::Binary {
                kind: BinaryKind::Add,
                ..
            } => "Add",
            Op::Binary {
                kind: BinaryKind::Mul,
                ..
            } => "Mul",
            Op::Concat { .. } => "Concat",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::InstanceNorm { .. } => "InstanceNorm",
            Op::Softmax { .. } => "Softmax",
            Op::Pad { .. } => "Pad",
        }
    }

    /// The weights this op reads, in a fixed order.
    pub fn weight_ids(&self) -> Vec<WeightId> {
        match self {
            Op::Conv(c) => std::iter::once(c.weight).chain(c.bias).collect(),
            Op::Linear(l) => std::iter::once(l.weight).chain(l.bias).collect(),
            Op::ChannelAffine { scale, shift, .. } => {
                scale.iter().chain(shift.iter()).copied().collect()
            }
            Op::PRelu { slope } => vec![*slope],
            Op::LayerNorm { scale, bias, .. } => std::iter::once(*scale).chain(*bias).collect(),
            Op::InstanceNorm { scale, bias, .. } => vec![*scale, *bias],
            _ => Vec::new(),
        }
    }

    /// Mutable access to the weight ids, in the same order as [`Op::weight_ids`].
    pub fn weight_ids_mut(&mut self) -> Vec<&mut WeightId> {
        match self {
            Op::Conv(c) => std::iter::once(&mut c.weight)
                .chain(c.bias.as_mut())
                .collect(),
            Op::Linear(l) => std::iter::once(&mut l.weight)
                .chain(l.bias.as_mut())
                .collect(),
            Op::ChannelAffine { scale, shift, .. } => {
                scale.as_mut().into_iter().chain(shift.as_mut()).collect()
            }
            Op::PRelu { slope } => vec![slope],
            Op::LayerNorm { scale, bias, .. } => {
                std::iter::once(scale).chain(bias.as_mut()).collect()
            }
            Op::InstanceNorm { scale, bias, .. } => vec![scale, bias],
            _ => Vec::new(),
        }
    }

    /// The activation fused into this op's store, if it has a slot for one.
    pub fn fused_activation_mut(&mut self) -> Option<&mut Activation> {
        match self {
            Op::Conv(c) => Some(&mut c.activation),
            Op::Linear(l) => Some(&mut l.activation),
            Op::ChannelAffine { activation, .. } => Some(activation),
            Op::Binary { activation, .. } => Some(activation),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The source node's name (ONNX), kept for error messages and `inspect`.
    pub name: String,
    #[serde(flatten)]
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueInfo {
    pub name: String,
    /// Per-sample shape (batch excluded); filled by shape inference for inner values.
    pub shape: Vec<usize>,
}

/// How a weight blob's elements are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WeightLayout {
    /// Row-major in the order `shape` gives (ONNX order).
    #[default]
    Plain,
    /// Convolution weights packed for the GEMM kernels: panels of 12 output channels,
    /// K-major inside (see `kernels::conv`). Same element count as `shape`.
    ConvGemm,
    /// Fully connected weights packed as the GEMM's constant B side: panels of 32 output
    /// features, input-major inside (see `kernels::linear`). Same element count.
    LinearGemm,
    /// 3×3 convolution weights transformed to the Winograd F(4x4,3x3) domain, packed per
    /// position (see `kernels::winograd`): `36 · cout · cin` elements.
    WinogradF4x4,
    /// The same for F(2x2,3x3): `16 · cout · cin` elements.
    WinogradF2x2,
    /// 5×5 convolution weights in the Winograd F(2x2,5x5) domain, packed the same way:
    /// `36 · cout · cin` elements.
    WinogradF2x2K5,
    /// 3×3 convolution weights in the F(4x4,3x3) domain for the channels-last kernel
    /// (`kernels::winograd::WinogradNhwc`): per position, `Uᵀ` in panels of 32 output
    /// channels, input-major inside. `36 · cout · cin` elements.
    WinogradF4x4Nhwc,
    /// 5×5 convolution weights in the Winograd F(4x4,5x5) domain
    /// (`kernels::winograd::WinogradF4x4K5`): per position (8 × 8), `U` packed as GEMM A
    /// in panels of 12 output channels. `64 · cout · cin` elements.
    WinogradF4x4K5,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightInfo {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub layout: WeightLayout,
}

impl WeightInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements stored for this weight in its layout; None if the layout does not fit
    /// the shape (Winograd layouts need a `[cout, cin, 3, 3]` shape, or `5, 5` for
    /// F(2x2,5x5)).
    pub fn stored_elements(&self) -> Option<usize> {
        let winograd = |positions: usize, r: usize| match self.shape[..] {
            [o, i, kh, kw] if kh == r && kw == r => o.checked_mul(i)?.checked_mul(positions),
            _ => None,
        };
        match self.layout {
            WeightLayout::Plain | WeightLayout::ConvGemm | WeightLayout::LinearGemm => {
                Some(self.numel())
            }
            WeightLayout::WinogradF4x4 | WeightLayout::WinogradF4x4Nhwc => winograd(36, 3),
            WeightLayout::WinogradF2x2 => winograd(16, 3),
            WeightLayout::WinogradF2x2K5 => winograd(36, 5),
            WeightLayout::WinogradF4x4K5 => winograd(64, 5),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub values: Vec<ValueInfo>,
    pub weights: Vec<WeightInfo>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    pub fn add_value(&mut self, name: impl Into<String>, shape: Vec<usize>) -> ValueId {
        self.values.push(ValueInfo {
            name: name.into(),
            shape,
        });
        self.values.len() - 1
    }

    pub fn add_weight(&mut self, name: impl Into<String>, shape: Vec<usize>) -> WeightId {
        self.weights.push(WeightInfo {
            name: name.into(),
            shape,
            layout: WeightLayout::Plain,
        });
        self.weights.len() - 1
    }

    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.values[v].shape
    }

    /// For each value, the nodes that read it.
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut c = vec![Vec::new(); self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                if v < c.len() && !c[v].contains(&i) {
                    c[v].push(i);
                }
            }
        }
        c
    }

    /// Index of the node producing each value (None for graph inputs).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if n.output < p.len() {
                p[n.output] = Some(i);
            }
        }
        p
    }
}
