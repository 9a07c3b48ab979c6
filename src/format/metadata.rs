//! The META section: what a caller needs to feed the model and read its output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits;

/// Order of the colour channels the model expects in its input's channel axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
    Gray,
}

/// One converter note about one layer, e.g. which algorithm was chosen and the error it
/// measured against the reference (Winograd transforms change rounding).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerNote {
    /// The node's name (as in [`crate::graph::Node::name`]).
    pub node: String,
    /// e.g. `"winograd_f4x4_3x3"`, `"direct"`, `"gemm"`.
    pub algorithm: String,
    /// Measured max relative error against the reference kernel, if measured.
    pub relative_error: Option<f64>,
}

/// The machine rates the converter's cost model weighed each layer's algorithms with
/// (`cnnrt convert --tune` measures them on the converting CPU; absent from a file, the
/// converter's defaults were used, see `convert::DEFAULT_COST_RATES`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostRates {
    /// Rate of the GEMM micro-kernels on one core, GFLOP/s.
    pub gemm_gflops: f64,
    /// One core's read rate from memory (for weights that do not stay cached), GB/s.
    pub memory_gbps: f64,
}

impl CostRates {
    /// Both rates finite and positive; else which one is not, e.g. `"memory_gbps is -1;
    /// it must be finite and positive"`.
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("gemm_gflops", self.gemm_gflops),
            ("memory_gbps", self.memory_gbps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{what} is {v}; it must be finite and positive"));
            }
        }
        Ok(())
    }
}

/// Everything in the file that is not the graph or its weights. Every field has a
/// default, and unknown JSON fields are ignored, so later minor versions can add fields.
///
/// Preprocessing: pixel values are scaled to `[0, 1]`, then channel `c` becomes
/// `(x - mean[c]) / std[c]`. Empty `mean` / `std` mean no normalisation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// Name of the graph input, as in the source model.
    pub input_name: String,
    /// Per-sample input shape (batch excluded), e.g. `[3, 224, 224]`.
    pub input_shape: Vec<usize>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub channel_order: ChannelOrder,
    /// Class labels, index = output position.
    pub labels: Vec<String>,
    /// Tool and version that wrote the file, e.g. `"cnnrt-convert 0.1.0"`.
    pub producer: String,
    /// ONNX opset of the source model (0 if not from ONNX).
    pub source_opset: i64,
    pub layer_notes: Vec<LayerNote>,
    /// The batch size the converter chose the layers' algorithms for (`cnnrt convert
    /// --batch`); 0 (files written before the field) means 1. Informative: a session runs
    /// any batch on any file.
    pub planned_batch: usize,
    /// The rates the algorithms were chosen for, when measured (`cnnrt convert --tune`);
    /// None: the converter's defaults. Informative.
    pub cost_rates: Option<CostRates>,
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// The checks the reader applies to a META section (and the writer before writing):
    /// `mean` and `std` have equal lengths, are finite, and no `std` is zero; the input
    /// shape respects the rank and dimension limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.mean.len() != self.std.len() {
            return Err(format!(
                "metadata: mean has {} values but std has {} (they are per channel and must match)",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("metadata: mean contains a non-finite value {m}"));
        }
        if let Some(s) = self.std.iter().find(|s| !s.is_finite() || **s == 0.0) {
            return Err(format!(
                "metadata: std contains {s}; each std must be finite and non-zero"
            ));
        }
        if let Some(r) = self.cost_rates {
            r.check().map_err(|e| format!("metadata: cost_rates.{e}"))?;
        }
        if self.input_shape.len() > limits::MAX_RANK {
            return Err(format!(
                "metadata: input_shape has rank {} (at most {})",
                self.input_shape.len(),
                limits::MAX_RANK
            ));
        }
        if self.input_shape.iter().any(|&d| d > limits::MAX_DIM) {
            return Err(format!(
                "metadata: input_shape {:?} has a dimension above {}",
                self.input_shape,
                limits::MAX_DIM
            ));
        }
        Ok(())
    }
}
