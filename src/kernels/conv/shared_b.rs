//! The shared-B plan of an `im2col_gemm` layer for several workers and one sample.
//!
//! Split by output pixels alone, a small map leaves too few or too uneven blocks for the
//! workers; split by output channels, every worker gathers the whole im2col matrix again
//! (measured on 2 threads: ResNet-18's stride-2 3×3 layers scaled 1.3–1.5× against
//! 1.8× for its Winograd layers). So the layer runs in two phases instead:
//!
//! 1. **Pack**: the whole `K × N` im2col matrix is gathered once, in the layout of the
//!    one-worker plan's packed blocks (K blocks of `kc` rows, each in panels of the
//!    micro-kernel's `nr` columns) but across all of N ([`BSrc::Panels`]), by all
//!    workers: one part is one K block of a range of whole panels.
//! 2. **Multiply**: tiles of (output channels × pixel columns) read those panels.
//!
//! Parts are numbered so that the team's contiguous claim ranges keep each worker on the
//! panels it packed itself: pixel blocks outermost, except where the weights outweigh the
//! im2col matrix (`M > N`, small maps), where output-channel blocks go outermost so that
//! each worker streams only its share of the weights.
//!
//! Every output element is still one in-order FMA chain over K with the same K blocks,
//! so the result is bit-identical to the one-worker plan.

use super::ConvKernel;
use crate::kernels::gemm::{drive, pack_block, ukr, BSrc, SharedOut, Tile, MR_PACK};

/// Parts per worker each phase aims for (dynamic claiming evens out the rest).
const PARTS_PER_WORKER: usize = 8;

#[derive(Clone, Debug)]
pub(super) struct SharedB {
    /// Panels of `nr` columns covering the `n` output pixels.
    panels: usize,
    /// Panels per packing part, and packing parts per K block.
    pack_panels: usize,
    col_parts: usize,
    /// K blocks (of the plan's `kc` rows).
    k_blocks: usize,
    /// Multiply tiles: output channels per tile (a multiple of MR_PACK, or all) and
    /// pixel columns per tile (a multiple of `nr`).
    mc: usize,
    m_tiles: usize,
    nc: usize,
    n_tiles: usize,
    /// Output-channel blocks outermost in the tile order (else pixel blocks).
    m_major: bool,
}

impl SharedB {
    /// The plan of `kernel` (one group) for `threads` workers; packing parts at most
    /// as wide as its one-worker N block.
    pub(super) fn new(kernel: &ConvKernel, threads: usize) -> SharedB {
        let (m, k, kc, n, nc_max) = (kernel.cog, kernel.k, kernel.kc, kernel.n, kernel.nc);
        let nr = ukr(kernel.isa).nr;
        let want = PARTS_PER_WORKER * threads.max(1);
        let panels = n.div_ceil(nr).max(1);
        let k_blocks = k.div_ceil(kc.max(1)).max(1);
        // Wide packing parts (the im2col gathers whole rows of them), enough of them.
        let cols = want.div_ceil(k_blocks).min(panels);
        let pack_panels = panels.div_ceil(cols).clamp(1, (nc_max / nr).max(1));
        let nc = panels.div_ceil(panels.min(want)) * nr;
        let n_tiles = n.div_ceil(nc).max(1);
        let rows = m.div_ceil(MR_PACK).max(1);
        let per = rows.div_ceil(want.div_ceil(n_tiles).min(rows));
        let mc = (per * MR_PACK).min(m.max(1));
        SharedB {
            panels,
            pack_panels,
            col_parts: panels.div_ceil(pack_panels),
            k_blocks,
            mc,
            m_tiles: m.div_ceil(mc).max(1),
            nc,
            n_tiles,
            m_major: m > n,
        }
    }
}

