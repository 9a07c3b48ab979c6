//! The converter pipeline: ONNX → graph → passes → `.cnnrt`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, ChannelOrder, CostRates, LayerNote, Metadata};
use crate::graph::{Conv, Graph, Op, WeightLayout};
use crate::kernels::conv::ConvKernel;
use crate::kernels::depthwise::DepthwiseKernel;
use crate::kernels::linear::LinearKernel;
use crate::kernels::winograd::{
    measure_f4x4_k5_error, measure_relative_error, WinogradF4x4K5, WinogradKernel, WinogradVariant,
};
use crate::passes::{self, PassReport};
use crate::simd::Isa;

/// Preprocessing and labels stored in the model for `cnnrt run` and services.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub labels: Vec<String>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub channel_order: Option<ChannelOrder>,
    /// Largest relative error (max |winograd − direct| / max |direct| on a calibration
    /// input) accepted for a Winograd layer; `0` turns Winograd off. Default 1e-4.
    pub winograd_max_error: f64,
    /// The batch size each layer's algorithm is chosen for (default 1; 0 counts as 1).
    /// A session runs any batch on any file; this only moves the cost model's choice.
    /// At batch N a Winograd layer's samples share one pass over its weights, so their
    /// bytes weigh N times less per sample and F(4x4) beats F(2x2) on small maps with
    /// many channels: ResNet-18 at batch 8 (layer3 and layer4 in F(4x4), the file 160
    /// instead of 81 MB) ran in 0.895 [0.887, 0.900] of the time at 1 thread and
    /// 0.914 [0.892, 0.931] at 2 (`scripts/paired_ab.py`, AMD EPYC Zen 4, 6 rounds).
    pub batch: usize,
    /// The machine rates the cost model weighs algorithms with: None for
    /// [`DEFAULT_COST_RATES`], or this CPU's ([`crate::tune::measure_cost_rates`],
    /// `cnnrt convert --tune`), recorded in the file. On ResNet-18 at batch 1 they move
    /// layer3 (256 channels on 14×14) between F(2x2) and F(4x4).
    pub cost_rates: Option<CostRates>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            labels: Vec::new(),
            mean: Vec::new(),
            std: Vec::new(),
            channel_order: None,
            winograd_max_error: 1e-4,
            batch: 1,
            cost_rates: None,
        }
    }
}

/// The converted model, before it is written.
#[derive(Debug)]
pub struct Converted {
    pub graph: Graph,
    pub weights: Vec<Vec<f32>>,
    pub metadata: Metadata,
    pub passes: PassReport,
    pub winograd_max_error: f64,
}

/// Input channels from which a 5×5 stride-1 layer is a Winograd F(2x2,5x5) candidate
/// (see `try_winograd`).
const K5_MIN_CIN: usize = 20;

/// The largest output side for which a 5×5 stride-1 layer is stored as Winograd
/// F(4x4,5x5) (see `try_winograd`): the maps it was measured on.
const K5_F4_MAX_SIDE: usize = 32;

