//! A `Session` runs a model's plan on its own workspace: many runs, no allocation.
//!
//! A session is created once per worker (it owns the arena and scratch); the [`Model`] it
//! runs is shared, immutable, through an `Arc`.

use std::sync::Arc;

use crate::aligned::AlignedFloats;
use crate::error::{Error, Result};
use crate::graph::{Conv, Graph, Op, WeightId, WeightLayout};
use crate::kernels::conv::{ConvKernel, ImplicitConv};
use crate::kernels::conv_pool::ConvPoolKernel;
use crate::kernels::depthwise::DepthwiseKernel;
use crate::kernels::fused::{self, BlockKernel, BlockWeights};
use crate::kernels::gemm::PrefetchTo;
use crate::kernels::linear::{LinearKernel, Sweep};
use crate::kernels::nhwc::{self, DepthwiseNhwc, PointwiseNhwc};
use crate::kernels::pool::PoolKernel;
use crate::kernels::reference::{self, WeightSource};
use crate::kernels::team::{self, Crew};
use crate::kernels::winograd::{
    self, WinogradF4x4K5, WinogradKernel, WinogradNhwc, WinogradVariant,
};
use crate::kernels::{elementwise, gemm, parallel, pool};
use crate::limits;
use crate::model::Model;
use crate::plan::{ArenaPlan, Extra};
use crate::region::{self, Need, Shadow};
use crate::simd::Isa;

/// Most inputs one node may read (Concat is the only op with more than two).
pub const MAX_NODE_INPUTS: usize = reference::MAX_CONCAT_INPUTS;

/// Where a session's kernels run.
#[derive(Clone, Debug, Default)]
pub enum Threads {
    /// On the thread that calls `run`.
    #[default]
    Caller,
    /// On a caller-supplied rayon pool (services usually own one). Each run is installed
    /// on the pool and holds all of its threads for the run's length (they take each
    /// layer's tiles without parking between layers; see `kernels::team`).
    Pool(Arc<rayon::ThreadPool>),
    /// On the calling thread plus this many minus one helper threads that the session
    /// creates and owns (0 and 1 mean [`Threads::Caller`]). Helpers spin for work only
    /// during a run and for 200 µs after it, then park until the next run.
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
    /// Run each 1×1 expansion → depthwise → 1×1 projection chain (MobileNet's inverted
    /// residual blocks) as one band-by-band step (`kernels::fused`), each `direct`
    /// convolution read only by a pooling layer (ResNet's stem) as one step with it
    /// (`kernels::conv_pool`), and each implicit-GEMM or F(2x2) Winograd convolution
    /// read only by a 2×2 stride-2 max pool (LeNet-5's conv2) with the pool in its store
    /// (`ImplicitConv::with_max_pool`, `WinogradKernel::with_max_pool`). Same results up
    /// to the sign of a max of tied zeros; off only to compare or to profile the layers
    /// one by one.
    pub fuse_blocks: bool,
    /// Keep MobileNet-style 1×1 and depthwise layers on small maps channels-last
    /// between layers (`kernels::nhwc`, `region`). Same results bit for bit; off only to
    /// compare. `CNNRT_CHANNELS_LAST=0` also turns it off.
    pub channels_last: bool,
    /// Where the GEMMs' prefetch hints put the weights; `None` (the default): by the
    /// weights' size against the CPU's last-level cache, or `CNNRT_PREFETCH=l1|l2`. Set
    /// it where that guess is wrong, say for a model that shares the cache with others
    /// run in turn. Never changes a result.
    pub prefetch: Option<PrefetchTo>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            max_batch: 1,
            max_isa: None,
            threads: Threads::Caller,
            fuse_blocks: true,
            channels_last: true,
            prefetch: None,
        }
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
    /// Fuse inverted-residual blocks and convolution + pooling pairs (the default) or
    /// run every layer on its own:
    ///
    /// ```
    /// let layer_by_layer = cnnrt::SessionOptions::default().fuse_blocks(false);
    /// assert!(!layer_by_layer.fuse_blocks);
    /// ```
    pub fn fuse_blocks(mut self, on: bool) -> Self {
        self.fuse_blocks = on;
        self
    }
    /// Run small-map 1×1 and depthwise layers channels-last (the default) or planar:
    ///
    /// ```
    /// let planar = cnnrt::SessionOptions::default().channels_last(false);
    /// assert!(!planar.channels_last);
    /// ```
    pub fn channels_last(mut self, on: bool) -> Self {
        self.channels_last = on;
        self
    }
    /// Put the weights the GEMMs prefetch into this cache level instead of choosing by
    /// their size:
    ///
    /// ```
    /// use cnnrt::kernels::gemm::PrefetchTo;
    /// let streamed = cnnrt::SessionOptions::default().prefetch_to(PrefetchTo::L2);
    /// assert_eq!(streamed.prefetch, Some(PrefetchTo::L2));
    /// ```
    pub fn prefetch_to(mut self, to: PrefetchTo) -> Self {
        self.prefetch = Some(to);
        self
    }
}

/// Where a layer's packed weights live.
#[derive(Debug, Clone, Copy)]
enum Packed {
    /// In the model file, packed by the converter: used in place.
    InFile(WeightId),
    /// Packed by this session from a plain weight (files written without packing).
    Owned(usize),
}

impl Packed {
    /// The packed weights, from the model file or the session's `owned` ones.
    fn weights<'a, O: AsRef<[f32]>>(self, model: &'a Model, owned: &'a [O]) -> &'a [f32] {
        match self {
            Packed::InFile(w) => model.weight(w),
            Packed::Owned(j) => owned[j].as_ref(),
        }
    }
}

