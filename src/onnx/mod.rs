//! ONNX import: `model.onnx` bytes → [`Graph`] plus weight data.
//!
//! The importer decodes the protobuf with the prost types in [`proto`] (generated once from
//! the vendored `proto/onnx.proto`), then converts node by node in the file's (topological)
//! order, inferring each new value's per-sample shape as it goes so that attributes which
//! depend on shapes (`auto_pad`, negative axes, `Reshape` targets) can be resolved.
//!
//! * Opsets [`MIN_OPSET`]..=[`MAX_OPSET`] of the default domain; other domains are refused.
//! * Every model input's first dimension is the batch (symbolic or any number); its other
//!   dimensions must be fixed. Shapes in the graph are per sample (batch dropped).
//! * Weights must be constants (initializers or `Constant` nodes) in float32; shapes, pads
//!   and axes may be int64/int32 constants. External data is refused with a clear error.
//! * Rewrites done here: `Mul(x, Sigmoid(x))` → SiLU, `Mul(x, HardSigmoid(x; 1/6, 1/2))` →
//!   HardSwish, `MatMul` + constant `Add` → Linear
//!   with bias, BatchNormalization → per-channel affine (folding into the conv is a later
//!   pass), Identity / Dropout / no-op Reshape removed, `Sub(x, y)` → `x + (-1·y)`.
//! * Anything else yields [`Error::Unsupported`] naming the node, the op and what is not
//!   supported. Declared sizes are checked against [`crate::limits`] before allocation,
//!   and malformed protobuf gives [`Error::Onnx`], never a panic.

mod builder;
mod node;
mod ops;
/// Types generated from `proto/onnx.proto`; see the header of `proto.rs` to regenerate.
#[allow(clippy::all, missing_docs, rustdoc::all)]
#[rustfmt::skip]
pub mod proto;
mod tensor;

use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};
use crate::graph::Graph;

/// Largest `.onnx` accepted: protobuf itself cannot encode a message of 2 GiB or more.
pub const MAX_ONNX_BYTES: usize = (2 << 30) - 1;
/// Oldest default-domain opset read.
pub const MIN_OPSET: i64 = 7;
/// Newest default-domain opset read.
pub const MAX_OPSET: i64 = 21;

/// An imported model.
#[derive(Clone, Debug)]
pub struct Imported {
    pub graph: Graph,
    /// `weights[i]` is the row-major data of `graph.weights[i]`.
    pub weights: Vec<Vec<f32>>,
    /// The default-domain opset the model was exported with.
    pub opset: i64,
    /// `producer_name producer_version` from the model (may be empty).
    pub producer: String,
}

/// Imports an ONNX model from its serialized bytes.
pub fn import(bytes: &[u8]) -> Result<Imported> {
    if bytes.len() > MAX_ONNX_BYTES {
        return Err(Error::Limit(format!(
            "the ONNX model is {} bytes (at most {MAX_ONNX_BYTES})",
            bytes.len()
        )));
    }
    let model = proto::ModelProto::decode(bytes)
        .map_err(|e| Error::Onnx(format!("cannot decode the model protobuf: {e}")))?;
    builder::convert(&model)
}

/// Imports an ONNX model from a file. Errors name the file.
pub fn import_file(path: &Path) -> Result<Imported> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_ONNX_BYTES as u64 {
        return Err(Error::Limit(format!(
            "{}: the ONNX model is {len} bytes (at most {MAX_ONNX_BYTES})",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    import(&bytes).map_err(|e| match e {
        Error::Onnx(m) => Error::Onnx(format!("{}: {m}", path.display())),
        e => e,
    })
}
