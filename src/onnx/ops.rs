//! One converter per ONNX operator, mapping it onto the IR's ops.

use super::builder::{Builder, Val};
use super::node::Ctx;
use super::tensor::{Data, Tensor};
use crate::error::Result;
use crate::graph::{Activation, BinaryKind, Conv, Linear, Op, Pool, PoolKind, ValueId};
use crate::limits;

pub(crate) fn convert_node<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    match ctx.op {
        "Conv" => conv(b, ctx),
        "BatchNormalization" => batch_norm(b, ctx),
        "Relu" => activation(b, ctx, &[], |_| Ok(Activation::Relu)),
        "Sigmoid" => activation(b, ctx, &[], |_| Ok(Activation::Sigmoid)),
        "Tanh" => activation(b, ctx, &[], |_| Ok(Activation::Tanh)),
        "HardSwish" => activation(b, ctx, &[], |_| Ok(Activation::HardSwish)),
        "LeakyRelu" => activation(b, ctx, &["alpha"], |c| {
            Ok(Activation::LeakyRelu {
                alpha: c.float("alpha", 0.01)?,
            })
        }),
        "HardSigmoid" => activation(b, ctx, &["alpha", "beta"], |c| {
            Ok(Activation::HardSigmoid {
                alpha: c.float("alpha", 0.2)?,
                beta: c.float("beta", 0.5)?,
            })
        }),
        "Clip" => clip(b, ctx),
        "PRelu" => prelu(b, ctx),
        "MaxPool" | "AveragePool" => pool(b, ctx),
        "GlobalAveragePool" | "GlobalMaxPool" => global_pool(b, ctx),
        "ReduceMean" | "ReduceMax" => reduce(b, ctx),
        "Flatten" => flatten(b, ctx),
        "Reshape" => reshape(b, ctx),
        "Gemm" => gemm(b, ctx),
        "MatMul" => matmul(b, ctx),
        "Add" | "Sub" | "Mul" | "Div" => arith(b, ctx),
        "Concat" => concat(b, ctx),
        "LayerNormalization" => layer_norm(b, ctx),
        "InstanceNormalization" => instance_norm(b, ctx),
        "Softmax" => softmax(b, ctx),
        "Pad" => pad(b, ctx),
        "Identity" => identity(b, ctx),
        "Dropout" => dropout(b, ctx),
        "Constant" => constant(b, ctx),
        op => Err(ctx.unsupported(format!("operator {op}"))),
    }
}

/// `[N, dims...]` for messages, so shapes read as ONNX shows them.
fn full(xs: &[usize]) -> String {
    let mut s = String::from("[N");
    for d in xs {
        s.push_str(&format!(", {d}"));
    }
    s.push(']');
    s
}

/// How a constant broadcasts against an activation of per-sample shape `xs`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bcast {
    /// One value for everything.
    Scalar,
    /// One value per channel (per-sample dim 0).
    Channel,
}

/// Classifies a constant of ONNX shape `c` broadcast (numpy rules) against `[N, xs...]`:
/// it must not grow the result, must be 1 along the batch, and apart from the channel
/// axis must be 1 everywhere.
fn bcast(c: &[usize], xs: &[usize]) -> Option<Bcast> {
    let rank = xs.len() + 1;
    if c.len() > rank {
        return None;
    }
    let mut p = vec![1; rank - c.len()];
    p.extend_from_slice(c);
    if p[0] != 1 {
        return None;
    }
    let rest = &p[1..];
    if rest.iter().all(|&d| d == 1) {
        Some(Bcast::Scalar)
    } else if rest[0] == xs[0] && rest[1..].iter().all(|&d| d == 1) {
        Some(Bcast::Channel)
    } else {
        None
    }
}

