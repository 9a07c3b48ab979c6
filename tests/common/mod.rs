//! Shared test helpers: a hand-built model that uses every op, and data generators.
#![allow(dead_code, clippy::too_many_arguments)]

use std::sync::Arc;

use cnnrt::format::{model_to_bytes, Metadata};
use cnnrt::graph::{Activation, BinaryKind, Conv, Graph, Linear, Node, Op, Pool, PoolKind};
use cnnrt::kernels::reference;
use cnnrt::Model;
use proptest::prelude::*;

pub fn rand_vec(seed: &mut u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((*seed >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// max |a - b| / max |b|
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let m = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .fold(0.0f64, |e, (x, y)| e.max((*x as f64 - *y as f64).abs()))
        / m
}

pub struct Zoo {
    pub graph: Graph,
    pub weights: Vec<Vec<f32>>,
}

impl Zoo {
    /// The zoo as the converter holds it before writing it (default Winograd error
    /// budget), its layers' algorithms to be chosen for `batch`.
    pub fn converted(&self, batch: usize) -> cnnrt::convert::Converted {
        cnnrt::convert::Converted {
            graph: self.graph.clone(),
            weights: self.weights.clone(),
            metadata: Metadata {
                planned_batch: batch,
                ..Metadata::default()
            },
            passes: Default::default(),
            winograd_max_error: 1e-4,
        }
    }

    pub fn model(&self) -> Arc<Model> {
        let refs: Vec<&[f32]> = self.weights.iter().map(|w| w.as_slice()).collect();
        Model::from_bytes(&model_to_bytes(&self.graph, &refs, &Metadata::default()).unwrap())
            .unwrap()
    }
}

fn conv(
    g: &mut Graph,
    w: &mut Vec<Vec<f32>>,
    seed: &mut u64,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    act: Activation,
) -> Conv {
    let wid = g.add_weight(
        format!("w{}", g.weights.len()),
        vec![cout, cin / groups, k, k],
    );
    w.push(rand_vec(seed, cout * cin / groups * k * k, -0.5, 0.5));
    let bid = g.add_weight(format!("b{}", g.weights.len()), vec![cout]);
    w.push(rand_vec(seed, cout, -0.2, 0.2));
    Conv {
        weight: wid,
        bias: Some(bid),
        ..plain_conv(cin, cout, k, stride, [k / 2; 4], groups, act)
    }
}

/// Input 3×20×20 → conv3x3 s2 relu (16) → maxpool 3x3 s2 p1 → [dw3x3 relu6 → 1x1 (+res)]
/// → 1x1 expand 24 → BN → concat with a 1x1 branch → instance norm → avg pool 2x2
/// → layer norm → global avg → flatten → linear relu → linear → softmax.
pub fn zoo(seed: u64) -> Zoo {
    let mut s = seed | 1;
    let mut g = Graph::default();
    let mut w = Vec::new();
    let v = |g: &mut Graph, name: &str| g.add_value(name, vec![]);
    let x = g.add_value("input", vec![3, 20, 20]);
    let mut nodes = Vec::new();
    let c1 = v(&mut g, "c1");
    let op = conv(&mut g, &mut w, &mut s, 3, 16, 3, 2, 1, Activation::Relu);
    nodes.push(Node {
        name: "stem".into(),
        op: Op::Conv(op),
        inputs: vec![x],
        output: c1,
    });
    let p1 = v(&mut g, "p1");
    let pool = Pool {
        kind: PoolKind::Max,
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [1; 4],
        ceil_mode: false,
        count_include_pad: false,
    };
    nodes.push(Node {
        name: "pool".into(),
        op: Op::Pool(pool),
        inputs: vec![c1],
        output: p1,
    });
    let d1 = v(&mut g, "d1");
    let op = conv(
        &mut g,
        &mut w,
        &mut s,
        16,
        16,
        3,
        1,
        16,
        Activation::Clip { min: 0.0, max: 6.0 },
    );
    nodes.push(Node {
        name: "dw".into(),
        op: Op::Conv(op),
        inputs: vec![p1],
        output: d1,
    });
    let r1 = v(&mut g, "r1");
    let op = conv(
        &mut g,
        &mut w,
        &mut s,
        16,
        16,
        1,
        1,
        1,
        Activation::Identity,
    );
    nodes.push(Node {
        name: "project".into(),
        op: Op::Conv(op),
        inputs: vec![d1, p1],
        output: r1,
    });
    let e1 = v(&mut g, "e1");
    let op = conv(
        &mut g,
        &mut w,
        &mut s,
        16,
        24,
        1,
        1,
        1,
        Activation::Identity,
    );
    nodes.push(Node {
        name: "expand".into(),
        op: Op::Conv(op),
        inputs: vec![r1],
        output: e1,
    });
    let b1 = v(&mut g, "b1");
    let sc = g.add_weight("bn.scale", vec![24]);
    w.push(rand_vec(&mut s, 24, 0.5, 1.5));
    let sh = g.add_weight("bn.shift", vec![24]);
    w.push(rand_vec(&mut s, 24, -0.3, 0.3));
    nodes.push(Node {
        name: "bn".into(),
        op: Op::ChannelAffine {
            scale: Some(sc),
            shift: Some(sh),
            activation: Activation::Silu,
        },
        inputs: vec![e1],
        output: b1,
    });
    let br = v(&mut g, "br");
    let op = conv(
        &mut g,
        &mut w,
        &mut s,
        16,
        8,
        1,
        1,
        1,
        Activation::HardSwish,
    );
    nodes.push(Node {
        name: "branch".into(),
        op: Op::Conv(op),
        inputs: vec![r1],
        output: br,
    });
    let cat = v(&mut g, "cat");
    nodes.push(Node {
        name: "concat".into(),
        op: Op::Concat { axis: 0 },
        inputs: vec![b1, br],
        output: cat,
    });
    let inorm = v(&mut g, "in");
    let isc = g.add_weight("in.scale", vec![32]);
    w.push(rand_vec(&mut s, 32, 0.5, 1.5));
    let ibi = g.add_weight("in.bias", vec![32]);
    w.push(rand_vec(&mut s, 32, -0.3, 0.3));
    nodes.push(Node {
        name: "instnorm".into(),
        op: Op::InstanceNorm {
            epsilon: 1e-5,
            scale: isc,
            bias: ibi,
        },
        inputs: vec![cat],
        output: inorm,
    });
    let ap = v(&mut g, "ap");
    let pool = Pool {
        kind: PoolKind::Average,
        kernel: [2, 2],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [0; 4],
        ceil_mode: true,
        count_include_pad: false,
    };
    nodes.push(Node {
        name: "avgpool".into(),
        op: Op::Pool(pool),
        inputs: vec![inorm],
        output: ap,
    });
    let ln = v(&mut g, "ln");
    // 5×5 after stem(10) → pool(5) ; avgpool ceil → 3×3: layer norm over [32,3,3]
    let lsc = g.add_weight("ln.scale", vec![32, 3, 3]);
    w.push(rand_vec(&mut s, 288, 0.5, 1.5));
    let lbi = g.add_weight("ln.bias", vec![32, 3, 3]);
    w.push(rand_vec(&mut s, 288, -0.3, 0.3));
    nodes.push(Node {
        name: "layernorm".into(),
        op: Op::LayerNorm {
            axis: 0,
            epsilon: 1e-5,
            scale: lsc,
            bias: Some(lbi),
        },
        inputs: vec![ap],
        output: ln,
    });
    let mul = v(&mut g, "mul");
    nodes.push(Node {
        name: "selfmul".into(),
        op: Op::Binary {
            kind: BinaryKind::Mul,
            activation: Activation::Identity,
        },
        inputs: vec![ln, ap],
        output: mul,
    });
    let gp = v(&mut g, "gp");
    nodes.push(Node {
        name: "gap".into(),
        op: Op::GlobalPool {
            kind: PoolKind::Average,
        },
        inputs: vec![mul],
        output: gp,
    });
    let fl = v(&mut g, "fl");
    nodes.push(Node {
        name: "flatten".into(),
        op: Op::Flatten { axis: 1 },
        inputs: vec![gp],
        output: fl,
    });
    let lin = |g: &mut Graph, w: &mut Vec<Vec<f32>>, s: &mut u64, i: usize, o: usize, act| {
        let wid = g.add_weight(format!("fc{}", g.weights.len()), vec![o, i]);
        w.push(rand_vec(s, o * i, -0.5, 0.5));
        let bid = g.add_weight(format!("fcb{}", g.weights.len()), vec![o]);
        w.push(rand_vec(s, o, -0.1, 0.1));
        Linear {
            in_features: i,
            out_features: o,
            weight: wid,
            bias: Some(bid),
            activation: act,
        }
    };
    let f1 = v(&mut g, "f1");
    let op = lin(&mut g, &mut w, &mut s, 32, 20, Activation::Relu);
    nodes.push(Node {
        name: "fc1".into(),
        op: Op::Linear(op),
        inputs: vec![fl],
        output: f1,
    });
    let f2 = v(&mut g, "f2");
    let op = lin(&mut g, &mut w, &mut s, 20, 10, Activation::Identity);
    nodes.push(Node {
        name: "fc2".into(),
        op: Op::Linear(op),
        inputs: vec![f1],
        output: f2,
    });
    let sm = v(&mut g, "prob");
    nodes.push(Node {
        name: "softmax".into(),
        op: Op::Softmax {
            axis: 0,
            flatten_from_axis: false,
        },
        inputs: vec![f2],
        output: sm,
    });
    g.nodes = nodes;
    g.inputs = vec![x];
    g.outputs = vec![sm];
    g.infer_shapes().unwrap();
    Zoo {
        graph: g,
        weights: w,
    }
}

const RELU6: Activation = Activation::Clip { min: 0.0, max: 6.0 };

/// A convolution with no weights attached yet (`weight` 0, no bias).
pub fn plain_conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pads: [usize; 4],
    groups: usize,
    act: Activation,
) -> Conv {
    Conv {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride; 2],
        dilation: [1, 1],
        pads,
        groups,
        weight: 0,
        bias: None,
        activation: act,
    }
}

