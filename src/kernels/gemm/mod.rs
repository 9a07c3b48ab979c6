//! Single-precision GEMM with pre-packed A: `C[M×N] (+)= A[M×K] · B[K×N]`, then a fused
//! epilogue (bias, residual, activation) in the store.
//!
//! In the convolutions A is the weights (M = output channels, packed once, ahead of time,
//! possibly by the converter into the model file) and B the activations (N = output
//! pixels). The structure is the classic Goto/BLIS one:
//!
//! * a register-blocked micro-kernel per ISA tier computes an `mr × nr` tile of C from an
//!   `mr`-row sliver of packed A and an `nr`-column sliver of B, looping over a K block
//!   with broadcast-A / vector-B FMAs (AVX-512 12×32 with two zmm per row, AVX2+FMA 6×16
//!   with two ymm per row, portable 4×8);
//! * the driver blocks K into `kc` pieces (the A sliver stays in L1) and N into `nc`
//!   pieces (the B block stays in L2), packs each `kc × nc` block of B into `nr`-wide
//!   panels (or reads B in place when packing cannot pay off), and applies the epilogue
//!   in the store of the last K block.
//!
//! # Packed A layout (ISA independent, [`MR_PACK`] = 12)
//!
//! Rows are grouped in panels of `MR_PACK` rows: panel `p` holds rows
//! `p·12 .. p·12 + h` with `h = min(12, M − p·12)` (only the last panel can be short,
//! and it is *not* padded). Inside a panel the data is K-major: element `(i, k)` of the
//! panel is at `p·12·K + k·h + (i − p·12)`. The packed matrix therefore has exactly
//! `M·K` elements. Every tier reads it: AVX-512 walks a 12-row panel in one 12-row
//! sliver, AVX2 in two 6-row slivers, the portable tier in three 4-row slivers, each
//! sliver reading its rows with a K stride of `h`.
//!
//! # Packed B layout for constant B (linear weights, [`NR_PACK`] = 32)
//!
//! Used when B is a constant (fully connected weights `Wᵀ`): columns grouped in panels
//! of 32, the last one short and not padded, K-major inside: element `(k, j)` of panel
//! `q` (width `w = min(32, N − 32q)`) is at `q·32·K + k·w + (j − 32q)`.
//!
//! # Determinism
//!
//! Every output element is computed as one chain of multiply-adds over `k = 0, 1, …, K−1`
//! in order, starting from 0 (or from C with `accumulate`), followed by bias, residual and
//! activation. Blocking over K stores and reloads the partial sum as f32, which is exact.
//! So the value of an element does not depend on the tile it falls in, on the blocking,
//! or on the order tiles run in: splitting the work over any number of threads gives
//! bit-identical results (per ISA tier; tiers differ in FMA vs. separate multiply-add).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use crate::graph::Activation;
use crate::simd::Isa;
use std::marker::PhantomData;

/// Rows per panel of packed A, for every tier.
pub const MR_PACK: usize = 12;
/// Columns per panel of pre-packed constant B, for every tier.
pub const NR_PACK: usize = 32;

/// The most rows any micro-kernel handles.
pub(crate) const MR_MAX: usize = 12;

/// What a micro-kernel does around its K loop. Pointers are null when absent; all are
/// positioned at the tile's origin (row bias at the tile's first row, column bias at its
/// first column, residual at its `(0, 0)` element with the C stride).
#[derive(Clone, Copy)]
pub(crate) struct Store {
    /// Start from C instead of zero.
    pub load_c: bool,
    /// Apply bias, residual and activation before storing (last K block).
    pub finish: bool,
    pub bias_row: *const f32,
    pub bias_col: *const f32,
    pub residual: *const f32,
    pub act: Activation,
    /// When not null, the kernel prefetches `pf + k·pf_stride` at step `k`: the A rows
    /// the driver will need next, so they stream in while this tile computes (the
    /// portable tier ignores it).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub pf: *const f32,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub pf_stride: usize,
    /// The cache level those hints fill.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub pf_to: PrefetchTo,
}

/// The cache level the micro-kernels' prefetch hints bring the weights they fetch ahead
/// into, chosen per session (`Session::prefetch_to`).
///
/// Why two: on the AMD EPYC (Zen 4) VM, `prefetcht0` hints for weights that come from
/// memory made ResNet-18's layer4 Winograd layers 1.2× and its classifier 1.5× slower than
/// `prefetcht1` (`cnnrt bench --profile`, three interleaved rounds), a hint into L1 per
/// k step holding one of the core's few L1 miss buffers for a whole memory latency;
/// where the weights come from L3 (LeNet-5's fc1, 4.9 MB), `prefetcht0` was the faster
/// (`prefetcht1` 1.05–1.06× the latency, `scripts/paired_ab.py`). No hints at all were
/// slower than either (ResNet-18 1.12×).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefetchTo {
    /// `prefetcht0`: weights that stay in the last-level cache between runs.
    #[default]
    L1,
    /// `prefetcht1`: weights that stream from memory on every run.
    L2,
}

/// One prefetch hint for the line holding `p`, into the level `to` names.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch(p: *const f32, to: PrefetchTo) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
    // SAFETY: a prefetch is a hint: it never faults and changes no memory, whatever the
    // address (SSE is part of x86-64).
    unsafe {
        match to {
            PrefetchTo::L1 => _mm_prefetch::<_MM_HINT_T0>(p as *const i8),
            PrefetchTo::L2 => _mm_prefetch::<_MM_HINT_T1>(p as *const i8),
        }
    }
}

/// A micro-kernel: `C[mr × nv] (+)= A[mr × kc] · B[kc × nv]` with the epilogue of `st`.
///
/// `a` points at the sliver's first row at the block's first k; row `i` of step `k` is at
/// `a + k·lda + i`. `b` points at the block's first row; column `j` of step `k` is at
/// `b + k·ldb + j`. `c` row `i`, column `j` is at `c + i·ldc + j`. `nv` is the number of
/// valid columns (the full-width kernels ignore it and use `nr`).
///
/// Safety: every address above must be valid for its access for `i < mr`, `j < nv`,
/// `k < kc`, and the tier's CPU features must be present.
pub(crate) type UKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
);

