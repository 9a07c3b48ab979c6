//! Importer tests on small ONNX models built here with the prost types.

use cnnrt::graph::{Activation, BinaryKind, Op, PoolKind};
use cnnrt::onnx::proto::attribute_proto::AttributeType;
use cnnrt::onnx::proto::tensor_proto::{DataLocation, DataType};
use cnnrt::onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use cnnrt::onnx::proto::tensor_shape_proto::Dimension;
use cnnrt::onnx::proto::type_proto::{Tensor as TensorType, Value as TypeValue};
use cnnrt::onnx::proto::*;
use cnnrt::onnx::{import, Imported};
use cnnrt::Error;
use prost::Message;

// ---------------------------------------------------------------- model builders

fn attr(name: &str, t: AttributeType) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(t as i32),
        ..Default::default()
    }
}
fn ai(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..attr(name, AttributeType::Int)
    }
}
fn af(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..attr(name, AttributeType::Float)
    }
}
fn ais(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}
fn astr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: Some(v.as_bytes().to_vec()),
        ..attr(name, AttributeType::String)
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_{}", outputs.first().unwrap_or(&""))),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// float32 initializer stored in `float_data`.
fn tf(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: data.to_vec(),
        ..Default::default()
    }
}

/// float32 initializer stored little-endian in `raw_data`.
fn tf_raw(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn ti64(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![data.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A float input or output; `None` dims are symbolic ("N").
fn vi(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Dim::DimValue(*v),
                None => Dim::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn out(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn nchw(name: &str, c: i64, h: i64, w: i64) -> ValueInfoProto {
    vi(name, &[None, Some(c), Some(h), Some(w)])
}

struct M {
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<&'static str>,
}

impl M {
    fn new(inputs: Vec<ValueInfoProto>, nodes: Vec<NodeProto>, outputs: &[&'static str]) -> Self {
        M {
            opset: 13,
            nodes,
            inits: vec![],
            inputs,
            outputs: outputs.to_vec(),
        }
    }
    fn inits(mut self, t: Vec<TensorProto>) -> Self {
        self.inits = t;
        self
    }
    fn opset(mut self, v: i64) -> Self {
        self.opset = v;
        self
    }
    fn proto(&self) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("cnnrt-tests".into()),
            producer_version: Some("1".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: self.inputs.clone(),
                output: self.outputs.iter().map(|o| out(o)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn bytes(&self) -> Vec<u8> {
        self.proto().encode_to_vec()
    }
    fn import(&self) -> Imported {
        import(&self.bytes()).unwrap_or_else(|e| panic!("import failed: {e}"))
    }
    fn err(&self) -> Error {
        match import(&self.bytes()) {
            Ok(m) => panic!("import succeeded: {:?}", m.graph.nodes),
            Err(e) => e,
        }
    }
}

fn ops(m: &Imported) -> Vec<&Op> {
    m.graph.nodes.iter().map(|n| &n.op).collect()
}

fn weight(m: &Imported, id: usize) -> &[f32] {
    &m.weights[id]
}

fn assert_unsupported(e: Error, op: &str, what_contains: &str) {
    match &e {
        Error::Unsupported { op: o, what, .. } => {
            assert_eq!(o, op, "{e}");
            assert!(
                what.contains(what_contains),
                "'{what}' should mention '{what_contains}'"
            );
        }
        _ => panic!("expected Unsupported, got {e:?}"),
    }
}

fn conv_model(attrs: Vec<AttributeProto>, hw: i64, k: i64) -> M {
    let w = vec![0.5; (2 * 3 * k * k) as usize];
    M::new(
        vec![nchw("x", 3, hw, hw)],
        vec![node("Conv", &["x", "w"], &["y"], attrs)],
        &["y"],
    )
    .inits(vec![tf_raw("w", &[2, 3, k, k], &w)])
}

fn conv_pads(m: &Imported) -> [usize; 4] {
    match ops(m)[0] {
        Op::Conv(c) => c.pads,
        o => panic!("{o:?}"),
    }
}

// ---------------------------------------------------------------- conv and pooling

#[test]
fn conv_auto_pad_variants() {
    // 6×6, k3, stride 2: output 3, needs (3-1)*2+3-6 = 1 padding in total per axis.
    let s2 = || ais("strides", &[2, 2]);
    let m = conv_model(vec![astr("auto_pad", "SAME_UPPER"), s2()], 6, 3).import();
    assert_eq!(conv_pads(&m), [0, 0, 1, 1]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [2, 3, 3]);
    let m = conv_model(vec![astr("auto_pad", "SAME_LOWER"), s2()], 6, 3).import();
    assert_eq!(conv_pads(&m), [1, 1, 0, 0]);
    let m = conv_model(vec![astr("auto_pad", "VALID"), s2()], 6, 3).import();
    assert_eq!(conv_pads(&m), [0; 4]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [2, 2, 2]);
    // NOTSET with explicit pads [x1_begin, x2_begin, x1_end, x2_end] = [top, left, bottom, right].
    let m = conv_model(vec![ais("pads", &[1, 2, 3, 0])], 6, 3).import();
    assert_eq!(conv_pads(&m), [1, 2, 3, 0]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [2, 8, 6]);
    // stride 1 SAME with an even kernel: total 1, the extra on the end (UPPER) or begin (LOWER).
    let m = conv_model(vec![astr("auto_pad", "SAME_UPPER")], 5, 2).import();
    assert_eq!(conv_pads(&m), [0, 0, 1, 1]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [2, 5, 5]);
    // A zero-sized kernel is an error, not an arithmetic underflow.
    let e = conv_model(vec![astr("auto_pad", "SAME_UPPER")], 5, 0).err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = conv_model(vec![astr("auto_pad", "SAME_MIDDLE")], 5, 3).err();
    assert_unsupported(e, "Conv", "auto_pad");
}

#[test]
fn conv_attributes_and_bias() {
    let m = M::new(
        vec![nchw("x", 4, 9, 9)],
        vec![node(
            "Conv",
            &["x", "w", "b"],
            &["y"],
            vec![
                ai("group", 2),
                ais("dilations", &[2, 2]),
                ais("kernel_shape", &[3, 3]),
            ],
        )],
        &["y"],
    )
    .inits(vec![
        tf("w", &[6, 2, 3, 3], &[1.0; 108]),
        tf("b", &[6], &[1., 2., 3., 4., 5., 6.]),
    ])
    .import();
    let Op::Conv(c) = ops(&m)[0] else { panic!() };
    assert_eq!(
        (
            c.in_channels,
            c.out_channels,
            c.groups,
            c.kernel,
            c.dilation,
            c.stride
        ),
        (4, 6, 2, [3, 3], [2, 2], [1, 1])
    );
    assert_eq!(weight(&m, c.bias.unwrap()), [1., 2., 3., 4., 5., 6.]);
    assert_eq!(m.graph.weights[c.weight].shape, [6, 2, 3, 3]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [6, 5, 5]);
    assert_eq!(m.opset, 13);
    assert_eq!(m.producer, "cnnrt-tests 1");

    // 1-D convolution is refused, naming what is wrong.
    let e = M::new(
        vec![vi("x", &[None, Some(3), Some(8)])],
        vec![node("Conv", &["x", "w"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![tf("w", &[2, 3, 3], &[0.0; 18])])
    .err();
    assert_unsupported(e, "Conv", "2-D");
    // The weight must be a constant.
    let e = M::new(
        vec![
            nchw("x", 3, 5, 5),
            vi("w", &[Some(2), Some(3), Some(3), Some(3)]),
        ],
        vec![node("Conv", &["x", "w"], &["y"], vec![])],
        &["y"],
    )
    .err();
    assert_unsupported(e, "Conv", "constant");
}

#[test]
fn pools() {
    let m = M::new(
        vec![nchw("x", 3, 7, 7)],
        vec![
            node(
                "MaxPool",
                &["x"],
                &["a"],
                vec![
                    ais("kernel_shape", &[3, 3]),
                    ais("strides", &[2, 2]),
                    ai("ceil_mode", 1),
                    astr("auto_pad", "NOTSET"),
                ],
            ),
            node(
                "AveragePool",
                &["a"],
                &["b"],
                vec![
                    ais("kernel_shape", &[2, 2]),
                    ais("pads", &[1, 1, 1, 1]),
                    ai("count_include_pad", 1),
                ],
            ),
            node("GlobalMaxPool", &["b"], &["c"], vec![]),
        ],
        &["c"],
    )
    .import();
    let o = ops(&m);
    let Op::Pool(p) = o[0] else { panic!() };
    assert_eq!(
        (p.kind, p.kernel, p.stride, p.ceil_mode),
        (PoolKind::Max, [3, 3], [2, 2], true)
    );
    let Op::Pool(p) = o[1] else { panic!() };
    assert_eq!(
        (p.kind, p.pads, p.count_include_pad),
        (PoolKind::Average, [1, 1, 1, 1], true)
    );
    assert_eq!(
        o[2],
        &Op::GlobalPool {
            kind: PoolKind::Max
        }
    );
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [3, 1, 1]);

    let e = M::new(
        vec![nchw("x", 3, 7, 7)],
        vec![node(
            "MaxPool",
            &["x"],
            &["a"],
            vec![ais("kernel_shape", &[3, 3]), ai("storage_order", 1)],
        )],
        &["a"],
    )
    .err();
    assert_unsupported(e, "MaxPool", "storage_order");
    // The Indices output may exist but not be used.
    let m = M::new(
        vec![nchw("x", 1, 4, 4)],
        vec![node(
            "MaxPool",
            &["x"],
            &["a", "idx"],
            vec![ais("kernel_shape", &[2, 2])],
        )],
        &["a"],
    )
    .import();
    assert_eq!(m.graph.nodes.len(), 1);
    let e = M::new(
        vec![nchw("x", 1, 4, 4)],
        vec![node(
            "MaxPool",
            &["x"],
            &["a", "idx"],
            vec![ais("kernel_shape", &[2, 2])],
        )],
        &["a", "idx"],
    )
    .err();
    assert_unsupported(e, "MaxPool", "output 1");
}

// ---------------------------------------------------------------- normalization

#[test]
fn batchnorm_scale_shift_math() {
    let gamma = [1.0f32, 2.0, 0.5];
    let beta = [0.0f32, 1.0, -1.0];
    let mean = [0.5f32, -2.0, 3.0];
    let var = [4.0f32, 0.25, 1e-3];
    let eps = 1e-3f32;
    let m = M::new(
        vec![nchw("x", 3, 2, 2)],
        vec![node(
            "BatchNormalization",
            &["x", "g", "b", "m", "v"],
            &["y"],
            vec![af("epsilon", eps), af("momentum", 0.9)],
        )],
        &["y"],
    )
    .inits(vec![
        tf("g", &[3], &gamma),
        tf("b", &[3], &beta),
        tf("m", &[3], &mean),
        tf_raw("v", &[3], &var),
    ])
    .import();
    let Op::ChannelAffine {
        scale: Some(s),
        shift: Some(t),
        activation,
    } = ops(&m)[0]
    else {
        panic!("{:?}", ops(&m))
    };
    assert!(activation.is_identity());
    for c in 0..3 {
        let es = f64::from(gamma[c]) / (f64::from(var[c]) + f64::from(eps)).sqrt();
        let et = f64::from(beta[c]) - f64::from(mean[c]) * es;
        assert!(
            (f64::from(weight(&m, *s)[c]) - es).abs() <= 1e-6 * es.abs(),
            "scale[{c}]"
        );
        assert!(
            (f64::from(weight(&m, *t)[c]) - et).abs() <= 1e-6 * et.abs().max(1.0),
            "shift[{c}]"
        );
    }
    // Training mode, and a used second output, are refused.
    let bn = |attrs, outs: &[&'static str]| {
        M::new(
            vec![nchw("x", 3, 2, 2)],
            vec![node(
                "BatchNormalization",
                &["x", "g", "b", "m", "v"],
                outs,
                attrs,
            )],
            outs,
        )
        .opset(15)
        .inits(vec![
            tf("g", &[3], &gamma),
            tf("b", &[3], &beta),
            tf("m", &[3], &mean),
            tf("v", &[3], &var),
        ])
    };
    assert_unsupported(
        bn(vec![ai("training_mode", 1)], &["y"]).err(),
        "BatchNormalization",
        "training_mode",
    );
    assert_unsupported(
        bn(vec![], &["y", "rm"]).err(),
        "BatchNormalization",
        "output 1",
    );
}

#[test]
fn layer_and_instance_norm() {
    let m = M::new(
        vec![nchw("x", 2, 3, 4)],
        vec![
            node(
                "InstanceNormalization",
                &["x", "s", "b"],
                &["a"],
                vec![af("epsilon", 1e-3)],
            ),
            node(
                "LayerNormalization",
                &["a", "ls"],
                &["y"],
                vec![ai("axis", -2)],
            ),
        ],
        &["y"],
    )
    .opset(17)
    .inits(vec![
        tf("s", &[2], &[1., 2.]),
        tf("b", &[2], &[0., 1.]),
        tf("ls", &[3, 4], &[1.0; 12]),
    ])
    .import();
    let o = ops(&m);
    assert!(matches!(o[0], Op::InstanceNorm { epsilon, .. } if *epsilon == 1e-3));
    let Op::LayerNorm {
        axis,
        epsilon,
        scale,
        bias,
    } = o[1]
    else {
        panic!()
    };
    assert_eq!((*axis, *epsilon, bias.is_none()), (1, 1e-5, true));
    assert_eq!(m.graph.weights[*scale].shape, [3, 4]);
    // Normalizing over the batch is refused.
    let e = M::new(
        vec![nchw("x", 2, 3, 4)],
        vec![node(
            "LayerNormalization",
            &["x", "ls"],
            &["y"],
            vec![ai("axis", 0)],
        )],
        &["y"],
    )
    .opset(17)
    .inits(vec![tf("ls", &[2, 3, 4], &[1.0; 24])])
    .err();
    assert_unsupported(e, "LayerNormalization", "batch");
}

// ---------------------------------------------------------------- activations and rewrites

#[test]
fn activations_with_defaults() {
    let m = M::new(
        vec![vi("x", &[None, Some(8)])],
        vec![
            node("LeakyRelu", &["x"], &["a"], vec![]),
            node("HardSigmoid", &["a"], &["b"], vec![]),
            node("Clip", &["b", "", "mx"], &["c"], vec![]),
            node("Clip", &["c"], &["d"], vec![]),
            node("HardSwish", &["d"], &["e"], vec![]),
            node("Tanh", &["e"], &["f"], vec![]),
            node("Relu", &["f"], &["g"], vec![]),
        ],
        &["g"],
    )
    .inits(vec![tf("mx", &[], &[6.0])])
    .opset(14)
    .import();
    let acts: Vec<Activation> = ops(&m)
        .iter()
        .map(|o| {
            if let Op::Activation(a) = o {
                *a
            } else {
                panic!("{o:?}")
            }
        })
        .collect();
    assert_eq!(
        acts,
        [
            Activation::LeakyRelu { alpha: 0.01 },
            Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5
            },
            Activation::Clip {
                min: f32::NEG_INFINITY,
                max: 6.0
            },
            Activation::Clip {
                min: f32::NEG_INFINITY,
                max: f32::INFINITY
            },
            Activation::HardSwish,
            Activation::Tanh,
            Activation::Relu,
        ]
    );
    // Clip before opset 11 takes attributes.
    let m = M::new(
        vec![vi("x", &[None, Some(8)])],
        vec![node(
            "Clip",
            &["x"],
            &["y"],
            vec![af("min", 0.0), af("max", 6.0)],
        )],
        &["y"],
    )
    .opset(9)
    .import();
    assert_eq!(
        ops(&m)[0],
        &Op::Activation(Activation::Clip { min: 0.0, max: 6.0 })
    );
}

#[test]
fn silu_rewrite_either_order() {
    for inputs in [["x", "s"], ["s", "x"]] {
        let m = M::new(
            vec![nchw("x", 3, 4, 4)],
            vec![
                node("Sigmoid", &["x"], &["s"], vec![]),
                node("Mul", &inputs, &["y"], vec![]),
            ],
            &["y"],
        )
        .import();
        assert_eq!(ops(&m), [&Op::Activation(Activation::Silu)], "{inputs:?}");
        assert_eq!(m.graph.values[m.graph.outputs[0]].name, "y");
    }
    // x · HardSigmoid(x; 1/6, 1/2) is HardSwish; other constants stay a product.
    for (alpha, want) in [(1.0 / 6.0, true), (0.2, false)] {
        let m = M::new(
            vec![nchw("x", 3, 4, 4)],
            vec![
                node(
                    "HardSigmoid",
                    &["x"],
                    &["s"],
                    vec![af("alpha", alpha), af("beta", 0.5)],
                ),
                node("Mul", &["x", "s"], &["y"], vec![]),
            ],
            &["y"],
        )
        .import();
        assert_eq!(
            ops(&m) == [&Op::Activation(Activation::HardSwish)],
            want,
            "{alpha}"
        );
    }
    // When the sigmoid is also an output it stays, next to the SiLU.
    let m = M::new(
        vec![nchw("x", 3, 4, 4)],
        vec![
            node("Sigmoid", &["x"], &["s"], vec![]),
            node("Mul", &["x", "s"], &["y"], vec![]),
        ],
        &["y", "s"],
    )
    .import();
    assert_eq!(
        ops(&m),
        [
            &Op::Activation(Activation::Sigmoid),
            &Op::Activation(Activation::Silu)
        ]
    );
    // Sigmoid of something else is a plain product (squeeze-excite style broadcast).
    let m = M::new(
        vec![nchw("x", 3, 4, 4)],
        vec![
            node("GlobalAveragePool", &["x"], &["p"], vec![]),
            node("Sigmoid", &["p"], &["s"], vec![]),
            node("Mul", &["s", "x"], &["y"], vec![]),
        ],
        &["y"],
    )
    .import();
    let last = m.graph.nodes.last().unwrap();
    assert_eq!(
        last.op,
        Op::Binary {
            kind: BinaryKind::Mul,
            activation: Activation::Identity
        }
    );
    assert_eq!(
        m.graph.shape(last.inputs[0]),
        [3, 4, 4],
        "the broadcast operand goes second"
    );
    assert_eq!(m.graph.shape(last.inputs[1]), [3, 1, 1]);
}

#[test]
fn dropout_and_identity_are_removed() {
    let m = M::new(
        vec![nchw("x", 3, 4, 4)],
        vec![
            node("Relu", &["x"], &["a"], vec![]),
            node("Dropout", &["a"], &["b", "mask"], vec![af("ratio", 0.3)]),
            node("Identity", &["b"], &["c"], vec![]),
            node("Sigmoid", &["c"], &["y"], vec![]),
        ],
        &["y"],
    )
    .opset(11)
    .import();
    assert_eq!(
        ops(&m),
        [
            &Op::Activation(Activation::Relu),
            &Op::Activation(Activation::Sigmoid)
        ]
    );
    let g = &m.graph;
    assert_eq!(g.nodes[1].inputs, [g.nodes[0].output]);
    // An Identity straight to the output renames the value after the ONNX output.
    let m = M::new(
        vec![nchw("x", 3, 4, 4)],
        vec![
            node("Relu", &["x"], &["a"], vec![]),
            node("Identity", &["a"], &["y"], vec![]),
        ],
        &["y"],
    )
    .import();
    assert_eq!(m.graph.values[m.graph.outputs[0]].name, "y");
    // Dropout in training mode is refused.
    let e = M::new(
        vec![nchw("x", 3, 4, 4)],
        vec![node("Dropout", &["x", "", "t"], &["y"], vec![])],
        &["y"],
    )
    .opset(13)
    .inits(vec![TensorProto {
        name: Some("t".into()),
        data_type: Some(DataType::Bool as i32),
        raw_data: Some(vec![1]),
        ..Default::default()
    }])
    .err();
    assert_unsupported(e, "Dropout", "training_mode");
}

// ---------------------------------------------------------------- dense layers

#[test]
fn gemm_trans_b_alpha_beta() {
    // B given [out=2, in=3] with transB = 1; y = 2·x·Bᵀ + 0.5·c.
    let b = [1., 2., 3., 4., 5., 6.];
    let m = M::new(
        vec![vi("x", &[None, Some(3)])],
        vec![node(
            "Gemm",
            &["x", "b", "c"],
            &["y"],
            vec![ai("transB", 1), af("alpha", 2.0), af("beta", 0.5)],
        )],
        &["y"],
    )
    .inits(vec![tf("b", &[2, 3], &b), tf("c", &[1, 2], &[10., 20.])])
    .import();
    let Op::Linear(l) = ops(&m)[0] else { panic!() };
    assert_eq!((l.in_features, l.out_features), (3, 2));
    assert_eq!(weight(&m, l.weight), [2., 4., 6., 8., 10., 12.]);
    assert_eq!(weight(&m, l.bias.unwrap()), [5., 10.]);
    // transB = 0: B is [in, out] and gets transposed; a scalar C broadcasts.
    let m = M::new(
        vec![vi("x", &[None, Some(3)])],
        vec![node("Gemm", &["x", "b", "c"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![tf("b", &[3, 2], &b), tf("c", &[], &[7.])])
    .import();
    let Op::Linear(l) = ops(&m)[0] else { panic!() };
    assert_eq!(weight(&m, l.weight), [1., 3., 5., 2., 4., 6.]);
    assert_eq!(weight(&m, l.bias.unwrap()), [7., 7.]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [2]);
    // transA is refused, naming the attribute.
    let e = M::new(
        vec![vi("x", &[None, Some(3)])],
        vec![node("Gemm", &["x", "b"], &["y"], vec![ai("transA", 1)])],
        &["y"],
    )
    .inits(vec![tf("b", &[3, 2], &b)])
    .err();
    assert_unsupported(e, "Gemm", "transA");
}

#[test]
fn matmul_add_folds_into_linear() {
    let m = M::new(
        vec![vi("x", &[None, Some(2)])],
        vec![
            node("MatMul", &["x", "w"], &["h"], vec![]),
            node("Add", &["bias", "h"], &["y"], vec![]),
        ],
        &["y"],
    )
    .inits(vec![
        tf("w", &[2, 3], &[1., 2., 3., 4., 5., 6.]),
        tf("bias", &[3], &[0.1, 0.2, 0.3]),
    ])
    .import();
    assert_eq!(m.graph.nodes.len(), 1);
    let Op::Linear(l) = ops(&m)[0] else { panic!() };
    assert_eq!(weight(&m, l.weight), [1., 4., 2., 5., 3., 6.]);
    assert_eq!(weight(&m, l.bias.unwrap()), [0.1, 0.2, 0.3]);
    assert_eq!(m.graph.values[m.graph.outputs[0]].name, "y");
    assert_eq!(m.weights.len(), m.graph.weights.len());
    // Not folded when the MatMul result is also used elsewhere.
    let m = M::new(
        vec![vi("x", &[None, Some(2)])],
        vec![
            node("MatMul", &["x", "w"], &["h"], vec![]),
            node("Add", &["h", "bias"], &["y"], vec![]),
        ],
        &["y", "h"],
    )
    .inits(vec![
        tf("w", &[2, 3], &[1., 2., 3., 4., 5., 6.]),
        tf("bias", &[3], &[0.1, 0.2, 0.3]),
    ])
    .import();
    assert!(matches!(
        ops(&m)[..],
        [Op::Linear(_), Op::ChannelAffine { .. }]
    ));
}

// ---------------------------------------------------------------- element-wise with constants

#[test]
fn per_channel_constants_become_channel_affine() {
    let cases: [(&str, bool, &[i64]); 5] = [
        ("Add", false, &[3, 1, 1]),
        ("Mul", true, &[1, 3, 1, 1]),
        ("Sub", false, &[]),
        ("Div", false, &[1]),
        ("Sub", true, &[3, 1, 1]),
    ];
    for (op, const_first, dims) in cases {
        let n: i64 = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|i| 2.0 + i as f32).collect();
        let ins = if const_first { ["c", "x"] } else { ["x", "c"] };
        let m = M::new(
            vec![nchw("x", 3, 2, 2)],
            vec![node(op, &ins, &["y"], vec![])],
            &["y"],
        )
        .inits(vec![tf("c", dims, &data)])
        .import();
        let Op::ChannelAffine { scale, shift, .. } = ops(&m)[0] else {
            panic!("{op}")
        };
        let get = |w: &Option<usize>| w.map(|w| weight(&m, w).to_vec());
        match (op, const_first) {
            ("Add", _) => assert_eq!((get(scale), get(shift)), (None, Some(data.clone()))),
            ("Mul", _) => assert_eq!((get(scale), get(shift)), (Some(data.clone()), None)),
            ("Sub", false) => assert_eq!(
                (get(scale), get(shift)),
                (None, Some(data.iter().map(|v| -v).collect()))
            ),
            ("Sub", true) => assert_eq!(
                (get(scale), get(shift)),
                (Some(vec![-1.0]), Some(data.clone()))
            ),
            ("Div", _) => assert_eq!((get(scale), get(shift)), (Some(vec![0.5]), None)),
            _ => unreachable!(),
        }
    }
    // A constant that is not per-channel is refused with the shapes.
    let e = M::new(
        vec![nchw("x", 3, 2, 2)],
        vec![node("Add", &["x", "c"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![tf("c", &[2], &[1., 2.])])
    .err();
    assert_unsupported(e, "Add", "[2]");
    // [C] against a 1-D per-sample input is per channel.
    let m = M::new(
        vec![vi("x", &[None, Some(3)])],
        vec![node("Mul", &["x", "c"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![tf("c", &[3], &[1., 2., 3.])])
    .import();
    assert!(matches!(
        ops(&m)[0],
        Op::ChannelAffine {
            scale: Some(_),
            shift: None,
            ..
        }
    ));
    // Division of a constant by a tensor is refused.
    let e = M::new(
        vec![nchw("x", 3, 2, 2)],
        vec![node("Div", &["c", "x"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![tf("c", &[], &[1.])])
    .err();
    assert_unsupported(e, "Div", "division");
}

#[test]
fn binary_of_two_tensors() {
    let m = M::new(
        vec![nchw("a", 3, 2, 2), nchw("b", 3, 2, 2)],
        vec![
            node("Add", &["a", "b"], &["s"], vec![]),
            node("Sub", &["s", "b"], &["y"], vec![]),
        ],
        &["y"],
    )
    .import();
    let o = ops(&m);
    assert_eq!(
        o[0],
        &Op::Binary {
            kind: BinaryKind::Add,
            activation: Activation::Identity
        }
    );
    assert!(
        matches!(
            o[1],
            Op::ChannelAffine {
                scale: Some(_),
                shift: None,
                ..
            }
        ),
        "Sub negates its second operand"
    );
    assert_eq!(
        o[2],
        &Op::Binary {
            kind: BinaryKind::Add,
            activation: Activation::Identity
        }
    );
    let e = M::new(
        vec![nchw("a", 3, 2, 2), nchw("b", 3, 2, 1)],
        vec![node("Mul", &["a", "b"], &["y"], vec![])],
        &["y"],
    )
    .err();
    assert_unsupported(e, "Mul", "broadcast");
}

// ---------------------------------------------------------------- shape ops

#[test]
fn flatten_reshape_concat_softmax_pad() {
    let m = M::new(
        vec![nchw("x", 2, 3, 4)],
        vec![
            node(
                "Pad",
                &["x", "pads", "pv"],
                &["p"],
                vec![astr("mode", "constant")],
            ),
            node("Concat", &["p", "p"], &["c"], vec![ai("axis", -3)]),
            node("Softmax", &["c"], &["s"], vec![ai("axis", 1)]),
            node("Reshape", &["s", "shape"], &["r"], vec![]),
            node("Flatten", &["r"], &["f"], vec![ai("axis", -1)]),
        ],
        &["f"],
    )
    .inits(vec![
        ti64("pads", &[0, 0, 1, 2, 0, 0, 3, 4]),
        tf("pv", &[], &[0.5]),
        ti64("shape", &[0, -1]),
    ])
    .import();
    let o = ops(&m);
    assert_eq!(
        o[0],
        &Op::Pad {
            pads: [1, 2, 3, 4],
            value: 0.5
        }
    );
    assert_eq!(o[1], &Op::Concat { axis: 0 });
    assert_eq!(
        o[2],
        &Op::Softmax {
            axis: 0,
            flatten_from_axis: false
        }
    );
    assert_eq!(o[3], &Op::Flatten { axis: 1 });
    assert_eq!(o[4], &Op::Flatten { axis: 1 });
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [4 * 7 * 10]);

    // Opset < 13 softmax flattens from the axis; Pad < 11 uses attributes.
    let m = M::new(
        vec![nchw("x", 2, 3, 4)],
        vec![
            node(
                "Pad",
                &["x"],
                &["p"],
                vec![ais("pads", &[0, 0, 1, 1, 0, 0, 1, 1])],
            ),
            node("Softmax", &["p"], &["y"], vec![]),
        ],
        &["y"],
    )
    .opset(9)
    .import();
    assert_eq!(
        ops(&m)[1],
        &Op::Softmax {
            axis: 0,
            flatten_from_axis: true
        }
    );

    // A reshape spelling out a fixed batch of 1, into [N, C, H*W].
    let m = M::new(
        vec![vi("x", &[Some(1), Some(2), Some(3), Some(4)])],
        vec![node("Reshape", &["x", "shape"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![ti64("shape", &[1, 2, -1])])
    .import();
    assert_eq!(ops(&m), [&Op::Flatten { axis: 2 }]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [2, 12]);

    let refuse =
        |op: &'static str, attrs: Vec<AttributeProto>, inits: Vec<TensorProto>, ins: &[&str]| {
            M::new(
                vec![nchw("x", 2, 3, 4)],
                vec![node(op, ins, &["y"], attrs)],
                &["y"],
            )
            .inits(inits)
            .err()
        };
    assert_unsupported(
        refuse("Flatten", vec![ai("axis", 0)], vec![], &["x"]),
        "Flatten",
        "batch",
    );
    assert_unsupported(
        refuse("Softmax", vec![ai("axis", 0)], vec![], &["x"]),
        "Softmax",
        "batch",
    );
    assert_unsupported(
        refuse("Concat", vec![ai("axis", 0)], vec![], &["x", "x"]),
        "Concat",
        "batch",
    );
    assert_unsupported(
        refuse("Reshape", vec![], vec![ti64("s", &[-1, 4])], &["x", "s"]),
        "Reshape",
        "batch",
    );
    assert_unsupported(
        refuse(
            "Reshape",
            vec![],
            vec![ti64("s", &[0, 4, 3, 2])],
            &["x", "s"],
        ),
        "Reshape",
        "flatten",
    );
    assert_unsupported(
        refuse(
            "Pad",
            vec![astr("mode", "reflect")],
            vec![ti64("p", &[0; 8])],
            &["x", "p"],
        ),
        "Pad",
        "mode",
    );
    assert_unsupported(
        refuse(
            "Pad",
            vec![],
            vec![ti64("p", &[0, 1, 0, 0, 0, 0, 0, 0])],
            &["x", "p"],
        ),
        "Pad",
        "axis 1",
    );
}

// ---------------------------------------------------------------- errors and hostile input

fn small_model() -> M {
    M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![
            node(
                "Conv",
                &["x", "w", "b"],
                &["c"],
                vec![ais("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", &["c"], &["r"], vec![]),
            node("GlobalAveragePool", &["r"], &["g"], vec![]),
            node("Flatten", &["g"], &["f"], vec![]),
            node("Gemm", &["f", "fc", "fb"], &["y"], vec![ai("transB", 1)]),
        ],
        &["y"],
    )
    .inits(vec![
        tf_raw("w", &[4, 3, 3, 3], &[0.1; 108]),
        tf("b", &[4], &[0.0; 4]),
        tf_raw("fc", &[5, 4], &[0.2; 20]),
        tf("fb", &[5], &[1.0; 5]),
    ])
}

#[test]
fn unsupported_op_and_attribute_and_domain() {
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![node("Resize", &["x"], &["y"], vec![])],
        &["y"],
    )
    .err();
    assert_unsupported(e, "Resize", "operator Resize");
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![node("Relu", &["x"], &["y"], vec![ai("fancy", 1)])],
        &["y"],
    )
    .err();
    assert_unsupported(e, "Relu", "fancy");
    let mut n = node("Relu", &["x"], &["y"], vec![]);
    n.domain = Some("com.microsoft".into());
    let e = M::new(vec![nchw("x", 3, 8, 8)], vec![n], &["y"]).err();
    assert_unsupported(e, "Relu", "com.microsoft");
    assert!(matches!(
        small_model().opset(25).err(),
        Error::Unsupported { .. }
    ));
    assert!(matches!(
        small_model().opset(6).err(),
        Error::Unsupported { .. }
    ));
    // A symbolic dimension other than the batch.
    let e = M::new(
        vec![vi("x", &[None, Some(3), None, Some(8)])],
        vec![node("Relu", &["x"], &["y"], vec![])],
        &["y"],
    )
    .err();
    assert!(
        matches!(&e, Error::Unsupported { what, .. } if what.contains("symbolic")),
        "{e}"
    );
}

#[test]
fn small_model_imports() {
    let m = small_model().import();
    assert_eq!(m.graph.nodes.len(), 5);
    assert_eq!(m.weights.len(), 4);
    for (w, info) in m.weights.iter().zip(&m.graph.weights) {
        assert_eq!(w.len(), info.numel());
    }
    assert_eq!(m.graph.shape(m.graph.inputs[0]), [3, 8, 8]);
    assert_eq!(m.graph.shape(m.graph.outputs[0]), [5]);
}

#[test]
fn truncated_and_garbage_bytes_are_errors() {
    let bytes = small_model().bytes();
    for len in 0..bytes.len() {
        // Every prefix must give an error or a model, never a panic; most are errors.
        if let Err(e) = import(&bytes[..len]) {
            let _ = e.to_string();
        }
    }
    assert!(matches!(
        import(&bytes[..bytes.len() / 2]),
        Err(Error::Onnx(_))
    ));
    assert!(matches!(
        import(b"\xff\xff\xff\xff garbage"),
        Err(Error::Onnx(_))
    ));
    assert!(import(&[]).is_err());
    // Random byte flips (a fixed LCG): never a panic.
    let mut s = 0x2545F4914F6CDD1Du64;
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (s >> 33) as usize % b.len();
            b[i] = (s >> 17) as u8;
        }
        let _ = import(&b);
    }
}

#[test]
fn declared_sizes_are_checked_before_allocation() {
    // 2^40 elements declared, a few bytes present: a limit error, not an allocation.
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![node("Add", &["x", "c"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![tf("c", &[1 << 20, 1 << 20], &[1.0])])
    .err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    // Data that does not match the shape.
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![node("Add", &["x", "c"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![tf_raw("c", &[3, 1, 1], &[1.0, 2.0])])
    .err();
    assert!(matches!(&e, Error::Onnx(m) if m.contains("bytes")), "{e}");
    // External data gets a clear error.
    let mut t = tf("c", &[3, 1, 1], &[]);
    t.data_location = Some(DataLocation::External as i32);
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![node("Add", &["x", "c"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![t])
    .err();
    assert!(
        matches!(&e, Error::Onnx(m) if m.contains("external")),
        "{e}"
    );
    // An input with a huge declared dimension.
    let e = M::new(
        vec![vi("x", &[None, Some(1 << 40)])],
        vec![node("Relu", &["x"], &["y"], vec![])],
        &["y"],
    )
    .err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    // A float64 weight is an unsupported dtype, naming the node.
    let mut t = tf("c", &[3, 1, 1], &[]);
    t.data_type = Some(DataType::Double as i32);
    t.double_data = vec![1.0; 3];
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![node("Add", &["x", "c"], &["y"], vec![])],
        &["y"],
    )
    .inits(vec![t])
    .err();
    assert_unsupported(e, "Add", "DOUBLE");
}

#[test]
fn graph_structure_errors() {
    // A node reading a name defined later.
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![
            node("Relu", &["z"], &["y"], vec![]),
            node("Relu", &["x"], &["z"], vec![]),
        ],
        &["y"],
    )
    .err();
    assert!(
        matches!(&e, Error::Onnx(m) if m.contains("not defined")),
        "{e}"
    );
    // An output nobody produces.
    let e = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![node("Relu", &["x"], &["y"], vec![])],
        &["nope"],
    )
    .err();
    assert!(matches!(e, Error::Onnx(_)), "{e}");
    // A Constant node feeding a weight position works like an initializer.
    let mut k = node("Constant", &[], &["w"], vec![]);
    k.attribute.push(AttributeProto {
        t: Some(tf("", &[2, 3, 1, 1], &[1.0; 6])),
        ..attr("value", AttributeType::Tensor)
    });
    let m = M::new(
        vec![nchw("x", 3, 8, 8)],
        vec![k, node("Conv", &["x", "w"], &["y"], vec![])],
        &["y"],
    )
    .import();
    assert!(matches!(ops(&m)[..], [Op::Conv(_)]));
    // Initializers listed among the inputs (IR < 4 style) are not model inputs.
    let mut mm = small_model();
    mm.inputs
        .push(vi("w", &[Some(4), Some(3), Some(3), Some(3)]));
    let m = mm.import();
    assert_eq!(m.graph.inputs.len(), 1);
}

fn read_npy(p: &std::path::Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let npy =
        npyz::NpyFile::new(bytes.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let shape = npy.shape().to_vec();
    (
        shape,
        npy.into_vec::<f32>()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
}

#[test]
fn exported_test_models_match_onnx_runtime() {
    // The project's exported models (tests/data/models: model.onnx, input.npy, and
    // expected.npy from ONNX Runtime) import and, run by the reference executor, match.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let d = e.path();
        let p = d.join("model.onnx");
        if !p.exists() {
            continue;
        }
        let m = cnnrt::onnx::import_file(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
        let (shape, x) = read_npy(&d.join("input.npy"));
        let (_, want) = read_npy(&d.join("expected.npy"));
        assert_eq!(m.graph.inputs.len(), 1, "{}", d.display());
        let batch = shape[0] as usize;
        let w: Vec<&[f32]> = m.weights.iter().map(Vec::as_slice).collect();
        let got = cnnrt::kernels::reference::run_graph(&m.graph, &w, &[&x], batch)
            .unwrap_or_else(|err| panic!("{}: {err}", d.display()));
        assert_eq!(got[0].len(), want.len(), "{}", d.display());
        for (i, (g, e)) in got[0].iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= 1e-4 + 1e-3 * e.abs(),
                "{}: element {i}: {g} vs ONNX Runtime {e}",
                d.display()
            );
        }
        n += 1;
    }
    eprintln!("{n} models match");
}

/// ReduceMean / ReduceMax over [2, 3] (or [-1, -2]) of [N, C, H, W] import as a global
/// pool, with keepdims = 0 followed by a Flatten to [N, C]; axes as the attribute before
/// opset 18 and as a constant input from 18. Other axes, no axes, and a computed axes
/// input are refused with what was asked.
#[test]
fn reduce_over_spatial_axes_is_a_global_pool() {
    let global = |kind| Op::GlobalPool { kind };
    for (op, kind) in [
        ("ReduceMean", PoolKind::Average),
        ("ReduceMax", PoolKind::Max),
    ] {
        let m = M::new(
            vec![nchw("x", 3, 5, 4)],
            vec![node(op, &["x"], &["y"], vec![ais("axes", &[2, 3])])],
            &["y"],
        )
        .import();
        assert_eq!(ops(&m), [&global(kind)]);
        assert_eq!(m.graph.shape(m.graph.nodes[0].output), [3, 1, 1]);
        let m = M::new(
            vec![nchw("x", 3, 5, 4)],
            vec![node(
                op,
                &["x"],
                &["y"],
                vec![ais("axes", &[-1, -2]), ai("keepdims", 0)],
            )],
            &["y"],
        )
        .import();
        assert_eq!(ops(&m), [&global(kind), &Op::Flatten { axis: 1 }]);
        assert_eq!(m.graph.shape(m.graph.nodes[1].output), [3]);
        // Opset 18: axes as an input.
        let m = M::new(
            vec![nchw("x", 3, 5, 4)],
            vec![node(op, &["x", "axes"], &["y"], vec![ai("keepdims", 0)])],
            &["y"],
        )
        .inits(vec![ti64("axes", &[3, 2])])
        .opset(18)
        .import();
        assert_eq!(ops(&m), [&global(kind), &Op::Flatten { axis: 1 }]);
    }
    // The numbers: ReduceMean then a Relu, against the mean computed here.
    let m = M::new(
        vec![nchw("x", 2, 2, 3)],
        vec![
            node(
                "ReduceMean",
                &["x"],
                &["r"],
                vec![ais("axes", &[2, 3]), ai("keepdims", 0)],
            ),
            node("Relu", &["r"], &["y"], vec![]),
        ],
        &["y"],
    )
    .import();
    let x: Vec<f32> = vec![
        1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0,
    ];
    let w: Vec<&[f32]> = m.weights.iter().map(|w| w.as_slice()).collect();
    let out = cnnrt::kernels::reference::run_graph(&m.graph, &w, &[&x], 1).unwrap();
    assert_eq!(out, [vec![3.5, 0.0]]);
    // Refused: another axis, every axis, an axes input computed at run time.
    let e = M::new(
        vec![nchw("x", 3, 5, 4)],
        vec![node("ReduceMean", &["x"], &["y"], vec![ais("axes", &[1])])],
        &["y"],
    )
    .err();
    assert_unsupported(e, "ReduceMean", "axes [1]");
    let e = M::new(
        vec![nchw("x", 3, 5, 4)],
        vec![node("ReduceMax", &["x"], &["y"], vec![])],
        &["y"],
    )
    .err();
    assert_unsupported(e, "ReduceMax", "every axis");
    let e = M::new(
        vec![nchw("x", 3, 5, 4), vi("axes", &[Some(2)])],
        vec![node("ReduceMean", &["x", "axes"], &["y"], vec![])],
        &["y"],
    )
    .opset(18)
    .err();
    assert_unsupported(e, "ReduceMean", "constant");
}