/// Two inverted-residual blocks (the first with a residual, the second stride 2) whose
/// expanded tensors exceed `kernels::fused::MIN_EXPANDED_BYTES` (1 MiB), then global pooling.
pub fn inverted_residuals() -> Zoo {
    let mut g = Graph::default();
    let mut w: Vec<Vec<f32>> = Vec::new();
    let mut seed = 3u64;
    let (c, e, hw) = (8, 64, 66);
    let x = g.add_value("input", vec![c, hw, hw]);
    let mut add_conv = |g: &mut Graph, w: &mut Vec<Vec<f32>>, mut cv: Conv| {
        let k = cv.kernel[0];
        let per = cv.in_channels / cv.groups * k * k;
        cv.weight = g.add_weight(
            format!("w{}", g.weights.len()),
            vec![cv.out_channels, per / (k * k), k, k],
        );
        w.push(rand_vec(&mut seed, cv.out_channels * per, -0.4, 0.4));
        let b = g.add_weight(format!("b{}", g.weights.len()), vec![cv.out_channels]);
        w.push(rand_vec(&mut seed, cv.out_channels, -0.2, 0.2));
        cv.bias = Some(b);
        cv
    };
    let mut nodes = Vec::new();
    let mut prev = x;
    let mut hw_now = hw;
    for (i, stride) in [1usize, 2].into_iter().enumerate() {
        let ohw = (hw_now + 2 - 3) / stride + 1;
        let v1 = g.add_value(format!("e{i}"), vec![e, hw_now, hw_now]);
        let v2 = g.add_value(format!("d{i}"), vec![e, ohw, ohw]);
        let v3 = g.add_value(format!("p{i}"), vec![c, ohw, ohw]);
        let ec = add_conv(&mut g, &mut w, plain_conv(c, e, 1, 1, [0; 4], 1, RELU6));
        let dc = add_conv(
            &mut g,
            &mut w,
            plain_conv(e, e, 3, stride, [1; 4], e, RELU6),
        );
        let pc = add_conv(
            &mut g,
            &mut w,
            plain_conv(e, c, 1, 1, [0; 4], 1, Activation::Identity),
        );
        nodes.push(Node {
            name: format!("expand{i}"),
            op: Op::Conv(ec),
            inputs: vec![prev],
            output: v1,
        });
        nodes.push(Node {
            name: format!("dw{i}"),
            op: Op::Conv(dc),
            inputs: vec![v1],
            output: v2,
        });
        let inputs = if stride == 1 {
            vec![v2, prev]
        } else {
            vec![v2]
        };
        nodes.push(Node {
            name: format!("project{i}"),
            op: Op::Conv(pc),
            inputs,
            output: v3,
        });
        prev = v3;
        hw_now = ohw;
    }
    let out = g.add_value("output", vec![c, 1, 1]);
    nodes.push(Node {
        name: "gap".into(),
        op: Op::GlobalPool {
            kind: PoolKind::Average,
        },
        inputs: vec![prev],
        output: out,
    });
    g.nodes = nodes;
    g.inputs = vec![x];
    g.outputs = vec![out];
    Zoo {
        graph: g,
        weights: w,
    }
}