/// A [`UKernel`] whose B rows are not evenly spaced: row `k` of B is at `b + offs[k]`
/// (`offs` has `kc` entries). The first-layer direct convolution reads its input in place
/// this way, each k a kernel tap. 16 columns on AVX2, 32 on AVX-512; same FMA chain per
/// element as the other kernels.
///
/// Safety: as [`UKernel`], with `offs[0..kc]` readable and `b + offs[k] + j` valid for
/// `j < nv` (all `nr` columns for the full-width kernels).
pub(crate) type OffsKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
);

/// A tier's table of row-indexed micro-kernels of one kind `F` ([`OffsKernel`],
/// [`TapsKernel`]): `full[r]` / `tail[r]` / `half[r]` take `r` rows (`1..=mr()`) of `nr`
/// columns / fewer (masked) / at most `half_max` (masked, one vector; `tail` itself where
/// the tier has none). Each output element is the same FMA chain in every one of them.
#[derive(Clone, Copy)]
pub(crate) struct RowKernels<F: 'static> {
    pub full: &'static [F],
    pub tail: &'static [F],
    pub half: &'static [F],
    pub nr: usize,
    pub half_max: usize,
}

impl<F: Copy> RowKernels<F> {
    /// Most rows one call takes (the tables are indexed by rows, index 0 unused).
    pub fn mr(&self) -> usize {
        self.full.len() - 1
    }

    /// The kernel for `rows` rows of `nv` columns (`1..=nr`).
    pub fn pick(&self, rows: usize, nv: usize) -> F {
        if nv == self.nr {
            self.full[rows]
        } else if nv <= self.half_max {
            self.half[rows]
        } else {
            self.tail[rows]
        }
    }
}

/// A tier's offset-addressed kernels (half width: at most `nr / 2` columns).
pub(crate) type OffsKernels = RowKernels<OffsKernel>;

/// The widest `OffsKernels::nr` of any tier (sizes the direct convolution's row slack).
pub(crate) const OFFS_NR_MAX: usize = 32;

/// The offset-addressed kernels of `isa` (clamped to this CPU), where the tier has them:
/// 6 × 16 on AVX2, 12 × 32 on AVX-512.
pub(crate) fn offs_kernels(isa: Isa) -> Option<OffsKernels> {
    match isa.min(Isa::detect()) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(RowKernels {
            full: &avx2::OFFS_FULL,
            tail: &avx2::OFFS_TAIL,
            half: &avx2::OFFS_HALF,
            nr: 16,
            half_max: 8,
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(RowKernels {
            full: &avx512::OFFS_FULL,
            tail: &avx512::OFFS_TAIL,
            half: &avx512::OFFS_HALF,
            nr: 32,
            half_max: 16,
        }),
        _ => None,
    }
}

/// A [`UKernel`] whose A is a convolution's input read in place: row `i` (an output
/// pixel) of step `k` (a tap) is at `a + offs[k] + i·s`, `s` the kernel's pixel stride
/// in the input (the convolution's column stride, 1 or 2). B and C as [`UKernel`]; same
/// FMA chain per element as the other kernels of the tier.
///
/// Safety: as [`UKernel`], with `offs[0..kc]` readable and `a + offs[k] + i·s` valid for
/// `i < rows`.
pub(crate) type TapsKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    offs: *const usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
);

/// A tier's tap-addressed kernels for one pixel stride.
pub(crate) type TapsKernels = RowKernels<TapsKernel>;

/// The tap-addressed kernels of `isa` (clamped to this CPU) for output pixels `stride`
/// input columns apart (1 or 2; `None` otherwise).
pub(crate) fn taps_kernels(isa: Isa, stride: usize) -> Option<TapsKernels> {
    if !(1..=2).contains(&stride) {
        return None;
    }
    let s = stride - 1;
    Some(match isa.min(Isa::detect()) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => RowKernels {
            full: &avx512::TAPS_FULL[s],
            tail: &avx512::TAPS_TAIL[s],
            half: &avx512::TAPS_HALF[s],
            nr: 32,
            half_max: 16,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => RowKernels {
            full: &avx2::TAPS_FULL[s],
            tail: &avx2::TAPS_TAIL[s],
            half: &avx2::TAPS_HALF[s],
            nr: 16,
            half_max: 8,
        },
        _ => RowKernels {
            full: &scalar::TAPS_FULL[s],
            tail: &scalar::TAPS_TAIL[s],
            half: &scalar::TAPS_TAIL[s],
            nr: 8,
            half_max: 0,
        },
    })
}

/// `nt` full-width tiles side by side in one call: tile `t` is the [`UKernel`] call with
/// B at `b + t·bstep`, C, column bias and residual `t·nr` columns on, `nv = nr`; the
/// prefetch of `st` runs during the first tile only. Saves the per-call overhead when K
/// is short.
///
/// Safety: every tile satisfies the [`UKernel`] contract.
pub(crate) type MultiKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    bstep: usize,
    nt: usize,
    c: *mut f32,
    ldc: usize,
    st: &Store,
);

/// A column-tail kernel over consecutive full [`MR_PACK`]-row panels of packed A (panel
/// `p` at `a + p·pstride`, its C rows, row bias and residual rows `12·p` on), the
/// columns and epilogue as [`Ukr::tcol`]; same FMA chain per element.
///
/// Safety: every panel satisfies the [`UKernel`] contract with `lda = mr = 12`.
pub(crate) type TColPanels = unsafe fn(
    kc: usize,
    a: *const f32,
    pstride: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    st: &Store,
);

/// One tier's micro-kernels, indexed by the number of rows (index 0 unused).
pub(crate) struct Ukr {
    pub isa: Isa,
    pub mr: usize,
    pub nr: usize,
    /// Full `nr`-wide tiles.
    pub full: [UKernel; MR_MAX + 1],
    /// Runs of full tiles (rows up to `mr`), where the tier has them.
    pub multi: Option<&'static [MultiKernel; MR_MAX + 1]>,
    /// Masked tiles, any `nv < nr`.
    pub tail: [UKernel; MR_MAX + 1],
    /// Full tiles reading A in place by rows: row `i` of step `k` at `a + i·lda + k`
    /// (a channels-last activation, pixels as rows). Same FMA chain per element.
    pub rows: [UKernel; MR_MAX + 1],
    /// The same, masked (`nv < nr`).
    pub rows_tail: [UKernel; MR_MAX + 1],
    /// Masked tiles for `nv <= narrow_max` (half width), cheaper than `tail`, up to
    /// `narrow_mr` rows (half-width tiles have registers for more rows).
    pub narrow: [UKernel; MR_MAX + 1],
    pub narrow_max: usize,
    pub narrow_mr: usize,
    /// Column-tail kernels, indexed by the number of columns `1..=tcol_max`: they take a
    /// whole A panel (`lda` = its height ≤ 12 rows, contiguous at each k) and vectorize
    /// over its rows instead of over columns, so a tail of a few columns costs a few
    /// FMAs per k instead of a whole row-vector tile. Same FMA chain per element as the
    /// other kernels.
    pub tcol: [UKernel; 9],
    pub tcol_max: usize,
    /// Column-tail kernels over several full panels at once, by number of columns:
    /// `(kernel, panels per call)`, where the tier has them.
    pub tcol_panels: [Option<(TColPanels, usize)>; 9],
}

