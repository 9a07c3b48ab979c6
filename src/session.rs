//! A `Session` runs a model's plan on its own workspace: many runs, no allocation.
//!
//! A session is created once per worker (it owns the arena and scratch); the [`Model`] it
//! runs is shared, immutable, through an `Arc`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::kernels::reference;
use crate::limits;
use crate::model::Model;
use crate::plan::ArenaPlan;
use crate::simd::Isa;

/// Most inputs one node may read (Concat is the only op with more than two).
pub const MAX_NODE_INPUTS: usize = reference::MAX_CONCAT_INPUTS;

/// Where a session's kernels run.
#[derive(Clone, Debug, Default)]
pub enum Threads {
    /// On the thread that calls `run`.
    #[default]
    Caller,
    /// On a caller-supplied rayon pool (services usually own one).
    Pool(Arc<rayon::ThreadPool>),
    /// On a pool of this many threads that the session creates and owns.
    Count(usize),
}

/// Options fixed when a session is planned.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Largest batch `run` will accept; the workspace is sized for it.
    pub max_batch: usize,
    /// Highest kernel tier to use (further lowered by `CNNRT_MAX_ISA` and the CPU).
    pub max_isa: Option<Isa>,
    pub threads: Threads,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { max_batch: 1, max_isa: None, threads: Threads::Caller }
    }
}

impl SessionOptions {
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }
    pub fn max_isa(mut self, isa: Isa) -> Self {
        self.max_isa = Some(isa);
        self
    }
    pub fn threads(mut self, t: Threads) -> Self {
        self.threads = t;
        self
    }
}

/// How one node runs, chosen at plan time.
#[derive(Debug)]
enum NodeKernel {
    /// The reference implementation (ops without a fast kernel yet).
    Reference,
    /// A reshape that leaves the data as it is: a copy of the input.
    Copy,
}

impl NodeKernel {
    fn name(&self) -> &'static str {
        match self {
            NodeKernel::Reference => "reference",
            NodeKernel::Copy => "copy",
        }
    }
}

/// A planned model plus its workspace. `Send`, not shared: one per worker thread.
pub struct Session {
    model: Arc<Model>,
    isa: Isa,
    max_batch: usize,
    arena_plan: ArenaPlan,
    arena: Vec<f32>,
    kernels: Vec<NodeKernel>,
    pool: Option<Arc<rayon::ThreadPool>>,
    batch: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("isa", &self.isa)
            .field("max_batch", &self.max_batch)
            .field("workspace_bytes", &self.workspace_bytes())
            .finish()
    }
}

impl Session {
    pub fn new(model: Arc<Model>, options: SessionOptions) -> Result<Session> {
        if options.max_batch == 0 || options.max_batch > limits::MAX_BATCH {
            return Err(Error::Limit(format!("max_batch {} must be between 1 and {}", options.max_batch, limits::MAX_BATCH)));
        }
        let graph = model.graph();
        for node in &graph.nodes {
            if node.inputs.len() > MAX_NODE_INPUTS {
                return Err(Error::Limit(format!(
                    "node '{}' has {} inputs (at most {MAX_NODE_INPUTS})",
                    node.name,
                    node.inputs.len()
                )));
            }
        }
        let isa = Isa::select(options.max_isa);
        let arena_plan = ArenaPlan::new(graph, options.max_batch)
            .filter(|p| p.len.checked_mul(4).is_some_and(|b| b <= limits::MAX_WORKSPACE_BYTES))
            .ok_or_else(|| {
                Error::Limit(format!(
                    "the workspace for batch {} exceeds {} bytes",
                    options.max_batch,
                    limits::MAX_WORKSPACE_BYTES
                ))
            })?;
        let kernels = graph
            .nodes
            .iter()
            .map(|n| match n.op {
                crate::graph::Op::Flatten { .. } => NodeKernel::Copy,
                _ => NodeKernel::Reference,
            })
            .collect();
        let pool = match &options.threads {
            Threads::Caller => None,
            Threads::Pool(p) => Some(p.clone()),
            Threads::Count(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(*n)
                    .start_handler(|_| crate::simd::set_flush_denormals())
                    .build()
                    .map_err(|e| Error::Other(format!("cannot start {n} threads: {e}")))?,
            )),
        };
        Ok(Session {
            arena: vec![0.0; arena_plan.len],
            arena_plan,
            kernels,
            isa,
            max_batch: options.max_batch,
            model,
            pool,
            batch: 0,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The kernel tier this session planned with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Bytes of activation workspace this session owns.
    pub fn workspace_bytes(&self) -> usize {
        self.arena.len() * 4
    }

    /// The algorithm chosen for each node, in node order.
    pub fn algorithms(&self) -> Vec<&'static str> {
        self.kernels.iter().map(|k| k.name()).collect()
    }

    /// Runs a single-input model on `batch` samples (`input.len()` = batch × input size)
    /// and returns its first output.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32]> {
        self.run_multi(&[input], batch)?;
        Ok(self.output(0))
    }