/// How one node runs, chosen at plan time.
#[derive(Debug)]
enum NodeKernel {
    Conv {
        kernel: ConvKernel,
        weight: Packed,
        bias: Option<WeightId>,
    },
    Winograd {
        kernel: WinogradKernel,
        weight: Packed,
        bias: Option<WeightId>,
    },
    Depthwise {
        kernel: DepthwiseKernel,
        weight: WeightId,
        bias: Option<WeightId>,
    },
    Linear {
        kernel: LinearKernel,
        weight: Packed,
        bias: Option<WeightId>,
    },
    Pool(PoolKernel),
    /// A `direct` convolution and the pooling layer that alone reads it, run as one step
    /// at the pool's node (the convolution's node is [`NodeKernel::InBlock`]).
    ConvPool {
        kernel: Box<ConvPoolKernel>,
        weight: Packed,
        bias: Option<WeightId>,
    },
    /// An implicit-GEMM convolution and the 2×2 stride-2 max pool that alone reads it,
    /// pooled in the convolution's store ([`ImplicitConv::with_max_pool`]), at the pool's
    /// node (the convolution's node is [`NodeKernel::InBlock`]).
    ImplicitPool {
        kernel: ImplicitConv,
        weight: Packed,
        bias: Option<WeightId>,
    },
    /// A Winograd F(2x2) convolution and the 2×2 stride-2 max pool that alone reads it,
    /// pooled in the output transform ([`WinogradKernel::with_max_pool`]), at the pool's
    /// node (the convolution's node is [`NodeKernel::InBlock`]).
    WinogradPool {
        kernel: WinogradKernel,
        weight: Packed,
        bias: Option<WeightId>,
    },
    /// A 5×5 convolution as Winograd F(4x4,5x5) (`WinogradF4x4K5`); `pooled`: with the
    /// 2×2 stride-2 max pool that alone reads it, at the pool's node (the convolution's
    /// node is [`NodeKernel::InBlock`]).
    WinogradK5 {
        kernel: WinogradF4x4K5,
        weight: Packed,
        bias: Option<WeightId>,
        pooled: bool,
    },
    /// An expansion → depthwise → projection chain run as one step, at the projection's
    /// node; `first` is the expansion's node.
    Block {
        kernel: Box<BlockKernel>,
        first: usize,
        expand: Packed,
        expand_bias: Option<WeightId>,
        depthwise: WeightId,
        depthwise_bias: Option<WeightId>,
        project: Packed,
        project_bias: Option<WeightId>,
        /// `owned` index of the weights of the channels-last band path, if it runs.
        channels_last: Option<usize>,
    },
    /// A convolution run as an implicit GEMM (`conv::implicit`); its weights in 32-wide
    /// panels.
    Implicit {
        kernel: ImplicitConv,
        weight: Packed,
        bias: Option<WeightId>,
    },
    /// A 1×1 convolution run channels-last; its weights in 32-wide panels.
    PointwiseNhwc {
        kernel: PointwiseNhwc,
        weight: Packed,
        bias: Option<WeightId>,
    },
    /// A 3×3 depthwise convolution run channels-last; `weight`: the `owned` index of its
    /// tap-major weights.
    DepthwiseNhwc {
        kernel: DepthwiseNhwc,
        weight: usize,
        bias: Option<WeightId>,
    },
    /// A 3×3 convolution run channels-last as Winograd F(4x4,3x3); its transformed
    /// weights in 32-wide panels per position.
    WinogradNhwc {
        kernel: WinogradNhwc,
        weight: Packed,
        bias: Option<WeightId>,
    },
    /// Computed inside the [`NodeKernel::Block`] or [`NodeKernel::ConvPool`] that
    /// follows it.
    InBlock,
    /// Element-wise, normalization and global pooling ops (vectorized, `kernels::elementwise`).
    Vector,
    /// A reshape that leaves the data as it is: a copy of the input.
    Copy,
    /// The reference implementation (Concat, Pad: pure data movement).
    Reference,
}

impl NodeKernel {
    fn name(&self) -> &'static str {
        match self {
            NodeKernel::Conv { kernel, .. } => kernel.algorithm(),
            NodeKernel::Winograd { kernel, .. } | NodeKernel::WinogradPool { kernel, .. } => {
                kernel.algorithm()
            }
            NodeKernel::Depthwise { kernel, .. } => kernel.algorithm(),
            NodeKernel::Linear { kernel, .. } => kernel.algorithm(),
            NodeKernel::Pool(k) => k.algorithm(),
            NodeKernel::Block { .. } => "fused_block",
            NodeKernel::ConvPool { .. } => "conv_pool",
            NodeKernel::ImplicitPool { .. } => "implicit_gemm_pool",
            NodeKernel::Implicit { kernel, .. } => kernel.algorithm(),
            NodeKernel::PointwiseNhwc { .. } => "gemm1x1_nhwc",
            NodeKernel::DepthwiseNhwc { .. } => "dw3x3_nhwc",
            NodeKernel::WinogradNhwc { .. } => "winograd_f4x4_nhwc",
            NodeKernel::WinogradK5 { pooled: false, .. } => "winograd_f4x4_5x5",
            NodeKernel::WinogradK5 { pooled: true, .. } => "winograd_f4x4_5x5_pool",
            NodeKernel::InBlock => "in_block",
            NodeKernel::Vector => "vector",
            NodeKernel::Copy => "copy",
            NodeKernel::Reference => "reference",
        }
    }

    /// Sets where the kernel's GEMMs put the weights they prefetch.
    fn set_prefetch(&mut self, to: PrefetchTo) {
        match self {
            NodeKernel::Conv { kernel, .. } => kernel.set_prefetch(to),
            NodeKernel::Winograd { kernel, .. } | NodeKernel::WinogradPool { kernel, .. } => {
                kernel.set_prefetch(to)
            }
            NodeKernel::Linear { kernel, .. } => kernel.set_prefetch(to),
            NodeKernel::Implicit { kernel, .. } | NodeKernel::ImplicitPool { kernel, .. } => {
                kernel.set_prefetch(to)
            }
            NodeKernel::Block { kernel, .. } => kernel.set_prefetch(to),
            NodeKernel::PointwiseNhwc { kernel, .. } => kernel.set_prefetch(to),
            NodeKernel::WinogradNhwc { kernel, .. } => kernel.set_prefetch(to),
            // No GEMM, or one that issues no prefetch hints (the `direct` convolution of
            // a conv + pool pair), so no weight prefetch.
            NodeKernel::ConvPool { .. }
            | NodeKernel::WinogradK5 { .. }
            | NodeKernel::Depthwise { .. }
            | NodeKernel::DepthwiseNhwc { .. }
            | NodeKernel::Pool(_)
            | NodeKernel::InBlock
            | NodeKernel::Vector
            | NodeKernel::Copy
            | NodeKernel::Reference => {}
        }
    }

    /// Scratch all workers share, besides `scratch_len` per worker (laid out first).
    fn shared_scratch_len(&self) -> usize {
        match self {
            NodeKernel::Conv { kernel, .. } => kernel.shared_b_len(),
            NodeKernel::Implicit { kernel, .. } | NodeKernel::ImplicitPool { kernel, .. } => {
                kernel.shared_scratch_len()
            }
            _ => 0,
        }
    }

    fn scratch_len(&self) -> usize {
        match self {
            NodeKernel::Conv { kernel, .. } => kernel.scratch_len(),
            NodeKernel::Winograd { kernel, .. } | NodeKernel::WinogradPool { kernel, .. } => {
                kernel.scratch_len()
            }
            NodeKernel::Linear { kernel, .. } => kernel.scratch_len(),
            NodeKernel::Block { kernel, .. } => kernel.scratch_len(),
            NodeKernel::ConvPool { kernel, .. } => kernel.scratch_len(),
            NodeKernel::WinogradNhwc { kernel, .. } => kernel.scratch_len(),
            NodeKernel::WinogradK5 { kernel, .. } => kernel.scratch_len(),
            NodeKernel::Implicit { kernel, .. } | NodeKernel::ImplicitPool { kernel, .. } => {
                kernel.scratch_len()
            }
            _ => 0,
        }
    }
}

/// Bytes of weights a run reads: the model's and those this session rearranged.
fn weight_bytes(model: &Model, owned: &[Vec<f32>]) -> usize {
    let graph = model.graph();
    let floats: usize = (0..graph.weights.len())
        .map(|w| model.weight(w).len())
        .chain(owned.iter().map(Vec::len))
        .sum();
    floats.saturating_mul(4)
}

/// Where the GEMMs' prefetch hints put the weights (see [`PrefetchTo`] for the
/// measurements): into L2 when the weights outgrow the last-level cache `llc` (they then
/// come from memory on every run), into L1 when they fit or the cache size is unknown.
/// `env`: `CNNRT_PREFETCH`, `l1` or `l2` overriding that, for measuring.
fn prefetch_target(env: Option<&str>, weight_bytes: usize, llc: Option<usize>) -> PrefetchTo {
    match env {
        Some("l1") => return PrefetchTo::L1,
        Some("l2") => return PrefetchTo::L2,
        _ => {}
    }
    match llc {
        Some(llc) if weight_bytes > llc => PrefetchTo::L2,
        _ => PrefetchTo::L1,
    }
}

