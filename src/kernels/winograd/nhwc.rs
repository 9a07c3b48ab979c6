//! Winograd F(4x4,3x3) with the channels in the vectors: a 3×3 stride-1 layer of a
//! channels-last region (`region`), input and output `[h][w][c]` per sample.
//!
//! Why: planar, the transforms hold tiles in the vectors, and every input row is
//! gathered into 6 columns per tile (4 apart) and every output row scattered back with
//! shuffles; on conv3x3_stress those transforms were 27% of the layer's time beside GEMMs
//! at the peak. Channels-last, a tile's 6×6 window at one vector of channels is 36 plain
//! loads, the transforms are lane-wise arithmetic only, and the GEMM of each position
//! takes the tiles as rows (A read in place by rows) and the output channels as the
//! vector side (U in 32-wide panels, the `LinearGemm` layout per position).
//!
//! Same arithmetic per element as the planar [`super::WinogradKernel`] on the same tier:
//! the input transform's row pass, then its column pass (zeros outside the image); each
//! product an in-order FMA chain over the input channels; the output transform's column
//! pass, then its row pass; bias, residual, activation. So a region on or off gives the
//! same bits (tested).

use std::ptr::null;

use super::{at4, bt4};
use crate::graph::{Activation, Conv};
use crate::kernels::elementwise::{ActV, Portable, Simd};
use crate::kernels::gemm::{self, PrefetchTo, SharedOut, Store, MR_PACK, NR_PACK};
use crate::kernels::{parallel, whole_lines};
use crate::simd::Isa;

/// Tiles per block at most: V and M of a block (36 positions × tiles × channels) stay in
/// L2 beside a position's weights. conv3x3_stress's layer in a C model of this kernel
/// (AVX-512, 1 thread): blocks of 12 tiles 0.62 ms, 24 0.67, 36 0.68, 48 0.67.
const TB_MAX: usize = 12;

/// Transformed weights above this stay planar: each block reads all of them, and
/// where they outgrow L2 and L3 (ResNet-18's 14×14 layers: 9.4 MB, 16 tiles in blocks
/// of 8) the planar kernel, which splits output channels, read them once: 0.90–1.00 ms
/// per layer there against 0.96–1.00 channels-last (`cnnrt bench --profile`, 1 thread).
const U_MAX_BYTES: usize = 4 << 20;

/// K steps per GEMM call at most: the weights a call reads (`kc × nr`) stay in L1.
const KC_BYTES: usize = 24 << 10;

/// Channels must be a multiple of this (the widest tier's vector).
pub const CHANNEL_MULTIPLE: usize = 16;

/// Per position, `U_ξ` (`cout × cin`) from packed A (panels of `MR_PACK` output
/// channels, element `(o, c)` at `12p·cin + c·h + o − 12p`) to 32-wide panels (at
/// `q·cin + c·w + o − q`, `q` = `o` rounded down to 32, `w` that panel's width), or back.
pub fn reorder(cin: usize, cout: usize, src: &[f32], dst: &mut [f32], to_panels: bool) {
    let per = cin * cout;
    assert_eq!(src.len(), 36 * per, "winograd nhwc: weights to reorder");
    assert_eq!(dst.len(), 36 * per, "winograd nhwc: reordered weights");
    for xi in 0..36 {
        let (s, d) = (&src[xi * per..][..per], &mut dst[xi * per..][..per]);
        for o in 0..cout {
            let (p, q) = (o / MR_PACK * MR_PACK, o / NR_PACK * NR_PACK);
            let (h, w) = (MR_PACK.min(cout - p), NR_PACK.min(cout - q));
            for c in 0..cin {
                let (a, b) = (p * cin + c * h + o - p, q * cin + c * w + o - q);
                if to_panels {
                    d[b] = s[a];
                } else {
                    d[a] = s[b];
                }
            }
        }
    }
}

