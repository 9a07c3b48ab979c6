//! 2-D convolution on NCHW activations (one sample per call) through the packed GEMM.
//!
//! Per group, the convolution is `out_g[cog × (oh·ow)] = W_g[cog × K] · B_g[K × (oh·ow)]`
//! with `K = cig·kh·kw`:
//!
//! * `gemm1x1_rows`: 1×1 kernel, stride 1, no padding: `B_g` is the input itself
//!   (`cig × h·w`, rows contiguous), read in place by the micro-kernels (chosen for at
//!   most 32 output channels per group on large planes; see `choose_1x1`).
//! * `gemm1x1_packed`: the same GEMM with B packed block by block into panels (pays off
//!   when there are many output channels to reuse each B block: expansions).
//!
//!   Both run each A sliver across a whole block of columns before the next sliver, with
//!   runs of full tiles in one micro-kernel call, so that short K (few input channels)
//!   does not drown in per-call overhead; and both write C a few rows at a time, long
//!   rows of it, which the hardware prefetchers and the L1 associativity handle well
//!   even when the plane size is a multiple of a large power of two.
//! * `gemm1x1`: B in place too, but each B sliver (`kc × nr`) held while every A sliver
//!   passes it, so C is written a column chunk at a time down all rows (the remaining
//!   1×1 layers whose weights fit in L2).
//! * `im2col_gemm`: anything else (any kernel, stride, dilation, padding, groups): each
//!   `kc × nc` block of the im2col matrix is gathered straight into the packed-B panels
//!   (never materialized whole), then multiplied.
//! * `direct`: first layers (one group, at most 4 input channels, K from 64 to 384, or
//!   from 16 for stride-1 layers on AVX-512; rows of 8 or more outputs; 6 × 16
//!   micro-kernels on AVX2, 12 × 32 on AVX-512): no im2col at all, the micro-kernels read
//!   each tap's row of input in place (`direct` module). Bit-identical to `im2col_gemm`
//!   (the same FMA chain per element).
//!
//! * `implicit_gemm` ([`ImplicitConv`], its own module and weight layout): output pixels
//!   as the GEMM's rows and output channels in the vectors, each tap of the input read in
//!   place; what the converter picks for one-group layers with more than 4 input channels
//!   and a kernel bigger than 1×1 (see [`implicit_preferred`]).
//!
//! Bias, residual and activation are applied in the micro-kernels' store.
//!
//! # Packed weight layout
//!
//! ISA independent, so the converter can store it in the model file: groups one after
//! another; group `g` holds its `cog × K` weight matrix (OIHW order, row `o`, column
//! `(ci·kh + ky)·kw + kx`) in the [`gemm`] packed-A layout: panels
//! of [`MR_PACK`] = 12 output channels (the last one short, unpadded), K-major inside.
//! Weight `(o, ci, ky, kx)` of group `g`, with `o` local to the group, `p = o / 12`,
//! `h = min(12, cog − 12p)`, `k = (ci·kh + ky)·kw + kx`, is at
//! `g·cog·K + 12p·K + k·h + (o − 12p)`. Length: exactly `cout · cig · kh · kw`.
//!
//! # Tiles
//!
//! The work is split into [`ConvKernel::tiles`] independent tiles (group × block of
//! output channels × block of output pixels), each writing a disjoint part of the
//! output. Every output element is one FMA chain over `k` in order whatever the tiling
//! (see the gemm module), so running tiles in any order or on any number of threads
//! gives bit-identical results.

pub(crate) mod direct;
pub(crate) mod im2col;
mod implicit;

pub use implicit::ImplicitConv;
mod shared_b;

use crate::graph::Conv;
use crate::kernels::gemm::{
    self, choose_kc, choose_nc, drive, pack_a, pack_scratch_len, ukr, BSrc, PrefetchTo, SharedOut,
    Tile, MR_PACK,
};
use crate::simd::Isa;
use direct::DirectPlan;
use im2col::Im2col;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    Gemm1x1,
    Gemm1x1Rows,
    Gemm1x1Packed,
    Im2col,
    /// First-layer direct convolution (`direct` module).
    Direct,
}