/// A deterministic calibration input in [-1, 1) for the Winograd error check.
fn calibration_input(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The rates the cost model uses unless the options give others (`cnnrt convert --tune`
/// measures them): the GEMM between the AVX2 (75–90 GFLOP/s in the model on a Zen 3
/// core) and AVX-512 tiers (150–200 on a Xeon core); weights read at one Xeon core's
/// 14.9 GB/s (`../shared/bench/peak.c`). On that Xeon F(2x2) won ResNet-18's layer3
/// (14×14, 256 channels: 0.98–0.99 ms per layer against F(4x4)'s 1.12–1.17, AVX-512, 1
/// thread); on an AMD EPYC Zen 4 core (118 GFLOP/s peak, 17.7–23 GB/s) F(4x4) won it,
/// 0.91–0.95 ms against 1.10–1.13 (docs/KERNELS.md, session 35), as these rates and
/// that machine's measured ones (114 GFLOP/s, 25–29 GB/s) predict.
pub const DEFAULT_COST_RATES: CostRates = CostRates {
    gemm_gflops: 150.0,
    memory_gbps: 15.0,
};

/// Rough single-thread time of a convolution layer per algorithm, to choose between
/// Winograd and direct GEMM ahead of time. Deterministic for given rates (the file
/// depends on the converting machine only when the caller measures them).
mod cost {
    use crate::format::CostRates;
    use crate::graph::Conv;
    use crate::kernels::winograd::WinogradVariant;

    /// Winograd transforms, counted as 4 operations per transformed element (FLOP/s).
    const TRANSFORM: f64 = 20e9;
    /// The GEMMs vectorize over tiles: a remainder of up to this many tiles runs in the
    /// column-tail kernels, at about the cost of this many columns.
    const TILE_LANES: usize = 8;

    /// `winograd` for a 3×3 stride-1 layer from `[cin, h, w]` to `[cout, oh, ow]`, per
    /// sample of a batch of `batch`: the samples' tiles share the GEMMs' column groups
    /// and one read of the weights (the kernel's blocks across samples). The weights'
    /// bytes count as read from memory, once per batch: a model's weights rarely stay
    /// cached, and where a variant's larger weights take longer to read than its fewer
    /// products take to compute (F(4x4) against F(2x2) on small maps with many
    /// channels), the cheaper side depends on the machine's two rates.
    pub fn winograd(
        variant: WinogradVariant,
        i: [usize; 3],
        o: [usize; 3],
        batch: usize,
        r: &CostRates,
    ) -> f64 {
        let (cin, cout, n) = (i[0] as f64, o[0] as f64, batch.max(1));
        let m = variant.output_tile();
        let t2 = variant.positions() as f64;
        let tiles = o[1].div_ceil(m) * o[2].div_ceil(m);
        let lanes = (n * tiles).div_ceil(TILE_LANES) * TILE_LANES;
        let gemm = 2.0 * t2 * cin * cout * lanes as f64 / (r.gemm_gflops * 1e9) / n as f64;
        let transforms = 4.0 * (cin + cout) * tiles as f64 * t2 / TRANSFORM;
        let weights = 4.0 * t2 * cin * cout / (r.memory_gbps * 1e9) / n as f64;
        gemm + transforms + weights
    }

    /// im2col (or 1×1) GEMM for any convolution, per sample of a batch of `batch` (one
    /// read of the weights for the batch, as [`winograd`]).
    pub fn im2col_gemm(c: &Conv, i: [usize; 3], o: [usize; 3], batch: usize, r: &CostRates) -> f64 {
        let memory = r.memory_gbps * 1e9;
        let k = (i[0] / c.groups.max(1) * c.kernel[0] * c.kernel[1]) as f64;
        let pixels = (o[1] * o[2]) as f64;
        let gemm = 2.0 * o[0] as f64 * k * pixels / (r.gemm_gflops * 1e9);
        let columns = 8.0 * k * pixels * c.groups.max(1) as f64 / memory;
        let weights = 4.0 * o[0] as f64 * k / memory / batch.max(1) as f64;
        gemm + columns + weights
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::graph::Activation;

        /// The cheapest algorithm for a 3×3 stride-1 `c → c` layer on an `hw × hw` map at
        /// batch `n`.
        fn cheapest(c: usize, hw: usize, n: usize) -> &'static str {
            cheapest_for(c, hw, n, &crate::convert::DEFAULT_COST_RATES)
        }

        fn cheapest_for(c: usize, hw: usize, n: usize, r: &CostRates) -> &'static str {
            let conv = Conv {
                in_channels: c,
                out_channels: c,
                kernel: [3, 3],
                stride: [1, 1],
                dilation: [1, 1],
                pads: [1; 4],
                groups: 1,
                weight: 0,
                bias: None,
                activation: Activation::Identity,
            };
            let s = [c, hw, hw];
            let costs = [
                (winograd(WinogradVariant::F4x4, s, s, n, r), "F4x4"),
                (winograd(WinogradVariant::F2x2, s, s, n, r), "F2x2"),
                (im2col_gemm(&conv, s, s, n, r), "direct"),
            ];
            costs.iter().min_by(|a, b| a.0.total_cmp(&b.0)).unwrap().1
        }

        /// The choices measured best on ResNet-18 and conv3x3_stress at batch 1
        /// (docs/KERNELS.md): F(4x4) where there are many tiles per weight, F(2x2) where
        /// the weights' bytes dominate (14×14 and 7×7 maps).
        #[test]
        fn the_model_picks_the_measured_variants() {
            assert_eq!(cheapest(64, 56, 1), "F4x4");
            assert_eq!(cheapest(128, 28, 1), "F4x4");
            assert_eq!(cheapest(256, 14, 1), "F2x2");
            assert_eq!(cheapest(512, 7, 1), "F2x2");
        }

        /// With rates below those measured on an AMD EPYC Zen 4 core (`--tune`: GEMM 114
        /// GFLOP/s, memory 25–29 GB/s; slower products, faster reads than the defaults'
        /// Xeon), F(4x4) on 14×14 maps, as measured there (docs/KERNELS.md, session 35);
        /// the 7×7 layers' F(4x4) weights (37.7 MB) still take too long to read.
        #[test]
        fn measured_rates_move_the_choice_on_14x14_maps() {
            let zen4 = CostRates {
                gemm_gflops: 110.0,
                memory_gbps: 19.0,
            };
            assert_eq!(cheapest_for(64, 56, 1, &zen4), "F4x4");
            assert_eq!(cheapest_for(128, 28, 1, &zen4), "F4x4");
            assert_eq!(cheapest_for(256, 14, 1, &zen4), "F4x4");
            assert_eq!(cheapest_for(512, 7, 1, &zen4), "F2x2");
            // A slow memory keeps F(2x2) on 14×14 whatever the GEMM rate here.
            let slow = CostRates {
                gemm_gflops: 110.0,
                memory_gbps: 8.0,
            };
            assert_eq!(cheapest_for(256, 14, 1, &slow), "F2x2");
        }

        /// At batch 8 the weights' bytes are shared by the samples: F(4x4) everywhere on
        /// ResNet-18 (measured faster there, see `ConvertOptions::batch`); batch 0 is 1.
        #[test]
        fn the_model_at_batch_8_picks_f4x4_on_small_maps() {
            for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
                assert_eq!(cheapest(c, hw, 8), "F4x4", "{c} channels on {hw}×{hw}");
            }
            assert_eq!(cheapest(512, 7, 0), cheapest(512, 7, 1));
        }
    }
}