/// A planned channels-last F(4x4,3x3) layer; see the module docs.
#[derive(Clone, Debug)]
pub struct WinogradNhwc {
    isa: Isa,
    cin: usize,
    cout: usize,
    /// Input `[h, w]`, output `[oh, ow]`, padding top and left.
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pt: usize,
    pl: usize,
    act: Activation,
    /// Tiles across and down.
    ntx: usize,
    nty: usize,
    /// Blocks of tiles per sample (equal runs of raster-order tiles).
    blocks: usize,
    prefetch: PrefetchTo,
}

impl WinogradNhwc {
    /// `None` unless `conv` is a 3×3 stride-1 dilation-1 one-group convolution with
    /// channels a multiple of 16 (`CHANNEL_MULTIPLE`) and `outs` its output shape for `ins`.
    pub fn new(
        isa: Isa,
        conv: &Conv,
        ins: [usize; 3],
        outs: [usize; 3],
        threads: usize,
    ) -> Option<Self> {
        let [pt, pl, pb, pr] = conv.pads;
        if conv.kernel != [3, 3]
            || conv.stride != [1, 1]
            || conv.dilation != [1, 1]
            || conv.groups != 1
            || !conv.in_channels.is_multiple_of(CHANNEL_MULTIPLE)
            || !conv.out_channels.is_multiple_of(CHANNEL_MULTIPLE)
            || ins[0] != conv.in_channels
            || outs[0] != conv.out_channels
            || ins[1] + pt + pb < 3
            || ins[2] + pl + pr < 3
            || outs[1] != ins[1] + pt + pb - 2
            || outs[2] != ins[2] + pl + pr - 2
            || pt > 2
            || pl > 2
            || 36 * 4 * conv.in_channels * conv.out_channels > U_MAX_BYTES
        {
            return None;
        }
        let (oh, ow) = (outs[1], outs[2]);
        let (ntx, nty) = (ow.div_ceil(4), oh.div_ceil(4));
        let tiles = ntx * nty;
        let mut blocks = tiles.div_ceil(TB_MAX);
        if threads > 1 {
            // A whole number of blocks per worker.
            blocks = blocks.next_multiple_of(threads).min(tiles);
        }
        Some(WinogradNhwc {
            isa: gemm::ukr(isa).isa,
            cin: conv.in_channels,
            cout: conv.out_channels,
            h: ins[1],
            w: ins[2],
            oh,
            ow,
            pt,
            pl,
            act: conv.activation,
            ntx,
            nty,
            blocks,
            prefetch: PrefetchTo::default(),
        })
    }