/// Input 16×14×14 → [1×1 expand 96, ReLU6 → 3×3 dw → 1×1 project 16 + the block's input]
/// → [the same, dw stride 2, no residual] → 1×1 to 48, ReLU → global average → output:
/// the first projection's residual is the graph input (a channels-last copy made before
/// the first node), the last convolution's output is read planar by the pooling (a planar
/// copy).
pub fn small_map_blocks() -> Zoo {
    let mut g = Graph::default();
    let mut w: Vec<Vec<f32>> = Vec::new();
    let mut seed = 21u64;
    let mut add = |g: &mut Graph, name: &str, mut cv: Conv, inputs: Vec<usize>, out: usize| {
        let per = cv.in_channels / cv.groups * cv.kernel[0] * cv.kernel[1];
        cv.weight = g.add_weight(
            format!("{name}.w"),
            vec![
                cv.out_channels,
                cv.in_channels / cv.groups,
                cv.kernel[0],
                cv.kernel[1],
            ],
        );
        w.push(rand_vec(&mut seed, cv.out_channels * per, -0.4, 0.4));
        let b = g.add_weight(format!("{name}.b"), vec![cv.out_channels]);
        w.push(rand_vec(&mut seed, cv.out_channels, -0.2, 0.2));
        cv.bias = Some(b);
        g.nodes.push(Node {
            name: name.into(),
            op: Op::Conv(cv),
            inputs,
            output: out,
        });
    };
    let (c, e) = (16, 96);
    let x = g.add_value("input", vec![c, 14, 14]);
    let mut prev = x;
    let mut hw = 14;
    for (i, stride) in [1usize, 2].into_iter().enumerate() {
        let ohw = (hw + 2 - 3) / stride + 1;
        let v1 = g.add_value(format!("e{i}"), vec![e, hw, hw]);
        let v2 = g.add_value(format!("d{i}"), vec![e, ohw, ohw]);
        let v3 = g.add_value(format!("p{i}"), vec![c, ohw, ohw]);
        let ec = plain_conv(c, e, 1, 1, [0; 4], 1, RELU6);
        add(&mut g, &format!("expand{i}"), ec, vec![prev], v1);
        let dc = plain_conv(e, e, 3, stride, [1; 4], e, RELU6);
        add(&mut g, &format!("dw{i}"), dc, vec![v1], v2);
        let pc = plain_conv(e, c, 1, 1, [0; 4], 1, Activation::Identity);
        let inputs = if stride == 1 {
            vec![v2, prev]
        } else {
            vec![v2]
        };
        add(&mut g, &format!("project{i}"), pc, inputs, v3);
        prev = v3;
        hw = ohw;
    }
    let head = g.add_value("head", vec![48, hw, hw]);
    let hc = plain_conv(c, 48, 1, 1, [0; 4], 1, Activation::Relu);
    add(&mut g, "head", hc, vec![prev], head);
    let out = g.add_value("output", vec![48, 1, 1]);
    g.nodes.push(Node {
        name: "gap".into(),
        op: Op::GlobalPool {
            kind: PoolKind::Average,
        },
        inputs: vec![head],
        output: out,
    });
    g.inputs = vec![x];
    g.outputs = vec![out];
    Zoo {
        graph: g,
        weights: w,
    }
}