/// How a block's columns are covered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// `nr` columns (or fewer, masked), `mr`-row slivers.
    Wide,
    /// At most `narrow_max` columns, `narrow_mr`-row slivers.
    Narrow,
    /// At most `tcol_max` columns, whole panels.
    TCol,
}

/// Column chunks `(start, width, kind)` of a block of `ncur` columns from `jb`.
fn chunks(u: &Ukr, jb: usize, ncur: usize) -> impl Iterator<Item = (usize, usize, Chunk)> {
    let nr = u.nr;
    let full = ncur / nr;
    let r = ncur % nr;
    let (wide_tail, narrow, tcol) = if r == 0 {
        (0, 0, 0)
    } else if r > u.narrow_max + u.tcol_max {
        (r, 0, 0)
    } else if r > u.narrow_max {
        (0, u.narrow_max, r - u.narrow_max)
    } else if r <= u.tcol_max {
        (0, 0, r)
    } else {
        (0, r, 0)
    };
    let tail_start = jb + full * nr;
    (0..full)
        .map(move |i| (jb + i * nr, nr, Chunk::Wide))
        .chain((wide_tail > 0).then_some((tail_start, wide_tail, Chunk::Wide)))
        .chain((narrow > 0).then_some((tail_start, narrow, Chunk::Narrow)))
        .chain((tcol > 0).then_some((tail_start + narrow, tcol, Chunk::TCol)))
}

/// Micro-kernel columns a block of `n` columns costs (a masked wide tile counts whole, a
/// narrow one as `narrow_max`), to compare ways of laying out the same columns.
pub(crate) fn column_cost(u: &Ukr, n: usize) -> usize {
    chunks(u, 0, n)
        .map(|(_, w, kind)| match kind {
            Chunk::Wide => u.nr,
            Chunk::Narrow => u.narrow_max,
            Chunk::TCol => w,
        })
        .sum()
}

/// The micro-kernel table for a tier the CPU supports (clamped to what it has).
pub(crate) fn ukr(isa: Isa) -> &'static Ukr {
    let isa = isa.min(Isa::detect());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => &avx512::UKR,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &avx2::UKR,
        _ => &scalar::UKR,
    }
}

/// A one-row kernel over a whole [`NR_PACK`]-wide panel of pre-packed constant B (called
/// with `lda = 1`, `ldb = NR_PACK`, `nv = NR_PACK`, the whole K in one call): on AVX2 four
/// FMA chains instead of the two of a 16-wide tile; on AVX-512 the one-row tile itself,
/// called directly so that the caller sets its prefetch. `None` on the portable tier.
/// Same FMA chain per element as every other kernel.
pub(crate) fn row_panel_kernel(isa: Isa) -> Option<UKernel> {
    match ukr(isa).isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2::ROW32),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(avx512::ROW32),
        _ => None,
    }
}

/// [`row_panel_kernel`] over two consecutive panels at once (64 columns, the second
/// panel's weights `NR_PACK·K` floats after the first's): twice the FMA chains and two
/// weight streams. `None` on the portable tier. Same FMA chain per element.
pub(crate) fn row_pair_kernel(isa: Isa) -> Option<UKernel> {
    match ukr(isa).isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2::ROW64),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(avx512::ROW64),
        _ => None,
    }
}

/// Micro-kernel geometry of the tier `isa` resolves to on this CPU: `(isa, mr, nr)`.
pub fn micro_tile(isa: Isa) -> (Isa, usize, usize) {
    let u = ukr(isa);
    (u.isa, u.mr, u.nr)
}

// ---------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------

/// Elements of packed A for an `m × k` matrix (no padding: `m·k`).
pub fn packed_a_len(m: usize, k: usize) -> usize {
    m * k
}

/// Packs row-major `a` (`m × k`, row stride `lda`) into the [`MR_PACK`] panel layout.
pub fn pack_a(m: usize, k: usize, a: &[f32], lda: usize, packed: &mut [f32]) {
    assert!(lda >= k);
    assert!(
        m == 0 || a.len() >= (m - 1) * lda + k,
        "pack_a: source too short"
    );
    assert_eq!(packed.len(), m * k, "pack_a: destination length");
    for p0 in (0..m).step_by(MR_PACK) {
        let h = MR_PACK.min(m - p0);
        let dst = &mut packed[p0 * k..(p0 + h) * k];
        for i in 0..h {
            let row = &a[(p0 + i) * lda..(p0 + i) * lda + k];
            for (kk, &v) in row.iter().enumerate() {
                dst[kk * h + i] = v;
            }
        }
    }
}

/// Elements of packed constant B for a `k × n` matrix (`k·n`).
pub fn packed_b_len(k: usize, n: usize) -> usize {
    k * n
}

/// Packs `Bᵀ` given row-major as `bt` (`n × k`, row stride `ldbt`; e.g. linear weights
/// `[out, in]`) into the [`NR_PACK`] column-panel layout of `B = btᵀ` (`k × n`).
pub fn pack_b_transposed(n: usize, k: usize, bt: &[f32], ldbt: usize, packed: &mut [f32]) {
    assert!(ldbt >= k);
    assert!(
        n == 0 || bt.len() >= (n - 1) * ldbt + k,
        "pack_b_transposed: source too short"
    );
    assert_eq!(packed.len(), n * k, "pack_b_transposed: destination length");
    for q0 in (0..n).step_by(NR_PACK) {
        let w = NR_PACK.min(n - q0);
        let dst = &mut packed[q0 * k..(q0 + w) * k];
        for j in 0..w {
            let row = &bt[(q0 + j) * ldbt..(q0 + j) * ldbt + k];
            for (kk, &v) in row.iter().enumerate() {
                dst[kk * w + j] = v;
            }
        }
    }
}

