//! Typed errors. Each message names what a user needs to fix it: file, node, op, shape.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The `.cnnrt` file is damaged, truncated, hostile or of an unknown version.
    #[error("{path}: invalid cnnrt model: {reason}")]
    Format { path: PathBuf, reason: String },

    /// The ONNX model cannot be read or uses something cnnrt does not support.
    #[error("ONNX import: {0}")]
    Onnx(String),

    /// An op or attribute that cnnrt does not implement.
    #[error("node '{node}' ({op}): unsupported: {what}")]
    Unsupported {
        node: String,
        op: String,
        what: String,
    },

    /// Shapes that cannot work together.
    #[error("node '{node}' ({op}): {reason}")]
    Shape {
        node: String,
        op: String,
        reason: String,
    },

    /// A graph that is structurally broken (dangling value, cycle, bad id).
    #[error("invalid graph: {0}")]
    Graph(String),

    /// An input handed to `run` that does not match the model.
    #[error("input: {0}")]
    Input(String),

    /// A requested resource above a documented limit (see `limits`).
    #[error("limit exceeded: {0}")]
    Limit(String),

    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn shape(node: &str, op: &str, reason: impl Into<String>) -> Self {
        Error::Shape {
            node: node.to_string(),
            op: op.to_string(),
            reason: reason.into(),
        }
    }
}