/// Pads `[top, left, bottom, right]` from `pads` / `auto_pad` for a 2-D window.
fn window_pads(
    ctx: &Ctx,
    input: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Result<[usize; 4]> {
    match ctx.string("auto_pad")?.unwrap_or("NOTSET") {
        "NOTSET" | "" => match ctx.ints("pads")? {
            None => Ok([0; 4]),
            Some(p) if p.len() == 4 => {
                let mut out = [0; 4];
                for (o, &v) in out.iter_mut().zip(p) {
                    *o = ctx.dim("pads", v, 0)?;
                }
                Ok(out)
            }
            Some(p) => {
                Err(ctx.unsupported(format!("'pads' = {p:?}: only 2-D (four pads) is supported")))
            }
        },
        "VALID" => Ok([0; 4]),
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let mut out = [0; 4];
            for i in 0..2 {
                // All values are at most MAX_DIM (2^24), so these products fit in usize.
                let o = input[i].div_ceil(stride[i]);
                let need = (o.max(1) - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1;
                let total = need.saturating_sub(input[i]);
                let (small, big) = (total / 2, total - total / 2);
                let (begin, end) = if mode == "SAME_UPPER" {
                    (small, big)
                } else {
                    (big, small)
                };
                out[i] = begin;
                out[i + 2] = end;
            }
            Ok(out)
        }
        other => Err(ctx.unsupported(format!("auto_pad '{other}'"))),
    }
}

fn conv<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&[
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "pads",
        "strides",
    ])?;
    ctx.check_inputs(2, 3)?;
    let x = b.dyn_input(ctx, 0)?;
    let xs = b.shape(x).to_vec();
    let w = b.require_const(ctx, 1, "weight")?;
    if w.dims.len() != 4 || xs.len() != 3 {
        return Err(ctx.unsupported(format!(
            "convolution of input {} with weight {:?}: cnnrt supports 2-D convolution only",
            full(&xs),
            w.dims
        )));
    }
    if w.dims.contains(&0) {
        return Err(ctx.shape_err(format!("weight shape {:?} has a zero dimension", w.dims)));
    }
    let kernel = [w.dims[2], w.dims[3]];
    if let Some(ks) = ctx.ints("kernel_shape")? {
        if ks != [kernel[0] as i64, kernel[1] as i64] {
            return Err(ctx.shape_err(format!(
                "kernel_shape {ks:?} does not match the weight shape {:?}",
                w.dims
            )));
        }
    }
    let stride = ctx.pair("strides", [1, 1], 1)?;
    let dilation = ctx.pair("dilations", [1, 1], 1)?;
    let groups = ctx.dim("group", ctx.int("group", 1)?, 1)?;
    let pads = window_pads(ctx, [xs[1], xs[2]], kernel, stride, dilation)?;
    let out_channels = w.dims[0];
    let wshape = w.dims.clone();
    let weight = b.plain_weight(ctx, w, wshape, "weight")?;
    let bias = match b.const_input(ctx, 2, "bias")? {
        None => None,
        Some(t) if t.numel() == out_channels => {
            Some(b.plain_weight(ctx, t, vec![out_channels], "bias")?)
        }
        Some(t) => {
            return Err(ctx.shape_err(format!(
                "bias shape {:?}, expected [{out_channels}]",
                t.dims
            )))
        }
    };
    let op = Op::Conv(Conv {
        in_channels: xs[0],
        out_channels,
        kernel,
        stride,
        dilation,
        pads,
        groups,
        weight,
        bias,
        activation: Activation::Identity,
    });
    b.emit(ctx, op, vec![x])
}

fn batch_norm<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["epsilon", "momentum", "spatial", "training_mode"])?;
    ctx.check_inputs(5, 5)?;
    if ctx.int("training_mode", 0)? != 0 {
        return Err(ctx.unsupported("attribute 'training_mode' = 1 (cnnrt runs inference only)"));
    }
    if ctx.int("spatial", 1)? != 1 {
        return Err(ctx.unsupported("attribute 'spatial' = 0"));
    }
    let eps = f64::from(ctx.float("epsilon", 1e-5)?);
    let x = b.dyn_input(ctx, 0)?;
    let c = *b
        .shape(x)
        .first()
        .ok_or_else(|| ctx.shape_err("input has no channel dimension"))?;
    let mut p = Vec::with_capacity(4);
    for (i, role) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
        let t = b.require_const(ctx, i, role)?;
        if t.numel() != c {
            return Err(ctx.shape_err(format!(
                "{role} has shape {:?}, the input has {c} channels",
                t.dims
            )));
        }
        p.push(t.into_f32s(ctx, role)?);
    }
    let (gamma, beta, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let mut scale = Vec::with_capacity(c);
    let mut shift = Vec::with_capacity(c);
    for i in 0..c {
        let s = f64::from(gamma[i]) / (f64::from(var[i]) + eps).sqrt();
        scale.push(s as f32);
        shift.push((f64::from(beta[i]) - f64::from(mean[i]) * s) as f32);
    }
    let scale = b.add_weight(format!("{}.scale", ctx.name), vec![c], scale);
    let shift = b.add_weight(format!("{}.shift", ctx.name), vec![c], shift);
    let op = Op::ChannelAffine {
        scale: Some(scale),
        shift: Some(shift),
        activation: Activation::Identity,
    };
    b.emit(ctx, op, vec![x])
}

fn activation<'m>(
    b: &mut Builder<'m>,
    ctx: &Ctx<'m>,
    attrs: &[&str],
    make: impl Fn(&Ctx) -> Result<Activation>,
) -> Result<()> {
    ctx.check_attrs(attrs)?;
    ctx.check_inputs(1, 1)?;
    let a = make(ctx)?;
    let x = b.dyn_input(ctx, 0)?;
    b.emit(ctx, Op::Activation(a), vec![x])
}