/// Input channels (per group) up to which a convolution runs [`Algo::Direct`] where the
/// tier has offset kernels: with so few channels, im2col copies the input `kh·kw` times
/// for little arithmetic per copied value.
const DIRECT_MAX_CIN: usize = 4;
/// Taps from which [`Algo::Direct`] is chosen: each micro-kernel call covers one output
/// row's 16 columns, so short K leaves the per-call overhead uncovered. Measured (AVX2, 1
/// thread, interleaved A/B against im2col): the ResNet-18 stem (K = 147) 11% faster
/// with its max pool, LeNet-5's first layer (K = 25) 7% slower.
const DIRECT_MIN_K: usize = 64;
/// The same for stride-1 layers on AVX-512 (12 × 32 offset kernels): LeNet-5's first
/// layer (K = 25) 13 → 8.5 µs; MobileNetV2's stride-2 stem (K = 27) stays im2col (0.33
/// against 0.36 ms direct). Measured 1 thread, `cnnrt bench --profile`, 2026-12-03.
const DIRECT_MIN_K_S1_AVX512: usize = 16;

/// Whether the converter stores `conv`'s weights for the implicit GEMM ([`ImplicitConv`],
/// 32-wide `LinearGemm` panels) instead of the im2col GEMM: one group, a column stride
/// of 1 or 2, more than `DIRECT_MAX_CIN` (4) input channels (first layers stay `direct`, or
/// fused with their pooling: the ResNet-18 stem as an implicit GEMM plus its pool took
/// 1.75 + 0.28 ms against 1.85–2.08 fused), and a kernel bigger than 1×1 (1×1 stride-2
/// layers, K of 64–256, ran 10–50% slower at 2 threads: the copy and the transpose
/// weigh on so short a K; the 1×1 stride-1 ones are plain GEMMs).
pub fn implicit_preferred(conv: &Conv) -> bool {
    conv.groups == 1
        && (1..=2).contains(&conv.stride[1])
        && conv.in_channels > DIRECT_MAX_CIN
        && conv.kernel != [1, 1]
}

/// Whether `conv` on this input can run the first-layer direct kernel: one group, few
/// input channels, a kernel bigger than 1×1, K in one block (so it matches im2col bit
/// for bit), rows of at least half a micro-kernel tile, a tier with offset kernels.
fn direct_eligible(isa: Isa, conv: &Conv, in_shape: [usize; 3], out_shape: [usize; 3]) -> bool {
    let k = in_shape[0] * conv.kernel[0] * conv.kernel[1];
    conv.groups == 1
        && in_shape[0] <= DIRECT_MAX_CIN
        && conv.kernel != [1, 1]
        && choose_kc(k) == k
        && out_shape[2] >= 8
        && gemm::offs_kernels(isa).is_some()
}

/// A convolution layer planned for one ISA tier and one input shape.
#[derive(Clone, Debug)]
pub struct ConvKernel {
    isa: Isa,
    algo: Algo,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
    groups: usize,
    cig: usize,
    cog: usize,
    /// GEMM dimensions per group.
    k: usize,
    n: usize,
    kc: usize,
    nc: usize,
    /// Output channels per M tile (a multiple of MR_PACK, or all of `cog`).
    mc: usize,
    m_tiles: usize,
    n_tiles: usize,
    activation: crate::graph::Activation,
    /// Band geometry and tap offsets of [`Algo::Direct`].
    direct: Option<DirectPlan>,
    /// Two-phase plan for several workers on one sample (`shared_b` module).
    shared: Option<shared_b::SharedB>,
    prefetch: PrefetchTo,
}

/// Output channels (per group) up to which a 1×1 convolution on a large plane reads its
/// input in place row by row (`gemm1x1_rows`): with so few rows, packing B block by
/// block would cost more than the contiguous panels save (each packed block would serve
/// at most a few A slivers).
const ROWS_MAX_M: usize = 32;
/// Output pixels from which `gemm1x1_rows` is chosen (for at most [`ROWS_MAX_M`]
/// outputs).
const ROWS_MIN_N: usize = 2048;