    /// Where the GEMM's prefetch hints put what they fetch (the session chooses).
    pub fn set_prefetch(&mut self, to: PrefetchTo) {
        self.prefetch = to;
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// FLOPs counted as the direct convolution's.
    pub fn flops(&self) -> u64 {
        2 * 9 * (self.cin * self.cout * self.oh * self.ow) as u64
    }

    /// Floats of the weights: 36 positions of `cin × cout`.
    pub fn weights_len(&self) -> usize {
        36 * self.cin * self.cout
    }

    /// The weights as this kernel reads them, from the planar kernel's packed layout
    /// (`WeightLayout::WinogradF4x4`: per position, `U_ξ` as packed A in 12-row panels):
    /// per position, `U_ξᵀ` in 32-wide panels of output channels (the `LinearGemm`
    /// layout, see `nhwc::panels_from_conv_gemm`). A pure reordering.
    pub fn panels_from_packed(&self, packed: &[f32], out: &mut [f32]) {
        reorder(self.cin, self.cout, packed, out, true);
    }

    /// The inverse of [`Self::panels_from_packed`] (a file stored for this kernel, run by
    /// the planar one).
    pub fn packed_from_panels(&self, panels: &[f32], out: &mut [f32]) {
        reorder(self.cin, self.cout, panels, out, false);
    }

    fn tiles(&self) -> usize {
        self.ntx * self.nty
    }

    /// Tiles of block `b` (raster order).
    fn block_range(&self, b: usize) -> (usize, usize) {
        let t = self.tiles();
        (b * t / self.blocks, (b + 1) * t / self.blocks)
    }

    fn max_block(&self) -> usize {
        self.tiles().div_ceil(self.blocks)
    }

    /// Floats of scratch per worker: V (`36 × tiles × cin`) and M (`36 × tiles × cout`)
    /// of a block.
    pub fn scratch_len(&self) -> usize {
        whole_lines(36 * self.max_block() * self.cin)
            + whole_lines(36 * self.max_block() * self.cout)
    }

    /// Independent work items of one sample.
    pub fn parts(&self) -> usize {
        self.blocks
    }

    /// `out = act(conv(x) + bias + residual)` for `n` samples on `slots` workers: `wt`
    /// from [`Self::panels_from_packed`]; `x`: `n × h × w × cin`; `residual`, `out`:
    /// `n × oh × ow × cout`; `scratch`: `slots × scratch_len()` floats (one
    /// `scratch_len()` when the work stays on this thread).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        slots: usize,
        n: usize,
        wt: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (cin, cout) = (self.cin, self.cout);
        let (in_len, out_len) = (self.h * self.w * cin, self.oh * self.ow * cout);
        assert_eq!(wt.len(), self.weights_len(), "winograd nhwc: weights");
        assert!(bias.is_none_or(|b| b.len() == cout), "winograd nhwc: bias");
        assert!(x.len() >= n * in_len, "winograd nhwc: input");
        assert!(out.len() >= n * out_len, "winograd nhwc: output");
        assert!(
            residual.is_none_or(|r| r.len() >= n * out_len),
            "winograd nhwc: residual"
        );
        let per = self.scratch_len();
        assert!(scratch.len() >= per, "winograd nhwc: scratch");
        let items = n * self.blocks;
        let shared = SharedOut::new(out);
        let body = |scr: &mut [f32], item: usize| {
            let (s, b) = (item / self.blocks, item % self.blocks);
            let res = residual.map_or(null(), |r| r[s * out_len..].as_ptr());
            // SAFETY: lengths checked above; item (s, b) writes only the output pixels
            // of its block's tiles in sample s, which no other item writes.
            unsafe {
                self.block(
                    b,
                    wt.as_ptr(),
                    bias.map_or(null(), |v| v.as_ptr()),
                    x[s * in_len..].as_ptr(),
                    res,
                    shared.ptr().add(s * out_len),
                    scr,
                )
            }
        };
        if slots <= 1 || items == 1 {
            let scr = &mut scratch[..per];
            (0..items).for_each(|i| body(scr, i));
        } else {
            parallel::for_tiles(slots, items, scratch, per, body);
        }
    }