fn clip<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    let (min, max) = if ctx.opset < 11 {
        ctx.check_attrs(&["min", "max"])?;
        ctx.check_inputs(1, 1)?;
        (
            ctx.float("min", f32::NEG_INFINITY)?,
            ctx.float("max", f32::INFINITY)?,
        )
    } else {
        ctx.check_attrs(&[])?;
        ctx.check_inputs(1, 3)?;
        let min = b
            .const_input(ctx, 1, "min")?
            .map(|t| t.scalar_f32(ctx, "min"))
            .transpose()?;
        let max = b
            .const_input(ctx, 2, "max")?
            .map(|t| t.scalar_f32(ctx, "max"))
            .transpose()?;
        (
            min.unwrap_or(f32::NEG_INFINITY),
            max.unwrap_or(f32::INFINITY),
        )
    };
    let x = b.dyn_input(ctx, 0)?;
    b.emit(ctx, Op::Activation(Activation::Clip { min, max }), vec![x])
}

fn prelu<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&[])?;
    ctx.check_inputs(2, 2)?;
    let x = b.dyn_input(ctx, 0)?;
    let xs = b.shape(x).to_vec();
    let slope = b.require_const(ctx, 1, "slope")?;
    if bcast(&slope.dims, &xs).is_none() {
        return Err(ctx.unsupported(format!(
            "slope of shape {:?} for input {}: cnnrt supports one slope per channel or a single slope",
            slope.dims,
            full(&xs)
        )));
    }
    let n = slope.numel();
    let slope = b.plain_weight(ctx, slope, vec![n], "slope")?;
    b.emit(ctx, Op::PRelu { slope }, vec![x])
}

fn pool<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    let max = ctx.op == "MaxPool";
    if max {
        ctx.check_attrs(&[
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
        ])?;
        if ctx.int("storage_order", 0)? != 0 {
            return Err(ctx.unsupported("attribute 'storage_order' = 1"));
        }
    } else {
        ctx.check_attrs(&[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
    }
    ctx.check_inputs(1, 1)?;
    let x = b.dyn_input(ctx, 0)?;
    let xs = b.shape(x).to_vec();
    let ks = ctx
        .ints("kernel_shape")?
        .ok_or_else(|| ctx.malformed("attribute 'kernel_shape' is missing"))?;
    if ks.len() != 2 || xs.len() != 3 {
        return Err(ctx.unsupported(format!(
            "pooling of input {} with kernel_shape {ks:?}: cnnrt supports 2-D pooling only",
            full(&xs)
        )));
    }
    let kernel = ctx.pair("kernel_shape", [1, 1], 1)?;
    let stride = ctx.pair("strides", [1, 1], 1)?;
    let dilation = ctx.pair("dilations", [1, 1], 1)?;
    let ceil_mode = ctx.flag("ceil_mode", false)?;
    let count_include_pad = ctx.flag("count_include_pad", false)?;
    let pads = window_pads(ctx, [xs[1], xs[2]], kernel, stride, dilation)?;
    let kind = if max {
        PoolKind::Max
    } else {
        PoolKind::Average
    };
    let op = Op::Pool(Pool {
        kind,
        kernel,
        stride,
        dilation,
        pads,
        ceil_mode,
        count_include_pad,
    });
    b.emit(ctx, op, vec![x])
}

fn global_pool<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&[])?;
    ctx.check_inputs(1, 1)?;
    let x = b.dyn_input(ctx, 0)?;
    let kind = if ctx.op == "GlobalMaxPool" {
        PoolKind::Max
    } else {
        PoolKind::Average
    };
    b.emit(ctx, Op::GlobalPool { kind }, vec![x])
}

