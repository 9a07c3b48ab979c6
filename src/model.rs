//! `Model`: an opened, validated `.cnnrt` file. Immutable, `Send + Sync`, shared via `Arc`.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::format::{Metadata, ModelFile, OpenOptions};
use crate::graph::{Graph, WeightId};
use crate::kernels::reference::WeightSource;
use crate::session::{Session, SessionOptions};

/// A loaded model: the graph, its metadata, and its weights used in place from the file
/// mapping (or from an aligned copy, see [`OpenOptions`]).
#[derive(Debug)]
pub struct Model {
    file: ModelFile,
}

impl Model {
    /// Maps `path` and validates it once: header, checksums, graph, every weight's bounds.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<Model>> {
        Self::open_with(path, &OpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Arc<Model>> {
        Ok(Arc::new(Model {
            file: ModelFile::open(path.as_ref(), options)?,
        }))
    }

    /// Validates a model held in memory (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Arc<Model>> {
        Ok(Arc::new(Model {
            file: ModelFile::from_bytes(bytes)?,
        }))
    }

    pub fn graph(&self) -> &Graph {
        self.file.graph()
    }

    pub fn metadata(&self) -> &Metadata {
        self.file.metadata()
    }

    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// Per-sample shape of the first input.
    pub fn input_shape(&self) -> &[usize] {
        let g = self.graph();
        g.shape(g.inputs[0])
    }

    /// Per-sample shape of the first output.
    pub fn output_shape(&self) -> &[usize] {
        let g = self.graph();
        g.shape(g.outputs[0])
    }

    /// Plans a session: kernels for this CPU, and a workspace for `options.max_batch`.
    ///
    /// The workspace and scratch are allocated zeroed but not written: the OS supplies
    /// their pages as the first run touches them, so creating a session is quick (ResNet-18:
    /// about 0.1 ms on one thread) and the first run pays the page faults (1–2 ms there);
    /// pages a session never touches, such as those planned for a batch larger than it
    /// runs, take no memory. Run a session once before latency-sensitive use.
    pub fn session(self: &Arc<Self>, options: SessionOptions) -> Result<Session> {
        Session::new(self.clone(), options)
    }
}

impl WeightSource for Model {
    fn weight(&self, id: WeightId) -> &[f32] {
        self.file.weight(id)
    }
}