/// A one-group convolution's plain `[cout][cin·kh·kw]` weights in the fully connected
/// layer's 32-wide panels (`linear_gemm`), the layout the channels-last 1×1 and the
/// implicit GEMM kernels read in place.
fn linear_gemm_panels(c: &Conv, plain: &[f32]) -> Vec<f32> {
    let (n, k) = (c.out_channels, plain.len() / c.out_channels.max(1));
    let mut packed = vec![0.0; n * k];
    crate::kernels::gemm::pack_b_transposed(n, k, plain, k, &mut packed);
    packed
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
    if let Some(r) = options.cost_rates {
        r.check()
            .map_err(|e| Error::Input(format!("cost rates: {e}")))?;
    }
    if options.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return Err(Error::Input(
            "--std values must be finite and non-zero".into(),
        ));
    }
    let channel_order = options.channel_order.unwrap_or(if channels == 1 {
        ChannelOrder::Gray
    } else {
        ChannelOrder::Rgb
    });
    let metadata = Metadata {
        input_name: graph.values[input].name.clone(),
        input_shape,
        mean: options.mean.clone(),
        std: options.std.clone(),
        channel_order,
        labels: options.labels.clone(),
        producer: format!(
            "cnnrt {} from ONNX ({})",
            env!("CARGO_PKG_VERSION"),
            imported.producer
        ),
        source_opset: imported.opset,
        planned_batch: options.batch.max(1),
        cost_rates: options.cost_rates,
        ..Default::default()
    };
    Ok(Converted {
        graph,
        weights,
        metadata,
        passes: report,
        winograd_max_error: options.winograd_max_error,
    })
}