    /// Runs with one slice per graph input; read results with [`Session::output`].
    pub fn run_multi(&mut self, inputs: &[&[f32]], batch: usize) -> Result<()> {
        let graph = self.model.graph();
        if batch == 0 || batch > self.max_batch {
            return Err(Error::Input(format!("batch {batch} outside 1..={} planned for this session", self.max_batch)));
        }
        if inputs.len() != graph.inputs.len() {
            return Err(Error::Input(format!("the model has {} inputs, {} given", graph.inputs.len(), inputs.len())));
        }
        for (&v, data) in graph.inputs.iter().zip(inputs) {
            let want = batch * graph.values[v].shape.iter().product::<usize>();
            if data.len() != want {
                return Err(Error::Input(format!(
                    "input '{}' has {} elements; expected {want} (batch {batch} × {:?})",
                    graph.values[v].name,
                    data.len(),
                    graph.values[v].shape
                )));
            }
            let off = self.arena_plan.offsets[v];
            self.arena[off..off + want].copy_from_slice(data);
        }
        self.batch = batch;
        match self.pool.clone() {
            Some(pool) => pool.install(|| self.execute(batch)),
            None => self.execute(batch),
        }
        Ok(())
    }

    /// Output `i` of the last run (batch × output size elements).
    pub fn output(&self, i: usize) -> &[f32] {
        let graph = self.model.graph();
        let v = graph.outputs[i];
        let len = self.batch * graph.values[v].shape.iter().product::<usize>();
        let off = self.arena_plan.offsets[v];
        &self.arena[off..off + len]
    }

    fn execute(&mut self, n: usize) {
        crate::simd::set_flush_denormals();
        let model = &*self.model;
        let graph: &Graph = model.graph();
        for (i, node) in graph.nodes.iter().enumerate() {
            let out_off = self.arena_plan.offsets[node.output];
            let out_len = n * graph.values[node.output].shape.iter().product::<usize>();
            let (left, rest) = self.arena.split_at_mut(out_off);
            let (out, right) = rest.split_at_mut(out_len);
            let (left, right): (&[f32], &[f32]) = (left, right);
            let right_base = out_off + out_len;
            let mut ins: [&[f32]; MAX_NODE_INPUTS] = [&[]; MAX_NODE_INPUTS];
            for (slot, &v) in ins.iter_mut().zip(&node.inputs) {
                let off = self.arena_plan.offsets[v];
                let len = n * graph.values[v].shape.iter().product::<usize>();
                *slot = if off + len <= out_off { &left[off..off + len] } else { &right[off - right_base..off - right_base + len] };
            }
            let ins = &ins[..node.inputs.len()];
            match &self.kernels[i] {
                NodeKernel::Reference => reference::run_node_into(graph, i, model, ins, n, out),
                NodeKernel::Copy => out.copy_from_slice(ins[0]),
            }
        }
    }
}

