//! cnnrt: a CPU inference runtime for convolutional neural networks.
//!
//! Data flow: `model.onnx` → [`onnx`] import → [`graph::Graph`] → [`passes`] (BatchNorm
//! folding, activation fusion, denormal flush) → [`format`](mod@format) writer → `model.cnnrt`;
//! then [`Model::open`] maps and validates the file once, [`Model::session`] plans kernels
//! and a workspace, and [`Session::run`] runs it as many times as needed.

// Kernels take shapes, weights, inputs, outputs and scratch as separate slices on purpose
// (no hidden state, no allocation), so long argument lists are the norm here.
#![allow(clippy::too_many_arguments)]

mod aligned;
pub mod convert;
pub mod cpu_cache;
pub mod error;
pub mod format;
pub mod graph;
pub mod input;
pub mod inspect;
pub mod kernels;
pub mod limits;
pub mod model;
pub mod onnx;
pub mod passes;
pub mod plan;
pub mod region;
pub mod session;
pub mod simd;
pub mod tune;

pub use error::{Error, Result};
pub use model::Model;
pub use session::{Session, SessionOptions, Threads};
pub use simd::Isa;
