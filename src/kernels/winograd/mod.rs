//! Winograd convolution for 3×3 (and 5×5), stride-1, dilation-1, ungrouped layers (any
//! padding): F(4x4,3x3) on 6×6 input tiles, F(2x2,3x3) on 4×4 input tiles, and
//! F(2x2,5x5) on 6×6 input tiles 2 apart.
//!
//! With `m` the output tile (4 or 2), `r` the filter (3 or 5), `t = m + r − 1` the input
//! tile and `T = t²` the transformed positions, each output tile `Y` (m×m, one output
//! channel) is
//!
//! ```text
//! Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A
//! ```
//!
//! with `d_c` the t×t input tile of channel `c` (zero outside the image) and `g_c` the
//! r×r filter. Per position `ξ` the sum over channels is a GEMM
//! `M_ξ[cout × tiles] = U_ξ[cout × cin] · V_ξ[cin × tiles]`, so one layer is
//!
//! 1. input transform `V = Bᵀ d B` (SIMD, `LANES` tiles of one tile row at a time: the
//!    columns of `LANES` consecutive tiles are gathered with in-register shuffles from
//!    the input rows in place, masked loads leaving zeros for the padding; F(2x2) on maps
//!    of `LANES / 2` tiles a row takes two whole tile rows per group, from a zero-padded
//!    copy of their input rows, the "strip"; F(4x4) on rows of at least `LANES / 2`
//!    tiles, not a whole number of groups, takes `LANES` consecutive tiles across up to
//!    three tile rows, one gather per row merged lane by lane, so that blocks of whole
//!    micro-kernel tiles leave no lane or GEMM column idle);
//! 2. `T` independent GEMMs on the packed-GEMM micro-kernels (U pre-packed as packed A);
//! 3. output transform `Y = Aᵀ M A` (SIMD, same grouping; a group across rows stores each
//!    row's part from its lanes, shifted to the front), with bias, residual and the
//!    fused activation applied in the store; partial tiles at the right and bottom edges
//!    store only what lies inside the output.
//!
//! The work is cache-blocked over tiles: a block of `tb` tiles (raster order) is
//! transformed into `V` (`T × cin × tb`, sized for L2), multiplied into `M`
//! (`T × mcc × tb` for a chunk of `mcc` output channels at a time), and transformed back
//! before the next chunk or block. A block's tiles are V's and M's columns, each tile row
//! from a multiple of the transforms' lanes where that costs the GEMMs nothing (so a
//! group's stores and loads are whole vectors, not split across cache lines).
//!
//! F(4x4) layers of a channels-last region (`region`) run [`WinogradNhwc`] instead: the
//! same arithmetic with the channels in the vectors (no gathers), bit-identical.
//!
//! Matrices (Lavin & Gray; interpolation points 0, ±1, ±2 for F4x4, 0, ±1 for F2x2):
//!
//! ```text
//! F(4x4,3x3)  Bᵀ = [4  0 -5  0  1  0]   G = [ 1/4     0    0 ]   Aᵀ = [1 1  1 1  1 0]
//!                  [0 -4 -4  1  1  0]       [-1/6 -1/6 -1/6 ]        [0 1 -1 2 -2 0]
//!                  [0  4 -4 -1  1  0]       [-1/6  1/6 -1/6 ]        [0 1  1 4  4 0]
//!                  [0 -2 -1  2  1  0]       [1/24 1/12  1/6 ]        [0 1 -1 8 -8 1]
//!                  [0  2 -1 -2  1  0]       [1/24 -1/12 1/6 ]
//!                  [0  4  0 -5  0  1]       [   0    0    1 ]
//! F(2x2,3x3)  Bᵀ = [1  0 -1  0]   G = [ 1    0   0 ]   Aᵀ = [1 1  1  0]
//!                  [0  1  1  0]       [1/2  1/2 1/2]        [0 1 -1 -1]
//!                  [0 -1  1  0]       [1/2 -1/2 1/2]
//!                  [0  1  0 -1]       [ 0    0   1 ]
//! F(2x2,5x5)  Bᵀ as F(4x4,3x3)   G = [ 1/4    0    0    0    0 ]   Aᵀ = [1 1  1 1  1 0]
//!                                    [-1/6 -1/6 -1/6 -1/6 -1/6 ]        [0 1 -1 2 -2 1]
//!                                    [-1/6  1/6 -1/6  1/6 -1/6 ]
//!                                    [1/24 1/12  1/6  1/3  2/3 ]
//!                                    [1/24 -1/12 1/6 -1/3  2/3 ]
//!                                    [   0    0    0    0    1 ]
//! ```
//!
//! # Packed weight layout (ISA independent)
//!
//! `U_ξ = G g Gᵀ` is computed in f64 from the OIHW weights and rounded once to f32.
//! Position `ξ = k·t + l` (`k` the transformed row, `l` the column) holds the
//! `cout × cin` matrix `U_ξ[o][c]` in the [`gemm`] packed-A layout
//! (panels of [`MR_PACK`] = 12 output channels, the last one short and unpadded, K-major
//! inside): element `(o, c)` of position `ξ`, with `p = o / 12`, `h = min(12, cout − 12p)`,
//! is at `ξ·cout·cin + 12p·cin + c·h + (o − 12p)`. Length `T·cout·cin` (36× or 16× the
//! weight count ÷ 9, i.e. 4× or 1.78× the plain weights).
//!
//! # Tiles and determinism
//!
//! [`WinogradKernel::tiles`] independent work items: (block of tiles) × (block of output
//! channels). Every output element is computed by the same arithmetic whatever the
//! split: the transforms work lane-wise (a tile's lane position changes nothing), and the
//! GEMM computes each element of `M` as one in-order FMA chain over the input channels
//! (see the gemm module). So tiles in any order or on any number of threads give
//! bit-identical results (per ISA tier).
//!
//! # Accuracy
//!
//! Winograd trades multiplications for a larger rounding error (the transforms scale
//! values by up to ~10 in F4x4 and the GEMM sums transformed products that cancel
//! afterwards). [`measure_relative_error`] measures it for one layer on a calibration
//! input, for the converter to decide per layer; see `tests/prop_winograd.rs` for the
//! measured bounds.

// The transforms index several small matrices with the same loop variable, as the
// formulas are written; iterators would hide that.
#![allow(clippy::needless_range_loop)]

mod lanes;

use crate::graph::{Activation, Conv, Pool, WeightLayout};
use crate::kernels::elementwise::{ActV, Portable, Simd};
use std::ops::Range;

use crate::kernels::gemm::{
    self, choose_kc, drive, ukr, BSrc, PrefetchTo, SharedOut, Tile, MR_PACK,
};
use crate::kernels::reference;
use crate::kernels::whole_lines;
use crate::simd::Isa;
use lanes::{Lanes, Window};

/// `with_lanes!(isa, |s| body)`: evaluates `body` with `s` the transforms' SIMD token for
/// `isa` (already clamped to this CPU) inside its `#[target_feature]` trampoline.
macro_rules! with_lanes {
    ($isa:expr, |$s:ident| $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $isa >= Isa::Avx512 {
                // SAFETY: `isa` comes from `ukr(..).isa`, clamped to `Isa::detect()`, so
                // this CPU has AVX-512 F/BW/VL, AVX2 and FMA.
                let t = unsafe { crate::kernels::elementwise::Avx512::new_unchecked() };
                t.vectorize(
                    #[inline(always)]
                    |$s| $body,
                )
            } else if $isa >= Isa::Avx2 {
                // SAFETY: `isa` comes from `ukr(..).isa`, clamped to `Isa::detect()`, so
                // this CPU has AVX2 and FMA.
                let t = unsafe { crate::kernels::elementwise::Avx2Fma::new_unchecked() };
                t.vectorize(
                    #[inline(always)]
                    |$s| $body,
                )
            } else {
                let $s = Portable;
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let $s = Portable;
            $body
        }
    }};
}

mod k5;
mod nhwc;
pub use k5::{measure_relative_error as measure_f4x4_k5_error, WinogradF4x4K5};
pub use nhwc::{
    packed_from_panels as packed_from_nhwc_panels, panels_from_packed as nhwc_panels_from_packed,
    WinogradNhwc,
};

/// Which Winograd algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WinogradVariant {
    /// F(4x4,3x3): 6×6 input tiles, 36 GEMMs, 4× fewer multiplications than direct.
    F4x4,
    /// F(2x2,3x3): 4×4 input tiles, 16 GEMMs, 2.25× fewer multiplications; more accurate.
    F2x2,
    /// F(2x2,5x5): 6×6 input tiles 2 apart, 36 GEMMs, 2.8× fewer multiplications than a
    /// direct 5×5 convolution. The same interpolation points as F(4x4,3x3), hence the
    /// same input transform `Bᵀ` (and about the same rounding error).
    F2x2K5,
}

impl WinogradVariant {
    pub const ALL: [WinogradVariant; 3] = [
        WinogradVariant::F4x4,
        WinogradVariant::F2x2,
        WinogradVariant::F2x2K5,
    ];

    /// Output tile side `m`.
    pub fn output_tile(self) -> usize {
        match self {
            WinogradVariant::F4x4 => 4,
            WinogradVariant::F2x2 | WinogradVariant::F2x2K5 => 2,
        }
    }

    /// Filter side `r` (3 or 5).
    pub fn kernel_size(self) -> usize {
        match self {
            WinogradVariant::F4x4 | WinogradVariant::F2x2 => 3,
            WinogradVariant::F2x2K5 => 5,
        }
    }

    /// Input tile side `m + r − 1`.
    pub fn input_tile(self) -> usize {
        self.output_tile() + self.kernel_size() - 1
    }

    /// Transformed positions (`(m + r − 1)²`): the number of GEMMs.
    pub fn positions(self) -> usize {
        self.input_tile() * self.input_tile()
    }

    /// `"winograd_f4x4"` / `"winograd_f2x2"` / `"winograd_f2x2_5x5"`.
    pub fn algorithm(self) -> &'static str {
        match self {
            WinogradVariant::F4x4 => "winograd_f4x4",
            WinogradVariant::F2x2 => "winograd_f2x2",
            WinogradVariant::F2x2K5 => "winograd_f2x2_5x5",
        }
    }

    /// The weight layout a file stores this variant's transformed weights in.
    pub fn layout(self) -> WeightLayout {
        match self {
            WinogradVariant::F4x4 => WeightLayout::WinogradF4x4,
            WinogradVariant::F2x2 => WeightLayout::WinogradF2x2,
            WinogradVariant::F2x2K5 => WeightLayout::WinogradF2x2K5,
        }
    }

    /// The variant whose transformed weights `layout` holds (None: not a Winograd layout).
    pub fn of_layout(layout: WeightLayout) -> Option<WinogradVariant> {
        WinogradVariant::ALL
            .into_iter()
            .find(|v| v.layout() == layout)
    }

    /// The filter transform `G` (`t × r`, row-major), exact in f64 up to the thirds.
    /// F(2x2,5x5)'s rows are F(4x4,3x3)'s continued to the powers 3 and 4 of the same
    /// points (0, ±1, ±2 and ∞), with the same scale per row.
    fn g(self) -> &'static [f64] {
        const G4: [f64; 18] = [
            1.0 / 4.0,
            0.0,
            0.0, //
            -1.0 / 6.0,
            -1.0 / 6.0,
            -1.0 / 6.0, //
            -1.0 / 6.0,
            1.0 / 6.0,
            -1.0 / 6.0, //
            1.0 / 24.0,
            1.0 / 12.0,
            1.0 / 6.0, //
            1.0 / 24.0,
            -1.0 / 12.0,
            1.0 / 6.0, //
            0.0,
            0.0,
            1.0,
        ];
        const G2: [f64; 12] = [
            1.0, 0.0, 0.0, //
            0.5, 0.5, 0.5, //
            0.5, -0.5, 0.5, //
            0.0, 0.0, 1.0,
        ];
        const G25: [f64; 30] = [
            1.0 / 4.0,
            0.0,
            0.0,
            0.0,
            0.0, //
            -1.0 / 6.0,
            -1.0 / 6.0,
            -1.0 / 6.0,
            -1.0 / 6.0,
            -1.0 / 6.0, //
            -1.0 / 6.0,
            1.0 / 6.0,
            -1.0 / 6.0,
            1.0 / 6.0,
            -1.0 / 6.0, //
            1.0 / 24.0,
            1.0 / 12.0,
            1.0 / 6.0,
            1.0 / 3.0,
            2.0 / 3.0, //
            1.0 / 24.0,
            -1.0 / 12.0,
            1.0 / 6.0,
            -1.0 / 3.0,
            2.0 / 3.0, //
            0.0,
            0.0,
            0.0,
            0.0,
            1.0,
        ];
        match self {
            WinogradVariant::F4x4 => &G4,
            WinogradVariant::F2x2 => &G2,
            WinogradVariant::F2x2K5 => &G25,
        }
    }
}