/// The algorithm for a 1×1 convolution with `m` output and `k` input channels per group
/// over `n` pixels. Measured on the MobileNetV2 layers inside the model (AVX2, 1 thread,
/// A/B against `gemm1x1`): expansions (`m > k`, 16→96 to 160→960) run packed up to 2.6×
/// faster (16→96 on 112×112); projections to at most 32 channels on large planes
/// (32→16 on 112×112) up to 1.6× faster with `gemm1x1_rows`, but not on 28×28 (slower
/// by 5–20%); elsewhere `gemm1x1` and the others tie, so the old rule stays.
fn choose_1x1(m: usize, k: usize, n: usize) -> Algo {
    if n >= 64 && m > k {
        Algo::Gemm1x1Packed
    } else if n >= ROWS_MIN_N && m <= ROWS_MAX_M {
        Algo::Gemm1x1Rows
    } else if gemm::prefer_direct_b(m, k, n) {
        Algo::Gemm1x1
    } else {
        Algo::Gemm1x1Packed
    }
}
/// Micro-kernel column panels per worker from which a layer whose thread split repeats
/// the im2col gets a shared-B plan. Measured on 2 threads (ResNet-18, `--profile`,
/// against the output-channel split): the 28×28 stride-2 3×3 layer (25 panels) 0.65 →
/// 0.53 ms; the 14×14 (7 panels) and 7×7 (2 panels) ones 6–8% slower, and their 1×1
/// downsamples up to 25% slower (each worker then reads most of its panels and weights
/// from the other core's cache).
const SHARED_B_MIN_PANELS_PER_THREAD: usize = 4;
/// With fewer panels than that, an `im2col_gemm` layer whose im2col matrix (`K × N`) is at
/// least this many times its weights (`M × K`) is split by pixels even where the blocks
/// come out uneven, not by output channels (every worker would repeat the im2col) nor
/// shared (measured slower). LeNet-5's conv2 (50 outputs, 196 pixels, 7 panels of 32 on
/// AVX-512: 4 and 3 panels), 2 threads, `cnnrt bench --profile`: 0.091 ms split by
/// channels (36 and 14), 0.078 by pixels, 0.105 shared.
const PIXEL_SPLIT_MIN_N_OVER_M: usize = 2;
/// Output channels per M tile below which M is not split (B would be packed once per
/// M tile).
const MIN_MC: usize = 96;
/// Tiles per group the split aims for, so that small-N layers still parallelize.
const WANT_TILES: usize = 4;

/// Tiles of one group's `cog × n` output: `(mc, m_tiles, nc, n_tiles)`.
///
/// One worker: N blocks of a packed B block of about 256 KiB (L2), and output channels
/// split only when there are fewer than [`WANT_TILES`] blocks (for callers that run the
/// tiles themselves). Several workers: the tiles of all groups must share out evenly,
/// so N is cut into a multiple of `threads` blocks of equal width (in whole micro-kernel
/// columns), or, when that leaves few blocks and one much narrower than the others, the
/// output channels are cut into `threads` blocks instead (B is then packed once per
/// block, so each worker repeats the im2col of the whole layer).
fn split(
    g: usize,
    cog: usize,
    n: usize,
    kc: usize,
    nr: usize,
    threads: usize,
) -> (usize, usize, usize, usize) {
    let nc = choose_nc(n, kc, nr, 256 << 10);
    let n_tiles = n.div_ceil(nc).max(1);
    let m_split = |parts: usize| {
        let mc = cog.div_ceil(parts).div_ceil(MR_PACK) * MR_PACK;
        (mc.min(cog.max(1)), cog.div_ceil(mc).max(1))
    };
    if threads <= 1 {
        let (mut mc, mut m_tiles) = (cog.max(1), 1);
        if n_tiles < WANT_TILES && g < WANT_TILES && cog >= 2 * MIN_MC {
            (mc, m_tiles) = m_split(WANT_TILES.div_ceil(n_tiles).min(cog / MIN_MC).max(1));
        }
        return (mc, m_tiles, nc, n_tiles);
    }
    // Enough groups to share out as they are (workers claim tiles dynamically).
    if g.is_multiple_of(threads) || g >= 4 * threads {
        return (cog.max(1), 1, nc, n_tiles);
    }
    let parts = n_tiles.div_ceil(threads) * threads;
    let nc_even = n.div_ceil(parts).div_ceil(nr) * nr;
    let tiles_even = n.div_ceil(nc_even);
    let last = n - (tiles_even - 1) * nc_even;
    // Many tiles share out well under dynamic claiming whatever the last one's width;
    // few must be of equal width.
    if tiles_even >= 4 * threads || (tiles_even.is_multiple_of(threads) && 4 * last >= 3 * nc_even)
    {
        return (cog.max(1), 1, nc_even, tiles_even);
    }
    if cog >= 2 * threads * MR_PACK {
        let (mc, m_tiles) = m_split(threads);
        return (mc, m_tiles, nc, n_tiles);
    }
    (cog.max(1), 1, nc_even, tiles_even)
}

