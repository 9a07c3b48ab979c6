//! Per-node context: attribute access with defaults and type checks, input arity, errors
//! that name the node and op.

use super::proto::attribute_proto::AttributeType;
use super::proto::{AttributeProto, NodeProto, TensorProto};
use crate::error::{Error, Result};
use crate::limits;

/// The ONNX node being converted.
pub(crate) struct Ctx<'m> {
    pub node: &'m NodeProto,
    /// The node's name, or `op:first_output` when it has none.
    pub name: String,
    pub op: &'m str,
    pub opset: i64,
}

impl<'m> Ctx<'m> {
    pub fn new(node: &'m NodeProto, opset: i64) -> Self {
        let op = node.op_type();
        let name = match node.name() {
            "" => format!(
                "{op}:{}",
                node.output.first().map(String::as_str).unwrap_or("?")
            ),
            n => n.to_string(),
        };
        Ctx {
            node,
            name,
            op,
            opset,
        }
    }

    pub fn unsupported(&self, what: impl Into<String>) -> Error {
        Error::Unsupported {
            node: self.name.clone(),
            op: self.op.to_string(),
            what: what.into(),
        }
    }

    pub fn shape_err(&self, reason: impl Into<String>) -> Error {
        Error::shape(&self.name, self.op, reason)
    }

    pub fn malformed(&self, what: impl std::fmt::Display) -> Error {
        Error::Onnx(format!("node '{}' ({}): {what}", self.name, self.op))
    }

    /// Refuses attributes outside `known` (an attribute cnnrt would silently ignore could
    /// change the result).
    pub fn check_attrs(&self, known: &[&str]) -> Result<()> {
        for a in &self.node.attribute {
            if !known.contains(&a.name()) {
                return Err(self.unsupported(format!("attribute '{}'", a.name())));
            }
        }
        Ok(())
    }

    /// Checks the number of inputs: the first `min` must be present (non-empty names), at
    /// most `max` may be given (trailing empty names count as absent).
    pub fn check_inputs(&self, min: usize, max: usize) -> Result<()> {
        let given = self
            .node
            .input
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |i| i + 1);
        if given > max {
            return Err(self.malformed(format!("has {given} inputs, at most {max} expected")));
        }
        if let Some(i) = (0..min).find(|&i| self.input(i).is_none()) {
            return Err(self.malformed(format!("input {i} is missing")));
        }
        Ok(())
    }

    /// The name of input `i`, `None` when absent or empty (an omitted optional input).
    pub fn input(&self, i: usize) -> Option<&'m str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn attr(&self, name: &str) -> Option<&'m AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == name)
    }

    fn typed(&self, name: &str, want: AttributeType) -> Result<Option<&'m AttributeProto>> {
        let Some(a) = self.attr(name) else {
            return Ok(None);
        };
        let t = a.r#type();
        if t != want && t != AttributeType::Undefined {
            return Err(self.malformed(format!(
                "attribute '{name}' has type {}, expected {}",
                t.as_str_name(),
                want.as_str_name()
            )));
        }
        Ok(Some(a))
    }

    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self
            .typed(name, AttributeType::Int)?
            .map_or(default, |a| a.i()))
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self
            .typed(name, AttributeType::Float)?
            .map_or(default, |a| a.f()))
    }

    pub fn ints(&self, name: &str) -> Result<Option<&'m [i64]>> {
        Ok(self
            .typed(name, AttributeType::Ints)?
            .map(|a| a.ints.as_slice()))
    }

    pub fn floats(&self, name: &str) -> Result<Option<&'m [f32]>> {
        Ok(self
            .typed(name, AttributeType::Floats)?
            .map(|a| a.floats.as_slice()))
    }

    pub fn string(&self, name: &str) -> Result<Option<&'m str>> {
        match self.typed(name, AttributeType::String)? {
            None => Ok(None),
            Some(a) => std::str::from_utf8(a.s())
                .map(Some)
                .map_err(|_| self.malformed(format!("attribute '{name}' is not UTF-8"))),
        }
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'m TensorProto>> {
        Ok(self
            .typed(name, AttributeType::Tensor)?
            .and_then(|a| a.t.as_ref()))
    }

    /// A 0/1 flag attribute.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool> {
        match self.int(name, i64::from(default))? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.unsupported(format!("attribute '{name}' = {v} (expected 0 or 1)"))),
        }
    }

    /// A size-like value (kernel, stride, pad, dilation): `min..=MAX_DIM`.
    pub fn dim(&self, attr: &str, v: i64, min: usize) -> Result<usize> {
        match usize::try_from(v) {
            Ok(u) if u >= min && u <= limits::MAX_DIM => Ok(u),
            _ if v < 0 && min == 0 => {
                Err(self.unsupported(format!("negative value {v} in '{attr}'")))
            }
            _ => Err(self.unsupported(format!(
                "'{attr}' value {v} (must be between {min} and {})",
                limits::MAX_DIM
            ))),
        }
    }

    /// A two-element spatial attribute (strides, dilations, kernel_shape) or its default.
    pub fn pair(&self, name: &str, default: [usize; 2], min: usize) -> Result<[usize; 2]> {
        match self.ints(name)? {
            None => Ok(default),
            Some([a, b]) => Ok([self.dim(name, *a, min)?, self.dim(name, *b, min)?]),
            Some(v) => Err(self.unsupported(format!(
                "'{name}' = {v:?}: only 2-D (two spatial dims) is supported"
            ))),
        }
    }

    /// Normalizes a possibly negative ONNX axis for a tensor of full rank `rank` (batch included).
    pub fn axis(&self, attr: &str, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        if axis < -r || axis >= r.max(1) {
            return Err(self.shape_err(format!("{attr} {axis} out of range for rank {rank}")));
        }
        Ok(if axis < 0 {
            (axis + r) as usize
        } else {
            axis as usize
        })
    }

    /// Like [`Ctx::axis`] but refuses the batch axis, returning the per-sample axis (ONNX axis - 1).
    pub fn sample_axis(&self, attr: &str, axis: i64, rank: usize) -> Result<usize> {
        let a = self.axis(attr, axis, rank)?;
        if a == 0 {
            return Err(self.unsupported(format!(
                "{attr} {axis} is the batch axis; cnnrt keeps samples independent (batch stays first)"
            )));
        }
        Ok(a - 1)
    }
}