/// ReduceMean / ReduceMax over the two spatial axes of an `[N, C, H, W]` tensor, which is
/// how some exporters write a global pool (torchvision's MNASNet: `x.mean([2, 3])`): a
/// global pool, then with `keepdims` = 0 the `[N, C]` a Flatten gives. Any other set of
/// axes is refused with the axes it got.
fn reduce<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    // Opset 18 moved `axes` from an attribute to an optional second input.
    let axes_input = ctx.opset >= 18;
    if axes_input {
        ctx.check_attrs(&["keepdims", "noop_with_empty_axes"])?;
        ctx.check_inputs(1, 2)?;
    } else {
        ctx.check_attrs(&["axes", "keepdims"])?;
        ctx.check_inputs(1, 1)?;
    }
    let x = b.dyn_input(ctx, 0)?;
    let xs = b.shape(x).to_vec();
    let rank = xs.len() + 1;
    let axes: Vec<i64> = if axes_input {
        match b.const_input(ctx, 1, "axes")? {
            Some(t) => t.i64s(ctx, "axes")?.to_vec(),
            None => Vec::new(),
        }
    } else {
        ctx.ints("axes")?.map(<[i64]>::to_vec).unwrap_or_default()
    };
    if axes.is_empty() {
        return Err(if axes_input && ctx.flag("noop_with_empty_axes", false)? {
            ctx.unsupported("an empty 'axes' with noop_with_empty_axes = 1 (a no-op reduce)")
        } else {
            ctx.unsupported(
                "no 'axes': a reduce over every axis mixes the batch (cnnrt reduces over [2, 3] of [N, C, H, W])",
            )
        });
    }
    let mut norm = axes
        .iter()
        .map(|&a| ctx.axis("axes", a, rank))
        .collect::<Result<Vec<_>>>()?;
    norm.sort_unstable();
    norm.dedup();
    if rank != 4 || norm != [2, 3] {
        return Err(ctx.unsupported(format!(
            "{} over axes {axes:?} of {}: cnnrt reduces only over the spatial axes [2, 3] of [N, C, H, W] (a global pool)",
            ctx.op,
            full(&xs)
        )));
    }
    let kind = if ctx.op == "ReduceMax" {
        PoolKind::Max
    } else {
        PoolKind::Average
    };
    let pool = Op::GlobalPool { kind };
    if ctx.flag("keepdims", true)? {
        return b.emit(ctx, pool, vec![x]);
    }
    let out = b.single_output(ctx)?;
    let pooled = b.push_node(
        ctx,
        format!("{}.pool", ctx.name),
        pool,
        vec![x],
        &format!("{out}.pool"),
    )?;
    b.emit(ctx, Op::Flatten { axis: 1 }, vec![pooled])
}

fn flatten<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["axis"])?;
    ctx.check_inputs(1, 1)?;
    let x = b.dyn_input(ctx, 0)?;
    let rank = b.shape(x).len() + 1;
    let axis = ctx.int("axis", 1)?;
    // Flatten accepts axis == rank (everything in the first factor).
    let a = if axis == rank as i64 {
        rank
    } else {
        ctx.axis("axis", axis, rank)?
    };
    if a == 0 {
        return Err(ctx.unsupported(
            "attribute 'axis' = 0 would merge the batch into the features (batch must stay first)",
        ));
    }
    b.emit(ctx, Op::Flatten { axis: a }, vec![x])
}

fn product(d: &[usize]) -> Option<usize> {
    d.iter()
        .try_fold(1usize, |a, &v| a.checked_mul(v))
        .filter(|&n| n <= limits::MAX_TENSOR_ELEMENTS)
}

/// Reshape with a constant shape: supported when the batch stays first and the per-sample
/// result is what a Flatten gives (or the shape does not change).
fn reshape<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["allowzero"])?;
    ctx.check_inputs(2, 2)?;
    let allowzero = ctx.flag("allowzero", false)?;
    let x = b.dyn_input(ctx, 0)?;
    let xs = b.shape(x).to_vec();
    let st = b.require_const(ctx, 1, "shape")?;
    let s = st.i64s(ctx, "shape")?.to_vec();
    if allowzero && s.contains(&0) {
        return Err(
            ctx.unsupported("attribute 'allowzero' = 1 with a 0 in the shape (an empty tensor)")
        );
    }
    let Some((&first, rest)) = s.split_first() else {
        return Err(ctx.unsupported("reshape to a scalar drops the batch dimension"));
    };
    let keeps_batch = match first {
        0 => true,
        -1 => !rest.contains(&-1),
        // A model exported with a fixed batch often spells it out, e.g. [1, -1].
        v => v > 0 && b.static_batch == usize::try_from(v).ok(),
    };
    if !keeps_batch {
        return Err(ctx.unsupported(format!(
            "reshape of {} to {s:?} does not keep the batch first (the first dim must be 0, -1 or the fixed batch)",
            full(&xs)
        )));
    }
    let total = product(&xs).ok_or_else(|| ctx.shape_err("input too large"))?;
    let mut t = Vec::with_capacity(rest.len());
    let mut infer = None;
    for (i, &d) in rest.iter().enumerate() {
        match d {
            0 => t.push(*xs.get(i).ok_or_else(|| {
                ctx.shape_err(format!(
                    "shape {s:?} copies dim {} that {} lacks",
                    i + 1,
                    full(&xs)
                ))
            })?),
            -1 if infer.is_none() => {
                infer = Some(i);
                t.push(1);
            }
            -1 => return Err(ctx.malformed(format!("shape {s:?} has more than one -1"))),
            d => t.push(ctx.dim("shape", d, 1)?),
        }
    }
    let known = product(&t).ok_or_else(|| ctx.shape_err(format!("shape {s:?} is too large")))?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(ctx.shape_err(format!("cannot reshape {} to {s:?}", full(&xs))));
        }
        t[i] = total / known;
    }
    if product(&t) != Some(total) {
        return Err(if first == -1 {
            ctx.unsupported(format!(
                "reshape of {} to {s:?} moves elements across the batch",
                full(&xs)
            ))
        } else {
            ctx.shape_err(format!("cannot reshape {} to {s:?}", full(&xs)))
        });
    }
    if t == xs {
        return b.alias(ctx, Val::Dyn(x));
    }
    let axis = match t.len() {
        1 => Some(1),
        2 => (2..=xs.len() + 1).find(|&a| product(&xs[..a - 1]) == Some(t[0])),
        _ => None,
    };
    match axis {
        Some(axis) => b.emit(ctx, Op::Flatten { axis }, vec![x]),
        None => Err(ctx.unsupported(format!(
            "reshape of {} to [N, {}]: cnnrt supports reshapes that flatten (to [N, features] or [N, a, b])",
            full(&xs),
            t.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Transposes a row-major `[rows, cols]` matrix, scaling by `alpha`.
fn transpose(m: &[f32], rows: usize, cols: usize, alpha: f32) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c] * alpha;
        }
    }
    t
}