/// The inverse of [`pack_b_transposed`]: `bt` (`n` rows of `k`) from `packed`.
pub fn unpack_b_transposed(n: usize, k: usize, packed: &[f32], bt: &mut [f32]) {
    assert_eq!(packed.len(), n * k, "unpack_b_transposed: source length");
    assert_eq!(bt.len(), n * k, "unpack_b_transposed: destination length");
    for q0 in (0..n).step_by(NR_PACK) {
        let w = NR_PACK.min(n - q0);
        let src = &packed[q0 * k..(q0 + w) * k];
        for j in 0..w {
            for kk in 0..k {
                bt[(q0 + j) * k + kk] = src[kk * w + j];
            }
        }
    }
}

/// Elements past the end of a row that [`PackB::row`] may clobber (one zmm).
pub const ROW_SLACK: usize = 16;

/// A producer of B rows (e.g. im2col): the driver asks for rows of a `kc × nc` block and
/// scatters them into the micro-kernel's `nr`-wide panels itself.
pub trait PackB: Sync {
    /// Row `k` of B, columns `n0 .. n0 + len`, when it is contiguous in memory already.
    fn row_slice(&self, k: usize, n0: usize, len: usize) -> Option<&[f32]> {
        let _ = (k, n0, len);
        None
    }
    /// Writes row `k` of B, columns `n0 .. n0 + nc`, into `row[..nc]`. `row` has
    /// [`ROW_SLACK`] more elements, which may be overwritten with anything. Called only
    /// when `row_slice` returns `None`.
    fn row(&self, k: usize, n0: usize, nc: usize, row: &mut [f32]);
    /// Packs a whole block straight into the panel layout of `pack_block`, if this
    /// source has a faster way than row by row; returns `false` to use the rows.
    /// `dst` holds `kc · ceil(nc/nr) · nr` elements (columns past `nc` may be written
    /// with anything); `tmp` holds `nc + ROW_SLACK`.
    #[allow(clippy::too_many_arguments)]
    fn pack_panels(
        &self,
        isa: Isa,
        k0: usize,
        kc: usize,
        n0: usize,
        nc: usize,
        nr: usize,
        dst: &mut [f32],
        tmp: &mut [f32],
    ) -> bool {
        let _ = (isa, k0, kc, n0, nc, nr, dst, tmp);
        false
    }
}

/// A plain row-major matrix as a [`PackB`] source.
pub(crate) struct PlainB<'a> {
    pub b: &'a [f32],
    pub ldb: usize,
}

impl PackB for PlainB<'_> {
    fn row_slice(&self, k: usize, n0: usize, len: usize) -> Option<&[f32]> {
        Some(&self.b[k * self.ldb + n0..][..len])
    }
    fn row(&self, k: usize, n0: usize, nc: usize, row: &mut [f32]) {
        row[..nc].copy_from_slice(&self.b[k * self.ldb + n0..][..nc]);
    }
}

/// Packs `B[k0 .. k0+kc, n0 .. n0+nc]` into `dst` as panels of `nr` columns, K-major:
/// element `(k, j)` at `((j−n0)/nr)·kc·nr + (k−k0)·nr + (j−n0)%nr`; the columns of the
/// last panel past `nc` are left as they are (the kernels mask them). `tmp` holds
/// `nc + ROW_SLACK`.
#[doc(hidden)]
pub(crate) fn pack_block(
    u: &Ukr,
    src: &dyn PackB,
    k0: usize,
    kc: usize,
    n0: usize,
    nc: usize,
    dst: &mut [f32],
    tmp: &mut [f32],
) {
    if src.pack_panels(u.isa, k0, kc, n0, nc, u.nr, dst, tmp) {
        return;
    }
    match (u.isa, u.nr) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a Ukr of a tier exists only for tiers the CPU supports (`ukr` clamps).
        (Isa::Avx2, 16) => unsafe { pack_block_avx2(src, k0, kc, n0, nc, dst, tmp) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx512, 32) => unsafe { pack_block_avx512(src, k0, kc, n0, nc, dst, tmp) },
        (_, 8) => pack_block_nr::<8>(src, k0, kc, n0, nc, dst, tmp),
        (_, 16) => pack_block_nr::<16>(src, k0, kc, n0, nc, dst, tmp),
        (_, 32) => pack_block_nr::<32>(src, k0, kc, n0, nc, dst, tmp),
        (_, nr) => unreachable!("no micro-kernel has nr = {nr}"),
    }
}

/// [`pack_block_nr`] compiled with AVX2, so its fixed-size copies are ymm moves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_block_avx2(
    src: &dyn PackB,
    k0: usize,
    kc: usize,
    n0: usize,
    nc: usize,
    dst: &mut [f32],
    tmp: &mut [f32],
) {
    pack_block_nr::<16>(src, k0, kc, n0, nc, dst, tmp)
}

/// [`pack_block_nr`] compiled with AVX-512, so its fixed-size copies are zmm moves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
/// # Safety
/// The CPU must support AVX-512F/VL/BW, AVX2 and FMA (checked by the Isa dispatch).
unsafe fn pack_block_avx512(
    src: &dyn PackB,
    k0: usize,
    kc: usize,
    n0: usize,
    nc: usize,
    dst: &mut [f32],
    tmp: &mut [f32],
) {
    pack_block_nr::<32>(src, k0, kc, n0, nc, dst, tmp)
}

/// Copies a contiguous row of `nc` columns into row `kk` of the panels (`kc` rows,
/// `NR` columns each) of `dst`.
#[inline(always)]
pub(crate) fn scatter_row<const NR: usize>(row: &[f32], dst: &mut [f32], kk: usize, kc: usize) {
    let nc = row.len();
    let full = nc / NR;
    let rem = nc % NR;
    for p in 0..full {
        // Constant-size copies: inlined vector moves, no memcpy call.
        let d: &mut [f32; NR] = (&mut dst[p * kc * NR + kk * NR..][..NR])
            .try_into()
            .unwrap();
        let s: &[f32; NR] = row[p * NR..][..NR].try_into().unwrap();
        *d = *s;
    }
    if rem > 0 {
        dst[full * kc * NR + kk * NR..][..rem].copy_from_slice(&row[full * NR..]);
    }
}