    /// One block of tiles of one sample: transform in, 36 GEMMs, transform out.
    ///
    /// # Safety
    /// `x` holds a sample's input, `out` (and `res` unless null) a sample's output;
    /// `bias` null or `cout` floats; `wt` the weights; no other writer of this block's
    /// output pixels; `scr` at least `scratch_len()` floats.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        b: usize,
        wt: *const f32,
        bias: *const f32,
        x: *const f32,
        res: *const f32,
        out: *mut f32,
        scr: &mut [f32],
    ) {
        let (t0, t1) = self.block_range(b);
        let nt = t1 - t0;
        let (v, m) = scr.split_at_mut(whole_lines(36 * self.max_block() * self.cin));
        let (v, m) = (v.as_mut_ptr(), m.as_mut_ptr());
        let isa = self.isa;
        // V holds 36 × nt rows of cin floats, M 36 × nt rows of cout (nt ≤ max_block);
        // the input and output are as the caller guarantees.
        with_lanes!(isa, |s| {
            // SAFETY: as said above the call.
            unsafe { self.input_block(s, x, t0, t1, v) }
        });
        // SAFETY: as above.
        unsafe { self.gemms(nt, wt, v, m) };
        // SAFETY: as above.
        with_lanes!(isa, |s| unsafe {
            self.output_block(s, m, t0, t1, bias, res, out)
        });
    }

    /// V row `ξ·nt + j` = position ξ of tile `t0 + j`, all input channels.
    ///
    /// # Safety
    /// `x` a sample's input; `v` writable for `36 × (t1 − t0) × cin` floats.
    #[inline(always)]
    unsafe fn input_block<S: Simd>(&self, s: S, x: *const f32, t0: usize, t1: usize, v: *mut f32) {
        let (cin, nt) = (self.cin, t1 - t0);
        let (h, w) = (self.h as isize, self.w as isize);
        for t in t0..t1 {
            let (ty, tx) = (t / self.ntx, t % self.ntx);
            let (y0, x0) = (
                (4 * ty) as isize - self.pt as isize,
                (4 * tx) as isize - self.pl as isize,
            );
            let inside = y0 >= 0 && x0 >= 0 && y0 + 6 <= h && x0 + 6 <= w;
            let dst = v.wrapping_add((t - t0) * cin);
            for c0 in (0..cin).step_by(S::LANES) {
                let mut d = [[s.zero(); 6]; 6];
                for (r, dr) in d.iter_mut().enumerate() {
                    let y = y0 + r as isize;
                    if !(0..h).contains(&y) {
                        continue;
                    }
                    for (c, dc) in dr.iter_mut().enumerate() {
                        let xx = x0 + c as isize;
                        if inside || (0..w).contains(&xx) {
                            // SAFETY: pixel (y, xx) inside the image, channels c0 ..
                            // c0 + LANES < cin (cin a multiple of LANES).
                            *dc = unsafe { s.load(x.add((y * w + xx) as usize * cin + c0)) };
                        }
                    }
                }
                // Rows first, then columns: the planar kernel's order.
                let mut tr = [[s.zero(); 6]; 6];
                for r in 0..6 {
                    tr[r] = bt4(s, d[r]);
                }
                for l in 0..6 {
                    let col = bt4(
                        s,
                        [tr[0][l], tr[1][l], tr[2][l], tr[3][l], tr[4][l], tr[5][l]],
                    );
                    for (k, &val) in col.iter().enumerate() {
                        // SAFETY: row (k·6 + l)·nt + (t − t0) < 36·nt of V, channels
                        // c0 .. c0 + LANES.
                        unsafe { s.store(dst.add((k * 6 + l) * nt * cin + c0), val) };
                    }
                }
            }
        }
    }

    /// `M_ξ[tile][cout] = V_ξ[tile][cin] · U_ξ` for the 36 positions of a block of `nt`
    /// tiles.
    ///
    /// # Safety
    /// `v` holds `36 × nt × cin` floats, `m` room for `36 × nt × cout`; `wt` the weights.
    unsafe fn gemms(&self, nt: usize, wt: *const f32, v: *const f32, m: *mut f32) {
        let u = gemm::ukr(self.isa);
        let (k, cols) = (self.cin, self.cout);
        let kc = k.min((KC_BYTES / (4 * u.nr)).max(1));
        // Row tiles of nearly equal height.
        let tiles = nt.div_ceil(u.mr);
        let (base, extra) = (nt / tiles, nt % tiles);
        let row0 = |i: usize| i * base + i.min(extra);
        let st = Store {
            load_c: false,
            finish: true,
            bias_row: null(),
            bias_col: null(),
            residual: null(),
            act: Activation::Identity,
            pf: null(),
            pf_stride: 0,
            pf_to: self.prefetch,
        };
        for xi in 0..36 {
            let (a, c) = (v.wrapping_add(xi * nt * k), m.wrapping_add(xi * nt * cols));
            let wx = wt.wrapping_add(xi * k * cols);
            for c0 in (0..cols).step_by(u.nr) {
                let nv = u.nr.min(cols - c0);
                let kernels = if nv == u.nr { &u.rows } else { &u.rows_tail };
                // Tier panel at c0 inside 32-wide panel q0 of width pw.
                let q0 = c0 / NR_PACK * NR_PACK;
                let pw = NR_PACK.min(cols - q0);
                let b = wx.wrapping_add(q0 * k + c0 - q0);
                for k0 in (0..k).step_by(kc) {
                    let kcur = kc.min(k - k0);
                    let st = Store {
                        load_c: k0 > 0,
                        finish: k0 + kcur == k,
                        ..st
                    };
                    for i in 0..tiles {
                        let (p0, r) = (row0(i), row0(i + 1) - row0(i));
                        // SAFETY: rows p0 .. p0 + r (≤ mr) of V_ξ (k steps k0 .. k0 +
                        // kcur) and of M_ξ; columns c0 .. c0 + nv of M_ξ and of the
                        // 32-wide weight panel (nv ≤ pw − (c0 − q0), nr dividing 32).
                        unsafe {
                            kernels[r](
                                kcur,
                                a.add(p0 * k + k0),
                                k,
                                b.add(k0 * pw),
                                pw,
                                c.add(p0 * cols + c0),
                                cols,
                                nv,
                                &st,
                            )
                        };
                    }
                }
            }
        }
    }

    /// Transforms M back and stores the block's output pixels inside the map.
    ///
    /// # Safety
    /// `m` holds `36 × (t1 − t0) × cout` floats; `out` (and `res` unless null) a sample's
    /// output; `bias` null or `cout` floats.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn output_block<S: Simd>(
        &self,
        s: S,
        m: *const f32,
        t0: usize,
        t1: usize,
        bias: *const f32,
        res: *const f32,
        out: *mut f32,
    ) {
        let (cout, nt) = (self.cout, t1 - t0);
        let act = ActV::new(s, self.act);
        for t in t0..t1 {
            let (ty, tx) = (t / self.ntx, t % self.ntx);
            let (rows, cols) = ((self.oh - 4 * ty).min(4), (self.ow - 4 * tx).min(4));
            let src = m.wrapping_add((t - t0) * cout);
            for c0 in (0..cout).step_by(S::LANES) {
                let p = |xi: usize| src.wrapping_add(xi * nt * cout + c0);
                // Columns first (Aᵀ M), then rows: the planar kernel's order.
                let mut o = [[s.zero(); 6]; 4];
                for l in 0..6 {
                    // SAFETY: rows (k·6 + l)·nt + (t − t0) of M, channels c0 .. + LANES.
                    let col = unsafe {
                        at4(
                            s,
                            [
                                s.load(p(l)),
                                s.load(p(6 + l)),
                                s.load(p(12 + l)),
                                s.load(p(18 + l)),
                                s.load(p(24 + l)),
                                s.load(p(30 + l)),
                            ],
                        )
                    };
                    for (r, &val) in col.iter().enumerate() {
                        o[r][l] = val;
                    }
                }
                // SAFETY: bias has cout floats.
                let bv = (!bias.is_null()).then(|| unsafe { s.load(bias.add(c0)) });
                for (r, or) in o.iter().enumerate().take(rows) {
                    let y = at4(s, *or);
                    for (c, &val) in y.iter().enumerate().take(cols) {
                        let at = ((4 * ty + r) * self.ow + 4 * tx + c) * cout + c0;
                        let mut val = val;
                        if let Some(b) = bv {
                            val = s.add(val, b);
                        }
                        // SAFETY: pixel (4ty + r, 4tx + c) inside the output (rows,
                        // cols clipped), channels c0 .. c0 + LANES.
                        unsafe {
                            if !res.is_null() {
                                val = s.add(val, s.load(res.add(at)));
                            }
                            s.store(out.add(at), act.apply(s, val));
                        }
                    }
                }
            }
        }
    }
}