/// Adds a Linear node for `y = x · W + bias` with `w` given `[out, in]`.
fn emit_linear<'m>(
    b: &mut Builder<'m>,
    ctx: &Ctx<'m>,
    x: ValueId,
    w: Vec<f32>,
    dims: [usize; 2],
    bias: Option<Vec<f32>>,
) -> Result<()> {
    let [out_features, in_features] = dims;
    let xs = b.shape(x);
    if xs != [in_features] {
        return Err(ctx.unsupported(format!(
            "input {} times a [{in_features}, {out_features}] matrix: cnnrt supports [N, K] × [K, M] only",
            full(xs)
        )));
    }
    let weight = b.add_weight(
        format!("{}.weight", ctx.name),
        vec![out_features, in_features],
        w,
    );
    let bias = bias.map(|v| b.add_weight(format!("{}.bias", ctx.name), vec![out_features], v));
    let op = Op::Linear(Linear {
        in_features,
        out_features,
        weight,
        bias,
        activation: Activation::Identity,
    });
    b.emit(ctx, op, vec![x])
}

fn matrix(ctx: &Ctx, t: &Tensor, role: &str) -> Result<[usize; 2]> {
    match t.dims.as_slice() {
        &[r, c] => Ok([r, c]),
        d => Err(ctx.unsupported(format!(
            "{role} '{}' has shape {d:?}, expected a matrix",
            t.name
        ))),
    }
}

fn gemm<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["alpha", "beta", "transA", "transB"])?;
    ctx.check_inputs(2, 3)?;
    if ctx.int("transA", 0)? != 0 {
        return Err(
            ctx.unsupported("attribute 'transA' = 1 (the first operand holds one sample per row)")
        );
    }
    let trans_b = ctx.flag("transB", false)?;
    let alpha = ctx.float("alpha", 1.0)?;
    let beta = ctx.float("beta", 1.0)?;
    let x = b.dyn_input(ctx, 0)?;
    let bt = b.require_const(ctx, 1, "B")?;
    let [r, c] = matrix(ctx, &bt, "B")?;
    let bm = bt.f32s(ctx, "B")?;
    let (k, n, w) = if trans_b {
        (c, r, bm.iter().map(|v| v * alpha).collect())
    } else {
        (r, c, transpose(bm, r, c, alpha))
    };
    let bias = match b.const_input(ctx, 2, "C")? {
        Some(ct) if beta != 0.0 => {
            let cv = ct.f32s(ctx, "C")?;
            let ok = match ct.dims.as_slice() {
                [] => true,
                [d] => *d == 1 || *d == n,
                [m, d] => *m == 1 && (*d == 1 || *d == n),
                _ => false,
            };
            if !ok {
                return Err(ctx.unsupported(format!(
                    "C of shape {:?}: cnnrt supports a bias of shape [{n}], [1, {n}] or a scalar (not one per row)",
                    ct.dims
                )));
            }
            Some(if cv.len() == 1 {
                vec![cv[0] * beta; n]
            } else {
                cv.iter().map(|v| v * beta).collect()
            })
        }
        _ => None,
    };
    emit_linear(b, ctx, x, w, [n, k], bias)
}

fn matmul<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&[])?;
    ctx.check_inputs(2, 2)?;
    let x = b.dyn_input(ctx, 0)?;
    let bt = b.require_const(ctx, 1, "B")?;
    let [k, n] = matrix(ctx, &bt, "B")?;
    let w = transpose(bt.f32s(ctx, "B")?, k, n, 1.0);
    emit_linear(b, ctx, x, w, [n, k], None)
}