impl ConvKernel {
    /// Plans `conv` for `isa` (clamped to what this CPU supports) on a `[c, h, w]` input
    /// producing `out_shape`.
    pub fn new(isa: Isa, conv: &Conv, in_shape: [usize; 3], out_shape: [usize; 3]) -> ConvKernel {
        let one_by_one =
            conv.kernel == [1, 1] && conv.stride == [1, 1] && conv.pads == [0, 0, 0, 0];
        let taps = conv.in_channels / conv.groups.max(1) * conv.kernel[0] * conv.kernel[1];
        let min_k = if conv.stride == [1, 1] && isa.min(Isa::detect()) == Isa::Avx512 {
            DIRECT_MIN_K_S1_AVX512
        } else {
            DIRECT_MIN_K
        };
        let algo = if taps >= min_k && direct_eligible(isa, conv, in_shape, out_shape) {
            Algo::Direct
        } else if !one_by_one {
            Algo::Im2col
        } else {
            choose_1x1(
                conv.out_channels / conv.groups.max(1),
                conv.in_channels / conv.groups.max(1),
                out_shape[1] * out_shape[2],
            )
        };
        Self::build(isa, conv, in_shape, out_shape, algo)
    }

    /// Like [`ConvKernel::new`] with the algorithm forced (`"gemm1x1"`, `"gemm1x1_rows"`,
    /// `"gemm1x1_packed"`, `"im2col_gemm"`); the 1×1 ones need a 1×1 stride-1 unpadded
    /// convolution. For tests and benchmarks.
    pub fn with_algorithm(
        isa: Isa,
        conv: &Conv,
        in_shape: [usize; 3],
        out_shape: [usize; 3],
        algorithm: &str,
    ) -> ConvKernel {
        let algo = match algorithm {
            "gemm1x1" => Algo::Gemm1x1,
            "gemm1x1_rows" => Algo::Gemm1x1Rows,
            "gemm1x1_packed" => Algo::Gemm1x1Packed,
            "im2col_gemm" => Algo::Im2col,
            "direct" => {
                assert!(
                    direct_eligible(isa, conv, in_shape, out_shape),
                    "direct needs one group, at most {DIRECT_MAX_CIN} input channels, K <= 384, ow >= 8 and an x86 tier"
                );
                Algo::Direct
            }
            other => panic!("unknown convolution algorithm '{other}'"),
        };
        if !matches!(algo, Algo::Im2col | Algo::Direct) {
            assert!(
                conv.kernel == [1, 1] && conv.stride == [1, 1] && conv.pads == [0, 0, 0, 0],
                "{algorithm} needs a 1x1 stride-1 unpadded convolution"
            );
        }
        Self::build(isa, conv, in_shape, out_shape, algo)
    }