fn spatial(shape: &[usize]) -> [usize; 3] {
    [shape[0], shape[1], shape[2]]
}

/// Chooses each node's kernel; packs plain conv / linear weights into `owned`.
/// `region_on`: the nodes that run channels-last (`region::select`), `stored_nhwc` the
/// values they make.
fn plan_kernels(
    model: &Model,
    isa: Isa,
    max_batch: usize,
    threads: usize,
    owned: &mut Vec<Vec<f32>>,
    stored_nhwc: &[bool],
    region_on: &[bool],
) -> Result<Vec<NodeKernel>> {
    let graph = model.graph();
    let mut kernels = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let layout_err = |w: WeightId, want: &str| Error::Format {
            path: model.file().path().to_path_buf(),
            reason: format!(
                "node '{}': weight '{}' has layout {:?}, which {want} cannot read",
                node.name, graph.weights[w].name, graph.weights[w].layout
            ),
        };
        let in_shape = graph.shape(node.inputs[0]);
        let out_shape = graph.shape(node.output);
        if let (true, Op::Conv(c)) = (region_on[i], &node.op) {
            let input_nhwc = stored_nhwc[node.inputs[0]];
            let k = nhwc_kernel(
                model, c, in_shape, out_shape, input_nhwc, isa, threads, owned,
            )
            .ok_or_else(|| layout_err(c.weight, "the channels-last kernel"))?;
            kernels.push(k);
            continue;
        }
        let k = match &node.op {
            Op::Conv(c) => {
                let (ins, outs) = (spatial(in_shape), spatial(out_shape));
                match graph.weights[c.weight].layout {
                    WeightLayout::ConvGemm => {
                        gemm_conv(isa, c, ins, outs, threads, Packed::InFile(c.weight))
                    }
                    WeightLayout::Plain => match DepthwiseKernel::new(isa, c, ins, outs) {
                        Some(kernel) => NodeKernel::Depthwise {
                            kernel,
                            weight: c.weight,
                            bias: c.bias,
                        },
                        None => {
                            let kernel = ConvKernel::new(isa, c, ins, outs);
                            let mut packed = vec![0.0; kernel.packed_weight_len()];
                            kernel.pack_weights(model.weight(c.weight), &mut packed);
                            owned.push(packed);
                            gemm_conv(isa, c, ins, outs, threads, Packed::Owned(owned.len() - 1))
                        }
                    },
                    // A layer the converter stored for the channels-last kernel, run
                    // planar (the region off, or another choice on this tier): its
                    // weights put back in the planar kernel's order.
                    WeightLayout::WinogradF4x4Nhwc => {
                        let kernel = WinogradKernel::new_for_threads(
                            isa,
                            c,
                            ins,
                            outs,
                            WinogradVariant::F4x4,
                            threads,
                        )
                        .ok_or_else(|| layout_err(c.weight, "this convolution"))?
                        .with_batch(max_batch);
                        let mut packed = vec![0.0; kernel.packed_weight_len()];
                        let stored = model.weight(c.weight);
                        if stored.len() != packed.len() {
                            return Err(layout_err(c.weight, "this convolution"));
                        }
                        winograd::packed_from_nhwc_panels(
                            c.in_channels,
                            c.out_channels,
                            stored,
                            &mut packed,
                        );
                        owned.push(packed);
                        NodeKernel::Winograd {
                            kernel,
                            weight: Packed::Owned(owned.len() - 1),
                            bias: c.bias,
                        }
                    }
                    // F(4x4,5x5) adds no residual: the converter stores it only for
                    // layers without one.
                    WeightLayout::WinogradF4x4K5 if node.inputs.len() == 1 => {
                        let kernel = WinogradF4x4K5::new(isa, c, ins, outs, false, threads)
                            .ok_or_else(|| layout_err(c.weight, "this convolution"))?;
                        NodeKernel::WinogradK5 {
                            kernel,
                            weight: Packed::InFile(c.weight),
                            bias: c.bias,
                            pooled: false,
                        }
                    }
                    WeightLayout::WinogradF4x4K5 => {
                        return Err(layout_err(c.weight, "a convolution with a residual input"))
                    }
                    WeightLayout::WinogradF4x4
                    | WeightLayout::WinogradF2x2
                    | WeightLayout::WinogradF2x2K5 => {
                        let variant = WinogradVariant::of_layout(graph.weights[c.weight].layout)
                            .ok_or_else(|| layout_err(c.weight, "this convolution"))?;
                        let kernel =
                            WinogradKernel::new_for_threads(isa, c, ins, outs, variant, threads)
                                .ok_or_else(|| layout_err(c.weight, "this convolution"))?
                                .with_batch(max_batch);
                        NodeKernel::Winograd {
                            kernel,
                            weight: Packed::InFile(c.weight),
                            bias: c.bias,
                        }
                    }
                    // A layer the converter stored for the implicit GEMM.
                    WeightLayout::LinearGemm if crate::kernels::conv::implicit_preferred(c) => {
                        match ImplicitConv::new(isa, c, ins, outs, threads) {
                            Some(kernel) => NodeKernel::Implicit {
                                kernel,
                                weight: Packed::InFile(c.weight),
                                bias: c.bias,
                            },
                            None => return Err(layout_err(c.weight, "this convolution")),
                        }
                    }
                    // A 1×1 layer the converter stored for the channels-last region,
                    // run planar (the region off, or another choice on this tier):
                    // repacked for the GEMM.
                    WeightLayout::LinearGemm if c.groups == 1 && c.kernel == [1, 1] => {
                        let (n, k) = (c.out_channels, c.in_channels);
                        let mut plain = vec![0.0; n * k];
                        gemm::unpack_b_transposed(n, k, model.weight(c.weight), &mut plain);
                        let kernel = ConvKernel::new(isa, c, spatial(in_shape), spatial(out_shape));
                        let mut packed = vec![0.0; kernel.packed_weight_len()];
                        kernel.pack_weights(&plain, &mut packed);
                        owned.push(packed);
                        gemm_conv(
                            isa,
                            c,
                            spatial(in_shape),
                            spatial(out_shape),
                            threads,
                            Packed::Owned(owned.len() - 1),
                        )
                    }
                    WeightLayout::LinearGemm => return Err(layout_err(c.weight, "a convolution")),
                }
            }
            Op::Linear(l) => {
                let kernel = LinearKernel::new(isa, l, max_batch).for_threads(threads);
                let weight = match graph.weights[l.weight].layout {
                    WeightLayout::LinearGemm => Packed::InFile(l.weight),
                    WeightLayout::Plain => {
                        let mut packed = vec![0.0; kernel.packed_weight_len()];
                        kernel.pack_weights(model.weight(l.weight), &mut packed);
                        owned.push(packed);
                        Packed::Owned(owned.len() - 1)
                    }
                    _ => return Err(layout_err(l.weight, "a fully connected layer")),
                };
                NodeKernel::Linear {
                    kernel,
                    weight,
                    bias: l.bias,
                }
            }
            Op::Pool(p) => match PoolKernel::new(isa, p, spatial(in_shape), spatial(out_shape)) {
                Some(k) => NodeKernel::Pool(k),
                None => NodeKernel::Reference,
            },
            Op::Flatten { .. } => NodeKernel::Copy,
            Op::ChannelAffine { .. }
            | Op::Activation(_)
            | Op::PRelu { .. }
            | Op::GlobalPool { .. }
            | Op::Binary { .. }
            | Op::LayerNorm { .. }
            | Op::InstanceNorm { .. }
            | Op::Softmax { .. } => NodeKernel::Vector,
            Op::Concat { .. } | Op::Pad { .. } => NodeKernel::Reference,
        };
        kernels.push(k);
    }
    Ok(kernels)
}