/// Add / Sub / Mul / Div.
fn arith<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&[])?;
    ctx.check_inputs(2, 2)?;
    let op = ctx.op;
    let (Some(lhs), Some(rhs)) = (b.input(ctx, 0)?, b.input(ctx, 1)?) else {
        return Err(ctx.malformed("needs two inputs"));
    };
    for v in [&lhs, &rhs] {
        if let Val::Dyn(x) = v {
            if b.shape(*x).is_empty() {
                return Err(ctx.unsupported(format!(
                    "{op} of a tensor of shape [N] (one value per sample): element-wise arithmetic needs a channel dimension"
                )));
            }
        }
    }
    match (&lhs, &rhs) {
        (Val::Dyn(x), Val::Dyn(y)) => dyn_arith(b, ctx, *x, *y),
        (Val::Dyn(x), c) | (c, Val::Dyn(x)) => {
            let x = *x;
            let const_first = !matches!(lhs, Val::Dyn(_));
            let c = b
                .decode(ctx, c)?
                .ok_or_else(|| ctx.malformed("operand is not a constant"))?;
            let xs = b.shape(x).to_vec();
            let Some(kind) = bcast(&c.dims, &xs) else {
                return Err(ctx.unsupported(format!(
                    "{op} of {} and a constant of shape {:?}: cnnrt supports a scalar or per-channel constant ([C,1,1], [1,C,1,1], or [C] for [N,C] inputs)",
                    full(&xs),
                    c.dims
                )));
            };
            if op == "Add" && fold_linear_bias(b, ctx, x, &c, kind)? {
                return Ok(());
            }
            // One value or one per channel (checked by `bcast`), stored flat.
            let v = c.f32s(ctx, "operand")?.to_vec();
            let (scale, shift) = match (op, const_first) {
                ("Add", _) => (None, Some(v)),
                ("Mul", _) => (Some(v), None),
                ("Sub", false) => (None, Some(v.iter().map(|a| -a).collect())),
                ("Sub", true) => (Some(vec![-1.0]), Some(v)),
                ("Div", false) => (Some(v.iter().map(|a| 1.0 / a).collect()), None),
                _ => return Err(ctx.unsupported("division of a constant by a computed tensor")),
            };
            let scale =
                scale.map(|s| b.add_weight(format!("{}.scale", ctx.name), vec![s.len()], s));
            let shift =
                shift.map(|s| b.add_weight(format!("{}.shift", ctx.name), vec![s.len()], s));
            b.emit(
                ctx,
                Op::ChannelAffine {
                    scale,
                    shift,
                    activation: Activation::Identity,
                },
                vec![x],
            )
        }
        _ => {
            Err(ctx.unsupported("both operands are constants (constant folding is not supported)"))
        }
    }
}

/// `Add(Linear(x), bias)` where the Linear has no bias and nothing else reads it: the
/// bias goes into the Linear. Returns whether it folded.
fn fold_linear_bias<'m>(
    b: &mut Builder<'m>,
    ctx: &Ctx<'m>,
    x: ValueId,
    c: &Tensor,
    kind: Bcast,
) -> Result<bool> {
    let n = match b.producer_op(x) {
        Some((Op::Linear(l), _)) if l.bias.is_none() && l.activation.is_identity() => {
            l.out_features
        }
        _ => return Ok(false),
    };
    if b.pending_uses(x) != 1 {
        return Ok(false);
    }
    let v = c.f32s(ctx, "bias")?;
    let data = match kind {
        Bcast::Scalar => vec![v[0]; n],
        Bcast::Channel => v.to_vec(),
    };
    let w = b.add_weight(format!("{}.bias", ctx.name), vec![n], data);
    if let Some(Op::Linear(l)) = b.producer_op_mut(x) {
        l.bias = Some(w);
    }
    b.alias(ctx, Val::Dyn(x))?;
    Ok(true)
}

/// `x` broadcasts per channel into `y`'s shape (same rank, `[C, 1, 1]` against `[C, H, W]`).
fn dyn_channel(x: &[usize], y: &[usize]) -> bool {
    x.len() == y.len() && !x.is_empty() && x[0] == y[0] && x[1..].iter().all(|&d| d == 1)
}

