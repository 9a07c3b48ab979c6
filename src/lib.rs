//! cnnrt: a CPU inference runtime for convolutional neural networks.
//!
//! Data flow: `model.onnx` → [`onnx`] import → [`graph::Graph`] → [`passes`] (BatchNorm
//! folding, activation fusion, denormal flush) → [`format`] writer → `model.cnnrt`;
//! then [`Model::open`] maps and validates the file once, [`Model::session`] plans kernels
//! and a workspace, and [`Session::run`] runs it as many times as needed.

pub mod error;
pub mod format;
pub mod graph;
pub mod kernels;
pub mod limits;
pub mod onnx;
pub mod passes;
pub mod simd;

pub use error::{Error, Result};
