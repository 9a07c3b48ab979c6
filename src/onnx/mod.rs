//! ONNX import (being written).
pub struct Imported { pub graph: crate::graph::Graph, pub weights: Vec<Vec<f32>>, pub opset: i64, pub producer: String }
pub fn import(_b: &[u8]) -> crate::Result<Imported> { Err(crate::Error::Onnx("stub".into())) }