/// Bytes of a worker's band buffers in a fused block: `CNNRT_FUSE_BAND_KB` (KiB, for
/// tuning) or [`fused::DEFAULT_BAND_BYTES`].
fn band_bytes() -> usize {
    std::env::var("CNNRT_FUSE_BAND_KB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(fused::DEFAULT_BAND_BYTES, |kb| kb << 10)
}

/// `CNNRT_FUSE_CHANNELS_LAST` (`0` / `1`, for comparing the two): whether fused blocks
/// take the channels-last band path where they can; unset, the tier's default.
fn channels_last_choice() -> Option<bool> {
    match std::env::var("CNNRT_FUSE_CHANNELS_LAST").ok()?.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Turns every 1×1 conv → depthwise conv → 1×1 conv chain whose two intermediate values
/// have no other reader, and whose expanded tensor is at least
/// [`fused::min_expanded_bytes`] (or `CNNRT_FUSE_MIN_KB` KiB, for tuning), into a
/// [`NodeKernel::Block`]; returns the node ranges fused. Weights a block's kernel reads
/// in another layout go to `owned`.
fn fuse_blocks(
    model: &Model,
    kernels: &mut [NodeKernel],
    owned: &mut Vec<Vec<f32>>,
    isa: Isa,
    threads: usize,
) -> Vec<std::ops::Range<usize>> {
    let graph = model.graph();
    let consumers = graph.consumers();
    let private = |i: usize| {
        let v = graph.nodes[i].output;
        consumers[v] == [i + 1] && !graph.outputs.contains(&v)
    };
    let bytes = band_bytes();
    let min_expanded_kb = std::env::var("CNNRT_FUSE_MIN_KB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let mut blocks = Vec::new();
    let mut i = 0;
    while i + 2 < graph.nodes.len() {
        let (a, b, c) = (&graph.nodes[i], &graph.nodes[i + 1], &graph.nodes[i + 2]);
        let chain = match (&a.op, &b.op, &c.op, &kernels[i..i + 3]) {
            (
                Op::Conv(e),
                Op::Conv(d),
                Op::Conv(p),
                [NodeKernel::Conv { .. }, NodeKernel::Depthwise { .. }, NodeKernel::Conv { .. }],
            ) if a.inputs.len() == 1
                && b.inputs == [a.output]
                && c.inputs[0] == b.output
                && private(i)
                && private(i + 1) =>
            {
                BlockKernel::new(
                    isa,
                    e,
                    d,
                    p,
                    spatial(graph.shape(a.inputs[0])),
                    spatial(graph.shape(c.output)),
                    threads,
                    bytes,
                )
            }
            _ => None,
        };
        let chain = match (chain, channels_last_choice()) {
            (Some(k), Some(on)) => k.clone().with_channels_last(on).or(Some(k)),
            (chain, _) => chain,
        };
        let Some(kernel) = chain.filter(|k| {
            k.expanded_bytes()
                >= min_expanded_kb.map_or(
                    fused::min_expanded_bytes(threads, k.is_channels_last()),
                    |kb| kb << 10,
                )
        }) else {
            i += 1;
            continue;
        };
        let take = |k: &mut NodeKernel| std::mem::replace(k, NodeKernel::InBlock);
        let (
            NodeKernel::Conv {
                weight: ew,
                bias: eb,
                ..
            },
            NodeKernel::Depthwise {
                weight: dw,
                bias: db,
                ..
            },
            NodeKernel::Conv {
                weight: pw,
                bias: pb,
                ..
            },
        ) = (
            take(&mut kernels[i]),
            take(&mut kernels[i + 1]),
            take(&mut kernels[i + 2]),
        )
        else {
            unreachable!("matched above");
        };
        let packed = |p: Packed| p.weights(model, owned);
        let channels_last = kernel
            .channels_last_weights(&BlockWeights {
                expand: packed(ew),
                expand_bias: None,
                depthwise: model.weight(dw),
                depthwise_bias: None,
                project: packed(pw),
                project_bias: None,
                channels_last: None,
            })
            .map(|w| {
                owned.push(w);
                owned.len() - 1
            });
        kernels[i + 2] = NodeKernel::Block {
            kernel: Box::new(kernel),
            channels_last,
            first: i,
            expand: ew,
            expand_bias: eb,
            depthwise: dw,
            depthwise_bias: db,
            project: pw,
            project_bias: pb,
        };
        blocks.push(i..i + 3);
        i += 3;
    }
    blocks
}

/// Turns every `direct` convolution whose output only the next node reads, a pooling
/// layer, into a [`NodeKernel::ConvPool`] at the pool's node; returns the node ranges
/// fused.
fn fuse_conv_pool(model: &Model, kernels: &mut [NodeKernel]) -> Vec<std::ops::Range<usize>> {
    let graph = model.graph();
    let consumers = graph.consumers();
    let mut pairs = Vec::new();
    for i in 0..graph.nodes.len().saturating_sub(1) {
        let (a, b) = (&graph.nodes[i], &graph.nodes[i + 1]);
        if a.inputs.len() != 1
            || b.inputs != [a.output]
            || consumers[a.output] != [i + 1]
            || graph.outputs.contains(&a.output)
        {
            continue;
        }
        let fused = match (&kernels[i], &kernels[i + 1]) {
            (
                NodeKernel::Conv {
                    kernel: conv,
                    weight,
                    bias,
                },
                NodeKernel::Pool(pool),
            ) => {
                let Some(kernel) = ConvPoolKernel::new(conv.clone(), pool.clone()) else {
                    continue;
                };
                NodeKernel::ConvPool {
                    kernel: Box::new(kernel),
                    weight: *weight,
                    bias: *bias,
                }
            }
            (
                NodeKernel::Implicit {
                    kernel,
                    weight,
                    bias,
                },
                NodeKernel::Pool(_),
            ) => {
                let Op::Pool(p) = &b.op else { continue };
                let Some(kernel) = kernel
                    .clone()
                    .with_max_pool(p, spatial(graph.shape(b.output)))
                else {
                    continue;
                };
                NodeKernel::ImplicitPool {
                    kernel,
                    weight: *weight,
                    bias: *bias,
                }
            }
            (
                NodeKernel::Winograd {
                    kernel,
                    weight,
                    bias,
                },
                NodeKernel::Pool(_),
            ) => {
                let Op::Pool(p) = &b.op else { continue };
                let Some(kernel) = kernel
                    .clone()
                    .with_max_pool(p, spatial(graph.shape(b.output)))
                else {
                    continue;
                };
                NodeKernel::WinogradPool {
                    kernel,
                    weight: *weight,
                    bias: *bias,
                }
            }
            (
                NodeKernel::WinogradK5 {
                    kernel,
                    weight,
                    bias,
                    pooled: false,
                },
                NodeKernel::Pool(_),
            ) => {
                let Op::Pool(p) = &b.op else { continue };
                let Some(kernel) = kernel.with_max_pool(p, spatial(graph.shape(b.output))) else {
                    continue;
                };
                NodeKernel::WinogradK5 {
                    kernel,
                    weight: *weight,
                    bias: *bias,
                    pooled: true,
                }
            }
            _ => continue,
        };
        kernels[i] = NodeKernel::InBlock;
        kernels[i + 1] = fused;
        pairs.push(i..i + 2);
    }
    pairs
}

/// The kernel of a node in the channels-last region (`region`); its weights in place
/// when the file stores them in the kernel's layout (1×1 layers in `LinearGemm` panels,
/// the converter's choice), else rearranged into `owned`.
fn nhwc_kernel(
    model: &Model,
    c: &Conv,
    ins: &[usize],
    outs: &[usize],
    input_nhwc: bool,
    isa: Isa,
    threads: usize,
    owned: &mut Vec<Vec<f32>>,
) -> Option<NodeKernel> {
    let graph = model.graph();
    let plain = model.weight(c.weight);
    let layout = graph.weights[c.weight].layout;
    if matches!(
        layout,
        WeightLayout::WinogradF4x4 | WeightLayout::WinogradF4x4Nhwc
    ) {
        let kernel = WinogradNhwc::new(isa, c, spatial(ins), spatial(outs), threads)?;
        if plain.len() != kernel.weights_len() {
            return None;
        }
        let weight = if layout == WeightLayout::WinogradF4x4Nhwc {
            Packed::InFile(c.weight)
        } else {
            let mut w = vec![0.0; kernel.weights_len()];
            kernel.panels_from_packed(plain, &mut w);
            owned.push(w);
            Packed::Owned(owned.len() - 1)
        };
        return Some(NodeKernel::WinogradNhwc {
            kernel,
            weight,
            bias: c.bias,
        });
    }
    if c.groups == 1 {
        let kernel = PointwiseNhwc::new(isa, c, outs[1] * outs[2], input_nhwc, threads)?;
        let weight = match graph.weights[c.weight].layout {
            WeightLayout::LinearGemm => Packed::InFile(c.weight),
            WeightLayout::ConvGemm => {
                let mut w = vec![0.0; kernel.weights_len()];
                nhwc::panels_from_conv_gemm(c.in_channels, c.out_channels, plain, &mut w);
                owned.push(w);
                Packed::Owned(owned.len() - 1)
            }
            WeightLayout::Plain => {
                let (n, k) = (c.out_channels, c.in_channels);
                let mut w = vec![0.0; kernel.weights_len()];
                gemm::pack_b_transposed(n, k, plain, k, &mut w);
                owned.push(w);
                Packed::Owned(owned.len() - 1)
            }
            _ => return None,
        };
        return Some(NodeKernel::PointwiseNhwc {
            kernel,
            weight,
            bias: c.bias,
        });
    }
    let kernel = DepthwiseNhwc::new(isa, c, spatial(ins), spatial(outs), threads)?;
    if graph.weights[c.weight].layout != WeightLayout::Plain {
        return None;
    }
    let mut w = vec![0.0; plain.len()];
    kernel.transpose_weights(plain, &mut w);
    owned.push(w);
    Some(NodeKernel::DepthwiseNhwc {
        kernel,
        weight: owned.len() - 1,
        bias: c.bias,
    })
}

/// The layout `kernel` needs for its input `slot`.
fn input_need(kernel: &NodeKernel, slot: usize) -> Need {
    match (kernel, slot) {
        (NodeKernel::PointwiseNhwc { .. }, 0) => Need::Any,
        (
            NodeKernel::PointwiseNhwc { .. }
            | NodeKernel::DepthwiseNhwc { .. }
            | NodeKernel::WinogradNhwc { .. },
            _,
        ) => Need::Nhwc,
        _ => Need::Planar,
    }
}

/// The values node `i` reads when it runs, and in which layout.
fn node_reads(graph: &Graph, kernels: &[NodeKernel], i: usize) -> Vec<(usize, Need)> {
    let node = &graph.nodes[i];
    match &kernels[i] {
        NodeKernel::InBlock => Vec::new(),
        NodeKernel::ConvPool { .. }
        | NodeKernel::ImplicitPool { .. }
        | NodeKernel::WinogradPool { .. }
        | NodeKernel::WinogradK5 { pooled: true, .. } => {
            vec![(graph.nodes[i - 1].inputs[0], Need::Planar)]
        }
        NodeKernel::Block { first, .. } => std::iter::once(graph.nodes[*first].inputs[0])
            .chain(node.inputs.get(1).copied())
            .map(|v| (v, Need::Planar))
            .collect(),
        k => node
            .inputs
            .iter()
            .enumerate()
            .map(|(slot, &v)| (v, input_need(k, slot)))
            .collect(),
    }
}

/// A planned model plus its workspace. `Send`, not shared: one per worker thread.
pub struct Session {
    model: Arc<Model>,
    isa: Isa,
    max_batch: usize,
    arena_plan: ArenaPlan,
    arena: AlignedFloats,
    kernels: Vec<NodeKernel>,
    /// Weights this session rearranged itself (files stored unpacked, or packed for
    /// another kernel), 64-byte aligned.
    owned: Vec<AlignedFloats>,
    /// Per-worker scratch: `slots ×` the largest kernel scratch.
    scratch: AlignedFloats,
    slots: usize,
    workers: Workers,
    batch: usize,
    /// Per value: stored channels-last.
    stored_nhwc: Vec<bool>,
    /// Copies of values in the other layout, and their arena offsets.
    shadows: Vec<(Shadow, usize)>,
    /// Per value: the arena offset of its copy in the other layout (`usize::MAX`: none).
    shadow_at: Vec<usize>,
    /// Runs so far: fully connected layers alternate their weights' sweep run by run
    /// (`linear::Sweep`).
    runs: u64,
    prefetch: PrefetchTo,
}

/// Who runs a session's kernels besides the calling thread (`kernels::team`).
#[derive(Clone)]
enum Workers {
    Caller,
    /// Threads the session owns; the calling thread leads them.
    Crew(Arc<Crew>),
    /// A caller-supplied pool; runs are installed on it.
    Pool(Arc<rayon::ThreadPool>),
}

impl Workers {
    fn size(&self) -> usize {
        match self {
            Workers::Caller => 1,
            Workers::Crew(c) => c.size(),
            Workers::Pool(p) => p.current_num_threads(),
        }
    }

    fn run<R: Send>(&self, body: impl FnOnce() -> R + Send) -> R {
        match self {
            Workers::Caller => body(),
            Workers::Crew(c) => c.lead(body),
            Workers::Pool(p) => team::lead_on_pool(p, body),
        }
    }
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
            return Err(Error::Limit(format!(
                "max_batch {} must be between 1 and {}",
                options.max_batch,
                limits::MAX_BATCH
            )));
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
        let workspace = |blocks: &[std::ops::Range<usize>], extras: &[Extra]| {
            ArenaPlan::with_extras(graph, options.max_batch, blocks, extras)
                .filter(|p| {
                    p.len
                        .checked_mul(4)
                        .is_some_and(|b| b <= limits::MAX_WORKSPACE_BYTES)
                })
                .ok_or_else(|| {
                    Error::Limit(format!(
                        "the workspace for batch {} exceeds {} bytes",
                        options.max_batch,
                        limits::MAX_WORKSPACE_BYTES
                    ))
                })
        };
        // Checked before any kernel is planned (planning sizes buffers from the shapes).
        let unfused = workspace(&[], &[])?;
        let workers = match &options.threads {
            Threads::Caller | Threads::Count(0 | 1) => Workers::Caller,
            Threads::Pool(p) => Workers::Pool(p.clone()),
            Threads::Count(n) => {
                Workers::Crew(Arc::new(Crew::new(*n).map_err(|e| {
                    Error::Other(format!("cannot start {n} threads: {e}"))
                })?))
            }
        };
        let slots = workers.size().max(1);
        let mut owned = Vec::new();
        let channels_last = options.channels_last
            && std::env::var("CNNRT_CHANNELS_LAST").map_or(true, |v| v != "0");
        let region_on = if channels_last {
            region::select(graph, &region::candidates(graph, isa))
        } else {
            vec![false; graph.nodes.len()]
        };
        let mut stored_nhwc = vec![false; graph.values.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            stored_nhwc[node.output] = region_on[i];
        }
        let mut kernels = plan_kernels(
            &model,
            isa,
            options.max_batch,
            slots,
            &mut owned,
            &stored_nhwc,
            &region_on,
        )?;
        let blocks = if options.fuse_blocks {
            let mut b = fuse_blocks(&model, &mut kernels, &mut owned, isa, slots);
            b.extend(fuse_conv_pool(&model, &mut kernels));
            b.sort_by_key(|r| r.start);
            b
        } else {
            Vec::new()
        };
        let prefetch = options.prefetch.unwrap_or_else(|| {
            prefetch_target(
                std::env::var("CNNRT_PREFETCH").ok().as_deref(),
                weight_bytes(&model, &owned),
                crate::cpu_cache::last_level_bytes(),
            )
        });
        for k in &mut kernels {
            k.set_prefetch(prefetch);
        }
        let shadows = region::shadows(graph, &stored_nhwc, |i| node_reads(graph, &kernels, i));
        let extras: Vec<Extra> = shadows
            .iter()
            .map(|s| Extra {
                first: s.after.unwrap_or(0),
                last: s.last,
                numel: graph.values[s.value].shape.iter().product(),
            })
            .collect();
        let arena_plan = if blocks.is_empty() && extras.is_empty() {
            unfused
        } else {
            workspace(&blocks, &extras)?
        };
        let shadows: Vec<(Shadow, usize)> = shadows
            .into_iter()
            .zip(arena_plan.extras.iter().copied())
            .collect();
        let mut shadow_at = vec![usize::MAX; graph.values.len()];
        for (sh, off) in &shadows {
            shadow_at[sh.value] = *off;
        }
        if let Workers::Pool(p) = &workers {
            // Runs on every worker and returns once all have started, so no thread start-up
            // (and its allocations) happens inside a run; sets FTZ/DAZ on caller pools too.
            p.broadcast(|_| crate::simd::set_flush_denormals());
        }
        let scratch_len = kernels
            .iter()
            .map(|k| slots * k.scratch_len() + k.shared_scratch_len())
            .max()
            .unwrap_or(0);
        let no_memory = |what: &str, floats: usize| {
            Error::Limit(format!(
                "cannot allocate the session's {what} ({} bytes)",
                floats.saturating_mul(4)
            ))
        };
        let owned = owned
            .iter()
            .map(|w| AlignedFloats::try_from_slice(w).ok_or_else(|| no_memory("weights", w.len())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Session {
            arena: AlignedFloats::try_zeroed(arena_plan.len)
                .ok_or_else(|| no_memory("workspace", arena_plan.len))?,
            owned,
            scratch: AlignedFloats::try_zeroed(scratch_len)
                .ok_or_else(|| no_memory("scratch", scratch_len))?,
            slots,
            arena_plan,
            kernels,
            isa,
            max_batch: options.max_batch,
            model,
            workers,
            batch: 0,
            stored_nhwc,
            shadows,
            shadow_at,
            runs: 0,
            prefetch,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The kernel tier this session planned with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Where this session's GEMMs put the weights they prefetch ([`SessionOptions::prefetch`]
    /// or, unset, [`PrefetchTo::L2`] when the model's weights exceed the CPU's last-level
    /// cache).
    pub fn prefetch_to(&self) -> PrefetchTo {
        self.prefetch
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
            return Err(Error::Input(format!(
                "batch {batch} outside 1..={} planned for this session",
                self.max_batch
            )));
        }
        if inputs.len() != graph.inputs.len() {
            return Err(Error::Input(format!(
                "the model has {} inputs, {} given",
                graph.inputs.len(),
                inputs.len()
            )));
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
        self.workers.clone().run(|| self.execute(batch, None));
        Ok(())
    }

    /// Runs once like [`Session::run`] and returns the wall time of each node, in node
    /// order (for `cnnrt bench --profile`; allocates, unlike `run`).
    pub fn profile(&mut self, input: &[f32], batch: usize) -> Result<Vec<std::time::Duration>> {
        let epoch = std::time::Instant::now();
        self.profile_with_clock(input, batch, &|| epoch.elapsed())
    }

    /// [`Session::profile`] with the layers timed by `clock` (any monotonic reading, e.g.
    /// the process CPU time, which a shared machine disturbs less than wall time).
    pub fn profile_with_clock(
        &mut self,
        input: &[f32],
        batch: usize,
        clock: &(dyn Fn() -> std::time::Duration + Sync),
    ) -> Result<Vec<std::time::Duration>> {
        self.run(input, batch)?;
        let mut times = vec![std::time::Duration::ZERO; self.kernels.len()];
        self.workers
            .clone()
            .run(|| self.execute(batch, Some((&mut times, clock))));
        Ok(times)
    }

    /// Output `i` of the last run (batch × output size elements).
    pub fn output(&self, i: usize) -> &[f32] {
        let graph = self.model.graph();
        let v = graph.outputs[i];
        let len = self.batch * graph.values[v].shape.iter().product::<usize>();
        // A channels-last output is read from its planar copy (`region::shadows`).
        let off = if self.stored_nhwc[v] && self.shadow_at[v] != usize::MAX {
            self.shadow_at[v]
        } else {
            self.arena_plan.offsets[v]
        };
        &self.arena[off..off + len]
    }

    /// Makes the copies in the other layout of the values node `after` produced (`None`:
    /// of the graph inputs).
    fn make_shadows(
        isa: Isa,
        graph: &Graph,
        shadows: &[(Shadow, usize)],
        plan: &ArenaPlan,
        arena: &mut [f32],
        n: usize,
        after: Option<usize>,
    ) {
        for (sh, dst) in shadows {
            if sh.after != after {
                continue;
            }
            let shape = &graph.values[sh.value].shape;
            let (c, hw) = (shape[0], shape[1] * shape[2]);
            let len = n * c * hw;
            let src = plan.offsets[sh.value];
            // The plan gives a copy its own memory, live while its value is.
            let (from, to): (&[f32], &mut [f32]) = if src < *dst {
                let (a, b) = arena.split_at_mut(*dst);
                (&a[src..src + len], &mut b[..len])
            } else {
                let (a, b) = arena.split_at_mut(src);
                (&b[..len], &mut a[*dst..*dst + len])
            };
            if sh.to_nhwc {
                nhwc::to_nhwc(isa, from, n, c, hw, to);
            } else {
                nhwc::to_planar(isa, from, n, c, hw, to);
            }
        }
    }

    fn execute(&mut self, n: usize, mut times: Option<Timing>) {
        crate::simd::set_flush_denormals();
        let sweep = Sweep::alternate(self.runs);
        self.runs = self.runs.wrapping_add(1);
        let model = &*self.model;
        let graph: &Graph = model.graph();
        let isa = self.isa;
        for (i, node) in graph.nodes.iter().enumerate() {
            // The copies in the other layout of what the node before made (of the graph
            // inputs, before the first node), timed with that node.
            let started = times.as_ref().map(|t| (t.1)());
            Self::make_shadows(
                isa,
                graph,
                &self.shadows,
                &self.arena_plan,
                &mut self.arena,
                n,
                i.checked_sub(1),
            );
            if let (Some((t, clock)), Some(start), Some(p)) =
                (times.as_mut(), started, i.checked_sub(1))
            {
                t[p] += clock().saturating_sub(start);
            }
            if matches!(self.kernels[i], NodeKernel::InBlock) {
                continue;
            }
            let started = times.as_ref().map(|t| (t.1)());
            let out_off = self.arena_plan.offsets[node.output];
            let out_len = n * graph.values[node.output].shape.iter().product::<usize>();
            let (left, rest) = self.arena.split_at_mut(out_off);
            let (out, right) = rest.split_at_mut(out_len);
            let (left, right): (&[f32], &[f32]) = (left, right);
            let right_base = out_off + out_len;
            // A value other than the output: wholly before or after it (the arena plan
            // never overlaps a node's inputs with its output).
            let value = |v: usize, need: Need| -> &[f32] {
                let wrong = match need {
                    Need::Any => false,
                    Need::Planar => self.stored_nhwc[v],
                    Need::Nhwc => !self.stored_nhwc[v],
                };
                // `region::shadows` made a copy for every such read of a value whose
                // layouts differ.
                let off = if wrong && self.shadow_at[v] != usize::MAX {
                    self.shadow_at[v]
                } else {
                    self.arena_plan.offsets[v]
                };
                let len = n * graph.values[v].shape.iter().product::<usize>();
                if off + len <= out_off {
                    &left[off..off + len]
                } else {
                    &right[off - right_base..off - right_base + len]
                }
            };
            let packed = |p: Packed| p.weights(model, &self.owned);
            if let NodeKernel::Block {
                kernel,
                first,
                expand,
                expand_bias,
                depthwise,
                depthwise_bias,
                project,
                project_bias,
                channels_last,
            } = &self.kernels[i]
            {
                let w = |b: &Option<WeightId>| b.map(|b| model.weight(b));
                let weights = BlockWeights {
                    expand: packed(*expand),
                    expand_bias: w(expand_bias),
                    depthwise: model.weight(*depthwise),
                    depthwise_bias: w(depthwise_bias),
                    project: packed(*project),
                    project_bias: w(project_bias),
                    channels_last: channels_last.map(|j| self.owned[j].as_ref()),
                };
                let x = value(graph.nodes[*first].inputs[0], Need::Planar);
                let r = node.inputs.get(1).map(|&v| value(v, Need::Planar));
                kernel.run(self.slots, n, &weights, x, r, out, &mut self.scratch);
                if let (Some((t, clock)), Some(start)) = (times.as_mut(), started) {
                    t[i] = clock().saturating_sub(start);
                }
                continue;
            }
            // A convolution and its pool as one step, at the pool's node, reading the
            // convolution's input.
            if let NodeKernel::WinogradPool {
                kernel,
                weight,
                bias,
            } = &self.kernels[i]
            {
                let x = value(graph.nodes[i - 1].inputs[0], Need::Planar);
                let (w, b) = (
                    weight.weights(model, &self.owned),
                    bias.map(|b| model.weight(b)),
                );
                parallel::run_winograd(
                    kernel,
                    self.slots,
                    n,
                    w,
                    b,
                    x,
                    None,
                    out,
                    &mut self.scratch,
                );
                if let (Some((t, clock)), Some(start)) = (times.as_mut(), started) {
                    t[i] = clock().saturating_sub(start);
                }
                continue;
            }
            // F(4x4,5x5), pooled or not: a pooled one at the pool's node, reading the
            // convolution's input.
            if let NodeKernel::WinogradK5 {
                kernel,
                weight,
                bias,
                pooled,
            } = &self.kernels[i]
            {
                let input = if *pooled {
                    graph.nodes[i - 1].inputs[0]
                } else {
                    node.inputs[0]
                };
                let x = value(input, Need::Planar);
                let (w, b) = (packed(*weight), bias.map(|b| model.weight(b)));
                kernel.run(self.slots, n, w, b, x, out, &mut self.scratch);
                if let (Some((t, clock)), Some(start)) = (times.as_mut(), started) {
                    t[i] = clock().saturating_sub(start);
                }
                continue;
            }
            if let NodeKernel::ConvPool { weight, bias, .. }
            | NodeKernel::ImplicitPool { weight, bias, .. } = &self.kernels[i]
            {
                let x = value(graph.nodes[i - 1].inputs[0], Need::Planar);
                let (w, b) = (packed(*weight), bias.map(|b| model.weight(b)));
                match &self.kernels[i] {
                    NodeKernel::ConvPool { kernel, .. } => {
                        kernel.run(self.slots, n, w, b, x, out, &mut self.scratch)
                    }
                    NodeKernel::ImplicitPool { kernel, .. } => {
                        kernel.run(self.slots, n, w, b, x, None, out, &mut self.scratch)
                    }
                    _ => unreachable!("matched above"),
                }
                if let (Some((t, clock)), Some(start)) = (times.as_mut(), started) {
                    t[i] = clock().saturating_sub(start);
                }
                continue;
            }
            let mut ins: [&[f32]; MAX_NODE_INPUTS] = [&[]; MAX_NODE_INPUTS];
            for (j, (slot, &v)) in ins.iter_mut().zip(&node.inputs).enumerate() {
                *slot = value(v, input_need(&self.kernels[i], j));
            }
            let ins = &ins[..node.inputs.len()];
            let in_shape = graph.shape(node.inputs[0]);
            let sample_in: usize = in_shape.iter().product();
            let sample_out = out_len / n;
            match &self.kernels[i] {
                NodeKernel::Conv {
                    kernel,
                    weight,
                    bias,
                } => {
                    let (w, b) = (packed(*weight), bias.map(|b| model.weight(b)));
                    let r = ins.get(1).copied();
                    parallel::run_conv(
                        kernel,
                        self.slots,
                        n,
                        w,
                        b,
                        ins[0],
                        r,
                        out,
                        &mut self.scratch,
                    );
                }
                NodeKernel::Winograd {
                    kernel,
                    weight,
                    bias,
                } => {
                    let (w, b) = (packed(*weight), bias.map(|b| model.weight(b)));
                    let r = ins.get(1).copied();
                    parallel::run_winograd(
                        kernel,
                        self.slots,
                        n,
                        w,
                        b,
                        ins[0],
                        r,
                        out,
                        &mut self.scratch,
                    );
                }
                NodeKernel::Depthwise {
                    kernel,
                    weight,
                    bias,
                } => {
                    let (w, b) = (model.weight(*weight), bias.map(|b| model.weight(b)));
                    let plane = sample_out / in_shape[0];
                    for s in 0..n {
                        let x = &ins[0][s * sample_in..(s + 1) * sample_in];
                        let r = ins.get(1).map(|r| &r[s * sample_out..(s + 1) * sample_out]);
                        let o = &mut out[s * sample_out..(s + 1) * sample_out];
                        parallel::depthwise_channels(
                            kernel,
                            self.slots,
                            in_shape[0],
                            plane,
                            w,
                            b,
                            x,
                            r,
                            o,
                        );
                    }
                }
                NodeKernel::Linear {
                    kernel,
                    weight,
                    bias,
                } => {
                    parallel::linear(
                        kernel,
                        self.slots,
                        packed(*weight),
                        bias.map(|b| model.weight(b)),
                        ins[0],
                        n,
                        ins.get(1).copied(),
                        out,
                        &mut self.scratch,
                        sweep,
                    );
                }
                NodeKernel::Implicit {
                    kernel,
                    weight,
                    bias,
                } => kernel.run(
                    self.slots,
                    n,
                    packed(*weight),
                    bias.map(|b| model.weight(b)),
                    ins[0],
                    ins.get(1).copied(),
                    out,
                    &mut self.scratch,
                ),
                NodeKernel::PointwiseNhwc {
                    kernel,
                    weight,
                    bias,
                } => kernel.run(
                    self.slots,
                    n,
                    packed(*weight),
                    bias.map(|b| model.weight(b)),
                    ins[0],
                    ins.get(1).copied(),
                    out,
                ),
                NodeKernel::DepthwiseNhwc {
                    kernel,
                    weight,
                    bias,
                } => kernel.run(
                    self.slots,
                    n,
                    self.owned[*weight].as_ref(),
                    bias.map(|b| model.weight(b)),
                    ins[0],
                    out,
                ),
                NodeKernel::WinogradNhwc {
                    kernel,
                    weight,
                    bias,
                } => kernel.run(
                    self.slots,
                    n,
                    packed(*weight),
                    bias.map(|b| model.weight(b)),
                    ins[0],
                    ins.get(1).copied(),
                    out,
                    &mut self.scratch,
                ),
                // Every sample's planes at once: they are independent.
                NodeKernel::Pool(k) => parallel::pool(k, self.slots, ins[0], out),
                NodeKernel::Vector => run_vector(isa, graph, i, model, ins, n, out),
                NodeKernel::Copy => out.copy_from_slice(ins[0]),
                NodeKernel::Reference => reference::run_node_into(graph, i, model, ins, n, out),
                NodeKernel::Block { .. }
                | NodeKernel::ConvPool { .. }
                | NodeKernel::ImplicitPool { .. }
                | NodeKernel::WinogradPool { .. }
                | NodeKernel::WinogradK5 { .. }
                | NodeKernel::InBlock => {
                    unreachable!("handled above")
                }
            }
            if let (Some((t, clock)), Some(start)) = (times.as_mut(), started) {
                t[i] = clock().saturating_sub(start);
            }
        }
        // The planar copies of channels-last graph outputs the last node made, timed
        // with it.
        if let Some(last) = graph.nodes.len().checked_sub(1) {
            let started = times.as_ref().map(|t| (t.1)());
            Self::make_shadows(
                isa,
                graph,
                &self.shadows,
                &self.arena_plan,
                &mut self.arena,
                n,
                Some(last),
            );
            if let (Some((t, clock)), Some(start)) = (times.as_mut(), started) {
                t[last] += clock().saturating_sub(start);
            }
        }
    }
}

/// The GEMM kernel for a convolution whose weights are `conv_gemm`-packed at `weight`.
fn gemm_conv(
    isa: Isa,
    c: &Conv,
    ins: [usize; 3],
    outs: [usize; 3],
    threads: usize,
    weight: Packed,
) -> NodeKernel {
    NodeKernel::Conv {
        kernel: ConvKernel::new(isa, c, ins, outs).split_for_threads(threads),
        weight,
        bias: c.bias,
    }
}

/// Per-layer times being filled in, and the clock that measures them.
type Timing<'a> = (
    &'a mut [std::time::Duration],
    &'a (dyn Fn() -> std::time::Duration + Sync),
);

/// The element-wise, normalization and global-pooling ops.
fn run_vector(
    isa: Isa,
    graph: &Graph,
    i: usize,
    model: &Model,
    ins: &[&[f32]],
    n: usize,
    out: &mut [f32],
) {
    let node = &graph.nodes[i];
    let shape = graph.shape(node.inputs[0]);
    let x = ins[0];
    let w = |id: WeightId| model.weight(id);
    match &node.op {
        Op::ChannelAffine {
            scale,
            shift,
            activation,
        } => elementwise::channel_affine(
            isa,
            x,
            n,
            shape,
            scale.map(w),
            shift.map(w),
            *activation,
            out,
        ),
        Op::Activation(a) => elementwise::activation(isa, x, *a, out),
        Op::PRelu { slope } => elementwise::prelu(isa, x, n, shape, w(*slope), out),
        Op::GlobalPool { kind } => {
            let hw: usize = shape[1..].iter().product();
            pool::global_pool(isa, *kind, x, n * shape[0], hw, out)
        }
        Op::Binary { kind, activation } => elementwise::binary(
            isa,
            x,
            ins[1],
            n,
            shape,
            graph.shape(node.inputs[1]),
            *kind,
            *activation,
            out,
        ),
        Op::LayerNorm {
            axis,
            epsilon,
            scale,
            bias,
        } => elementwise::layer_norm(
            isa,
            x,
            n,
            shape,
            *axis,
            *epsilon,
            w(*scale),
            bias.map(w),
            out,
        ),
        Op::InstanceNorm {
            epsilon,
            scale,
            bias,
        } => elementwise::instance_norm(isa, x, n, shape, *epsilon, w(*scale), w(*bias), out),
        Op::Softmax {
            axis,
            flatten_from_axis,
        } => elementwise::softmax(isa, x, n, shape, *axis, *flatten_from_axis, out),
        _ => reference::run_node_into(graph, i, model, ins, n, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_past_the_last_level_cache_are_prefetched_into_l2() {
        let llc = Some(32 << 20);
        // ResNet-18 (47 MB) against MobileNetV2 (14 MB) and LeNet-5 (5 MB).
        assert_eq!(prefetch_target(None, 46_800_000, llc), PrefetchTo::L2);
        assert_eq!(prefetch_target(None, 14_000_000, llc), PrefetchTo::L1);
        assert_eq!(prefetch_target(None, 32 << 20, llc), PrefetchTo::L1);
        assert_eq!(prefetch_target(None, 46_800_000, None), PrefetchTo::L1);
        assert_eq!(prefetch_target(Some("l1"), 46_800_000, llc), PrefetchTo::L1);
        assert_eq!(prefetch_target(Some("l2"), 5_000_000, llc), PrefetchTo::L2);
        assert_eq!(
            prefetch_target(Some("other"), 5_000_000, llc),
            PrefetchTo::L1
        );
    }
}