/// Both operands computed: Add and Mul map to Binary (with the broadcast one second),
/// `Mul(x, Sigmoid(x))` to SiLU, `Mul(x, HardSigmoid(x; 1/6, 1/2))` to HardSwish, `Sub(x, y)` to `Add(x, -1 · y)`.
fn dyn_arith<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>, x: ValueId, y: ValueId) -> Result<()> {
    let op = ctx.op;
    if op == "Mul" {
        for (a, s) in [(x, y), (y, x)] {
            let fused = match b.producer_op(s) {
                Some((Op::Activation(Activation::Sigmoid), ins)) if ins == [a] => {
                    Some(Activation::Silu)
                }
                // x · HardSigmoid(x; 1/6, 1/2) is HardSwish (how some exporters write it).
                Some((Op::Activation(Activation::HardSigmoid { alpha, beta }), ins))
                    if ins == [a] && (alpha - 1.0 / 6.0).abs() < 1e-6 && *beta == 0.5 =>
                {
                    Some(Activation::HardSwish)
                }
                _ => None,
            };
            if let Some(f) = fused {
                return b.emit(ctx, Op::Activation(f), vec![a]);
            }
        }
    }
    if op == "Div" {
        return Err(ctx.unsupported(
            "division by a computed tensor (only division by a constant is supported)",
        ));
    }
    let (xs, ys) = (b.shape(x).to_vec(), b.shape(y).to_vec());
    let order = if xs == ys || dyn_channel(&ys, &xs) {
        [x, y]
    } else if dyn_channel(&xs, &ys) {
        [y, x]
    } else {
        return Err(ctx.unsupported(format!(
            "{op} of {} and {}: cnnrt broadcasts two computed tensors only when equal or per channel ([N,C,1,1])",
            full(&xs),
            full(&ys)
        )));
    };
    let kind = if op == "Mul" {
        BinaryKind::Mul
    } else {
        BinaryKind::Add
    };
    let mut inputs = order.to_vec();
    if op == "Sub" {
        // x - y = x + (-1 · y): negate y where it sits.
        let out = b.single_output(ctx)?;
        let minus = b.add_weight(format!("{}.minus_one", ctx.name), vec![1], vec![-1.0]);
        let neg = Op::ChannelAffine {
            scale: Some(minus),
            shift: None,
            activation: Activation::Identity,
        };
        let ny = b.push_node(
            ctx,
            format!("{}.neg", ctx.name),
            neg,
            vec![y],
            &format!("{out}.neg"),
        )?;
        inputs.iter_mut().filter(|v| **v == y).for_each(|v| *v = ny);
        if x == y {
            inputs[0] = x;
        }
    }
    b.emit(
        ctx,
        Op::Binary {
            kind,
            activation: Activation::Identity,
        },
        inputs,
    )
}

fn concat<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["axis"])?;
    ctx.check_inputs(1, usize::MAX)?;
    if !ctx.has("axis") {
        return Err(ctx.malformed("attribute 'axis' is missing"));
    }
    let inputs = (0..ctx.node.input.len())
        .map(|i| b.dyn_input(ctx, i))
        .collect::<Result<Vec<_>>>()?;
    let rank = b.shape(inputs[0]).len() + 1;
    let axis = ctx.sample_axis("axis", ctx.int("axis", 1)?, rank)?;
    b.emit(ctx, Op::Concat { axis }, inputs)
}

fn layer_norm<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["axis", "epsilon", "stash_type"])?;
    ctx.check_inputs(2, 3)?;
    let x = b.dyn_input(ctx, 0)?;
    let xs = b.shape(x).to_vec();
    let axis = ctx.sample_axis("axis", ctx.int("axis", -1)?, xs.len() + 1)?;
    let epsilon = ctx.float("epsilon", 1e-5)?;
    let norm = xs[axis..].to_vec();
    let n: usize = norm.iter().product();
    let mut w = Vec::new();
    for (i, role) in [(1, "Scale"), (2, "B")] {
        match b.const_input(ctx, i, role)? {
            None => w.push(None),
            Some(t) if t.numel() == n => {
                w.push(Some(b.plain_weight(ctx, t, norm.clone(), role)?))
            }
            Some(t) => {
                return Err(ctx.unsupported(format!(
                "{role} of shape {:?} for normalized shape {norm:?}: cnnrt needs it unbroadcast",
                t.dims
            )))
            }
        }
    }
    let scale = w[0].ok_or_else(|| ctx.malformed("Scale is missing"))?;
    b.emit(
        ctx,
        Op::LayerNorm {
            axis,
            epsilon,
            scale,
            bias: w[1],
        },
        vec![x],
    )
}

fn instance_norm<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["epsilon"])?;
    ctx.check_inputs(3, 3)?;
    let x = b.dyn_input(ctx, 0)?;
    let c = *b
        .shape(x)
        .first()
        .ok_or_else(|| ctx.shape_err("input has no channel dimension"))?;
    let epsilon = ctx.float("epsilon", 1e-5)?;
    let mut w = Vec::new();
    for (i, role) in [(1, "scale"), (2, "B")] {
        let t = b.require_const(ctx, i, role)?;
        if t.numel() != c {
            return Err(ctx.shape_err(format!(
                "{role} has shape {:?}, the input has {c} channels",
                t.dims
            )));
        }
        w.push(b.plain_weight(ctx, t, vec![c], role)?);
    }
    b.emit(
        ctx,
        Op::InstanceNorm {
            epsilon,
            scale: w[0],
            bias: w[1],
        },
        vec![x],
    )
}

fn softmax<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["axis"])?;
    ctx.check_inputs(1, 1)?;
    let x = b.dyn_input(ctx, 0)?;
    let rank = b.shape(x).len() + 1;
    let old = ctx.opset < 13;
    let axis = ctx.sample_axis("axis", ctx.int("axis", if old { 1 } else { -1 })?, rank)?;
    b.emit(
        ctx,
        Op::Softmax {
            axis,
            flatten_from_axis: old,
        },
        vec![x],
    )
}

