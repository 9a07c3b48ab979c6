//! The converter pipeline: ONNX → graph → passes → `.cnnrt`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, ChannelOrder, Metadata};
use crate::graph::Graph;
use crate::passes::{self, PassReport};

/// Preprocessing and labels stored in the model for `cnnrt run` and services.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    pub labels: Vec<String>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub channel_order: Option<ChannelOrder>,
}

/// The converted model, before it is written.
#[derive(Debug)]
pub struct Converted {
    pub graph: Graph,
    pub weights: Vec<Vec<f32>>,
    pub metadata: Metadata,
    pub passes: PassReport,
}

/// Imports ONNX bytes and runs the passes.
pub fn convert_onnx(bytes: &[u8], options: &ConvertOptions) -> Result<Converted> {
    let imported = crate::onnx::import(bytes)?;
    let mut graph = imported.graph;
    let mut weights = imported.weights;
    let report = passes::optimize(&mut graph, &mut weights);
    graph.infer_shapes()?;
    let input = graph.inputs[0];
    let input_shape = graph.shape(input).to_vec();
    let channels = input_shape.first().copied().unwrap_or(0);
    for (what, v) in [("mean", &options.mean), ("std", &options.std)] {
        if !v.is_empty() && v.len() != 1 && v.len() != channels {
            return Err(Error::Input(format!(
                "--{what} has {} values; the model input has {channels} channels (give 1 or {channels})",
                v.len()
            )));
        }
    }
    if options.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return Err(Error::Input("--std values must be finite and non-zero".into()));
    }
    let channel_order = options.channel_order.unwrap_or(if channels == 1 { ChannelOrder::Gray } else { ChannelOrder::Rgb });
    let metadata = Metadata {
        input_name: graph.values[input].name.clone(),
        input_shape,
        mean: options.mean.clone(),
        std: options.std.clone(),
        channel_order,
        labels: options.labels.clone(),
        producer: format!("cnnrt {} from ONNX ({})", env!("CARGO_PKG_VERSION"), imported.producer),
        source_opset: imported.opset,
        ..Default::default()
    };
    Ok(Converted { graph, weights, metadata, passes: report })
}

/// Converts `onnx_path` and writes `out_path`.
pub fn convert_file(onnx_path: &Path, out_path: &Path, options: &ConvertOptions) -> Result<Converted> {
    let bytes = std::fs::read(onnx_path).map_err(|e| Error::io(onnx_path, e))?;
    let converted = convert_onnx(&bytes, options)?;
    let refs: Vec<&[f32]> = converted.weights.iter().map(|w| w.as_slice()).collect();
    format::write_model(out_path, &converted.graph, &refs, &converted.metadata)?;
    Ok(converted)
}