impl ConvKernel {
    /// f32 elements of the shared im2col panels (plus room to align them to 64 bytes),
    /// 0 without a shared-B plan.
    pub fn shared_b_len(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.panels * ukr(self.isa).nr * self.k + 16)
    }

    /// Parts of the pack phase.
    pub fn pack_parts(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.col_parts * s.k_blocks)
    }

    /// Tiles of the multiply phase.
    pub fn multiply_tiles(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.m_tiles * s.n_tiles)
    }

    /// Pack part `part` of one sample `x` into the shared panels `b` (64-byte aligned,
    /// `shared_b_len() − 16` elements at least); `tmp` is one worker's scratch.
    ///
    /// # Safety
    /// No concurrent call writes the same part; nothing reads `b` until all parts are
    /// done.
    pub unsafe fn pack_part(&self, x: &[f32], b: SharedOut, tmp: &mut [f32], part: usize) {
        let s = self.shared.as_ref().expect("conv: no shared-B plan");
        assert!(part < self.pack_parts(), "conv: pack part index");
        assert_eq!(x.len(), self.cin * self.h * self.w, "conv: input length");
        let u = ukr(self.isa);
        let nr = u.nr;
        assert!(
            b.len() >= s.panels * nr * self.k,
            "conv: shared panels too short"
        );
        // Column ranges outermost, so that a worker packs the columns it will multiply.
        let (cp, kb) = (part / s.k_blocks, part % s.k_blocks);
        let k0 = kb * self.kc;
        let kc = self.kc.min(self.k - k0);
        let p0 = cp * s.pack_panels;
        let n0 = p0 * nr;
        let nc = (s.pack_panels * nr).min(self.n - n0);
        let npad = s.panels * nr;
        // The part's panels of its K block: contiguous, `kc · ceil(nc/nr) · nr` elements.
        // SAFETY: the range lies inside `b` (asserted above: K blocks of `kc` rows by
        // `npad` columns); parts write disjoint ranges (caller).
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                b.ptr().add(k0 * npad + p0 * kc * nr),
                kc * nc.div_ceil(nr) * nr,
            )
        };
        pack_block(u, &self.im2col(x), k0, kc, n0, nc, dst, tmp);
    }

    /// Multiply tile `tile` of one sample from the shared panels `b` (as packed by every
    /// [`ConvKernel::pack_part`] of that sample) into `out` (one sample).
    ///
    /// # Safety
    /// `b` holds the packed panels; no concurrent call writes the same tile; nothing
    /// reads `out` until all tiles are done.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn multiply_tile(
        &self,
        packed_weights: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        b: &[f32],
        out: SharedOut,
        tile: usize,
    ) {
        let s = self.shared.as_ref().expect("conv: no shared-B plan");
        assert!(tile < self.multiply_tiles(), "conv: multiply tile index");
        let nr = ukr(self.isa).nr;
        assert!(
            b.len() >= s.panels * nr * self.k,
            "conv: shared panels too short"
        );
        assert_eq!(
            packed_weights.len(),
            self.packed_weight_len(),
            "conv: packed weight length"
        );
        let out_elems = self.cout * self.n;
        assert_eq!(out.len(), out_elems, "conv: output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), out_elems, "conv: residual length");
        }
        if let Some(bb) = bias {
            assert_eq!(bb.len(), self.cout, "conv: bias length");
        }
        let (mt, nt) = if s.m_major {
            (tile / s.n_tiles, tile % s.n_tiles)
        } else {
            (tile % s.m_tiles, tile / s.m_tiles)
        };
        let (m0, n0) = (mt * s.mc, nt * s.nc);
        let m1 = self.cout.min(m0 + s.mc);
        let ncur = s.nc.min(self.n - n0);
        // SAFETY: m0 < cout and n0 < n, so every offset lies inside the lengths checked
        // above.
        let (a, c, bias_row, res, panel) = unsafe {
            (
                packed_weights.as_ptr().add(m0 * self.k),
                out.ptr().add(m0 * self.n + n0),
                bias.map_or(std::ptr::null(), |bb| bb.as_ptr().add(m0)),
                residual.map_or(std::ptr::null(), |r| r.as_ptr().add(m0 * self.n + n0)),
                b.as_ptr(),
            )
        };
        let t = Tile {
            m: m1 - m0,
            n: ncur,
            k: self.k,
            kc: self.kc,
            nc: s.nc,
            a,
            c,
            ldc: self.n,
            bias_row,
            bias_col: std::ptr::null(),
            residual: res,
            act: self.activation,
            accumulate: false,
            prefetch: self.prefetch,
        };
        let src = BSrc::Panels {
            base: panel,
            npad: s.panels * nr,
            n0,
        };
        // SAFETY: packed A of one group (shared plans have one) from row m0, a multiple
        // of MR_PACK, holds (m1 − m0)·K elements; the panels cover K rows of columns
        // n0 .. n0 + ncur; output, residual and bias were checked above. Panels need no
        // packing scratch.
        unsafe { drive(ukr(self.isa), &t, &src, &mut []) };
    }
}