fn pad<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    let old = ctx.opset < 11;
    if old {
        ctx.check_attrs(&["mode", "pads", "value"])?;
        ctx.check_inputs(1, 1)?;
    } else {
        ctx.check_attrs(&["mode"])?;
        ctx.check_inputs(2, 4)?;
    }
    match ctx.string("mode")?.unwrap_or("constant") {
        "constant" => {}
        m => {
            return Err(ctx.unsupported(format!("attribute 'mode' = '{m}' (only constant padding)")))
        }
    }
    let x = b.dyn_input(ctx, 0)?;
    let xs = b.shape(x).to_vec();
    let rank = xs.len() + 1;
    let (pads, value, axes): (Vec<i64>, f32, Vec<usize>) = if old {
        let p = ctx
            .ints("pads")?
            .ok_or_else(|| ctx.malformed("attribute 'pads' is missing"))?;
        (p.to_vec(), ctx.float("value", 0.0)?, (0..rank).collect())
    } else {
        let p = b.require_const(ctx, 1, "pads")?.i64s(ctx, "pads")?.to_vec();
        let value = match b.const_input(ctx, 2, "constant_value")? {
            None => 0.0,
            Some(t) => t.scalar_f32(ctx, "constant_value")?,
        };
        let axes = match b.const_input(ctx, 3, "axes")? {
            None => (0..rank).collect(),
            Some(t) => t
                .i64s(ctx, "axes")?
                .iter()
                .map(|&a| ctx.axis("axes", a, rank))
                .collect::<Result<_>>()?,
        };
        (p, value, axes)
    };
    if pads.len() != 2 * axes.len() {
        return Err(ctx.shape_err(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let (mut begin, mut end) = (vec![0usize; rank], vec![0usize; rank]);
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = ctx.dim("pads", pads[i], 0)?;
        end[a] = ctx.dim("pads", pads[i + axes.len()], 0)?;
    }
    if let Some(a) = (0..rank).find(|&a| (begin[a] != 0 || end[a] != 0) && (rank != 4 || a < 2)) {
        return Err(ctx.unsupported(format!(
            "padding axis {a} of {}: cnnrt pads only H and W of N×C×H×W inputs",
            full(&xs)
        )));
    }
    if rank != 4 {
        return b.alias(ctx, Val::Dyn(x)); // nothing padded
    }
    b.emit(
        ctx,
        Op::Pad {
            pads: [begin[2], begin[3], end[2], end[3]],
            value,
        },
        vec![x],
    )
}

fn identity<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&[])?;
    ctx.check_inputs(1, 1)?;
    let v = b
        .input(ctx, 0)?
        .ok_or_else(|| ctx.malformed("input 0 is missing"))?;
    b.alias(ctx, v)
}

fn dropout<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&["ratio", "seed", "is_test"])?;
    ctx.check_inputs(1, 3)?;
    if let Some(t) = b.const_input(ctx, 2, "training_mode")? {
        let on = match &t.data {
            Data::I64(v) => v.iter().any(|&x| x != 0),
            Data::F32(v) => v.iter().any(|&x| x != 0.0),
        };
        if on {
            return Err(ctx.unsupported("training_mode = true (cnnrt runs inference only)"));
        }
    }
    let v = b
        .input(ctx, 0)?
        .ok_or_else(|| ctx.malformed("input 0 is missing"))?;
    b.alias(ctx, v)
}

fn constant<'m>(b: &mut Builder<'m>, ctx: &Ctx<'m>) -> Result<()> {
    ctx.check_attrs(&[
        "value",
        "value_float",
        "value_floats",
        "value_int",
        "value_ints",
    ])?;
    ctx.check_inputs(0, 0)?;
    let name = ctx.node.output.first().cloned().unwrap_or_default();
    let mut t = if let Some(t) = ctx.tensor("value")? {
        super::tensor::decode(t, ctx)?
    } else if ctx.has("value_float") {
        Tensor {
            name: String::new(),
            dims: vec![],
            data: Data::F32(vec![ctx.float("value_float", 0.0)?]),
        }
    } else if let Some(v) = ctx.floats("value_floats")? {
        Tensor {
            name: String::new(),
            dims: vec![v.len()],
            data: Data::F32(v.to_vec()),
        }
    } else if ctx.has("value_int") {
        Tensor {
            name: String::new(),
            dims: vec![],
            data: Data::I64(vec![ctx.int("value_int", 0)?]),
        }
    } else if let Some(v) = ctx.ints("value_ints")? {
        Tensor {
            name: String::new(),
            dims: vec![v.len()],
            data: Data::I64(v.to_vec()),
        }
    } else {
        return Err(ctx.malformed("has no value attribute"));
    };
    t.name = name;
    b.bind_const(ctx, t)
}
