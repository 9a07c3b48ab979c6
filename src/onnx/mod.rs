//! ONNX import (being written).

/// Types generated from `proto/onnx.proto`; see the header of `proto.rs` to regenerate.
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto;