impl Converted {
    /// The graph and weights as stored in the file: convolution and fully connected
    /// weights packed for the GEMM kernels (ISA-independent layouts), so sessions use them
    /// in place. Depthwise convolutions keep the plain layout their kernel reads.
    ///
    /// 3×3 stride-1 layers use Winograd F(4x4,3x3) or F(2x2,3x3) when its error measured
    /// against direct convolution on a calibration input is within the budget and a cost
    /// model (tiles per lane group, transforms, weight traffic: small maps with many
    /// channels favour F(2x2) or direct GEMM) estimates it faster; 5×5 stride-1 layers
    /// with at least 20 input channels likewise use F(2x2,5x5). Each Winograd candidate's
    /// algorithm and error are returned as layer notes.
    pub fn packed_for_file(&self) -> (Graph, Vec<Vec<f32>>, Vec<LayerNote>) {
        let mut graph = self.graph.clone();
        let mut weights = self.weights.clone();
        let mut notes = Vec::new();
        // The 1×1 layers a session will run channels-last (`region`; the choice of the
        // AVX-512 tier, or of the best one this machine has below it, which the tiers
        // share on MobileNet-style networks) are stored in the 32-wide panels that
        // kernel reads in place; a session that runs one planar repacks it.
        let region = crate::region::select(
            &self.graph,
            &crate::region::candidates(&self.graph, Isa::Avx512),
        );
        for (index, node) in self.graph.nodes.iter().enumerate() {
            let in_shape = self.graph.shape(node.inputs[0]);
            let out_shape = self.graph.shape(node.output);
            match &node.op {
                Op::Conv(c)
                    if region[index]
                        && c.groups == 1
                        && graph.weights[c.weight].layout == WeightLayout::Plain =>
                {
                    weights[c.weight] = linear_gemm_panels(c, &self.weights[c.weight]);
                    graph.weights[c.weight].layout = WeightLayout::LinearGemm;
                }
                Op::Conv(c) => {
                    let (i, o) = (
                        [in_shape[0], in_shape[1], in_shape[2]],
                        [out_shape[0], out_shape[1], out_shape[2]],
                    );
                    if DepthwiseKernel::new(Isa::Scalar, c, i, o).is_some()
                        || graph.weights[c.weight].layout != WeightLayout::Plain
                    {
                        continue;
                    }
                    if let Some(note) = self.try_winograd(index, c, i, o, &mut graph, &mut weights)
                    {
                        let chosen = note.algorithm != "im2col_gemm";
                        notes.push(note);
                        if chosen {
                            continue;
                        }
                    }
                    if crate::kernels::conv::implicit_preferred(c) {
                        weights[c.weight] = linear_gemm_panels(c, &self.weights[c.weight]);
                        graph.weights[c.weight].layout = WeightLayout::LinearGemm;
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
        // The F(4x4) layers a session will run channels-last (`region` on the packed
        // graph, the AVX-512 tier's choice as above) are stored in the channels-last
        // kernel's order; a session that runs one planar reorders it back.
        let candidates = crate::region::candidates(&graph, Isa::Avx512);
        let region = crate::region::select(&graph, &candidates);
        for (index, node) in graph.nodes.iter().enumerate() {
            if let Op::Conv(c) = &node.op {
                let info = &mut graph.weights[c.weight];
                if region[index] && info.layout == WeightLayout::WinogradF4x4 {
                    let mut panels = vec![0.0; weights[c.weight].len()];
                    crate::kernels::winograd::nhwc_panels_from_packed(
                        c.in_channels,
                        c.out_channels,
                        &weights[c.weight],
                        &mut panels,
                    );
                    weights[c.weight] = panels;
                    info.layout = WeightLayout::WinogradF4x4Nhwc;
                }
            }
        }
        (graph, weights, notes)
    }

    /// Packs `c` for Winograd if a variant meets the error budget; the note says what
    /// was measured and chosen (None when the layer is not a Winograd candidate).
    fn try_winograd(
        &self,
        index: usize,
        c: &Conv,
        i: [usize; 3],
        o: [usize; 3],
        graph: &mut Graph,
        weights: &mut [Vec<f32>],
    ) -> Option<LayerNote> {
        if self.winograd_max_error <= 0.0 {
            return None;
        }
        // The variants this layer's kernel size, stride, dilation and groups allow.
        // F(2x2,5x5) from K5_MIN_CIN input channels only: its 36 GEMMs have K = cin, and
        // short ones run below the micro-kernel's rate, which the cost model below does
        // not see. Measured (1 thread, AVX-512, `docs/KERNELS.md`): against the implicit
        // GEMM, 0.56–0.82× the time from 32 channels in; LeNet-5's conv2 (20 → 50 on
        // 14×14, with its 2×2 max pool in both) 0.998× at 1 thread and 0.908× at 2 in the
        // whole model.
        // F(4x4,5x5) first where it applies: 5×5 layers on small maps without a residual
        // (LeNet-5's conv2: its step 0.066 → 0.045 ms alone at one thread, AVX-512;
        // docs/KERNELS.md). Larger maps and channel counts are not measured, so they keep
        // the choice below.
        let node = &self.graph.nodes[index];
        let small_map = o[1] <= K5_F4_MAX_SIDE && o[2] <= K5_F4_MAX_SIDE;
        let f4x4_k5 = (small_map && i[0] >= K5_MIN_CIN && node.inputs.len() == 1)
            .then(|| WinogradF4x4K5::new(Isa::Scalar, c, i, o, false, 1))
            .flatten();
        if let Some(k) = f4x4_k5 {
            let x = calibration_input(i.iter().product(), index as u64 + 1);
            let plain = &self.weights[c.weight];
            let bias = c.bias.map(|b| self.weights[b].as_slice());
            let err = measure_f4x4_k5_error(Isa::Scalar, c, i, o, plain, bias, &x);
            if err <= self.winograd_max_error {
                let mut packed = vec![0.0; k.weights_len()];
                k.pack_weights(plain, &mut packed);
                weights[c.weight] = packed;
                graph.weights[c.weight].layout = WeightLayout::WinogradF4x4K5;
                return Some(LayerNote {
                    node: node.name.clone(),
                    algorithm: "winograd_f4x4_5x5".to_string(),
                    relative_error: Some(err),
                });
            }
        }
        let mut variants: Vec<WinogradVariant> = WinogradVariant::ALL
            .into_iter()
            .filter(|&v| v != WinogradVariant::F2x2K5 || i[0] >= K5_MIN_CIN)
            .filter(|&v| WinogradKernel::new(Isa::Scalar, c, i, o, v).is_some())
            .collect();
        if variants.is_empty() {
            return None;
        }
        let x = calibration_input(i.iter().product(), index as u64 + 1);
        let plain = &self.weights[c.weight];
        let bias = c.bias.map(|b| self.weights[b].as_slice());
        let mut best_err = f64::INFINITY;
        // Cheapest first by the cost model; the first one within the error budget wins,
        // and none if direct GEMM is estimated cheaper than every Winograd variant left.
        // The batch the algorithms are chosen for (see `ConvertOptions::batch`): the one
        // the written file records.
        let n = self.metadata.planned_batch.max(1);
        let rates = self.metadata.cost_rates.unwrap_or(DEFAULT_COST_RATES);
        let direct = cost::im2col_gemm(c, i, o, n, &rates);
        let cost = |v: WinogradVariant| cost::winograd(v, i, o, n, &rates);
        variants.sort_by(|a, b| cost(*a).total_cmp(&cost(*b)));
        for variant in variants {
            let err = measure_relative_error(Isa::Scalar, c, i, o, variant, plain, bias, &x);
            best_err = best_err.min(err);
            if err <= self.winograd_max_error && cost(variant) < direct {
                let k = WinogradKernel::new(Isa::Scalar, c, i, o, variant)?;
                let mut packed = vec![0.0; k.packed_weight_len()];
                k.pack_weights(plain, &mut packed);
                weights[c.weight] = packed;
                graph.weights[c.weight].layout = variant.layout();
                return Some(LayerNote {
                    node: node.name.clone(),
                    algorithm: variant.algorithm().to_string(),
                    relative_error: Some(err),
                });
            }
        }
        Some(LayerNote {
            node: node.name.clone(),
            algorithm: "im2col_gemm".to_string(),
            relative_error: Some(best_err),
        })
    }

    /// Writes the `.cnnrt` file (packed, see [`Converted::packed_for_file`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        let (graph, weights, notes) = self.packed_for_file();
        let refs: Vec<&[f32]> = weights.iter().map(|w| w.as_slice()).collect();
        let metadata = Metadata {
            layer_notes: notes,
            ..self.metadata.clone()
        };
        format::write_model(path, &graph, &refs, &metadata)
    }
}

/// Converts `onnx_path` and writes `out_path`. Returns the converted model with plain
/// (unpacked) weights, e.g. for the reference kernels.
pub fn convert_file(
    onnx_path: &Path,
    out_path: &Path,
    options: &ConvertOptions,
) -> Result<Converted> {
    let bytes = std::fs::read(onnx_path).map_err(|e| Error::io(onnx_path, e))?;
    let converted = convert_onnx(&bytes, options)?;
    converted.write(out_path)?;
    Ok(converted)
}
