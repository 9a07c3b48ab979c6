//! The converter pipeline: ONNX → graph → passes → `.cnnrt`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, ChannelOrder, Metadata};
use crate::graph::{Graph, Op, WeightLayout};
use crate::kernels::conv::ConvKernel;
use crate::kernels::depthwise::DepthwiseKernel;
use crate::kernels::linear::LinearKernel;
use crate::simd::Isa;
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

impl Converted {
    /// The graph and weights as stored in the file: convolution and fully connected
    /// weights packed for the GEMM kernels (ISA-independent layouts), so sessions use them
    /// in place. Depthwise convolutions keep the plain layout their kernel reads.
    pub fn packed_for_file(&self) -> (Graph, Vec<Vec<f32>>) {
        let mut graph = self.graph.clone();
        let mut weights = self.weights.clone();
        for node in &self.graph.nodes {
            let in_shape = self.graph.shape(node.inputs[0]);
            let out_shape = self.graph.shape(node.output);
            match &node.op {
                Op::Conv(c) => {
                    let (i, o) = ([in_shape[0], in_shape[1], in_shape[2]], [out_shape[0], out_shape[1], out_shape[2]]);
                    if DepthwiseKernel::new(Isa::Scalar, c, i, o).is_some() || graph.weights[c.weight].layout != WeightLayout::Plain {
                        continue;
                    }
                    let k = ConvKernel::new(Isa::Scalar, c, i, o);
                    let mut packed = vec![0.0; k.packed_weight_len()];
                    k.pack_weights(&self.weights[c.weight], &mut packed);
                    weights[c.weight] = packed;
                    graph.weights[c.weight].layout = WeightLayout::ConvGemm;
                }
                Op::Linear(l) => {
                    if graph.weights[l.weight].layout != WeightLayout::Plain {
                        continue;
                    }
                    let k = LinearKernel::new(Isa::Scalar, l, 1);
                    let mut packed = vec![0.0; k.packed_weight_len()];
                    k.pack_weights(&self.weights[l.weight], &mut packed);
                    weights[l.weight] = packed;
                    graph.weights[l.weight].layout = WeightLayout::LinearGemm;
                }
                _ => {}
            }
        }
        (graph, weights)
    }

    /// Writes the `.cnnrt` file (packed, see [`Converted::packed_for_file`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        let (graph, weights) = self.packed_for_file();
        let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
        format::write_model(path, &graph, &refs, &self.metadata)
    }
}

/// Converts `onnx_path` and writes `out_path`. Returns the converted model with plain
/// (unpacked) weights, e.g. for the reference kernels.
pub fn convert_file(onnx_path: &Path, out_path: &Path, options: &ConvertOptions) -> Result<Converted> {
    let bytes = std::fs::read(onnx_path).map_err(|e| Error::io(onnx_path, e))?;
    let converted = convert_onnx(&bytes, options)?;
    converted.write(out_path)?;
    Ok(converted)
}