#[inline(always)]
fn pack_block_nr<const NR: usize>(
    src: &dyn PackB,
    k0: usize,
    kc: usize,
    n0: usize,
    nc: usize,
    dst: &mut [f32],
    tmp: &mut [f32],
) {
    assert!(dst.len() >= kc * nc.div_ceil(NR) * NR && tmp.len() >= nc + ROW_SLACK);
    for kk in 0..kc {
        let row: &[f32] = match src.row_slice(k0 + kk, n0, nc) {
            Some(r) => r,
            None => {
                src.row(k0 + kk, n0, nc, &mut tmp[..nc + ROW_SLACK]);
                &tmp[..nc]
            }
        };
        scatter_row::<NR>(row, dst, kk, kc);
    }
}

// ---------------------------------------------------------------------------------------
// Epilogue and the public GEMM
// ---------------------------------------------------------------------------------------

/// Bias added in the epilogue.
#[derive(Clone, Copy, Debug, Default)]
pub enum Bias<'a> {
    #[default]
    None,
    /// One value per row of C (`len == m`): per output channel in a convolution.
    Row(&'a [f32]),
    /// One value per column of C (`len == n`): per output feature in a linear layer.
    Col(&'a [f32]),
}

/// What happens to `A·B` before it is stored: `C = act((C if accumulate) + A·B + bias +
/// residual)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub bias: Bias<'a>,
    /// Same shape and stride (`ldc`) as C.
    pub residual: Option<&'a [f32]>,
    pub activation: Activation,
    /// Add to C's previous contents instead of overwriting it.
    pub accumulate: bool,
}

/// A mutable output shared by tasks that write disjoint tiles of it (see
/// [`Gemm::run_tile_shared`], `ConvKernel::run_tile_shared`).
#[derive(Clone, Copy, Debug)]
pub struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a SharedOut is only written through the `unsafe` `run_tile_shared` functions,
// whose contract requires that no two concurrent calls write the same elements.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub fn new(out: &'a mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.ptr
    }
    /// The elements `start .. start + len` (e.g. one sample of a batch), shared the same
    /// way. Panics if the range is out of bounds.
    pub fn slice(&self, start: usize, len: usize) -> SharedOut<'a> {
        assert!(
            start.checked_add(len).is_some_and(|e| e <= self.len),
            "SharedOut::slice out of bounds"
        );
        SharedOut {
            // SAFETY: start + len <= self.len, so the range lies inside the borrowed slice.
            ptr: unsafe { self.ptr.add(start) },
            len,
            _borrow: PhantomData,
        }
    }
}

/// The K block: the whole K up to 384, else K split evenly into blocks of at most 256.
pub(crate) fn choose_kc(k: usize) -> usize {
    if let Some(v) = std::env::var("CNNRT_KC")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let nb = k.div_ceil(v).max(1);
        return k.div_ceil(nb).max(1);
    }
    if k <= 384 {
        k.max(1)
    } else {
        let nb = k.div_ceil(256);
        k.div_ceil(nb)
    }
}