/// Every activation the kernels fuse, with drawn parameters (property tests).
pub fn activations() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        (0.0f32..1.0).prop_map(|alpha| Activation::LeakyRelu { alpha }),
        (-1.0f32..0.5, 0.5f32..2.0).prop_map(|(min, max)| Activation::Clip { min, max }),
        Just(Activation::Sigmoid),
        (0.05f32..1.0, -0.5f32..0.5)
            .prop_map(|(alpha, beta)| Activation::HardSigmoid { alpha, beta }),
        Just(Activation::HardSwish),
        Just(Activation::Silu),
        Just(Activation::Tanh),
    ]
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// The reference convolution of `x`, and the scale of each output's rounding error:
/// the same convolution of absolute values without the activation (`Σ|x·w| + |bias| +
/// |residual|`).
pub fn conv_reference(
    x: &[f32],
    batch: usize,
    in_shape: &[usize; 3],
    conv: &Conv,
    weights: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out_shape: &[usize; 3],
) -> (Vec<f32>, Vec<f32>) {
    let n_out = batch * out_shape.iter().product::<usize>();
    let mut want = vec![0.0; n_out];
    reference::conv2d(
        x, batch, in_shape, conv, weights, bias, residual, out_shape, &mut want,
    );
    let mut scale = vec![0.0; n_out];
    let cabs = Conv {
        activation: Activation::Identity,
        ..conv.clone()
    };
    let (ba, ra) = (bias.map(abs), residual.map(abs));
    reference::conv2d(
        &abs(x),
        batch,
        in_shape,
        &cabs,
        &abs(weights),
        ba.as_deref(),
        ra.as_deref(),
        out_shape,
        &mut scale,
    );
    (want, scale)
}

/// `|got − want| <= 2·1e-5·sqrt(k + 2)·scale + 1e-6` element by element (NaN matching
/// NaN), `k` the reduction length.
pub fn check_close(
    got: &[f32],
    want: &[f32],
    scale: &[f32],
    k: usize,
    what: &str,
) -> Result<(), TestCaseError> {
    let tol_k = 1e-5 * ((k + 2) as f32).sqrt();
    for (i, ((&g, &r), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let tol = 2.0 * tol_k * s + 1e-6;
        prop_assert!(
            (g - r).abs() <= tol || (g.is_nan() && r.is_nan()),
            "{what}: element {i}: got {g}, want {r}, |diff| {} > tol {tol}",
            (g - r).abs()
        );
    }
    Ok(())
}