/// Bytes of transformed input `V` per tile block that the block size aims for (half of a
/// 1 MiB L2; measured on conv3x3_stress: 192 KiB blocks of 16 tiles were 7–10% slower,
/// 384 KiB – 1.2 MiB all within noise of each other).
const V_BYTES: usize = 512 << 10;
/// Bytes of GEMM output `M` per channel chunk that the chunk size aims for.
const M_BYTES: usize = 512 << 10;
/// With several workers and fewer tile blocks than two each, the layer is split by
/// output channels (every worker transforms the whole input) when its transformed
/// weights `U` are more than this many times its transformed input `V`, else by tiles
/// (every worker reads all of `U`). ResNet-18 at 2 threads (AVX-512, per-layer profile,
/// 8 interleaved rounds), against the 32 + 17 tile blocks with channel halves before:
/// layer2's F(4x4) layers (U/V 2.6) 0.555 → 0.448 ms split by tiles, 0.518 by channels;
/// layer3's F(2x2) layers (U/V 5.2) 0.62 → 0.60 by tiles, 0.547 by channels; layer4's
/// (U/V 32, one tile block) were already split by channels.
const CHANNEL_SPLIT_MIN_U_OVER_V: usize = 4;
/// Transformed-weight bytes up to which F(4x4) tile blocks are cut at whole tile rows
/// (see `new_for_threads`), possibly into more blocks, each streaming U once more: up to
/// here U stays in L2 and a re-read is cheap (measured on 64-channel layers, U 576 KiB).
/// Larger U (from 128 channels in and out, 2.3 MiB) keeps blocks of whole micro-kernel
/// tiles: not measured with whole rows.
const ROW_BLOCKS_MAX_U_BYTES: usize = 1 << 20;
/// Work items the split aims for, so that small layers still parallelize.
const WANT_TILES: usize = 4;
/// Output channels per work item below which output channels are not split.
const MIN_MC: usize = 48;
/// The same with more than two workers and fewer items than workers (see
/// `new_for_threads`): two micro-kernel tiles of rows.
const MIN_MC_MANY: usize = 2 * MR_PACK;
/// Gather windows kept per input block for the groups of whole tile rows (more groups
/// per row make their windows as they go).
const CACHED_WINDOWS: usize = 8;
/// What [`WinogradKernel::output_block`] stores.
#[derive(Clone, Copy)]
struct OutArgs<'a> {
    /// Tiles `t0..t1` of one sample.
    t0: usize,
    t1: usize,
    /// Output channels `c0..c1`.
    c0: usize,
    c1: usize,
    bias: Option<&'a [f32]>,
    /// The sample's residual, if any.
    residual: Option<&'a [f32]>,
    /// The sample's output.
    out: *mut f32,
    /// The V / M geometry.
    g: Blocking,
}

/// Input channels below which F(2x2,5x5) GEMMs count as short (see `new_for_threads`).
const SHORT_K: usize = 32;
/// Widest group of tiles any tier transforms at once (sizes the strip).
const MAX_LANES: usize = 16;
/// Extra floats between the positions' matrices in V and M (breaks 4 KiB aliasing of
/// the 36 streams).
const XI_PAD: usize = 16;

/// Output channels per M chunk (a multiple of MR_PACK, at most `mc`): `t2 · mcc · ld`
/// floats about `M_BYTES` (`CNNRT_WINO_MBYTES`).
fn m_chunk(t2: usize, ld: usize, mc: usize) -> usize {
    let m_bytes = env_bytes("CNNRT_WINO_MBYTES", M_BYTES);
    let mcc_max = (m_bytes / (4 * t2 * ld) / MR_PACK * MR_PACK).max(MR_PACK);
    let chunks = mc.div_ceil(mcc_max).max(1);
    (mc.div_ceil(chunks).div_ceil(MR_PACK) * MR_PACK).min(mc)
}

/// Blocks of `tb` tiles that `ntiles` tiles make: the whole blocks, and the remainder as a
/// block of its own when it is at least half a block, else merged into the last one (a
/// short block would stream all the weights for a few tiles).
fn block_count(ntiles: usize, tb: usize) -> usize {
    let whole = (ntiles / tb.max(1)).max(1);
    let rest = ntiles.saturating_sub(whole * tb);
    whole + usize::from(rest > 0 && 2 * rest >= tb)
}

/// Tiles `t0..t1` of block `b` of `nblocks`: the tiles in `chunks` chunks of equal
/// length (within a tile), each chunk's blocks `tb` tiles but its last, which takes the
/// chunk's remainder (one chunk: every block `tb` tiles but the last).
fn block_range(
    ntiles: usize,
    nblocks: usize,
    chunks: usize,
    tb: usize,
    b: usize,
) -> (usize, usize) {
    let per = (nblocks / chunks.max(1)).max(1);
    let (c, j) = (b / per, b % per);
    let edge = |c: usize| (c * ntiles / chunks.max(1)).min(ntiles);
    let (c0, c1) = (edge(c), edge(c + 1));
    let t0 = (c0 + j * tb).min(c1);
    (t0, if j + 1 == per { c1 } else { c1.min(t0 + tb) })
}

/// The tile rows of tiles `t0..t1` (`ntx` a row): `(ty, txa, txb, col)`, row `ty`'s
/// tiles `txa..txb` at columns `col ..` of V and M, each row from a multiple of `pad`.
/// With `pad` the transforms' lanes, a row's groups of lanes start on whole vectors
/// instead of straddling two (their stores split across cache lines otherwise).
fn row_columns(
    ntx: usize,
    t0: usize,
    t1: usize,
    pad: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let (ty0, ty1) = (t0 / ntx, (t1 - 1) / ntx);
    let mut col = 0;
    (ty0..=ty1).map(move |ty| {
        let txa = if ty == ty0 { t0 % ntx } else { 0 };
        let txb = if ty == ty1 { (t1 - 1) % ntx + 1 } else { ntx };
        let at = col;
        col = (col + txb - txa).next_multiple_of(pad);
        (ty, txa, txb, at)
    })
}

/// Columns of V and M that tiles `t0..t1` take (see [`row_columns`]).
fn columns(ntx: usize, t0: usize, t1: usize, pad: usize) -> usize {
    // A forward fold: `row_columns` counts the columns as it goes.
    row_columns(ntx, t0, t1, pad).fold(0, |_, (_, a, b, col)| col + b - a)
}