/// The N block for a packed `kc × nc` B block of about `bytes` bytes, a multiple of `nr`,
/// balanced over N.
pub(crate) fn choose_nc(n: usize, kc: usize, nr: usize, bytes: usize) -> usize {
    let bytes = std::env::var("CNNRT_NCB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(bytes);
    let target = (bytes / (4 * kc.max(1))).max(nr) / nr * nr;
    let nb = n.div_ceil(target).max(1);
    n.div_ceil(nb).div_ceil(nr).max(1) * nr
}

/// Where the micro-kernels read B from in one tile.
pub(crate) enum BSrc<'a> {
    /// In place: row-major, `ptr` at the tile's `(0, 0)`, row stride `ldb`.
    Direct { ptr: *const f32, ldb: usize },
    /// In place like `Direct`, but run like `Pack` (each A sliver across the columns of
    /// an `nc` block, in runs of full tiles): for a small M, where packing B costs more
    /// than it saves.
    DirectRows { ptr: *const f32, ldb: usize },
    /// Packed into scratch block by block; `n0` is the tile's first column in the
    /// packer's coordinates.
    Pack { packer: &'a dyn PackB, n0: usize },
    /// Pre-packed constant B ([`NR_PACK`] layout); `ptr` at the panel holding the tile's
    /// first column (a multiple of [`NR_PACK`]), `n_rest` columns from there to the
    /// matrix's end (the last panel's width follows from it), `k` rows.
    Prepacked { ptr: *const f32, n_rest: usize },
    /// Packed ahead, the whole matrix: K blocks of the tile's `kc` rows one after the
    /// other, each as [`pack_block`] lays out a block `npad` columns wide (`npad` a
    /// multiple of `nr`): element `(k, j)` of B, `k` in the block from `k0`, at `base +
    /// k0·npad + (j/nr)·kcur·nr + (k−k0)·nr + j%nr`. `n0` is the tile's first column (a
    /// multiple of `nr`). Run like `Pack`, without packing (several workers share one
    /// such B: see `ConvKernel`'s shared-B plan).
    Panels {
        base: *const f32,
        npad: usize,
        n0: usize,
    },
}

/// One tile of work for [`drive`]: rows `0..m` of packed A starting at a panel boundary,
/// columns `0..n` of B and C.
pub(crate) struct Tile {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub kc: usize,
    pub nc: usize,
    /// Packed A at the tile's first panel (panel `q` at `a + q·MR_PACK·k`).
    pub a: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias_row: *const f32,
    pub bias_col: *const f32,
    pub residual: *const f32,
    pub act: Activation,
    pub accumulate: bool,
    /// Where the prefetch hints for A's next panels go.
    pub prefetch: PrefetchTo,
}

/// Scratch (f32 elements) that [`drive`] needs for a packed B block, including room to
/// align it to 64 bytes.
pub(crate) fn pack_scratch_len(kc: usize, nc: usize, nr: usize) -> usize {
    kc * nc.div_ceil(nr) * nr + nc + ROW_SLACK + 16
}

/// Splits a panel of `h` rows into slivers of at most `mr` rows, as even as possible.
#[inline]
fn slivers(h: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let cnt = h.div_ceil(mr);
    let base = h / cnt.max(1);
    let extra = h % cnt.max(1);
    (0..cnt).map(move |s| {
        let start = s * base + s.min(extra);
        (start, base + usize::from(s < extra))
    })
}

/// Runs one tile. Safety: the caller guarantees every pointer in `t` and `b` covers the
/// tile (A: `m·k` packed elements; B: `k × n`; C and residual: `m` rows of stride `ldc`
/// with `n` valid columns; row bias `m`, column bias `n` elements), and that `scratch`
/// holds `pack_scratch_len(kc, nc, nr)` elements when `b` is `BSrc::Pack`.
pub(crate) unsafe fn drive(u: &Ukr, t: &Tile, b: &BSrc, scratch: &mut [f32]) {
    let (m, n, k) = (t.m, t.n, t.k);
    if m == 0 || n == 0 {
        return;
    }
    let nr = u.nr;
    // Align the packed block to 64 bytes.
    let off = scratch.as_ptr().align_offset(64).min(16);
    let kc_max = t.kc.max(1);
    let nblocks_k = k.div_ceil(kc_max).max(1);
    // Loop order: with B packed per block, the A sliver (mr × kc) stays in L1 while the
    // packed block streams from L2 (B is written once, read once per sliver). With B
    // read in place (constant or direct), each B sliver (kc × nr) stays in L1 while the
    // rows of A stream past it, so B comes from memory once.
    let b_outer = !matches!(
        b,
        BSrc::Pack { .. } | BSrc::DirectRows { .. } | BSrc::Panels { .. }
    );
    // Pointer step from one full tile of B to the next, for runs of tiles.
    let bstep = |kcur: usize| match b {
        BSrc::DirectRows { .. } => nr,
        _ => kcur * nr,
    };
    for jb in (0..n).step_by(t.nc) {
        let ncur = t.nc.min(n - jb);
        for kb in 0..nblocks_k {
            let k0 = kb * kc_max;
            let kcur = kc_max.min(k - k0.min(k));
            let first = kb == 0;
            let last = kb + 1 == nblocks_k;
            let packed: *const f32 = if let BSrc::Pack { packer, n0 } = b {
                let len = kcur * ncur.div_ceil(nr) * nr;
                let (dst, tmp) = scratch[off..].split_at_mut(len);
                pack_block(u, *packer, k0, kcur, n0 + jb, ncur, dst, tmp);
                dst.as_ptr()
            } else {
                std::ptr::null()
            };
            // Address and stride of B's column `j` (tile coordinates) at row k0.
            let bcol = |j: usize| -> (*const f32, usize) {
                match *b {
                    BSrc::Direct { ptr, ldb } | BSrc::DirectRows { ptr, ldb } => {
                        (ptr.add(k0 * ldb + j), ldb)
                    }
                    BSrc::Pack { .. } => {
                        (packed.add(((j - jb) / nr) * kcur * nr + (j - jb) % nr), nr)
                    }
                    BSrc::Panels { base, npad, n0 } => (
                        base.add(k0 * npad + ((n0 + j) / nr) * kcur * nr + j % nr),
                        nr,
                    ),
                    BSrc::Prepacked { ptr, n_rest } => {
                        let q = j / NR_PACK;
                        let w = NR_PACK.min(n_rest - q * NR_PACK);
                        (ptr.add(q * NR_PACK * k + k0 * w + j % NR_PACK), w)
                    }
                }
            };
            // The epilogue of the tile at row r0, column j (tile coordinates).
            let store_at = |r0: usize, j: usize, pf: (*const f32, usize)| Store {
                load_c: !first || t.accumulate,
                finish: last,
                bias_row: if t.bias_row.is_null() {
                    t.bias_row
                } else {
                    t.bias_row.add(r0)
                },
                bias_col: if t.bias_col.is_null() {
                    t.bias_col
                } else {
                    t.bias_col.add(j)
                },
                residual: if t.residual.is_null() {
                    t.residual
                } else {
                    t.residual.add(r0 * t.ldc + j)
                },
                act: t.act,
                pf: pf.0,
                pf_stride: pf.1,
                pf_to: t.prefetch,
            };
            // One kernel call: rows r0 .. r0+mr (A at `a`, K stride `lda`), columns
            // j .. j+nv, with `kern` of the right kind.
            let call = |kern: UKernel,
                        r0: usize,
                        mr: usize,
                        a: *const f32,
                        lda: usize,
                        j: usize,
                        nv: usize,
                        pf: (*const f32, usize)| {
                let _ = mr;
                let (bp, ldb) = bcol(j);
                let st = store_at(r0, j, pf);
                kern(
                    kcur,
                    a,
                    lda,
                    bp,
                    ldb,
                    t.c.add(r0 * t.ldc + j),
                    t.ldc,
                    nv,
                    &st,
                );
            };
            // Every sliver of one panel (rows p0 .. p0+h) against one column chunk.
            let panel_chunk = |p0: usize,
                               h: usize,
                               (j, nv, kind): (usize, usize, Chunk),
                               pf: (*const f32, usize)| {
                let ap = t.a.add(p0 * k + k0 * h);
                match kind {
                    Chunk::TCol => call(u.tcol[nv], p0, h, ap, h, j, nv, pf),
                    Chunk::Narrow => {
                        for (si, (s0, mr)) in slivers(h, u.narrow_mr).enumerate() {
                            call(
                                u.narrow[mr],
                                p0 + s0,
                                mr,
                                ap.add(s0),
                                h,
                                j,
                                nv,
                                if si == 0 { pf } else { NO_PF },
                            );
                        }
                    }
                    Chunk::Wide => {
                        // The next panel's prefetch is spread over all slivers, each
                        // taking a contiguous share at an even rate: issued all in the
                        // first sliver, the hints outran memory and stalled its loads.
                        let ns = h.div_ceil(u.mr).max(1);
                        let share = pf.1.div_ceil(ns);
                        for (si, (s0, mr)) in slivers(h, u.mr).enumerate() {
                            let pf = if pf.0.is_null() {
                                NO_PF
                            } else {
                                (pf.0.wrapping_add(si * share * kcur), share)
                            };
                            let kern = if nv == nr {
                                u.full[mr]
                            } else if nv <= u.narrow_max {
                                u.narrow[mr]
                            } else {
                                u.tail[mr]
                            };
                            call(kern, p0 + s0, mr, ap.add(s0), h, j, nv, pf);
                        }
                    }
                }
            };
            // `pp` full panels from row p0 against a column-tail chunk in one call.
            let tcol_group = |kern: TColPanels, p0: usize, (j, _, _): (usize, usize, Chunk)| {
                let (bp, ldb) = bcol(j);
                kern(
                    kcur,
                    t.a.add(p0 * k + k0 * MR_PACK),
                    MR_PACK * k,
                    bp,
                    ldb,
                    t.c.add(p0 * t.ldc + j),
                    t.ldc,
                    &store_at(p0, j, NO_PF),
                );
            };
            let grouped = |(_, nv, kind): (usize, usize, Chunk)| match kind {
                Chunk::TCol => u.tcol_panels[nv],
                _ => None,
            };
            if b_outer {
                for ch in chunks(u, jb, ncur) {
                    let group = grouped(ch);
                    let mut p0 = 0;
                    while p0 < m {
                        if let Some((kern, pp)) = group {
                            if m - p0 >= pp * MR_PACK {
                                tcol_group(kern, p0, ch);
                                p0 += pp * MR_PACK;
                                continue;
                            }
                        }
                        // On the first column chunk, prefetch the next panel's rows of
                        // this K block while this one computes: with few columns (Winograd
                        // blocks, small maps) A streams from memory and would otherwise
                        // stall every broadcast.
                        let next = p0 + MR_PACK;
                        let pf = if ch.0 == jb && next < m {
                            let hn = MR_PACK.min(m - next);
                            (t.a.add(next * k + k0 * hn), hn)
                        } else {
                            NO_PF
                        };
                        panel_chunk(p0, MR_PACK.min(m - p0), ch, pf);
                        p0 += MR_PACK;
                    }
                }
            } else {
                for p0 in (0..m).step_by(MR_PACK) {
                    let h = MR_PACK.min(m - p0);
                    // While the first tile of this panel computes, prefetch the next
                    // panel's rows of this K block (it may be coming from L3).
                    let next = p0 + MR_PACK;
                    let mut pf = if next < m {
                        let hn = MR_PACK.min(m - next);
                        (t.a.add(next * k + k0 * hn), hn)
                    } else {
                        NO_PF
                    };
                    let ap = t.a.add(p0 * k + k0 * h);
                    // Wide chunks sliver-major, so each A sliver stays in L1 across them.
                    let nfull = ncur / nr;
                    for (s0, mr) in slivers(h, u.mr) {
                        let skip = match u.multi {
                            Some(mk) if nfull > 0 => {
                                let (bp, ldb) = bcol(jb);
                                let st = store_at(p0 + s0, jb, pf);
                                mk[mr](
                                    kcur,
                                    ap.add(s0),
                                    h,
                                    bp,
                                    ldb,
                                    bstep(kcur),
                                    nfull,
                                    t.c.add((p0 + s0) * t.ldc + jb),
                                    t.ldc,
                                    &st,
                                );
                                pf = NO_PF;
                                nfull
                            }
                            _ => 0,
                        };
                        for (j, nv, kind) in chunks(u, jb, ncur).skip(skip) {
                            if kind != Chunk::Wide {
                                continue;
                            }
                            let kern = if nv == nr {
                                u.full[mr]
                            } else if nv <= u.narrow_max {
                                u.narrow[mr]
                            } else {
                                u.tail[mr]
                            };
                            call(kern, p0 + s0, mr, ap.add(s0), h, j, nv, pf);
                            pf = NO_PF;
                        }
                    }
                    for ch in chunks(u, jb, ncur).filter(|c| c.2 != Chunk::Wide) {
                        // A column tail over the full panels goes `pp` panels at a time,
                        // once the last of each group has had its wide chunks (its A
                        // rows still in cache); the panels after the last whole group
                        // one by one.
                        if let Some((kern, pp)) = grouped(ch) {
                            let pi = p0 / MR_PACK;
                            if pi < m / MR_PACK / pp * pp {
                                if pi % pp == pp - 1 {
                                    tcol_group(kern, p0 - (pp - 1) * MR_PACK, ch);
                                }
                                continue;
                            }
                        }
                        panel_chunk(p0, h, ch, pf);
                        pf = NO_PF;
                    }
                }
            }
        }
    }
}

const NO_PF: (*const f32, usize) = (std::ptr::null(), 0);

/// Applies `act` to an `mr × nv` tile in place with the element-wise layer's vector
/// functions on `isa` (the activations the micro-kernels' own epilogues do not cover:
/// sigmoid, SiLU, tanh; within 2.5e-7 relative of the f64 definition, see
/// `elementwise`). One dispatch per tile, a masked tail per row.
///
/// Why not the f64 definition per element, as before: through libm's `exp` that took
/// 58% of EfficientNet-B0's time (its SiLU 1×1 layers at 5–25% of the peak).
///
/// Safety: `c + i·ldc + j` valid for `i < mr`, `j < nv`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86-64 tiers
pub(crate) unsafe fn act_tile_vector(
    isa: Isa,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nv: usize,
    act: Activation,
) {
    crate::kernels::elementwise::dispatch!(isa, |s| {
        let a = crate::kernels::elementwise::ActV::new(s, act);
        // SAFETY: the tile's mr rows of nv floats, ldc apart (caller).
        unsafe { crate::kernels::elementwise::map_act(s, &a, c, c, ldc, mr, nv) }
    })
}

/// One activation in f32 (through the f64 definition, so it matches the reference).
#[inline]
pub(crate) fn act_f32(act: Activation, x: f32) -> f32 {
    act.apply_f64(x as f64) as f32
}

/// `act` as `min(hi, max(lo, x))` (max and min returning their second operand when
/// either is NaN, as x86 does), for ReLU and Clip: the epilogues apply these two with no
/// branch per vector.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86-64 tiers
#[inline(always)]
pub(crate) fn clamp_of(act: Activation) -> Option<(f32, f32)> {
    match act {
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Clip { min, max } => Some((min, max)),
        _ => None,
    }
}

/// Whether the vector epilogues apply `act` themselves.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86-64 tiers
#[inline]
pub(crate) fn act_is_vector(act: Activation) -> bool {
    matches!(
        act,
        Activation::Identity
            | Activation::Relu
            | Activation::LeakyRelu { .. }
            | Activation::Clip { .. }
            | Activation::HardSigmoid { .. }
            | Activation::HardSwish
    )
}

/// How [`Gemm`] reads B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BMode {
    /// Packed block by block into `nr`-wide panels (scratch).
    Packed,
    /// Read in place (row-major): no packing, no scratch; best when M is small.
    Direct,
}

