//! Decoding `TensorProto` initializers and constants, with every declared size checked
//! against [`crate::limits`] before anything is allocated.

use super::node::Ctx;
use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::TensorProto;
use crate::error::{Error, Result};
use crate::limits;

/// The element data of a decoded constant. Integer and boolean tensors (shapes, pads,
/// axes, flags) are widened to `i64`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A decoded constant: an initializer or the value of a `Constant` node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// The float data, or `Unsupported` naming the tensor's role.
    pub fn f32s(&self, ctx: &Ctx, role: &str) -> Result<&[f32]> {
        match &self.data {
            Data::F32(v) => Ok(v),
            Data::I64(_) => Err(ctx.unsupported(format!(
                "{role} '{}' is an integer tensor, expected float32",
                self.name
            ))),
        }
    }

    pub fn into_f32s(self, ctx: &Ctx, role: &str) -> Result<Vec<f32>> {
        match self.data {
            Data::F32(v) => Ok(v),
            Data::I64(_) => Err(ctx.unsupported(format!(
                "{role} '{}' is an integer tensor, expected float32",
                self.name
            ))),
        }
    }

    /// The integer data, or `Unsupported` naming the tensor's role.
    pub fn i64s(&self, ctx: &Ctx, role: &str) -> Result<&[i64]> {
        match &self.data {
            Data::I64(v) => Ok(v),
            Data::F32(_) => Err(ctx.unsupported(format!(
                "{role} '{}' is a float tensor, expected int64",
                self.name
            ))),
        }
    }

    /// The single value of a one-element float tensor.
    pub fn scalar_f32(&self, ctx: &Ctx, role: &str) -> Result<f32> {
        let v = self.f32s(ctx, role)?;
        match v {
            [x] => Ok(*x),
            _ => Err(ctx.unsupported(format!(
                "{role} '{}' has shape {:?}, expected a scalar",
                self.name, self.dims
            ))),
        }
    }
}

/// Converts declared ONNX dims to sizes, checking sign, rank, each dimension and the
/// element count against the limits. Returns the dims and the element count.
pub(crate) fn checked_dims(what: &str, dims: &[i64]) -> Result<(Vec<usize>, usize)> {
    if dims.len() > limits::MAX_RANK {
        return Err(Error::Limit(format!(
            "{what} has rank {} (at most {})",
            dims.len(),
            limits::MAX_RANK
        )));
    }
    let mut out = Vec::with_capacity(dims.len());
    let mut n: usize = 1;
    for &d in dims {
        let Ok(du) = usize::try_from(d) else {
            return Err(Error::Onnx(format!(
                "{what} has a negative dimension: {dims:?}"
            )));
        };
        if du > limits::MAX_DIM {
            return Err(Error::Limit(format!(
                "{what} has a dimension above {}: {dims:?}",
                limits::MAX_DIM
            )));
        }
        n = match n.checked_mul(du) {
            Some(n) if n <= limits::MAX_TENSOR_ELEMENTS => n,
            _ => {
                return Err(Error::Limit(format!(
                    "{what} has shape {dims:?}, more than {} elements",
                    limits::MAX_TENSOR_ELEMENTS
                )))
            }
        };
        out.push(du);
    }
    Ok((out, n))
}

fn dtype_name(t: i32) -> String {
    match DataType::try_from(t) {
        Ok(d) => d.as_str_name().to_string(),
        Err(_) => format!("unknown ({t})"),
    }
}

/// Checks that `len` stored elements match the `n` the shape declares.
fn check_len(name: &str, dims: &[usize], n: usize, len: usize, unit: &str) -> Result<()> {
    if len != n {
        return Err(Error::Onnx(format!(
            "tensor '{name}' has {len} {unit} of data, its shape {dims:?} needs {n}"
        )));
    }
    Ok(())
}

/// Decodes an initializer or constant. Sizes are validated before allocation; data that
/// does not match the declared shape is an [`Error::Onnx`]; element types other than
/// float32, int64, int32 and bool are `Unsupported` for the node `ctx`.
pub(crate) fn decode(t: &TensorProto, ctx: &Ctx) -> Result<Tensor> {
    let name = t.name().to_string();
    if t.data_location() == DataLocation::External || !t.external_data.is_empty() {
        return Err(Error::Onnx(format!(
            "tensor '{name}' keeps its data in an external file; cnnrt needs the weights inside the .onnx \
             (re-save it with onnx.save_model(model, path, save_as_external_data=False))"
        )));
    }
    if t.segment.is_some() {
        return Err(Error::Onnx(format!(
            "tensor '{name}' is segmented, which cnnrt does not support"
        )));
    }
    let (dims, n) = checked_dims(&format!("tensor '{name}'"), &t.dims)?;
    let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
    let dt = t.data_type();
    let data = match DataType::try_from(dt) {
        Ok(DataType::Float) => Data::F32(match raw {
            Some(r) => {
                check_len(&name, &dims, n.saturating_mul(4), r.len(), "bytes")?;
                r.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            None => {
                check_len(&name, &dims, n, t.float_data.len(), "floats")?;
                t.float_data.clone()
            }
        }),
        Ok(DataType::Int64) => Data::I64(match raw {
            Some(r) => {
                check_len(&name, &dims, n.saturating_mul(8), r.len(), "bytes")?;
                r.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            }
            None => {
                check_len(&name, &dims, n, t.int64_data.len(), "int64s")?;
                t.int64_data.clone()
            }
        }),
        Ok(DataType::Int32) => Data::I64(match raw {
            Some(r) => {
                check_len(&name, &dims, n.saturating_mul(4), r.len(), "bytes")?;
                r.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
            }
            None => {
                check_len(&name, &dims, n, t.int32_data.len(), "int32s")?;
                t.int32_data.iter().map(|&v| i64::from(v)).collect()
            }
        }),
        Ok(DataType::Bool) => Data::I64(match raw {
            Some(r) => {
                check_len(&name, &dims, n, r.len(), "bytes")?;
                r.iter().map(|&b| i64::from(b != 0)).collect()
            }
            None => {
                check_len(&name, &dims, n, t.int32_data.len(), "values")?;
                t.int32_data.iter().map(|&v| i64::from(v != 0)).collect()
            }
        }),
        _ => {
            return Err(ctx.unsupported(format!(
                "tensor '{name}' has element type {}; cnnrt reads float32 weights and int64/int32/bool constants",
                dtype_name(dt)
            )))
        }
    };
    Ok(Tensor { name, dims, data })
}