    fn build(
        isa: Isa,
        conv: &Conv,
        in_shape: [usize; 3],
        out_shape: [usize; 3],
        algo: Algo,
    ) -> ConvKernel {
        let [cin, h, w] = in_shape;
        let [cout, oh, ow] = out_shape;
        let [kh, kw] = conv.kernel;
        let g = conv.groups;
        assert!(
            g >= 1 && cin % g == 0 && cout % g == 0,
            "conv: groups must divide the channels"
        );
        assert_eq!(cin, conv.in_channels, "conv: input channels");
        assert_eq!(cout, conv.out_channels, "conv: output channels");
        assert!(
            kh >= 1
                && kw >= 1
                && conv.stride[0] >= 1
                && conv.stride[1] >= 1
                && conv.dilation[0] >= 1
                && conv.dilation[1] >= 1
        );
        let span_h = h + conv.pads[0] + conv.pads[2];
        let span_w = w + conv.pads[1] + conv.pads[3];
        let eff_h = conv.dilation[0] * (kh - 1) + 1;
        let eff_w = conv.dilation[1] * (kw - 1) + 1;
        assert!(
            span_h >= eff_h && span_w >= eff_w,
            "conv: kernel larger than the padded input"
        );
        assert_eq!(
            oh,
            (span_h - eff_h) / conv.stride[0] + 1,
            "conv: output height"
        );
        assert_eq!(
            ow,
            (span_w - eff_w) / conv.stride[1] + 1,
            "conv: output width"
        );
        let u = ukr(isa);
        let (cig, cog) = (cin / g, cout / g);
        let k = cig * kh * kw;
        let n = oh * ow;
        let kc = choose_kc(k);
        let (mc, m_tiles, nc, n_tiles) = split(g, cog, n, kc, u.nr, 1);
        let kernel = ConvKernel {
            isa: u.isa,
            algo,
            cin,
            h,
            w,
            cout,
            oh,
            ow,
            kernel: conv.kernel,
            stride: conv.stride,
            dilation: conv.dilation,
            pads: conv.pads,
            groups: g,
            cig,
            cog,
            k,
            n,
            kc,
            nc,
            mc,
            m_tiles,
            n_tiles,
            activation: conv.activation,
            direct: None,
            shared: None,
            prefetch: PrefetchTo::default(),
        };
        kernel.plan_direct(1)
    }

    /// For [`Algo::Direct`]: bands of output rows as the tiles, at most [`direct`]'s
    /// `BAND` rows, enough of them for every worker to get about two.
    fn plan_direct(mut self, threads: usize) -> ConvKernel {
        if self.algo != Algo::Direct {
            return self;
        }
        let band = direct::BAND.min(self.oh.div_ceil(2 * threads)).max(1);
        let plan = DirectPlan::new(&self, band);
        (self.mc, self.m_tiles) = (self.cog.max(1), 1);
        self.nc = plan.band * self.ow;
        self.n_tiles = self.oh.div_ceil(plan.band);
        self.direct = Some(plan);
        self
    }

    /// Where the GEMM's prefetch hints put the weights they fetch ahead (the session
    /// chooses, see [`PrefetchTo`]); results do not change.
    pub fn set_prefetch(&mut self, to: PrefetchTo) {
        self.prefetch = to;
    }

    /// The tier the kernel runs (the requested one, clamped to this CPU).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `[cout, oh, ow]`.
    pub fn out_shape(&self) -> [usize; 3] {
        [self.cout, self.oh, self.ow]
    }