/// A planned GEMM `C[m×n] (+)= A[m×k]·B[k×n]` with A packed by [`pack_a`] and B a plain
/// row-major matrix. Plan once (cheap), run many times; [`Gemm::tiles`] independent tiles
/// over N blocks, each computing all M rows of its columns.
#[derive(Clone, Debug)]
pub struct Gemm {
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    kc: usize,
    nc: usize,
    mode: BMode,
}

/// Whether reading B in place beats packing it, for an `m × k` by `k × n` product: yes
/// when the rows of A for one K block fit comfortably in L2 (they stream past each B
/// sliver held in L1) and B rows are long enough for whole cache lines.
pub fn prefer_direct_b(m: usize, k: usize, n: usize) -> bool {
    m * k.min(256) <= 40 * 1024 && n >= 64
}

impl Gemm {
    /// Plans for `isa` (clamped to what this CPU supports).
    pub fn new(isa: Isa, m: usize, n: usize, k: usize) -> Gemm {
        let mode = if prefer_direct_b(m, k, n) {
            BMode::Direct
        } else {
            BMode::Packed
        };
        Gemm::with_mode(isa, m, n, k, mode)
    }

    /// Plans with an explicit B mode.
    pub fn with_mode(isa: Isa, m: usize, n: usize, k: usize, mode: BMode) -> Gemm {
        let u = ukr(isa);
        let kc = choose_kc(k);
        let nc = choose_nc(n, kc, u.nr, 256 << 10);
        Gemm {
            isa: u.isa,
            m,
            n,
            k,
            kc,
            nc,
            mode,
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn mode(&self) -> BMode {
        self.mode
    }

    /// f32 elements of scratch one call (or one concurrent tile) needs.
    pub fn scratch_len(&self) -> usize {
        match self.mode {
            BMode::Direct => 0,
            BMode::Packed => {
                crate::kernels::whole_lines(pack_scratch_len(self.kc, self.nc, ukr(self.isa).nr))
            }
        }
    }

    /// Number of independent tiles (N blocks).
    pub fn tiles(&self) -> usize {
        self.n.div_ceil(self.nc).max(1)
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        a_packed: &[f32],
        b: &[f32],
        ldb: usize,
        c_len: usize,
        ldc: usize,
        epi: &Epilogue,
        scratch: &[f32],
    ) {
        let (m, n, k) = (self.m, self.n, self.k);
        assert_eq!(a_packed.len(), m * k, "gemm: packed A length");
        assert!(ldb >= n && ldc >= n, "gemm: leading dimensions");
        if k > 0 && n > 0 {
            assert!(b.len() >= (k - 1) * ldb + n, "gemm: B too short");
        }
        if m > 0 && n > 0 {
            assert!(c_len >= (m - 1) * ldc + n, "gemm: C too short");
            if let Some(r) = epi.residual {
                assert!(r.len() >= (m - 1) * ldc + n, "gemm: residual too short");
            }
        }
        match epi.bias {
            Bias::None => {}
            Bias::Row(bv) => assert_eq!(bv.len(), m, "gemm: row bias length"),
            Bias::Col(bv) => assert_eq!(bv.len(), n, "gemm: column bias length"),
        }
        assert!(
            scratch.len() >= self.scratch_len(),
            "gemm: scratch too short"
        );
    }

    /// Runs every tile in order on the calling thread.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        a_packed: &[f32],
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        epi: &Epilogue,
        scratch: &mut [f32],
    ) {
        let out = SharedOut::new(c);
        for t in 0..self.tiles() {
            // SAFETY: one thread, each tile once.
            unsafe { self.run_tile_shared(a_packed, b, ldb, out, ldc, epi, scratch, t) };
        }
    }

    /// Runs tile `tile` (`< tiles()`): columns `tile·nc ..` of C, all rows.
    #[allow(clippy::too_many_arguments)]
    pub fn run_tile(
        &self,
        a_packed: &[f32],
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        epi: &Epilogue,
        scratch: &mut [f32],
        tile: usize,
    ) {
        // SAFETY: `c` is borrowed mutably, so nothing else writes it.
        unsafe {
            self.run_tile_shared(a_packed, b, ldb, SharedOut::new(c), ldc, epi, scratch, tile)
        }
    }

    /// [`Gemm::run_tile`] writing through a [`SharedOut`], so that threads can run
    /// different tiles at once.
    ///
    /// # Safety
    /// No other call may write the same tile of `c` concurrently (distinct tile indices
    /// write disjoint elements), and nothing may read `c` meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_tile_shared(
        &self,
        a_packed: &[f32],
        b: &[f32],
        ldb: usize,
        c: SharedOut,
        ldc: usize,
        epi: &Epilogue,
        scratch: &mut [f32],
        tile: usize,
    ) {
        self.check(a_packed, b, ldb, c.len(), ldc, epi, scratch);
        assert!(tile < self.tiles(), "gemm: tile index");
        let n0 = tile * self.nc;
        if self.m == 0 || n0 >= self.n {
            return;
        }
        let ncur = self.nc.min(self.n - n0);
        let u = ukr(self.isa);
        let plain = PlainB { b, ldb };
        let src = match self.mode {
            BMode::Direct => BSrc::Direct {
                ptr: b.as_ptr().wrapping_add(n0),
                ldb,
            },
            BMode::Packed => BSrc::Pack { packer: &plain, n0 },
        };
        let t = Tile {
            m: self.m,
            n: ncur,
            k: self.k,
            kc: self.kc,
            nc: self.nc,
            a: a_packed.as_ptr(),
            c: c.ptr().add(n0),
            ldc,
            bias_row: match epi.bias {
                Bias::Row(v) => v.as_ptr(),
                _ => std::ptr::null(),
            },
            bias_col: match epi.bias {
                Bias::Col(v) => v.as_ptr().add(n0),
                _ => std::ptr::null(),
            },
            residual: epi
                .residual
                .map_or(std::ptr::null(), |r| r.as_ptr().add(n0)),
            act: epi.activation,
            accumulate: epi.accumulate,
            prefetch: PrefetchTo::L1,
        };
        // SAFETY: `check` verified A (m·k packed), B (k rows of stride ldb covering n
        // columns), C and residual (m rows of stride ldc covering n columns), the bias
        // lengths and the scratch length; the tile covers columns n0..n0+ncur ⊂ 0..n.
        drive(u, &t, &src, scratch);
    }
}

/// `C = act((C) + A·B + bias + residual)` in one call: plans a [`Gemm`] and runs it.
/// `a_packed` from [`pack_a`]; `scratch` at least [`sgemm_scratch_len`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_a(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a_packed: &[f32],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
    scratch: &mut [f32],
) {
    Gemm::new(isa, m, n, k).run(a_packed, b, ldb, c, ldc, epi, scratch)
}

/// Scratch [`sgemm_packed_a`] needs for these dimensions.
pub fn sgemm_scratch_len(isa: Isa, m: usize, n: usize, k: usize) -> usize {
    Gemm::new(isa, m, n, k).scratch_len()
}