/// A block size, overridable through the environment for tuning experiments.
fn env_bytes(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The row length and strides of V and M for one way of blocking the tiles: the
/// sample's own blocks, or blocks across the samples of a batch.
#[derive(Clone, Copy, Debug)]
struct Blocking {
    /// Row length of V and M (>= every block's columns).
    ld: usize,
    /// Each tile row of a block starts on a column of V and M that is a multiple of
    /// `pad` (see [`row_columns`]).
    pad: usize,
    /// Output channels per M chunk (a multiple of MR_PACK, or all of a work item's).
    mcc: usize,
    /// Distance between consecutive positions in V and in M.
    vxs: usize,
    mxs: usize,
    /// F(4x4) groups of lanes are `LANES` consecutive tiles in raster order, across tile
    /// rows (`pad` is 1), not tiles of one row: see `new_for_threads`.
    span: bool,
}

impl Blocking {
    /// Rows of `ld` columns, tile rows on multiples of `pad`, M chunks of `mcc`
    /// channels, for `cin` input channels; groups across tile rows if `span`.
    fn new(cin: usize, ld: usize, pad: usize, mcc: usize, span: bool) -> Blocking {
        debug_assert!(!span || pad == 1, "groups across rows need packed rows");
        Blocking {
            ld,
            pad,
            mcc,
            vxs: cin * ld + XI_PAD,
            mxs: mcc * ld + XI_PAD,
            span,
        }
    }
}

/// A 3×3 (or, for F(2x2,5x5), 5×5) stride-1 convolution planned as Winograd for one ISA tier and one input shape.
#[derive(Clone, Debug)]
pub struct WinogradKernel {
    isa: Isa,
    /// The tier of the transforms: AVX-512's 16 lanes only where a tile row's groups
    /// waste no more lanes than AVX2's 8 would (measured, ResNet-18 1 thread: 56×56 maps
    /// −8%; 28×28 and 14×14 maps, 7 and 4 tiles per row, no gain or +2% with 16 lanes).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    transform_isa: Isa,
    variant: WinogradVariant,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    /// Top and left padding.
    pt: usize,
    pl: usize,
    activation: Activation,
    /// Output tile side, input tile side, positions.
    m: usize,
    t: usize,
    t2: usize,
    /// Tiles per row, in all.
    ntx: usize,
    ntiles: usize,
    /// Tiles per block (the last block may have up to 1.5×) and blocks of one sample.
    tb: usize,
    nblocks: usize,
    /// Equal chunks of tiles the blocks come in (see [`block_range`]).
    chunks: usize,
    /// Output channels per work item (a multiple of MR_PACK), work items over channels.
    mc: usize,
    m_tiles: usize,
    kc: usize,
    /// The V / M geometry of one sample's blocks.
    own: Blocking,
    /// Row length of the strip.
    wstrip: usize,
    /// Tiles per block when the tiles of a batch's samples are blocked together, and the
    /// V / M geometry of those blocks (`None`: each sample on its own). See
    /// [`WinogradKernel::with_batch`].
    batched: Option<(usize, Blocking)>,
    /// The output is the 2×2 stride-2 max pool of the convolution's (see
    /// [`WinogradKernel::with_max_pool`]).
    max_pool: bool,
    /// The GEMMs run whole micro-kernel tiles of columns (up to `ld`), not the block's
    /// columns with narrow and column-tail kernels (see `new_for_threads`).
    whole_tiles: bool,
    prefetch: PrefetchTo,
}

impl WinogradKernel {
    /// Plans `conv` for `isa` (clamped to what this CPU supports) on a `[c, h, w]` input
    /// producing `out_shape`. `None` unless the kernel is `variant`'s (3×3, or 5×5) with
    /// stride 1, dilation 1 and one group (any padding).
    pub fn new(
        isa: Isa,
        conv: &Conv,
        in_shape: [usize; 3],
        out_shape: [usize; 3],
        variant: WinogradVariant,
    ) -> Option<WinogradKernel> {
        Self::new_for_threads(isa, conv, in_shape, out_shape, variant, 1)
    }

    /// [`WinogradKernel::new`] with the tiles planned for `threads` workers: when there
    /// are few tile blocks, their number aims at a multiple of `threads`. Results are
    /// bit-identical for any plan (module doc).
    pub fn new_for_threads(
        isa: Isa,
        conv: &Conv,
        in_shape: [usize; 3],
        out_shape: [usize; 3],
        variant: WinogradVariant,
        threads: usize,
    ) -> Option<WinogradKernel> {
        let threads = threads.max(1);
        let r = variant.kernel_size();
        if conv.kernel != [r, r]
            || conv.stride != [1, 1]
            || conv.dilation != [1, 1]
            || conv.groups != 1
        {
            return None;
        }
        let [cin, h, w] = in_shape;
        let [cout, oh, ow] = out_shape;
        assert_eq!(cin, conv.in_channels, "winograd: input channels");
        assert_eq!(cout, conv.out_channels, "winograd: output channels");
        let span_h = h + conv.pads[0] + conv.pads[2];
        let span_w = w + conv.pads[1] + conv.pads[3];
        assert!(
            span_h >= r && span_w >= r,
            "winograd: kernel larger than the padded input"
        );
        assert_eq!(oh, span_h + 1 - r, "winograd: output height");
        assert_eq!(ow, span_w + 1 - r, "winograd: output width");

        let u = ukr(isa);
        let m = variant.output_tile();
        let t = variant.input_tile();
        let t2 = t * t;
        let ntx = ow.div_ceil(m);
        let ntiles = ntx * oh.div_ceil(m);
        let nr = u.nr;
        // Tile blocks: V (t2 · cin · tb floats) about V_BYTES, at least nr tiles (each
        // block streams all the weights once), tb a multiple of nr (whole micro-kernel
        // tiles), their number a multiple of the workers' where there are few. The last
        // block takes the remainder when it is under half a block (a short block of its
        // own would stream all the weights for a few tiles).
        let per_tile = 4 * t2 * cin.max(1);
        let v_bytes = env_bytes("CNNRT_WINO_VBYTES", V_BYTES);
        let tb_max = (v_bytes / per_tile / nr * nr).max(nr);
        let mut want = ntiles.div_ceil(tb_max).max(1);
        if threads > 1 && want < 4 * threads {
            want = want.div_ceil(threads) * threads;
        }
        let mut tb = (ntiles.div_ceil(want).div_ceil(nr) * nr)
            .min(ntiles.div_ceil(8) * 8)
            .max(1);
        let transform_isa = if u.isa == Isa::Avx512 && ntx.div_ceil(16) * 16 > ntx.div_ceil(8) * 8 {
            Isa::Avx2
        } else {
            u.isa
        };
        let lanes = crate::kernels::elementwise::vector_lanes(transform_isa);
        // F(4x4) on rows of at least half a group of lanes, not a whole number of groups
        // (conv3x3_stress and ResNet-18's 56×56 maps: 14 tiles a row, 16 lanes): groups
        // of lanes across tile rows (up to three rows' tiles), so that blocks of whole
        // micro-kernel tiles (32) fill every GEMM column and every lane of the transforms.
        // A group across rows gathers each row's tiles and merges them lane by lane.
        // Before, blocks of two whole rows (28 tiles) ran the transforms on 16 + 14 lanes
        // and the GEMMs on 32 columns, 28 of them useful. conv3x3_stress's layers, per-layer profile, interleaved pairs on
        // the AMD EPYC: AVX-512 0.75 instead of 0.78 ms (GEMMs 66% of the time instead
        // of 76%, transforms 27% instead of 19%), AVX2 1.15-1.24 instead of 1.33-1.40;
        // the whole model 0.975 of the time at 1 thread, AVX2 0.933 (docs/KERNELS.md).
        // `CNNRT_WINO_SPAN=0` turns it off, for comparisons.
        let span = variant == WinogradVariant::F4x4
            && 2 * ntx >= lanes
            && ntx % lanes != 0
            && env_bytes("CNNRT_WINO_SPAN", 1) != 0;
        // Otherwise F(4x4) blocks of whole tile rows where a row is shorter than a block:
        // a block that ends inside a row leaves a part-empty group of lanes at its end and
        // at the next block's start, which costs a whole group's transforms (measured
        // before the groups across rows, conv3x3_stress, 14 tiles a row: blocks of 28
        // instead of 32 tiles, 1 thread 0.916 [0.892, 0.922] of the time, paired). With several workers, fewer rows per block until the blocks
        // share out evenly (or are many): 14 blocks of one row on 2 workers, not 7 of two
        // (0.857 [0.809, 0.915]). Not F(2x2), whose GEMMs weigh more than its transforms:
        // ResNet-18's 14×14 layers got slower with 28 + 21 tiles instead of 32 + 17.
        if variant == WinogradVariant::F4x4
            && !span
            && ntx < tb
            && 4 * t2 * cin * cout <= ROW_BLOCKS_MAX_U_BYTES
        {
            let blocks = |r: usize| block_count(ntiles, r * ntx);
            let mut r = tb / ntx;
            while threads > 1 && r > 1 && blocks(r) < 4 * threads && blocks(r) % threads != 0 {
                r -= 1;
            }
            tb = r * ntx;
        }
        let mut nblocks = block_count(ntiles, tb);
        // Fewer blocks than two per worker (blocks of whole micro-kernel tiles left
        // ResNet-18's 49-tile maps as 32 + 17 tiles, one worker idle for a third of the
        // layer): share the layer out evenly instead, by tiles or by output channels,
        // whichever repeats less. By tiles, each worker transforms only its tiles' input
        // but reads all the transformed weights U; by channels, each reads its share of U
        // but transforms the whole input V. See CHANNEL_SPLIT_MIN_U_OVER_V.
        let mut tiles_shared = false;
        if threads > 1 && nblocks < 2 * threads && ntiles >= 8 * threads {
            let (u_floats, v_floats) = (t2 * cout * cin, t2 * cin * ntiles);
            let even = ntiles.div_ceil(threads);
            if u_floats > CHANNEL_SPLIT_MIN_U_OVER_V * v_floats {
                (nblocks, tb) = (1, ntiles);
            } else if (threads - 1) * even < ntiles {
                (nblocks, tb, tiles_shared) = (threads, even, true);
            }
        }
        // Groups across rows with several workers: the blocks in one chunk of tiles per
        // worker, each chunk's last block taking the chunk's remainder, so that every
        // worker gets the same number of tiles (conv3x3_stress on 2 workers: blocks of
        // 32, 32, 34 tiles each; 96 and 100 tiles made the layers 10% slower).
        let mut chunks = 1;
        if span && threads > 1 && !tiles_shared && nblocks >= 2 * threads {
            let per = (ntiles / threads).div_ceil(tb).max(1);
            let per = if (per - 1) * tb + tb / 2 > ntiles / threads {
                per - 1
            } else {
                per
            };
            (nblocks, chunks) = (per.max(1) * threads, threads);
        }
        let block = |b: usize| block_range(ntiles, nblocks, chunks, tb, b);
        // Tile rows on whole groups of lanes in V and M where that costs the GEMMs no
        // more micro-kernel columns (LeNet-5's conv2, F(2x2,5x5): rows of 7 tiles on 8 or
        // 16 lanes). Not for F(2x2) pairs, whose two rows fill one group.
        let cost = |(t0, t1): (usize, usize), pad| gemm::column_cost(u, columns(ntx, t0, t1, pad));
        // F(2x2,5x5) with few input channels (LeNet-5's conv2: 20): its 36 GEMMs have
        // K = cin, short enough that each micro-kernel call's fixed cost, and the narrow
        // and column-tail kernels at the end of a block's columns, weigh on them; whole
        // lane groups per tile row and GEMMs over whole micro-kernel tiles of columns
        // (columns past the block's hold scratch values whose products are never read)
        // made LeNet-5's conv2 0.058 instead of 0.072 ms alone (1 thread, AVX-512; either
        // change alone gained nothing; on 48 or more channels both lost, up to 1.5×).
        let short_k = variant == WinogradVariant::F2x2K5 && cin < SHORT_K;
        let pad = if span {
            1
        } else if short_k
            || ntx % lanes != 0
                && !(variant == WinogradVariant::F2x2 && 2 * ntx == lanes)
                && (0..nblocks).all(|b| cost(block(b), lanes) <= cost(block(b), 1))
        {
            lanes
        } else {
            1
        };
        let widest = (0..nblocks)
            .map(|b| {
                let (t0, t1) = block(b);
                columns(ntx, t0, t1, pad)
            })
            .max()
            .unwrap_or(1);
        // Rows of V and M on whole 64-byte lines (16 floats), so no 512-bit load of a
        // row straddles two lines (24 tiles would otherwise give rows 96 bytes apart).
        let ld = whole_lines(widest);
        let whole_tiles = short_k;
        let ld = if whole_tiles {
            ld.next_multiple_of(nr)
        } else {
            ld
        };
        // Output channels: split when there are too few blocks to parallelize. Every
        // channel block transforms the whole tile block's input again, so with one tile
        // block and several workers the split is one channel block per worker.
        let mut mc = cout.max(1);
        if nblocks < WANT_TILES && cout >= 2 * MIN_MC && !tiles_shared {
            let want = if threads > 1 && nblocks == 1 {
                threads
            } else {
                WANT_TILES.div_ceil(nblocks)
            };
            let split = want.min(cout / MIN_MC).max(1);
            mc = cout.div_ceil(split).div_ceil(MR_PACK) * MR_PACK;
        }
        // More than two workers and fewer items than workers (ResNet-18's 28×28, 14×14
        // and 7×7 layers made 4, 4 and 9 items at 8–16 threads, and stopped getting
        // faster past 4 threads on a 16-core Xeon): output channels in blocks of at
        // least MIN_MC_MANY until there is an item per worker. Each block transforms its
        // tile block's input again (a small share of the layer's work). One and two
        // workers keep the plans above.
        if threads > 2 && nblocks * cout.div_ceil(mc) < threads {
            let want = threads.div_ceil(nblocks);
            let narrow = cout.div_ceil(want).div_ceil(MR_PACK) * MR_PACK;
            mc = mc.min(narrow.max(MIN_MC_MANY));
        }
        let m_tiles = cout.div_ceil(mc).max(1);
        let mcc = m_chunk(t2, ld, mc);
        Some(WinogradKernel {
            isa: u.isa,
            transform_isa,
            variant,
            cin,
            h,
            w,
            cout,
            oh,
            ow,
            pt: conv.pads[0],
            pl: conv.pads[1],
            activation: conv.activation,
            m,
            t,
            t2,
            ntx,
            ntiles,
            tb,
            nblocks,
            chunks,
            mc,
            m_tiles,
            kc: choose_kc(cin),
            own: Blocking::new(cin, ld, pad, mcc, span),
            wstrip: ((ntx + MAX_LANES) * m + 2).div_ceil(8) * 8,
            batched: None,
            max_pool: false,
            whole_tiles,
            prefetch: PrefetchTo::default(),
        })
    }

    /// Plans batches of up to `max_batch` samples too: where a sample has fewer tiles than
    /// a block holds (ResNet-18's 7×7 and 14×14 maps: 16 and 49 tiles, blocks of 32), the
    /// tiles of consecutive samples share blocks, and each block streams the transformed
    /// weights once for all its tiles instead of once per sample. Used by
    /// [`WinogradKernel::run_batch`] and [`WinogradKernel::run_batch_item`] when it gives
    /// fewer blocks; bit-identical to running the samples one by one (each element of M is
    /// the same FMA chain over the input channels whichever block computes it).
    /// `CNNRT_WINO_BATCH_TILES` overrides the tiles per block (0: off), for tuning.
    pub fn with_batch(self, max_batch: usize) -> WinogradKernel {
        let nr = ukr(self.isa).nr;
        let per_tile = 4 * self.t2 * self.cin.max(1);
        let tb = (env_bytes("CNNRT_WINO_VBYTES", V_BYTES) / per_tile / nr * nr).max(nr);
        match env_bytes("CNNRT_WINO_BATCH_TILES", tb) {
            0 => self,
            tiles => self.with_batch_tiles(max_batch, tiles),
        }
    }

    /// [`WinogradKernel::with_batch`] with `tiles` tiles per block across samples (any
    /// count from 1, for tests and tuning).
    pub fn with_batch_tiles(mut self, max_batch: usize, tiles: usize) -> WinogradKernel {
        let tiles = tiles.max(1);
        // A block's last group of tile columns may spill up to MAX_LANES − 1 columns past
        // its end while a later sample's columns of the same block are still to come, so
        // rows keep that much room (in one sample's block the spill lands in the next row,
        // written after it).
        let ld = crate::kernels::whole_lines(tiles + MAX_LANES);
        let mcc = m_chunk(self.t2, ld, self.mc);
        self.batched = Some((tiles, Blocking::new(self.cin, ld, 1, mcc, self.own.span)));
        if !self.batches(max_batch) {
            self.batched = None;
        }
        self
    }

    /// Where the GEMM's prefetch hints put the weights they fetch ahead (the session
    /// chooses, see [`PrefetchTo`]); results do not change.
    pub fn set_prefetch(&mut self, to: PrefetchTo) {
        self.prefetch = to;
    }

    /// The tier the GEMMs run (the requested one, clamped to this CPU); the transforms
    /// run AVX2 on the AVX-512 tier where 16 lanes would waste more of a tile row.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn variant(&self) -> WinogradVariant {
        self.variant
    }

    /// `"winograd_f4x4"` or `"winograd_f2x2"`.
    pub fn algorithm(&self) -> &'static str {
        match (self.variant, self.max_pool) {
            (_, false) => self.variant.algorithm(),
            (WinogradVariant::F2x2K5, true) => "winograd_f2x2_5x5_pool",
            (_, true) => "winograd_f2x2_pool",
        }
    }

    /// `[cout, oh, ow]`, or the pool's `[cout, ⌊oh/2⌋, ⌊ow/2⌋]`.
    pub fn out_shape(&self) -> [usize; 3] {
        if self.max_pool {
            [self.cout, self.oh / 2, self.ow / 2]
        } else {
            [self.cout, self.oh, self.ow]
        }
    }

    /// The same convolution with its output max-pooled 2×2, stride 2, in the output
    /// transform's store: an F(2x2) output tile is one pool window, so each tile's four
    /// outputs (bias and activation applied) become one pooled value, written as one
    /// vector of a tile row's pooled outputs. `run` then writes `cout × ⌊oh/2⌋ × ⌊ow/2⌋`
    /// (an odd last row or column dropped) and takes no residual. `None` unless the
    /// variant's output tile is 2×2 and `pool` is a 2×2 stride-2 max pool without padding
    /// or dilation whose output shape `pool_out` is that, on at least 2 rows and columns.
    ///
    /// Why: LeNet-5's conv2 → 2×2 max pool. Apart, the pool re-reads the convolution's
    /// planar output (14-wide rows, masked loads and a de-interleave per row) in one more
    /// pass and fork-join; here the tile's four values are in registers.
    pub fn with_max_pool(mut self, pool: &Pool, pool_out: [usize; 3]) -> Option<Self> {
        let max_2x2 = pool.is_plain_max_2x2();
        if !max_2x2 || self.m != 2 || self.oh < 2 || self.ow < 2 {
            return None;
        }
        if pool_out != [self.cout, self.oh / 2, self.ow / 2] {
            return None;
        }
        self.max_pool = true;
        Some(self)
    }

    /// Multiply-adds times two of the equivalent direct convolution (`2·cout·cin·r²·oh·ow`),
    /// the figure GFLOP/s are quoted in.
    pub fn flops(&self) -> u64 {
        let r = self.variant.kernel_size();
        2 * (self.cout * self.cin * r * r * self.oh * self.ow) as u64
    }

    /// `T · cout · cin` (see the module doc for the layout).
    pub fn packed_weight_len(&self) -> usize {
        self.t2 * self.cout * self.cin
    }

    /// Transforms OIHW weights (`[cout, cin, r, r]`) into `U_ξ = G g Gᵀ` (in f64, rounded
    /// once) and packs them in the layout of the module doc. Deterministic and ISA
    /// independent. Allocates (a `cout × cin` staging matrix); run it once, ahead of time.
    pub fn pack_weights(&self, plain_oihw: &[f32], packed: &mut [f32]) {
        let (cout, cin, t) = (self.cout, self.cin, self.t);
        let r = self.variant.kernel_size();
        assert_eq!(
            plain_oihw.len(),
            cout * cin * r * r,
            "winograd: weight length"
        );
        assert_eq!(
            packed.len(),
            self.packed_weight_len(),
            "winograd: packed weight length"
        );
        let g = self.variant.g();
        // u[ξ][o·cin + c]
        let mut u = vec![vec![0f32; cout * cin]; self.t2];
        for o in 0..cout {
            for c in 0..cin {
                let f = &plain_oihw[(o * cin + c) * r * r..][..r * r];
                // gg = G · f  (t × r)
                let mut gg = [[0f64; 5]; 6];
                for (k, row) in gg.iter_mut().enumerate().take(t) {
                    for (b, v) in row.iter_mut().enumerate().take(r) {
                        *v = (0..r).map(|a| g[k * r + a] * f[a * r + b] as f64).sum();
                    }
                }
                for k in 0..t {
                    for l in 0..t {
                        let v: f64 = (0..r).map(|b| gg[k][b] * g[l * r + b]).sum();
                        u[k * t + l][o * cin + c] = v as f32;
                    }
                }
            }
        }
        let len = cout * cin;
        for (xi, ux) in u.iter().enumerate() {
            gemm::pack_a(cout, cin, ux, cin, &mut packed[xi * len..(xi + 1) * len]);
        }
    }

    /// Offsets of V, M and the strip in the (64-byte aligned) scratch, and its length.
    fn layout(&self, g: Blocking) -> (usize, usize, usize) {
        let v = self.t2 * g.vxs;
        let mm = self.t2 * g.mxs;
        // t + 2 rows: two F(2x2) tile rows at once (see `input_block`) read 6.
        let strip = (self.t + 2) * self.wstrip;
        (v, v + mm, v + mm + strip)
    }

    /// f32 elements of scratch one `run` (or one concurrent `run_tile`, `run_batch_item`)
    /// needs.
    pub fn scratch_len(&self) -> usize {
        let mut len = self.layout(self.own).2;
        if let Some((_, g)) = self.batched {
            len = len.max(self.layout(g).2);
        }
        crate::kernels::whole_lines(len + 16)
    }

    /// Number of independent tiles (work items).
    pub fn tiles(&self) -> usize {
        self.nblocks * self.m_tiles
    }

    /// The column multiple each tile row of a block starts on in the transformed input
    /// and output (1: packed; the transforms' lanes: each row's groups on whole vectors).
    /// For tests and tuning.
    pub fn row_pad(&self) -> usize {
        self.own.pad
    }

    /// Whether the F(4x4) transforms' groups of lanes run across tile rows (see
    /// `new_for_threads`). For tests and tuning.
    pub fn groups_span_rows(&self) -> bool {
        self.own.span
    }

    /// The tiles of one sample's tile block `b` (`b` < the blocks of
    /// [`WinogradKernel::work_split`]). For tests and tuning.
    pub fn block_tiles(&self, b: usize) -> Range<usize> {
        let (t0, t1) = block_range(self.ntiles, self.nblocks, self.chunks, self.tb, b);
        t0..t1
    }

    /// How the work items split the layer: (tile blocks, tiles per block before the
    /// last, which takes the remainder; output-channel blocks).
    pub fn work_split(&self) -> (usize, usize, usize) {
        (self.nblocks, self.tb, self.m_tiles)
    }

    /// Checks the arguments of a run on `n` samples.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out_len: usize,
        scratch: &[f32],
        n: usize,
    ) {
        assert_eq!(
            packed.len(),
            self.packed_weight_len(),
            "winograd: packed weight length"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.cout, "winograd: bias length");
        }
        assert_eq!(
            x.len(),
            n * self.cin * self.h * self.w,
            "winograd: input length"
        );
        let out_elems = n * self.out_shape().iter().product::<usize>();
        assert_eq!(out_len, out_elems, "winograd: output length");
        assert!(
            !(self.max_pool && residual.is_some()),
            "winograd: a residual with the pooled output"
        );
        if let Some(r) = residual {
            assert_eq!(r.len(), out_elems, "winograd: residual length");
        }
        assert!(
            scratch.len() >= self.scratch_len(),
            "winograd: scratch too short"
        );
    }

    /// `out = act(conv(x) + bias + residual)` for one sample (`x`: `cin × h × w`, `out` and
    /// `residual`: `cout × oh × ow`), all tiles in order on this thread. No allocation.
    pub fn run(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        self.check(packed, bias, x, residual, out.len(), scratch, 1);
        let out = SharedOut::new(out);
        for b in 0..self.nblocks {
            // SAFETY: checked above; one thread, each block once.
            unsafe {
                self.item(
                    packed,
                    bias,
                    x,
                    residual,
                    out,
                    scratch,
                    0,
                    b,
                    0..self.m_tiles,
                )
            };
        }
    }

    /// Block `b` of a sample (`n` = 0) or of a batch of `n` blocked across samples, its
    /// output-channel work items `mts`.
    ///
    /// Safety: as [`WinogradKernel::block`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn item(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        n: usize,
        b: usize,
        mts: Range<usize>,
    ) {
        let (g, tiles) = if n == 0 {
            (self.own, self.block_tiles(b))
        } else {
            let (tb, g) = self.batched.expect("winograd: batch blocks planned");
            let g0 = b * tb;
            (g, g0..(n * self.ntiles).min(g0 + tb))
        };
        // SAFETY: the caller's.
        unsafe { self.block(packed, bias, x, residual, out, scratch, g, tiles, mts) };
    }

    /// Whether a batch of `n` samples runs in blocks across samples
    /// ([`WinogradKernel::with_batch`]): planned for, and fewer blocks than per sample.
    pub fn batches(&self, n: usize) -> bool {
        n > 1 && self.batched.is_some() && self.batch_blocks(n) < n * self.nblocks
    }

    /// Blocks across samples of a batch of `n` (0 unless planned).
    fn batch_blocks(&self, n: usize) -> usize {
        self.batched
            .map_or(0, |(tb, _)| (n * self.ntiles).div_ceil(tb))
    }

    /// Independent work items of a batch of `n` samples when [`WinogradKernel::batches`]
    /// (blocks across samples × output-channel blocks).
    pub fn batch_items(&self, n: usize) -> usize {
        self.batch_blocks(n) * self.m_tiles
    }

    /// `out = act(conv(x) + bias + residual)` for a batch of `n` samples in blocks across
    /// samples (`x`: `n × cin × h × w`, `out` and `residual`: `n × cout × oh × ow`), on
    /// this thread. Panics unless [`WinogradKernel::batches`]`(n)`. No allocation.
    #[allow(clippy::too_many_arguments)]
    pub fn run_batch(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        n: usize,
    ) {
        assert!(self.batches(n), "winograd: not planned for batches of {n}");
        self.check(packed, bias, x, residual, out.len(), scratch, n);
        let out = SharedOut::new(out);
        for b in 0..self.batch_blocks(n) {
            // SAFETY: checked above; one thread, each block once.
            unsafe {
                self.item(
                    packed,
                    bias,
                    x,
                    residual,
                    out,
                    scratch,
                    n,
                    b,
                    0..self.m_tiles,
                )
            };
        }
    }

    /// Work item `item` (`< batch_items(n)`) of [`WinogradKernel::run_batch`], writing
    /// through a [`SharedOut`] so that threads can run different items at once (each with
    /// its own scratch).
    ///
    /// # Safety
    /// No concurrent call may run the same item on the same output, and nothing may read
    /// `out` until all calls are done.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_batch_item(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        n: usize,
        item: usize,
    ) {
        assert!(self.batches(n), "winograd: not planned for batches of {n}");
        self.check(packed, bias, x, residual, out.len(), scratch, n);
        assert!(item < self.batch_items(n), "winograd: batch item index");
        let (b, mt) = (item / self.m_tiles, item % self.m_tiles);
        // SAFETY: checked above; the caller guarantees no concurrent writer of this item.
        unsafe { self.item(packed, bias, x, residual, out, scratch, n, b, mt..mt + 1) };
    }

    /// Runs tile `tile` (`< tiles()`).
    #[allow(clippy::too_many_arguments)]
    pub fn run_tile(
        &self,
        packed: &[f32],
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
                packed,
                bias,
                x,
                residual,
                SharedOut::new(out),
                scratch,
                tile,
            )
        }
    }

    /// [`WinogradKernel::run_tile`] writing through a [`SharedOut`], so that threads can
    /// run different tiles at once (each with its own scratch).
    ///
    /// # Safety
    /// No concurrent call may run the same tile index on the same output, and nothing may
    /// read `out` until all calls are done.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_tile_shared(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        tile: usize,
    ) {
        self.check(packed, bias, x, residual, out.len(), scratch, 1);
        assert!(tile < self.tiles(), "winograd: tile index");
        let (b, mt) = (tile / self.m_tiles, tile % self.m_tiles);
        // SAFETY: checked above; the caller guarantees no concurrent writer of this tile.
        unsafe { self.item(packed, bias, x, residual, out, scratch, 0, b, mt..mt + 1) };
    }

    /// Tiles `tiles` (indices over the samples of `x`: tile `i` is tile `i % ntiles` of
    /// sample `i / ntiles`) as one block with the geometry `g`, output-channel work items
    /// `mts`. Each sample's run of tiles is transformed into its own columns of V, the
    /// GEMMs take all the block's columns at once, and each sample's columns of M are
    /// transformed back into that sample's output.
    ///
    /// Safety: arguments checked by `check` for the samples the tiles reach; no
    /// concurrent writer of the same outputs.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        g: Blocking,
        tiles: Range<usize>,
        mts: Range<usize>,
    ) {
        if tiles.is_empty() {
            return;
        }
        let in_len = self.cin * self.h * self.w;
        let out_len = self.out_shape().iter().product::<usize>();
        let nt = self.ntiles;
        // (sample, its tiles t0..t1, their first column in V and M), each sample's
        // from a multiple of g.pad
        let runs = || {
            let (s0, s1) = (tiles.start / nt, (tiles.end - 1) / nt);
            let mut col = 0;
            (s0..=s1).map(move |s| {
                let a = tiles.start.max(s * nt) - s * nt;
                let b = tiles.end.min((s + 1) * nt) - s * nt;
                let at = col;
                col = (col + columns(self.ntx, a, b, g.pad)).next_multiple_of(g.pad);
                (s, a, b, at)
            })
        };
        let (off_m, off_s, len) = self.layout(g);
        let al = scratch.as_ptr().align_offset(64).min(16);
        let sc = &mut scratch[al..al + len];
        let base = sc.as_mut_ptr();
        let vbuf = base;
        // SAFETY: V, M and the strip are disjoint ranges of `sc` (layout).
        let (mbuf, strip) = unsafe { (base.add(off_m), base.add(off_s)) };
        for (s, t0, t1, col) in runs() {
            let xs = &x[s * in_len..(s + 1) * in_len];
            // SAFETY: V has t2·vxs floats, columns col .. col + (t1 − t0) + spill < ld of
            // each row (ld >= the block's tiles, plus MAX_LANES across samples); the
            // strip t·wstrip; x was checked by `check`. Runs go left to right, so a run's
            // spill past its columns is overwritten by the next run.
            // F(2x2,5x5) in its own instance, so that the other variants' loop is
            // compiled without its gathers.
            let v = vbuf.wrapping_add(col);
            if self.variant == WinogradVariant::F2x2K5 {
                with_lanes!(self.transform_isa, |sx| unsafe {
                    self.input_block::<_, true>(sx, xs, t0, t1, v, strip, g)
                });
            } else {
                with_lanes!(self.transform_isa, |sx| unsafe {
                    self.input_block::<_, false>(sx, xs, t0, t1, v, strip, g)
                });
            }
        }
        let u = ukr(self.isa);
        // The GEMMs' columns: the runs' columns, padding between their rows included.
        // (A forward fold: `runs` counts the columns as it goes.)
        let n = runs().fold(0, |_, (_, t0, t1, col)| {
            col + columns(self.ntx, t0, t1, g.pad)
        });
        let n = if self.whole_tiles {
            n.next_multiple_of(u.nr).min(g.ld)
        } else {
            n
        };
        let (cout, cin) = (self.cout, self.cin);
        for mt in mts {
            let m0 = mt * self.mc;
            let m1 = cout.min(m0 + self.mc);
            for c0 in (m0..m1).step_by(g.mcc) {
                let c1 = m1.min(c0 + g.mcc);
                for xi in 0..self.t2 {
                    // SAFETY: c0 is a multiple of MR_PACK, so rows c0.. of U_ξ form whole
                    // panels from c0·cin on (`check` verified the packed length); V_ξ
                    // has cin rows of ld >= n columns; M_ξ c1 − c0 <= mcc rows of ld.
                    unsafe {
                        let tile = Tile {
                            m: c1 - c0,
                            n,
                            k: cin,
                            kc: self.kc,
                            nc: g.ld,
                            a: packed.as_ptr().add(xi * cout * cin + c0 * cin),
                            c: mbuf.add(xi * g.mxs),
                            ldc: g.ld,
                            bias_row: std::ptr::null(),
                            bias_col: std::ptr::null(),
                            residual: std::ptr::null(),
                            act: Activation::Identity,
                            accumulate: false,
                            prefetch: self.prefetch,
                        };
                        drive(
                            u,
                            &tile,
                            &BSrc::Direct {
                                ptr: vbuf.add(xi * g.vxs),
                                ldb: g.ld,
                            },
                            &mut [],
                        );
                    }
                }
                for (s, t0, t1, col) in runs() {
                    let rs = residual.map(|r| &r[s * out_len..(s + 1) * out_len]);
                    // The pooled and F(2x2,5x5) stores in their own instances (as
                    // `input_block`).
                    let (mb, o) = (mbuf.wrapping_add(col), out.ptr().wrapping_add(s * out_len));
                    let args = OutArgs {
                        t0,
                        t1,
                        c0,
                        c1,
                        bias,
                        residual: rs,
                        out: o,
                        g,
                    };
                    // SAFETY: in each arm, M holds the chunk, this run's tiles at columns
                    // col..; `check` verified out, residual and bias; the caller
                    // guarantees no concurrent writer of these outputs.
                    match (self.variant == WinogradVariant::F2x2K5, self.max_pool) {
                        (false, false) => with_lanes!(self.transform_isa, |sx| unsafe {
                            self.output_block::<_, false, false>(sx, mb, args)
                        }),
                        (true, false) => with_lanes!(self.transform_isa, |sx| unsafe {
                            self.output_block::<_, true, false>(sx, mb, args)
                        }),
                        (false, true) => with_lanes!(self.transform_isa, |sx| unsafe {
                            self.output_block::<_, false, true>(sx, mb, args)
                        }),
                        (true, true) => with_lanes!(self.transform_isa, |sx| unsafe {
                            self.output_block::<_, true, true>(sx, mb, args)
                        }),
                    }
                }
            }
        }
    }

    /// `V[ξ][c][i] = (Bᵀ d B)[ξ]` for tiles `t0 + i`, `i < t1 − t0`, every channel.
    ///
    /// Safety: `v` has `t2 · vxs` floats, `strip` `(t + 2) · wstrip`.
    #[inline(always)]
    unsafe fn input_block<S: Lanes, const K5: bool>(
        &self,
        s: S,
        x: &[f32],
        t0: usize,
        t1: usize,
        v: *mut f32,
        strip: *mut f32,
        g: Blocking,
    ) {
        let (m, t, lanes) = (self.m, self.t, S::LANES);
        let plane = self.h * self.w;
        // Input rows the block reads (the same for every channel).
        let (ty0, ty1) = (t0 / self.ntx, (t1 - 1) / self.ntx);
        let y0 = (ty0 * m).saturating_sub(self.pt).min(self.h);
        let y1 = (ty1 * m + t).saturating_sub(self.pt).min(self.h);
        // F(2x2) on maps whose tile row fills half a group (ResNet-18's 7×7 maps, 4 tiles
        // a row, on 8 lanes): two whole tile rows per group, so no lane idles.
        let pairs = self.variant == WinogradVariant::F2x2 && 2 * self.ntx == lanes;
        // The gather window of the group whose first tile is tx: it reads input columns
        // tx·m − pl .. of each row, of which 0..w are in the image. The same for every row
        // and channel; those of groups of whole tile rows (tx = 0, lanes, ..) made once.
        let (wi, pl) = (self.w as isize, self.pl as isize);
        // F(2x2,5x5) gathers each tile's 6 columns as two stride-2 gathers, 4 columns
        // apart: its second window is the first's, `at` = 4 columns on.
        let window = |tx: usize, at: isize| {
            let c0 = (tx * m) as isize - pl + at;
            Window::new(s, m, -c0, wi - c0)
        };
        let group_windows = |at: isize| {
            let mut wins = [window(0, at); CACHED_WINDOWS];
            for (gi, win) in wins.iter_mut().enumerate().take(self.ntx.div_ceil(lanes)) {
                *win = window(gi * lanes, at);
            }
            wins
        };
        let row_windows = group_windows(0);
        let row_windows2 = if K5 { group_windows(4) } else { row_windows };
        // F(4x4) groups across tile rows: each part's gather source, the same for every
        // channel (planned once for the block's first groups).
        let span_group = |gt: usize| {
            let (parts, k) = group_parts(self.ntx, gt, lanes.min(t1 - gt));
            // Each row's tiles gathered with lane 0 where its first tile's lane would be
            // (`lane` tiles before it).
            let source = |p: Part| {
                let c0 = (p.tx as isize - p.lane as isize) * m as isize - pl;
                self.gather_at(s, p.ty, c0)
            };
            let index = s.lane_index();
            let before = |p: Part| s.lt(index, s.splat(p.lane as f32));
            SpanGroup {
                k,
                src: [source(parts[0]), source(parts[1]), source(parts[2])],
                before: [before(parts[1]), before(parts[2])],
            }
        };
        let span_groups = if g.span {
            let mut groups = [span_group(t0); CACHED_WINDOWS];
            for (gi, grp) in groups.iter_mut().enumerate().skip(1) {
                if t0 + gi * lanes < t1 {
                    *grp = span_group(t0 + gi * lanes);
                }
            }
            Some(groups)
        } else {
            None
        };
        let span_groups = span_groups.as_ref().map_or(&[][..], |g| &g[..]);
        for c in 0..self.cin {
            let xc = &x[c * plane..(c + 1) * plane];
            // The rows of the next channel plane: a few short runs far apart, which the
            // hardware prefetchers do not see coming; every load of the gathers would
            // otherwise wait for its line.
            if c + 1 < self.cin {
                prefetch_rows(x[(c + 1) * plane..].as_ptr(), self.w, y0, y1, self.w);
            }
            if g.span {
                // Groups of `lanes` consecutive tiles (F(4x4) only), columns gt − t0 of V.
                for (gi, gt) in (t0..t1).step_by(lanes).enumerate() {
                    let grp = if gi < CACHED_WINDOWS {
                        span_groups[gi]
                    } else {
                        span_group(gt)
                    };
                    let src = |p: usize| xc.as_ptr().wrapping_offset(grp.src[p].off);
                    // SAFETY: each source's rows and window lie in the plane xc
                    // (`gather_at`); V row c of each position, columns gt − t0 ..
                    // + lanes (as below).
                    unsafe {
                        let dst = v.add(c * g.ld + gt - t0);
                        if grp.k == 1 {
                            let SpanSource { rows, win, .. } = grp.src[0];
                            let rows = rows.0..rows.1;
                            in_group_f4(s, src(0), self.w, rows, &win, dst, g.vxs);
                        } else {
                            let base = [src(0), src(1), src(2)];
                            in_group_f4_span(s, &base, &grp, self.w, dst, g.vxs);
                        }
                    }
                }
                continue;
            }
            let mut rows = row_columns(self.ntx, t0, t1, g.pad).peekable();
            while let Some((ty, txa, txb, col)) = rows.next() {
                let whole = |a: usize, b: usize| a == 0 && b == self.ntx;
                if pairs && whole(txa, txb) && rows.peek().is_some_and(|&(_, a, b, _)| whole(a, b))
                {
                    // Two whole tile rows per group, gathered from a zero-padded copy of
                    // their 6 input rows (columns 0 .. ntx·m + 2 = lanes + 2).
                    let jb = lanes + 2;
                    debug_assert!(t + m <= t + 2 && jb <= self.wstrip);
                    for i in 0..t + m {
                        // SAFETY: row i < t + 2 of the strip, columns 0..jb <= wstrip; xc
                        // is a plane.
                        unsafe {
                            self.fill_strip_row(
                                s,
                                xc,
                                (ty * m + i) as isize - self.pt as isize,
                                0,
                                jb,
                                strip.add(i * self.wstrip),
                            )
                        };
                    }
                    rows.next();
                    // SAFETY: strip rows 0..6 filled above, lanes + 2 columns each; V row
                    // c of each position, columns col .. col + lanes, the two rows' tiles
                    // (whole rows, so within the block's columns).
                    unsafe {
                        in_group_f2_pair(s, strip, self.wstrip, v.add(c * g.ld + col), g.vxs);
                    }
                    continue;
                }
                // Input rows ys .. ys + t; of them, ia..ib are in the image.
                let ys = (ty * m) as isize - self.pt as isize;
                let ia = (-ys).clamp(0, t as isize) as usize;
                let ib = (self.h as isize - ys).clamp(ia as isize, t as isize) as usize;
                for gi in 0..(txb - txa).div_ceil(lanes) {
                    let tx = txa + gi * lanes;
                    let tl = col + gi * lanes;
                    let cached = txa == 0 && gi < CACHED_WINDOWS;
                    let win = if cached {
                        row_windows[gi]
                    } else {
                        window(tx, 0)
                    };
                    // The group's first input column, in row ys (both may lie outside
                    // the plane: only the window's columns of rows ia..ib are read).
                    let src = xc
                        .as_ptr()
                        .wrapping_offset(ys * wi + (tx * m) as isize - pl);
                    // SAFETY: rows ia..ib are input rows in 0..h, the window's columns
                    // input columns in 0..w, so every read lies in the plane xc; V row c
                    // of each position, columns tl .. tl + lanes: tl < ld, and past row
                    // c's ld columns come row c + 1 or XI_PAD >= lanes floats.
                    unsafe {
                        let dst = v.add(c * g.ld + tl);
                        if m == 4 {
                            in_group_f4(s, src, self.w, ia..ib, &win, dst, g.vxs);
                        } else if K5 {
                            let win2 = if cached {
                                row_windows2[gi]
                            } else {
                                window(tx, 4)
                            };
                            in_group_f2k5(s, src, self.w, ia..ib, &win, &win2, dst, g.vxs);
                        } else {
                            in_group_f2(s, src, self.w, ia..ib, &win, dst, g.vxs);
                        }
                    }
                }
            }
        }
    }

    /// Where a group's gathers read the tiles of tile row `ty` in a channel plane: input
    /// row `ty·m − pt`, column `c0` (lane 0's first column; either may lie outside the
    /// plane), the tile's rows that lie in the image and the window of the columns that
    /// do.
    #[inline(always)]
    fn gather_at<S: Lanes>(&self, s: S, ty: usize, c0: isize) -> SpanSource<S> {
        let (t, wi) = (self.t as isize, self.w as isize);
        let ys = (ty * self.m) as isize - self.pt as isize;
        let ia = (-ys).clamp(0, t);
        let ib = (self.h as isize - ys).clamp(ia, t);
        SpanSource {
            off: ys * wi + c0,
            rows: (ia as usize, ib as usize),
            win: Window::new(s, self.m, -c0, wi - c0),
        }
    }

    /// Strip columns `ja .. jb` of input row `y` (zero outside the image) into `row`
    /// (the strip row, column 0 at `row`). Inline vector copies, not `copy_from_slice` /
    /// `fill`: the pieces are a few dozen floats, where a libc call costs more than the
    /// copy.
    ///
    /// Safety: `row[ja..jb]` writable (nothing outside it is written).
    #[inline(always)]
    unsafe fn fill_strip_row<S: Simd>(
        &self,
        s: S,
        xc: &[f32],
        y: isize,
        ja: usize,
        jb: usize,
        row: *mut f32,
    ) {
        // Strip column j is input column j − pl.
        let (lo, hi) = if y < 0 || y >= self.h as isize {
            (jb, jb)
        } else {
            (self.pl.clamp(ja, jb), (self.pl + self.w).clamp(ja, jb))
        };
        // SAFETY: ja <= lo <= hi <= jb; the source columns lo − pl .. hi − pl lie in row y
        // of the plane (0 <= lo − pl, hi − pl <= w).
        unsafe {
            zero_n(s, row.add(ja), lo - ja);
            if hi > lo {
                let src = xc.as_ptr().add(y as usize * self.w + lo - self.pl);
                copy_n(s, row.add(lo), src, hi - lo);
            }
            zero_n(s, row.add(hi), jb - hi);
        }
    }

    /// Output channels `c0..c1` of tiles `t0..t1` from `M` (chunk-local rows).
    ///
    /// Safety: `mb` holds the chunk's `M` (t2 · mxs floats); `out` has `cout·oh·ow` floats
    /// and no concurrent writer of these elements.
    /// `K5`: the variant is F(2x2,5x5); `POOL`: `self.max_pool` (constants, so that each
    /// combination is compiled on its own).
    #[inline(always)]
    unsafe fn output_block<S: Lanes, const K5: bool, const POOL: bool>(
        &self,
        s: S,
        mb: *const f32,
        OutArgs {
            t0,
            t1,
            c0,
            c1,
            bias,
            residual,
            out,
            g,
        }: OutArgs,
    ) {
        let (m, lanes) = (self.m, S::LANES);
        let act = ActV::new(s, self.activation);
        // The stored rows: the output's, or the pool's (one per tile row).
        let [_, out_h, out_w] = self.out_shape();
        let (rstep, oplane) = (if POOL { 1 } else { m }, out_h * out_w);
        let (ty0, ty1) = (t0 / self.ntx, (t1 - 1) / self.ntx);
        let (y0, y1) = ((ty0 * rstep).min(out_h), (ty1 * rstep + rstep).min(out_h));
        // The parts of the block's first groups across tile rows (see `input_block`).
        let mut span_parts = [([Part::default(); MAX_PARTS], 0); CACHED_WINDOWS];
        for (gi, parts) in span_parts.iter_mut().enumerate() {
            let gt = t0 + gi * lanes;
            if g.span && gt < t1 {
                *parts = group_parts(self.ntx, gt, lanes.min(t1 - gt));
            }
        }
        for co in c0..c1 {
            let bv = bias.map(|b| s.splat(b[co]));
            // The next channel's output (and residual) rows, as in `input_block`.
            if co + 1 < c1 && y0 < y1 {
                let o = (co + 1) * oplane;
                prefetch_rows(out.add(o), out_w, y0, y1, out_w);
                if let Some(r) = residual {
                    prefetch_rows(r.as_ptr().add(o), self.ow, y0, y1, self.ow);
                }
            }
            // Where tiles tx .. tx + n of tile row ty store: their first output element
            // (channel co) and its store (valid rows and columns, bias, residual).
            let store_at = |ty: usize, tx: usize, n: usize| {
                let o = co * oplane + ty * m * self.ow + tx * m;
                let st = OutStore {
                    ow: self.ow,
                    rows: m.min(self.oh - ty * m),
                    vc: (m * n).min(self.ow - m * tx),
                    bias: bv,
                    res: residual.map_or(std::ptr::null(), |r| r.as_ptr().wrapping_add(o)),
                    act: &act,
                };
                (out.wrapping_add(o), st)
            };
            if !POOL && g.span {
                // The groups of `input_block`'s F(4x4) groups across rows.
                for (gi, gt) in (t0..t1).step_by(lanes).enumerate() {
                    let (parts, k) = if gi < CACHED_WINDOWS {
                        span_parts[gi]
                    } else {
                        group_parts(self.ntx, gt, lanes.min(t1 - gt))
                    };
                    let at = |p: Part| store_at(p.ty, p.tx, p.count);
                    let to = [at(parts[0]), at(parts[1]), at(parts[2])];
                    // SAFETY: M row co − c0 of each position, columns gt − t0 .. + lanes
                    // (as below); each part's output and residual rows and columns lie
                    // in the output (`store_at`: rows < oh, columns < ow).
                    unsafe {
                        let src = mb.add((co - c0) * g.ld + gt - t0);
                        if k == 1 {
                            out_group_f4(s, src, g.mxs, to[0].0, &to[0].1);
                        } else {
                            out_group_f4_span(s, src, g.mxs, &to, &parts, k);
                        }
                    }
                }
                continue;
            }
            for (ty, txa, txb, col) in row_columns(self.ntx, t0, t1, g.pad) {
                if POOL {
                    // Tile (ty, tx) is pooled output (ty, tx); an odd last output row or
                    // column (half a window) is dropped.
                    if ty >= out_h {
                        continue;
                    }
                    let mut tx = txa;
                    while tx < txb.min(out_w) {
                        let n = lanes.min(txb.min(out_w) - tx);
                        // SAFETY: M row co − c0 of each position, columns col + tx − txa
                        // .. + lanes (as below); pooled row ty < out_h, columns tx ..
                        // tx + n <= out_w of channel co.
                        unsafe {
                            let st = OutStore {
                                ow: 0,
                                rows: m,
                                vc: n,
                                bias: bv,
                                res: std::ptr::null(),
                                act: &act,
                            };
                            let src = mb.add((co - c0) * g.ld + col + tx - txa);
                            let dst = out.add(co * oplane + ty * out_w + tx);
                            if K5 {
                                pool_group_f2k5(s, src, g.mxs, dst, &st);
                            } else {
                                pool_group_f2(s, src, g.mxs, dst, &st);
                            }
                        }
                        tx += lanes;
                    }
                    continue;
                }
                let mut tx = txa;
                while tx < txb {
                    let n = lanes.min(txb - tx);
                    let tl = col + tx - txa;
                    let (dst, st) = store_at(ty, tx, n);
                    // SAFETY: M row co − c0 of each position, columns tl .. tl + lanes
                    // (past the row's ld columns: the next row or XI_PAD >= lanes floats);
                    // output and residual rows ty·m .. + rows < oh, columns tx·m .. + vc
                    // <= ow.
                    unsafe {
                        let src = mb.add((co - c0) * g.ld + tl);
                        if m == 4 {
                            out_group_f4(s, src, g.mxs, dst, &st);
                        } else if K5 {
                            out_group_f2k5(s, src, g.mxs, dst, &st);
                        } else {
                            out_group_f2(s, src, g.mxs, dst, &st);
                        }
                    }
                    tx += lanes;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Transforms of one group of `LANES` tiles (one tile per lane)
// ---------------------------------------------------------------------------------------

/// The 1-D F(4,3) input transform `Bᵀ d`.
#[inline(always)]
fn bt4<S: Simd>(s: S, d: [S::V; 6]) -> [S::V; 6] {
    let (m4, m5, p4) = (s.splat(-4.0), s.splat(-5.0), s.splat(4.0));
    let p = s.fmadd(m4, d[2], d[4]); // d4 − 4 d2
    let q = s.fmadd(m4, d[1], d[3]); // d3 − 4 d1
    let r = s.sub(d[4], d[2]);
    let e = s.sub(d[3], d[1]);
    let e2 = s.add(e, e);
    [
        s.fmadd(p4, d[0], s.fmadd(m5, d[2], d[4])),
        s.add(p, q),
        s.sub(p, q),
        s.add(r, e2),
        s.sub(r, e2),
        s.fmadd(p4, d[1], s.fmadd(m5, d[3], d[5])),
    ]
}

/// The 1-D F(4,3) output transform `Aᵀ m`.
#[inline(always)]
fn at4<S: Simd>(s: S, m: [S::V; 6]) -> [S::V; 4] {
    let a = s.add(m[1], m[2]);
    let b = s.sub(m[1], m[2]);
    let c = s.add(m[3], m[4]);
    let d = s.sub(m[3], m[4]);
    [
        s.add(s.add(m[0], a), c),
        s.fmadd(s.splat(2.0), d, b),
        s.fmadd(s.splat(4.0), c, a),
        s.add(s.fmadd(s.splat(8.0), d, b), m[5]),
    ]
}

/// The 1-D F(2,3) input transform `Bᵀ d`.
#[inline(always)]
fn bt2<S: Simd>(s: S, d: [S::V; 4]) -> [S::V; 4] {
    [
        s.sub(d[0], d[2]),
        s.add(d[1], d[2]),
        s.sub(d[2], d[1]),
        s.sub(d[1], d[3]),
    ]
}

/// The 1-D F(2,3) output transform `Aᵀ m`.
#[inline(always)]
fn at2<S: Simd>(s: S, m: [S::V; 4]) -> [S::V; 2] {
    [
        s.add(s.add(m[0], m[1]), m[2]),
        s.sub(s.sub(m[1], m[2]), m[3]),
    ]
}

/// The 1-D F(2,5) output transform `Aᵀ m`: the first two rows of F(4,3)'s, the point at
/// infinity now feeding the highest power, row 1.
#[inline(always)]
fn at2k5<S: Simd>(s: S, m: [S::V; 6]) -> [S::V; 2] {
    let a = s.add(m[1], m[2]);
    let b = s.sub(m[1], m[2]);
    let c = s.add(m[3], m[4]);
    let d = s.sub(m[3], m[4]);
    [
        s.add(s.add(m[0], a), c),
        s.add(s.fmadd(s.splat(2.0), d, b), m[5]),
    ]
}

/// Stores `v` at `p`: all lanes, or the first `n`.
///
/// Safety: `p[0..n]` writable.
#[inline(always)]
unsafe fn store_n<S: Simd>(s: S, p: *mut f32, n: usize, v: S::V) {
    // SAFETY: the caller's guarantee.
    unsafe {
        if n == S::LANES {
            s.store(p, v)
        } else {
            s.store_part(p, n, v)
        }
    }
}

/// Prefetches rows `y0..y1` (row stride `ld`, `len` floats each) of the plane at `p`
/// into L1, one hint per cache line.
#[inline(always)]
fn prefetch_rows(p: *const f32, ld: usize, y0: usize, y1: usize, len: usize) {
    for y in y0..y1 {
        let row = p.wrapping_add(y * ld);
        for j in (0..len).step_by(16) {
            prefetch(row.wrapping_add(j));
        }
        prefetch(row.wrapping_add(len - 1));
    }
}

/// A cache-line prefetch hint (a no-op off x86-64).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and has no effect on memory, whatever
    // the address (SSE is part of x86-64).
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Copies `n` floats from `src` to `dst` in whole vectors (the last one overlapping the
/// one before it when `n` is not a multiple of the width), nothing outside `0..n`.
///
/// Safety: `src[0..n]` readable, `dst[0..n]` writable, not overlapping.
#[inline(always)]
unsafe fn copy_n<S: Simd>(s: S, dst: *mut f32, src: *const f32, n: usize) {
    let l = S::LANES;
    // SAFETY: every access lies in 0..n (caller).
    unsafe {
        if n < l {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
            return;
        }
        let mut i = 0;
        while i + l < n {
            s.store(dst.add(i), s.load(src.add(i)));
            i += l;
        }
        s.store(dst.add(n - l), s.load(src.add(n - l)));
    }
}

/// Writes `n` zeros at `p` (nothing outside `0..n`).
///
/// Safety: `p[0..n]` writable.
#[inline(always)]
unsafe fn zero_n<S: Simd>(s: S, p: *mut f32, n: usize) {
    let l = S::LANES;
    // SAFETY: every store lies in 0..n (caller).
    unsafe {
        if n < l {
            s.store_part(p, n, s.zero());
            return;
        }
        let mut i = 0;
        while i + l < n {
            s.store(p.add(i), s.zero());
            i += l;
        }
        s.store(p.add(n - l), s.zero());
    }
}

/// Loads `p[0..n]` (zero in the other lanes).
///
/// Safety: `p[0..n]` readable.
#[inline(always)]
unsafe fn load_n<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
    // SAFETY: the caller's guarantee.
    unsafe {
        if n == S::LANES {
            s.load(p)
        } else {
            s.load_part(p, n, s.zero())
        }
    }
}

/// F(4x4): transforms the 6×6 input tiles of `LANES` tiles whose top-left corners are
/// `src + 4i` (rows `lds` apart) and stores position `ξ` of tile `i` at `dst + ξ·xs + i`.
/// Only rows `rows` (of 0..6) and the columns in `win` are read, the rest is zero (the
/// padding).
///
/// All `LANES` lanes are stored, also past the block's tiles (masked stores are slow on
/// AMD cores): the extra columns land on tiles or channels written later, or in the
/// padding.
///
/// Safety: `src + r·lds + c` readable for `r` in `rows` and each column `c` of `win`;
/// `dst[ξ·xs .. ξ·xs + LANES]` writable for `ξ < 36`.
#[inline(always)]
unsafe fn in_group_f4<S: Lanes>(
    s: S,
    src: *const f32,
    lds: usize,
    rows: Range<usize>,
    win: &Window<S>,
    dst: *mut f32,
    xs: usize,
) {
    let mut t = [[s.zero(); 6]; 6];
    for (i, ti) in t.iter_mut().enumerate() {
        if rows.contains(&i) {
            // SAFETY: row i, the window's columns (caller).
            *ti = bt4(s, unsafe { s.gather_s4(src.wrapping_add(i * lds), win) });
        }
    }
    // The column pass inline, not through `store_f4`: passing the 36 vectors on cost
    // F(4x4) layers a few percent (conv3x3_stress).
    for l in 0..6 {
        // Explicit arrays, not `array::from_fn`: its closure can end up outside the
        // `#[target_feature]` function, with every intrinsic an out-of-line call.
        let col = bt4(s, [t[0][l], t[1][l], t[2][l], t[3][l], t[4][l], t[5][l]]);
        for (k, &v) in col.iter().enumerate() {
            // SAFETY: position k·6 + l < 36 (caller).
            unsafe { s.store(dst.add((k * 6 + l) * xs), v) };
        }
    }
}

/// One part's gather source in a group across tile rows: the offset of lane 0's tile
/// (row 0, column 0) in the channel plane, the tile rows in the image, the window of the
/// columns in it.
#[derive(Clone, Copy)]
struct SpanSource<S: Simd> {
    off: isize,
    rows: (usize, usize),
    win: Window<S>,
}

/// A group of lanes across tile rows, planned once per block for the input transform:
/// its number of parts, their gather sources (unused ones repeat the first) and the
/// lanes before the second and the third part's.
#[derive(Clone, Copy)]
struct SpanGroup<S: Simd> {
    k: usize,
    src: [SpanSource<S>; MAX_PARTS],
    before: [S::M; MAX_PARTS - 1],
}

/// Tile rows a group of lanes can span (see `new_for_threads`).
const MAX_PARTS: usize = 3;

/// The tiles of one tile row in a group across rows: row `ty`'s tiles `tx ..` in lanes
/// `lane .. lane + count`.
#[derive(Clone, Copy, Default)]
struct Part {
    ty: usize,
    tx: usize,
    lane: usize,
    count: usize,
}

/// The parts of the group of tiles `gt .. gt + n` (`ntx` tiles a row), in lane order, and
/// their number (at most MAX_PARTS: the plan's rows hold at least half a group). Unused
/// parts repeat the first, so that every entry is a valid part.
fn group_parts(ntx: usize, gt: usize, n: usize) -> ([Part; MAX_PARTS], usize) {
    let mut parts = [Part::default(); MAX_PARTS];
    let (mut k, mut lane) = (0, 0);
    while lane < n && k < MAX_PARTS {
        let t = gt + lane;
        let (ty, tx) = (t / ntx, t % ntx);
        let count = (n - lane).min(ntx - tx);
        parts[k] = Part {
            ty,
            tx,
            lane,
            count,
        };
        (k, lane) = (k + 1, lane + count);
    }
    debug_assert_eq!(lane, n, "a group spans more than {MAX_PARTS} tile rows");
    for p in k..MAX_PARTS {
        parts[p] = parts[0];
    }
    (parts, k)
}

/// [`in_group_f4`] for a group across `grp.k` tile rows: part `j`'s lanes from the
/// gathers of `grp.src[j]` at `base[j]` (merged lane by lane).
///
/// Safety: for each part, `base[j]` and `grp.src[j]` as `in_group_f4`'s `src`, `rows`
/// and `win`; `dst` as there.
#[inline(always)]
unsafe fn in_group_f4_span<S: Lanes>(
    s: S,
    base: &[*const f32; MAX_PARTS],
    grp: &SpanGroup<S>,
    lds: usize,
    dst: *mut f32,
    xs: usize,
) {
    let mut t = [[s.zero(); 6]; 6];
    for (i, ti) in t.iter_mut().enumerate() {
        // SAFETY: the caller's.
        let mut d = unsafe { row_s4(s, base[0], &grp.src[0], i, lds) };
        for j in 1..grp.k {
            // SAFETY: the caller's.
            let y = unsafe { row_s4(s, base[j], &grp.src[j], i, lds) };
            let b = grp.before[j - 1];
            d = [
                s.select(b, d[0], y[0]),
                s.select(b, d[1], y[1]),
                s.select(b, d[2], y[2]),
                s.select(b, d[3], y[3]),
                s.select(b, d[4], y[4]),
                s.select(b, d[5], y[5]),
            ];
        }
        *ti = bt4(s, d);
    }
    // SAFETY: the caller's.
    unsafe { store_f4(s, t, dst, xs) };
}

/// Row `i` of a source's tiles gathered (zero outside the image's rows).
///
/// Safety: as [`in_group_f4_span`].
#[inline(always)]
unsafe fn row_s4<S: Lanes>(
    s: S,
    p: *const f32,
    src: &SpanSource<S>,
    i: usize,
    lds: usize,
) -> [S::V; 6] {
    let SpanSource { rows, win, .. } = src;
    if rows.0 <= i && i < rows.1 {
        // SAFETY: row i, the window's columns (caller).
        unsafe { s.gather_s4(p.wrapping_add(i * lds), win) }
    } else {
        [s.zero(); 6]
    }
}

/// F(2x2,5x5): as [`in_group_f4`] with the 6×6 tiles 2 apart, each row's 6 columns from
/// two stride-2 gathers (columns 0..4 through `win`, 4..6 through `win2`, the window 4
/// columns on). The same `Bᵀ` as F(4x4,3x3) (same points).
///
/// Safety: `src + r·lds + c` readable for `r` in `rows` and each column `c` of `win`,
/// `src + r·lds + 4 + c` for each column `c` of `win2`; `dst[ξ·xs .. ξ·xs + LANES]`
/// writable for `ξ < 36`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn in_group_f2k5<S: Lanes>(
    s: S,
    src: *const f32,
    lds: usize,
    rows: Range<usize>,
    win: &Window<S>,
    win2: &Window<S>,
    dst: *mut f32,
    xs: usize,
) {
    let mut t = [[s.zero(); 6]; 6];
    for (i, ti) in t.iter_mut().enumerate() {
        if rows.contains(&i) {
            let row = src.wrapping_add(i * lds);
            // SAFETY: row i, each window's columns from its base (caller).
            let (a, b) = unsafe {
                (
                    s.gather_s2(row, win),
                    s.gather_s2(row.wrapping_add(4), win2),
                )
            };
            *ti = bt4(s, [a[0], a[1], a[2], a[3], b[0], b[1]]);
        }
    }
    // SAFETY: the caller's.
    unsafe { store_f4(s, t, dst, xs) };
}

/// The column half of the 6×6 input transform of a group (rows `t`, already
/// transformed) and its 36 stores, position `ξ` at `dst + ξ·xs`.
///
/// Safety: `dst[ξ·xs .. ξ·xs + LANES]` writable for `ξ < 36`.
#[inline(always)]
unsafe fn store_f4<S: Lanes>(s: S, t: [[S::V; 6]; 6], dst: *mut f32, xs: usize) {
    for l in 0..6 {
        // Explicit arrays, not `array::from_fn`: its closure can end up outside the
        // `#[target_feature]` function, with every intrinsic an out-of-line call.
        let col = bt4(s, [t[0][l], t[1][l], t[2][l], t[3][l], t[4][l], t[5][l]]);
        for (k, &v) in col.iter().enumerate() {
            // SAFETY: position k·6 + l < 36 (caller).
            unsafe { s.store(dst.add((k * 6 + l) * xs), v) };
        }
    }
}

/// F(2x2): as [`in_group_f4`] with 4×4 tiles 2 apart and 16 positions.
///
/// Safety: `src + r·lds + c` readable for `r` in `rows` and each column `c` of `win`;
/// `dst[ξ·xs .. ξ·xs + LANES]` writable for `ξ < 16`.
#[inline(always)]
unsafe fn in_group_f2<S: Lanes>(
    s: S,
    src: *const f32,
    lds: usize,
    rows: Range<usize>,
    win: &Window<S>,
    dst: *mut f32,
    xs: usize,
) {
    let mut t = [[s.zero(); 4]; 4];
    for (i, ti) in t.iter_mut().enumerate() {
        if rows.contains(&i) {
            // SAFETY: row i, the window's columns (caller).
            *ti = bt2(s, unsafe { s.gather_s2(src.wrapping_add(i * lds), win) });
        }
    }
    // SAFETY: the caller's.
    unsafe { store_f2(s, t, dst, xs) };
}

/// F(2x2) for two consecutive tile rows of `LANES / 2` tiles each: the first row's 4×4
/// input tiles (2 apart) at `src` (rows `lds` apart), the second's two rows further
/// down; stores position `ξ` of tile `i` at `dst + ξ·xs + i`, the second row's tiles in
/// lanes `LANES / 2 ..`.
///
/// Safety: `src[r·lds .. r·lds + LANES + 2]` readable for `r < 6`;
/// `dst[ξ·xs .. ξ·xs + LANES]` writable for `ξ < 16`.
#[inline(always)]
unsafe fn in_group_f2_pair<S: Lanes>(s: S, src: *const f32, lds: usize, dst: *mut f32, xs: usize) {
    let mut t = [[s.zero(); 4]; 4];
    for (i, ti) in t.iter_mut().enumerate() {
        // SAFETY: rows i and i + 2 < 6 (caller).
        *ti = bt2(s, unsafe {
            s.gather_s2_pair(src.add(i * lds), src.add((i + 2) * lds))
        });
    }
    // SAFETY: the caller's.
    unsafe { store_f2(s, t, dst, xs) };
}

/// The column half of the F(2x2) input transform of a group (rows `t`, already
/// transformed) and its 16 stores, position `ξ` at `dst + ξ·xs`.
///
/// Safety: `dst[ξ·xs .. ξ·xs + LANES]` writable for `ξ < 16`.
#[inline(always)]
unsafe fn store_f2<S: Lanes>(s: S, t: [[S::V; 4]; 4], dst: *mut f32, xs: usize) {
    for l in 0..4 {
        let col = bt2(s, [t[0][l], t[1][l], t[2][l], t[3][l]]);
        for (k, &v) in col.iter().enumerate() {
            // SAFETY: position k·4 + l < 16 (caller).
            unsafe { s.store(dst.add((k * 4 + l) * xs), v) };
        }
    }
}

/// Where and how one group's output rows are stored.
struct OutStore<'a, S: Simd> {
    /// Output row stride.
    ow: usize,
    /// Valid rows (< m at the bottom edge) and valid columns from the group's first.
    rows: usize,
    vc: usize,
    bias: Option<S::V>,
    /// Residual at the group's first output element, or null.
    res: *const f32,
    act: &'a ActV<S>,
}

/// Stores one output row of a group: `w` holds its consecutive values, of which the first
/// `st.vc` are inside the output; adds bias and residual, applies the activation.
///
/// Safety: `dst[0..vc]` writable, `res[0..vc]` readable unless null.
#[inline(always)]
unsafe fn store_row<S: Simd>(s: S, w: &[S::V], dst: *mut f32, res: *const f32, st: &OutStore<S>) {
    for (q, &v) in w.iter().enumerate() {
        let off = q * S::LANES;
        let cnt = st.vc.saturating_sub(off).min(S::LANES);
        if cnt == 0 {
            break;
        }
        let mut v = v;
        if let Some(b) = st.bias {
            v = s.add(v, b);
        }
        // SAFETY: off + cnt <= vc (caller).
        unsafe {
            if !res.is_null() {
                v = s.add(v, load_n(s, res.add(off), cnt));
            }
            store_n(s, dst.add(off), cnt, st.act.apply(s, v));
        }
    }
}

/// F(4x4): reads position `ξ` of tile `i` at `src + ξ·xs + i` (`i < n`), transforms back
/// and stores the tiles' 4×4 outputs side by side at `dst` (rows `st.ow` apart).
///
/// Safety: `src[ξ·xs .. ξ·xs + LANES]` readable for `ξ < 36`; `dst` (and `st.res` unless
/// null) valid for rows `< st.rows` of `st.vc` elements.
#[inline(always)]
unsafe fn out_group_f4<S: Lanes>(
    s: S,
    src: *const f32,
    xs: usize,
    dst: *mut f32,
    st: &OutStore<S>,
) {
    // SAFETY: the caller's.
    let o = unsafe { out_cols_f4(s, src, xs) };
    for (r, &or) in o.iter().enumerate().take(st.rows) {
        let w = s.scatter_s4(at4(s, or));
        // SAFETY: row r < rows (caller).
        unsafe { store_row(s, &w, dst.add(r * st.ow), row_of(st, r), st) };
    }
}

/// [`out_group_f4`] for a group across `k` tile rows: lanes `parts[j].lane ..` store
/// through `to[j]` (its rows, columns and residual).
///
/// Safety: as [`out_group_f4`] for each of the first `k` stores.
#[inline(always)]
unsafe fn out_group_f4_span<S: Lanes>(
    s: S,
    src: *const f32,
    xs: usize,
    to: &[(*mut f32, OutStore<S>); MAX_PARTS],
    parts: &[Part; MAX_PARTS],
    k: usize,
) {
    // SAFETY: the caller's.
    let o = unsafe { out_cols_f4(s, src, xs) };
    let [(d0, s0), (d1, s1), (d2, s2)] = to;
    for (r, &or) in o.iter().enumerate() {
        let w = s.scatter_s4(at4(s, or));
        // Part j's outputs start at flat position 4·parts[j].lane (part 0's at 0).
        // SAFETY: rows r < each store's rows (caller).
        unsafe {
            if r < s0.rows {
                store_row(s, &w, d0.add(r * s0.ow), row_of(s0, r), s0);
            }
            if r < s1.rows {
                let w = s.shift_flat(w, 4 * parts[1].lane);
                store_row(s, &w, d1.add(r * s1.ow), row_of(s1, r), s1);
            }
            if k > 2 && r < s2.rows {
                let w = s.shift_flat(w, 4 * parts[2].lane);
                store_row(s, &w, d2.add(r * s2.ow), row_of(s2, r), s2);
            }
        }
    }
}

/// The residual of a group's output row `r` (null without one).
#[inline(always)]
fn row_of<S: Simd>(st: &OutStore<S>, r: usize) -> *const f32 {
    if st.res.is_null() {
        st.res
    } else {
        st.res.wrapping_add(r * st.ow)
    }
}

/// The column half of the F(4x4) output transform: `o[r][l]` = row `r` of `Aᵀ M` at
/// column `l`, position `ξ` of tile `i` read at `src + ξ·xs + i`.
///
/// Safety: `src[ξ·xs .. ξ·xs + LANES]` readable for `ξ < 36`.
#[inline(always)]
unsafe fn out_cols_f4<S: Lanes>(s: S, src: *const f32, xs: usize) -> [[S::V; 6]; 4] {
    let mut o = [[s.zero(); 6]; 4];
    for l in 0..6 {
        // Whole vectors even past tile n: M has XI_PAD >= LANES floats of slack after
        // every row, and lanes past n only feed outputs that are not stored.
        let p = |k: usize| src.wrapping_add((k * 6 + l) * xs);
        // SAFETY: positions k·6 + l < 36, LANES floats each (caller).
        let col = unsafe {
            at4(
                s,
                [
                    s.load(p(0)),
                    s.load(p(1)),
                    s.load(p(2)),
                    s.load(p(3)),
                    s.load(p(4)),
                    s.load(p(5)),
                ],
            )
        };
        for (r, &v) in col.iter().enumerate() {
            o[r][l] = v;
        }
    }
    o
}

/// F(2x2): as [`out_group_f4`] with 16 positions and 2×2 outputs.
///
/// Safety: as [`out_group_f4`] with `ξ < 16`.
#[inline(always)]
unsafe fn out_group_f2<S: Lanes>(
    s: S,
    src: *const f32,
    xs: usize,
    dst: *mut f32,
    st: &OutStore<S>,
) {
    // SAFETY: the caller's (both).
    let o = unsafe { rows_f2(s, src, xs) };
    // SAFETY: the caller's.
    unsafe { store_rows_f2(s, [at2(s, o[0]), at2(s, o[1])], dst, st) };
}

/// Stores the 2×2 output tiles of a group (row `r` of the tiles in `y[r]`: output
/// columns 0 and 1 of each lane's tile) as output rows, interleaved, `st.rows` of them.
///
/// Safety: `dst` (and `st.res` unless null) valid for rows `< st.rows` of `st.vc`
/// elements.
#[inline(always)]
unsafe fn store_rows_f2<S: Lanes>(s: S, y: [[S::V; 2]; 2], dst: *mut f32, st: &OutStore<S>) {
    for (r, &yr) in y.iter().enumerate().take(st.rows) {
        let w = s.scatter_s2(yr);
        // SAFETY: row r < rows (caller).
        unsafe { store_row(s, &w, dst.add(r * st.ow), row_of(st, r), st) };
    }
}

/// F(2x2,5x5): as [`out_group_f4`] with 36 positions and 2×2 outputs.
///
/// Safety: as [`out_group_f4`].
#[inline(always)]
unsafe fn out_group_f2k5<S: Lanes>(
    s: S,
    src: *const f32,
    xs: usize,
    dst: *mut f32,
    st: &OutStore<S>,
) {
    // SAFETY: the caller's (both).
    let o = unsafe { rows_f2k5(s, src, xs) };
    unsafe { store_rows_f2(s, [at2k5(s, o[0]), at2k5(s, o[1])], dst, st) };
}

/// The 2×2 max of each lane's tile `y[r][c]` (output row `r`, column `c` of the tile)
/// after bias and activation, NaN where any of the four is, the maximum taken in the
/// order of the planar pool's vector body (`max(max(y00, y10), max(y01, y11))`); stores
/// the first `st.vc` lanes at `dst`.
///
/// Safety: `dst[0..st.vc]` writable.
#[inline(always)]
unsafe fn store_pooled<S: Simd>(s: S, y: [[S::V; 2]; 2], dst: *mut f32, st: &OutStore<S>) {
    let f = |v: S::V| {
        let v = match st.bias {
            Some(b) => s.add(v, b),
            None => v,
        };
        st.act.apply(s, v)
    };
    let (a, b, c, d) = (f(y[0][0]), f(y[0][1]), f(y[1][0]), f(y[1][1]));
    let nan = s.mask_or(
        s.mask_or(s.is_nan(a), s.is_nan(b)),
        s.mask_or(s.is_nan(c), s.is_nan(d)),
    );
    let m = s.max(s.max(a, c), s.max(b, d));
    // SAFETY: the caller's.
    unsafe { store_n(s, dst, st.vc, s.select(nan, s.splat(f32::NAN), m)) };
}

/// F(2x2,3x3) pooled: the tiles' outputs as [`out_group_f2`], each tile's 2×2 max pooled
/// into lane `i` of one vector stored at `dst` (`st.vc` lanes).
///
/// Safety: `src[ξ·xs .. ξ·xs + LANES]` readable for `ξ < 16`; `dst[0..st.vc]` writable.
#[inline(always)]
unsafe fn pool_group_f2<S: Lanes>(
    s: S,
    src: *const f32,
    xs: usize,
    dst: *mut f32,
    st: &OutStore<S>,
) {
    // SAFETY: the caller's (both).
    let o = unsafe { rows_f2(s, src, xs) };
    // SAFETY: the caller's.
    unsafe { store_pooled(s, [at2(s, o[0]), at2(s, o[1])], dst, st) };
}

/// F(2x2,5x5) pooled: as [`pool_group_f2`] with 36 positions.
///
/// Safety: `src[ξ·xs .. ξ·xs + LANES]` readable for `ξ < 36`; `dst[0..st.vc]` writable.
#[inline(always)]
unsafe fn pool_group_f2k5<S: Lanes>(
    s: S,
    src: *const f32,
    xs: usize,
    dst: *mut f32,
    st: &OutStore<S>,
) {
    // SAFETY: the caller's (both).
    let o = unsafe { rows_f2k5(s, src, xs) };
    unsafe { store_pooled(s, [at2k5(s, o[0]), at2k5(s, o[1])], dst, st) };
}

/// The column half of the F(2x2,3x3) output transform of a group: row `r` of the result
/// holds, for each of the 4 transformed columns, `Σ_k Aᵀ[r][k] M[k·4 + l]`.
///
/// Safety: `src[ξ·xs .. ξ·xs + LANES]` readable for `ξ < 16`.
#[inline(always)]
unsafe fn rows_f2<S: Lanes>(s: S, src: *const f32, xs: usize) -> [[S::V; 4]; 2] {
    let mut o = [[s.zero(); 4]; 2];
    for l in 0..4 {
        let p = |k: usize| src.wrapping_add((k * 4 + l) * xs);
        // SAFETY: positions k·4 + l < 16, LANES floats each (caller).
        let col = unsafe { at2(s, [s.load(p(0)), s.load(p(1)), s.load(p(2)), s.load(p(3))]) };
        for (r, &v) in col.iter().enumerate() {
            o[r][l] = v;
        }
    }
    o
}

/// The column half of the F(2x2,5x5) output transform of a group: row `r` of the result
/// holds, for each of the 6 transformed columns, `Σ_k Aᵀ[r][k] M[k·6 + l]`.
///
/// Safety: `src[ξ·xs .. ξ·xs + LANES]` readable for `ξ < 36`.
#[inline(always)]
unsafe fn rows_f2k5<S: Lanes>(s: S, src: *const f32, xs: usize) -> [[S::V; 6]; 2] {
    let mut o = [[s.zero(); 6]; 2];
    for l in 0..6 {
        let p = |k: usize| src.wrapping_add((k * 6 + l) * xs);
        // SAFETY: positions k·6 + l < 36, LANES floats each (caller).
        let col = unsafe {
            at2k5(
                s,
                [
                    s.load(p(0)),
                    s.load(p(1)),
                    s.load(p(2)),
                    s.load(p(3)),
                    s.load(p(4)),
                    s.load(p(5)),
                ],
            )
        };
        for (r, &v) in col.iter().enumerate() {
            o[r][l] = v;
        }
    }
    o
}

// ---------------------------------------------------------------------------------------
// Accuracy measurement
// ---------------------------------------------------------------------------------------

/// Runs `conv` as Winograd `variant` on `isa` and as the f64 [`reference::conv2d`] on
/// `input_sample` (one or more `cin × h × w` samples, back to back), without the fused
/// activation (so the figure is the linear part's, which bounds the activated output's
/// error for the 1-Lipschitz activations), and returns `max |diff| / max |ref|` over all
/// outputs (0 when both are all zero). `f64::INFINITY` when the layer is not eligible.
/// For the converter, to decide per layer against an error budget (1e-4 by default).
#[allow(clippy::too_many_arguments)]
pub fn measure_relative_error(
    isa: Isa,
    conv: &Conv,
    in_shape: [usize; 3],
    out_shape: [usize; 3],
    variant: WinogradVariant,
    plain_weights: &[f32],
    bias: Option<&[f32]>,
    input_sample: &[f32],
) -> f64 {
    let lin = Conv {
        activation: Activation::Identity,
        ..conv.clone()
    };
    let Some(k) = WinogradKernel::new(isa, &lin, in_shape, out_shape, variant) else {
        return f64::INFINITY;
    };
    let mut packed = vec![0f32; k.packed_weight_len()];
    k.pack_weights(plain_weights, &mut packed);
    let mut scratch = vec![0f32; k.scratch_len()];
    relative_error_against_reference(
        &lin,
        in_shape,
        out_shape,
        plain_weights,
        bias,
        input_sample,
        |x, got| k.run(&packed, bias, x, None, got, &mut scratch),
    )
}

/// `max |run(x) − reference(x)| / max |reference(x)|` over the `cin × h × w` samples of
/// `input_sample` (back to back), `lin` being the layer without its activation; 0 when
/// both are all zero, infinity when the fast path gives a non-finite value where the
/// reference does not (`f64::max` alone would skip a NaN). The measurement behind every
/// Winograd kernel's `measure_relative_error`; `run` computes one sample's output.
pub(crate) fn relative_error_against_reference(
    lin: &Conv,
    in_shape: [usize; 3],
    out_shape: [usize; 3],
    plain_weights: &[f32],
    bias: Option<&[f32]>,
    input_sample: &[f32],
    mut run: impl FnMut(&[f32], &mut [f32]),
) -> f64 {
    let n_in = in_shape.iter().product::<usize>();
    let n_out = out_shape.iter().product::<usize>();
    assert!(
        n_in > 0 && input_sample.len().is_multiple_of(n_in),
        "winograd: calibration input length"
    );
    let (mut got, mut want) = (vec![0f32; n_out], vec![0f32; n_out]);
    let (mut max_diff, mut max_ref) = (0f64, 0f64);
    for x in input_sample.chunks_exact(n_in) {
        run(x, &mut got);
        reference::conv2d(
            x,
            1,
            &in_shape,
            lin,
            plain_weights,
            bias,
            None,
            &out_shape,
            &mut want,
        );
        for (&g, &r) in got.iter().zip(&want) {
            if !g.is_finite() && r.is_finite() {
                return f64::INFINITY;
            }
            max_diff = max_diff.max((g as f64 - r as f64).abs());
            max_ref = max_ref.max((r as f64).abs());
        }
    }
    if max_ref == 0.0 {
        if max_diff == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        max_diff / max_ref
    }
}

/// Rows `[lo, hi)` of part `i` when `total` rows, in panels of `width`, are shared among
/// `parts` as evenly as whole panels allow (the last panel may be partial). Output
/// channel blocks of the channels-last and F(4x4,5x5) kernels.
pub(crate) fn panel_split(total: usize, width: usize, parts: usize, i: usize) -> (usize, usize) {
    let panels = total.div_ceil(width);
    let at = |i: usize| (i * panels / parts.max(1) * width).min(total);
    (at(i), at(i + 1))
}

/// The most rows any part of [`panel_split`] gets.
pub(crate) fn max_panel_split(total: usize, width: usize, parts: usize) -> usize {
    (0..parts)
        .map(|i| {
            let (lo, hi) = panel_split(total, width, parts, i);
            hi - lo
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of `panel_split` tile `[0, total)` in order, on whole panels, and the
    /// largest is what `max_panel_split` says.
    #[test]
    fn panel_split_tiles_the_rows_on_panel_bounds() {
        for total in [1, 7, 12, 13, 50, 64, 100, 257] {
            for width in [1, 4, 12, 16, 32] {
                for parts in 1..=9 {
                    let mut next = 0;
                    let mut widest = 0;
                    for i in 0..parts {
                        let (lo, hi) = panel_split(total, width, parts, i);
                        assert_eq!(lo, next, "{total} {width} {parts} {i}");
                        assert!(hi >= lo && (lo % width == 0 || lo == total));
                        widest = widest.max(hi - lo);
                        next = hi;
                    }
                    assert_eq!(next, total);
                    assert_eq!(max_panel_split(total, width, parts), widest);
                }
            }
        }
    }

    #[test]
    fn groups_across_rows_cover_their_lanes_in_order() {
        // Rows of 8 to 20 tiles (at least half of 16 lanes), every group start and size.
        for ntx in 8..=20 {
            for gt in 0..3 * ntx {
                for n in 1..=16 {
                    let (parts, k) = group_parts(ntx, gt, n);
                    assert!((1..=MAX_PARTS).contains(&k), "{ntx} {gt} {n}: {k} parts");
                    let mut lane = 0;
                    for p in &parts[..k] {
                        assert_eq!(p.lane, lane, "{ntx} {gt} {n}");
                        assert_eq!(p.ty * ntx + p.tx, gt + lane, "{ntx} {gt} {n}");
                        assert!(p.count >= 1 && p.tx + p.count <= ntx, "{ntx} {gt} {n}");
                        lane += p.count;
                    }
                    assert_eq!(lane, n, "{ntx} {gt} {n}");
                    for p in &parts[k..] {
                        assert_eq!((p.ty, p.tx, p.lane), (parts[0].ty, parts[0].tx, 0));
                    }
                }
            }
        }
    }

    /// The transforms in f64 compute the 1-D correlation `y[i] = Σ_k d[i + k] g[k]`.
    #[test]
    fn transforms_are_exact_in_1d() {
        for v in WinogradVariant::ALL {
            let (m, t, r) = (v.output_tile(), v.input_tile(), v.kernel_size());
            let d: Vec<f64> = (0..t).map(|i| (i as f64 * 0.37).sin() + 0.5).collect();
            let g = [0.3, -1.1, 0.7, 0.45, -0.8];
            // U = G g, V = Bᵀ d, then Aᵀ (U ⊙ V); Bᵀ and Aᵀ from the portable transforms.
            let u: Vec<f64> = v
                .g()
                .chunks_exact(r)
                .map(|row| (0..r).map(|k| row[k] * g[k]).sum())
                .collect();
            assert_eq!(u.len(), t, "{v:?}");
            let s = Portable;
            let lanes = |x: &[f64]| -> Vec<[f32; 4]> { x.iter().map(|&a| [a as f32; 4]).collect() };
            let dv = lanes(&d);
            let vv: Vec<f64> = if t == 6 {
                bt4(s, std::array::from_fn(|i| dv[i]))
                    .iter()
                    .map(|x| x[0] as f64)
                    .collect()
            } else {
                bt2(s, std::array::from_fn(|i| dv[i]))
                    .iter()
                    .map(|x| x[0] as f64)
                    .collect()
            };
            let prod: Vec<f64> = vv.iter().zip(&u).map(|(a, b)| a * b).collect();
            let pv = lanes(&prod);
            let yy: Vec<f64> = match v {
                WinogradVariant::F4x4 => at4(s, std::array::from_fn(|i| pv[i])).to_vec(),
                WinogradVariant::F2x2 => at2(s, std::array::from_fn(|i| pv[i])).to_vec(),
                WinogradVariant::F2x2K5 => at2k5(s, std::array::from_fn(|i| pv[i])).to_vec(),
            }
            .iter()
            .map(|x| x[0] as f64)
            .collect();
            assert_eq!(yy.len(), m, "{v:?}");
            for i in 0..m {
                let want: f64 = (0..r).map(|k| d[i + k] * g[k]).sum();
                assert!(
                    (yy[i] - want).abs() < 1e-5,
                    "{v:?} y[{i}] = {} want {want}",
                    yy[i]
                );
            }
        }
    }
}