    pub fn algorithm(&self) -> &'static str {
        match self.algo {
            Algo::Gemm1x1 => "gemm1x1",
            Algo::Gemm1x1Rows => "gemm1x1_rows",
            Algo::Gemm1x1Packed => "gemm1x1_packed",
            Algo::Im2col => "im2col_gemm",
            Algo::Direct => "direct",
        }
    }

    /// Re-plans the tiles for `threads` workers: tile counts that divide evenly among
    /// them (N blocks first, output-channel blocks when N is too small to split). The
    /// results are bit-identical for any split (module doc); only the speed changes.
    ///
    /// An `im2col_gemm` layer of one group whose split would repeat the im2col in every
    /// output-channel block gets a shared-B plan instead (`shared_b` module) for batches
    /// smaller than the worker count, and keeps the one-worker tiles for larger batches
    /// (a sample per worker), where the map is wide enough for every worker to own
    /// `SHARED_B_MIN_PANELS_PER_THREAD` panels of pixels.
    pub fn split_for_threads(mut self, threads: usize) -> ConvKernel {
        let nr = ukr(self.isa).nr;
        let threads = threads.max(1);
        let split_t = split(self.groups, self.cog, self.n, self.kc, nr, threads);
        let m_tiles = split_t.1;
        self.shared = None;
        if threads > 1
            && self.groups == 1
            && self.algo == Algo::Im2col
            && m_tiles > 1
            && self.n.div_ceil(nr) >= SHARED_B_MIN_PANELS_PER_THREAD * threads
        {
            return self.with_shared_b(threads);
        }
        // (Fewer panels than the shared-B plan needs, so these blocks stay small.)
        if threads > 1
            && self.groups == 1
            && self.algo == Algo::Im2col
            && m_tiles > 1
            && self.n >= PIXEL_SPLIT_MIN_N_OVER_M * self.cog
        {
            // Whole panels of pixels per worker: each packs and multiplies its own.
            self.nc = self.n.div_ceil(nr).div_ceil(threads) * nr;
            self.n_tiles = self.n.div_ceil(self.nc);
            (self.mc, self.m_tiles) = (self.cog.max(1), 1);
            return self.plan_direct(threads);
        }
        (self.mc, self.m_tiles, self.nc, self.n_tiles) = split_t;
        self.plan_direct(threads)
    }

    /// The shared-B plan for `threads` workers (and the one-worker tiles for batches),
    /// whatever the heuristics of [`ConvKernel::split_for_threads`] would choose; for
    /// tests. Unchanged unless the layer is `im2col_gemm` with one group.
    #[doc(hidden)]
    pub fn with_shared_b(mut self, threads: usize) -> ConvKernel {
        if self.groups != 1 || self.algo != Algo::Im2col {
            return self;
        }
        let nr = ukr(self.isa).nr;
        (self.mc, self.m_tiles, self.nc, self.n_tiles) =
            split(self.groups, self.cog, self.n, self.kc, nr, 1);
        self.shared = Some(shared_b::SharedB::new(&self, threads.max(1)));
        self
    }

    /// Multiply-adds times two for one sample.
    pub fn flops(&self) -> u64 {
        2 * (self.cout * self.k * self.n) as u64
    }

    pub fn packed_weight_len(&self) -> usize {
        self.cout * self.k
    }

    /// Packs OIHW weights (`[cout, cin/groups, kh, kw]`) into the layout in the module
    /// doc. Deterministic and ISA independent.
    pub fn pack_weights(&self, plain_oihw: &[f32], packed: &mut [f32]) {
        assert_eq!(plain_oihw.len(), self.cout * self.k, "conv: weight length");
        assert_eq!(
            packed.len(),
            self.packed_weight_len(),
            "conv: packed weight length"
        );
        let gl = self.cog * self.k;
        for g in 0..self.groups {
            pack_a(
                self.cog,
                self.k,
                &plain_oihw[g * gl..(g + 1) * gl],
                self.k,
                &mut packed[g * gl..(g + 1) * gl],
            );
        }
    }

    /// f32 elements of scratch one `run` (or one concurrent `run_tile`) needs.
    pub fn scratch_len(&self) -> usize {
        crate::kernels::whole_lines(match self.algo {
            Algo::Gemm1x1 | Algo::Gemm1x1Rows => 0,
            Algo::Direct => self
                .direct
                .as_ref()
                .map_or(0, |d| d.buffer_len(self.cig, self.stride[1])),
            _ => pack_scratch_len(self.kc, self.nc, ukr(self.isa).nr),
        })
    }

    /// Number of independent tiles.
    pub fn tiles(&self) -> usize {
        self.groups * self.m_tiles * self.n_tiles
    }

    fn check(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out_len: usize,
        scratch: &[f32],
    ) {
        self.check_inputs(packed_weights, bias, x, scratch);
        let out_elems = self.cout * self.n;
        assert_eq!(out_len, out_elems, "conv: output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), out_elems, "conv: residual length");
        }
    }

    /// The lengths of what every run reads: weights, bias, one sample's input, scratch.
    fn check_inputs(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        scratch: &[f32],
    ) {
        assert_eq!(
            packed_weights.len(),
            self.packed_weight_len(),
            "conv: packed weight length"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.cout, "conv: bias length");
        }
        assert_eq!(x.len(), self.cin * self.h * self.w, "conv: input length");
        assert!(
            scratch.len() >= self.scratch_len(),
            "conv: scratch too short"
        );
    }

    /// `out = act(conv(x) + bias + residual)` for one sample (`x`: `cin × h × w`,
    /// `out` and `residual`: `cout × oh × ow`), all tiles in order on this thread.
    pub fn run(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        self.check(packed_weights, bias, x, residual, out.len(), scratch);
        let out = SharedOut::new(out);
        // One pass per (group, N block) over all output channels: B is packed once.
        // Identical results to running the finer tiles (module doc).
        for g in 0..self.groups {
            for nt in 0..self.n_tiles {
                // SAFETY: checked above; one thread, disjoint blocks.
                unsafe {
                    self.block(
                        packed_weights,
                        bias,
                        x,
                        residual,
                        out,
                        scratch,
                        g,
                        0,
                        self.cog,
                        nt,
                    )
                };
            }
        }
    }

    /// Runs tile `tile` (`< tiles()`).
    #[allow(clippy::too_many_arguments)]
    pub fn run_tile(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        tile: usize,
    ) {
        // SAFETY: `out` is borrowed mutably, so nothing else writes or reads it.
        unsafe {
            self.run_tile_shared(
                packed_weights,
                bias,
                x,
                residual,
                SharedOut::new(out),
                scratch,
                tile,
            )
        }
    }

    /// [`ConvKernel::run_tile`] writing through a [`SharedOut`], so that threads can run
    /// different tiles at once (each with its own scratch).
    ///
    /// # Safety
    /// No concurrent call may run the same tile index on the same output, and nothing
    /// may read `out` until all calls are done.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_tile_shared(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        tile: usize,
    ) {
        self.check(packed_weights, bias, x, residual, out.len(), scratch);
        assert!(tile < self.tiles(), "conv: tile index");
        let per_group = self.m_tiles * self.n_tiles;
        let g = tile / per_group;
        let mt = (tile % per_group) / self.n_tiles;
        let nt = tile % self.n_tiles;
        let m0 = mt * self.mc;
        let m1 = self.cog.min(m0 + self.mc);
        self.block(
            packed_weights,
            bias,
            x,
            residual,
            out,
            scratch,
            g,
            m0,
            m1,
            nt,
        );
    }

    /// Rows per band of the `direct` plan (the most [`ConvKernel::direct_rows`] takes in
    /// one call), if this layer runs `direct`.
    pub(crate) fn direct_band(&self) -> Option<usize> {
        self.direct
            .as_ref()
            .filter(|_| gemm::offs_kernels(self.isa).is_some())
            .map(|d| d.band)
    }

    /// Output rows `oy0..oy1` (at most [`ConvKernel::direct_band`] of them) of every
    /// output channel of one sample, `act(conv(x) + bias)`, into `dst`: the same values
    /// as [`ConvKernel::run`] writes there (same micro-kernel calls per row).
    ///
    /// # Safety
    /// No concurrent writer of those rows of `dst`, and no reader of them until this
    /// returns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn direct_rows(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        dst: direct::Rows,
        scratch: &mut [f32],
        oy0: usize,
        oy1: usize,
    ) {
        let (Some(d), Some(kernels)) = (&self.direct, gemm::offs_kernels(self.isa)) else {
            panic!("conv: direct_rows on a layer that does not run direct");
        };
        self.check_inputs(packed_weights, bias, x, scratch);
        // SAFETY: arguments checked above (`rows` checks the rows against `dst`); the
        // caller guarantees exclusive access to the rows.
        unsafe {
            direct::rows(
                self,
                d,
                kernels,
                packed_weights,
                bias,
                x,
                None,
                dst,
                scratch,
                oy0,
                oy1,
            )
        }
    }

    /// The im2col matrix of one group's input `xg` as a B source.
    fn im2col<'a>(&self, xg: &'a [f32]) -> Im2col<'a> {
        Im2col::new(
            self.isa,
            xg,
            [self.h, self.w],
            self.kernel,
            self.stride,
            self.dilation,
            [self.pads[0], self.pads[1]],
            self.ow,
        )
    }

    /// Packs every B block of group 0 without multiplying (benchmarks the im2col alone).
    #[doc(hidden)]
    pub fn pack_only(&self, x: &[f32], scratch: &mut [f32]) {
        let plane = self.h * self.w;
        let im2col = self.im2col(&x[..self.cig * plane]);
        let u = ukr(self.isa);
        for n0 in (0..self.n).step_by(self.nc) {
            let nc = self.nc.min(self.n - n0);
            for k0 in (0..self.k).step_by(self.kc) {
                let kc = self.kc.min(self.k - k0);
                let len = kc * nc.div_ceil(u.nr) * u.nr;
                let (dst, tmp) = scratch.split_at_mut(len);
                gemm::pack_block(u, &im2col, k0, kc, n0, nc, dst, tmp);
            }
        }
    }

    /// Output channels `m0..m1` of group `g`, N block `nt`.
    ///
    /// Safety: arguments checked by `check`; `m0` a multiple of MR_PACK; no concurrent
    /// writer of the same block.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        g: usize,
        m0: usize,
        m1: usize,
        nt: usize,
    ) {
        debug_assert!(m0.is_multiple_of(MR_PACK) && m1 <= self.cog);
        if let (Some(d), Some(kernels)) = (&self.direct, gemm::offs_kernels(self.isa)) {
            // SAFETY: as this function's contract; a direct plan has one group and one
            // output-channel tile (m0 = 0, m1 = cog), `nt` a band.
            unsafe {
                direct::band(
                    self,
                    d,
                    kernels,
                    packed_weights,
                    bias,
                    x,
                    residual,
                    out,
                    scratch,
                    nt,
                )
            };
            return;
        }
        let n0 = nt * self.nc;
        if n0 >= self.n || m0 >= m1 {
            return;
        }
        let ncur = self.nc.min(self.n - n0);
        let plane = self.h * self.w;
        let xg = &x[g * self.cig * plane..(g + 1) * self.cig * plane];
        let row0 = g * self.cog + m0;
        let im2col = self.im2col(xg);
        let plain = gemm::PlainB { b: xg, ldb: plane };
        let src = match self.algo {
            Algo::Gemm1x1 => BSrc::Direct {
                ptr: xg.as_ptr().add(n0),
                ldb: plane,
            },
            Algo::Gemm1x1Rows => BSrc::DirectRows {
                ptr: xg.as_ptr().add(n0),
                ldb: plane,
            },
            Algo::Gemm1x1Packed => BSrc::Pack { packer: &plain, n0 },
            // Direct without offset kernels (not planned so): im2col over the band.
            Algo::Im2col | Algo::Direct => BSrc::Pack {
                packer: &im2col,
                n0,
            },
        };
        let t = Tile {
            m: m1 - m0,
            n: ncur,
            k: self.k,
            kc: self.kc,
            nc: self.nc,
            a: packed_weights
                .as_ptr()
                .add(g * self.cog * self.k + m0 * self.k),
            c: out.ptr().add(row0 * self.n + n0),
            ldc: self.n,
            bias_row: bias.map_or(std::ptr::null(), |b| b.as_ptr().add(row0)),
            bias_col: std::ptr::null(),
            residual: residual.map_or(std::ptr::null(), |r| r.as_ptr().add(row0 * self.n + n0)),
            act: self.activation,
            accumulate: false,
            prefetch: self.prefetch,
        };
        // SAFETY: `check` verified the lengths: packed A of group g from row m0 holds
        // (m1−m0)·K elements (panels start at multiples of MR_PACK, m0 is one); B rows of
        // the group's input channels cover columns n0..n0+ncur; output and residual rows
        // row0.. with stride n cover those columns; the bias covers rows row0..; scratch
        // has `scratch_len` elements for the packed block.
        drive(ukr(self.isa), &t, &src, scratch);
    }
}
