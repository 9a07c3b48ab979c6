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
//! Work: a batch's tiles (sample by sample, raster order) in blocks of nearly equal size,
//! each block transformed into V, multiplied and transformed back on one worker. Where
//! the weights stream from memory (over [`U_MAX_BYTES`]), blocks are larger, the output
//! channels are split into chunks (an item is a block × a chunk) and each panel's GEMM
//! calls prefetch the next panel's weights (see docs/KERNELS.md).
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
use crate::kernels::gemm::{self, PrefetchTo, SharedOut, Store, NR_PACK};
use crate::kernels::{nhwc, parallel, whole_lines};
use crate::simd::Isa;

/// Tiles per block at most: V and M of a block (36 positions × tiles × channels) stay in
/// L2 beside a position's weights. conv3x3_stress's layer in a C model of this kernel
/// (AVX-512, 1 thread): blocks of 12 tiles 0.62 ms, 24 0.67, 36 0.68, 48 0.67.
const TB_MAX: usize = 12;

/// Transformed weights above this come from memory on every run: tiles then go in
/// blocks of up to [`TB_STREAMED`] (each block reads all the weights of its output
/// channels), the output channels in chunks, with prefetch hints (ResNet-18's 14×14
/// layers, 9.4 MB: 0.82–0.87 ms per layer against 0.90–1.00 planar; in blocks of 8
/// tiles, reading the weights twice, 0.96–1.00; `cnnrt bench --profile`, 1 thread).
/// The planner (`region`) no longer picks such layers: planar from the file they ran
/// as fast at one thread and faster at two (session 38, `docs/KERNELS.md`).
const U_MAX_BYTES: usize = 4 << 20;

/// Tiles per block at most where the weights stream from memory.
const TB_STREAMED: usize = 32;

/// Bytes of M per chunk of output channels at most (where the weights stream).
const M_CHUNK_BYTES: usize = 256 << 10;

/// K steps per GEMM call at most: the weights a call reads (`kc × nr`) stay in L1.
const KC_BYTES: usize = 24 << 10;

/// Channels must be a multiple of this (the widest tier's vector).
pub const CHANNEL_MULTIPLE: usize = 16;

/// Per position, `U_ξ` (`cout × cin`) from packed A (panels of `MR_PACK` output
/// channels, the planar kernel's `WeightLayout::WinogradF4x4`) to 32-wide panels of
/// `U_ξᵀ` (`nhwc::panels_from_conv_gemm`, the `LinearGemm` layout): what this kernel reads.
pub fn panels_from_packed(cin: usize, cout: usize, packed: &[f32], out: &mut [f32]) {
    let per = cin * cout;
    assert_eq!(packed.len(), 36 * per, "winograd nhwc: packed weights");
    assert_eq!(out.len(), 36 * per, "winograd nhwc: panels");
    for (src, dst) in packed.chunks(per).zip(out.chunks_mut(per)) {
        nhwc::panels_from_conv_gemm(cin, cout, src, dst);
    }
}

/// The inverse of [`panels_from_packed`] (a file stored for this kernel, run planar).
pub fn packed_from_panels(cin: usize, cout: usize, panels: &[f32], out: &mut [f32]) {
    let per = cin * cout;
    assert_eq!(panels.len(), 36 * per, "winograd nhwc: panels");
    assert_eq!(out.len(), 36 * per, "winograd nhwc: packed weights");
    for (src, dst) in panels.chunks(per).zip(out.chunks_mut(per)) {
        nhwc::conv_gemm_from_panels(cin, cout, src, dst);
    }
}

/// Whether F(4x4)'s transformed weights of a `cin → cout` layer are over
/// [`U_MAX_BYTES`], read from memory on every run.
fn streams(cin: usize, cout: usize) -> bool {
    36 * 4 * cin * cout > U_MAX_BYTES
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
    /// Tiles per block at most: a batch's tiles (sample by sample, each in raster
    /// order) go in equal runs of at most this many, so that a block's weights serve
    /// every sample it holds.
    tb: usize,
    /// Workers planned for: blocks come in a whole number per worker.
    threads: usize,
    /// Chunks of output channels (runs of whole 32-wide panels) per block.
    chunks: usize,
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
        {
            return None;
        }
        let (oh, ow) = (outs[1], outs[2]);
        let (ntx, nty) = (ow.div_ceil(4), oh.div_ceil(4));
        let tiles = ntx * nty;
        let (cin, cout) = (conv.in_channels, conv.out_channels);
        let panels = cout.div_ceil(NR_PACK);
        let threads = threads.max(1);
        let (tb, chunks) = if streams(cin, cout) {
            // Weights from memory: few blocks (each reads all of its chunk's weights),
            // the output channels in chunks whose M stays in L2, a whole number of
            // chunks per worker.
            let tb = tiles.div_ceil(tiles.div_ceil(TB_STREAMED));
            let chunks = (36 * 4 * tb * cout).div_ceil(M_CHUNK_BYTES).max(1);
            (tb, chunks.next_multiple_of(threads).min(panels))
        } else {
            // A whole number of blocks per worker (at batch 1).
            let blocks = tiles.div_ceil(TB_MAX);
            let blocks = if threads > 1 {
                blocks.next_multiple_of(threads).min(tiles)
            } else {
                blocks
            };
            (tiles.div_ceil(blocks), 1)
        };
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
            tb,
            threads,
            chunks,
            prefetch: PrefetchTo::default(),
        })
    }

    /// Whether the transformed weights are over 4 MiB (`U_MAX_BYTES`: read from memory on
    /// every run). `region` leaves such layers planar: at batch 8 a batch's blocks hold
    /// many tiles, V outgrows L2 and every block reads the weights again (ResNet-18's
    /// layer4: 14.3 ms per layer against 7.0 planar, which blocks across samples with the
    /// weights read once); at batch 1 the planar kernel from the file took 0.88–0.91 ms
    /// on ResNet-18's 14×14 layers against 0.83–0.88 here at one thread, but 0.46–0.51
    /// against 0.59–0.68 at two (session 38).
    pub fn streams_weights(&self) -> bool {
        streams(self.cin, self.cout)
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
    /// (see [`panels_from_packed`]). A pure reordering.
    pub fn panels_from_packed(&self, packed: &[f32], out: &mut [f32]) {
        panels_from_packed(self.cin, self.cout, packed, out);
    }

    fn tiles(&self) -> usize {
        self.ntx * self.nty
    }

    /// Blocks of the tiles of `n` samples.
    fn blocks(&self, n: usize) -> usize {
        let total = n * self.tiles();
        let blocks = total.div_ceil(self.tb);
        if self.threads > 1 {
            blocks.next_multiple_of(self.threads).min(total)
        } else {
            blocks
        }
    }

    /// Tiles of block `b` of `blocks` over `n` samples (batch-wide index: sample
    /// `t / tiles`, tile `t % tiles` in it). At most `tb` of them.
    fn block_range(&self, n: usize, blocks: usize, b: usize) -> (usize, usize) {
        let t = n * self.tiles();
        (b * t / blocks, (b + 1) * t / blocks)
    }

    fn max_block(&self) -> usize {
        self.tb
    }

    /// Output channels of chunk `ch`: whole 32-wide panels.
    fn chunk_range(&self, ch: usize) -> (usize, usize) {
        super::panel_split(self.cout, NR_PACK, self.chunks, ch)
    }

    fn max_chunk(&self) -> usize {
        super::max_panel_split(self.cout, NR_PACK, self.chunks)
    }

    /// Floats of scratch per worker: V (`36 × tiles × cin`) and M (`36 × tiles ×
    /// channels`) of a block and chunk.
    pub fn scratch_len(&self) -> usize {
        whole_lines(36 * self.max_block() * self.cin)
            + whole_lines(36 * self.max_block() * self.max_chunk())
    }

    /// Independent work items for `n` samples.
    pub fn parts(&self, n: usize) -> usize {
        self.blocks(n) * self.chunks
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
        let blocks = self.blocks(n);
        let items = blocks * self.chunks;
        let shared = SharedOut::new(out);
        let body = |scr: &mut [f32], item: usize| {
            let (b, ch) = (item / self.chunks, item % self.chunks);
            let tiles = self.block_range(n, blocks, b);
            // SAFETY: lengths checked above (n samples); item (b, ch) writes only the
            // output channels of chunk ch at the pixels of block b's tiles, which no
            // other item writes.
            unsafe {
                self.block(
                    tiles,
                    ch,
                    wt.as_ptr(),
                    bias.map_or(null(), |v| v.as_ptr()),
                    x.as_ptr(),
                    residual.map_or(null(), |r| r.as_ptr()),
                    shared.ptr(),
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

    /// One block of tiles (batch-wide indices `t0..t1`), one chunk of its output
    /// channels: transform in, 36 GEMMs, transform out.
    ///
    /// # Safety
    /// `x` holds the input of the samples the tiles lie in, `out` (and `res` unless
    /// null) their output; `bias` null or `cout` floats; `wt` the weights; no other
    /// writer of this block's and chunk's outputs; `scr` at least `scratch_len()` floats;
    /// at most `tb` tiles.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        (t0, t1): (usize, usize),
        ch: usize,
        wt: *const f32,
        bias: *const f32,
        x: *const f32,
        res: *const f32,
        out: *mut f32,
        scr: &mut [f32],
    ) {
        let nt = t1 - t0;
        assert!(nt <= self.tb, "winograd nhwc: block");
        let cols = self.chunk_range(ch);
        let (v, m) = scr.split_at_mut(whole_lines(36 * self.max_block() * self.cin));
        let (v, m) = (v.as_mut_ptr(), m.as_mut_ptr());
        // V holds 36 × nt rows of cin floats, M 36 × nt rows of the chunk's channels
        // (nt ≤ max_block); the input and output are as the caller guarantees.
        with_lanes!(self.isa, |s| {
            // SAFETY: as said above the call.
            unsafe { self.input_block(s, x, t0, t1, v) }
        });
        // SAFETY: as above.
        unsafe { self.gemms(nt, cols, wt, v, m) };
        // SAFETY: as above.
        with_lanes!(self.isa, |s| unsafe {
            self.output_block(s, m, t0, t1, cols, bias, res, out)
        });
    }

    /// V row `ξ·nt + j` = position ξ of tile `t0 + j`, all input channels.
    ///
    /// # Safety
    /// `x` the input of the samples of tiles `t0..t1`; `v` writable for `36 × (t1 − t0)
    /// × cin` floats.
    #[inline(always)]
    unsafe fn input_block<S: Simd>(&self, s: S, x: *const f32, t0: usize, t1: usize, v: *mut f32) {
        let (cin, nt) = (self.cin, t1 - t0);
        let (h, w) = (self.h as isize, self.w as isize);
        for t in t0..t1 {
            let (sample, tile) = (t / self.tiles(), t % self.tiles());
            let x = x.wrapping_add(sample * self.h * self.w * cin);
            let (ty, tx) = (tile / self.ntx, tile % self.ntx);
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

    /// `M_ξ[tile][c] = V_ξ[tile][cin] · U_ξ` for the 36 positions of a block of `nt`
    /// tiles and the output channels `c` in `lo..hi` (M's rows `hi − lo` floats).
    ///
    /// # Safety
    /// `v` holds `36 × nt × cin` floats, `m` room for `36 × nt × (hi − lo)`; `wt` the
    /// weights; `lo..hi` a chunk (whole 32-wide panels).
    unsafe fn gemms(
        &self,
        nt: usize,
        (lo, hi): (usize, usize),
        wt: *const f32,
        v: *const f32,
        m: *mut f32,
    ) {
        let u = gemm::ukr(self.isa);
        let (k, cols, ldm) = (self.cin, self.cout, hi - lo);
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
        // Where the weights stream from memory, each panel's calls ask for the next
        // panel's weights (this chunk's next panel, or its first at the next position),
        // one 16-float line per k step until all are asked for.
        let streamed = self.streams_weights();
        let panel_at = |xi: usize, c0: usize| {
            let q0 = c0 / NR_PACK * NR_PACK;
            (xi * k * cols + q0 * k, NR_PACK.min(cols - q0) * k / 16)
        };
        for xi in 0..36 {
            let (a, c) = (v.wrapping_add(xi * nt * k), m.wrapping_add(xi * nt * ldm));
            let wx = wt.wrapping_add(xi * k * cols);
            for c0 in (lo..hi).step_by(u.nr) {
                let nv = u.nr.min(hi - c0);
                let next = if !streamed || (c0 + u.nr < hi && !(c0 + u.nr).is_multiple_of(NR_PACK))
                {
                    None
                } else if c0 + u.nr < hi {
                    Some(panel_at(xi, c0 + u.nr))
                } else if xi + 1 < 36 {
                    Some(panel_at(xi + 1, lo))
                } else {
                    None
                };
                let mut fetched = 0;
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
                        let (pf, pf_stride) = match next {
                            Some((off, lines)) if fetched < lines => {
                                let p = wt.wrapping_add(off + fetched * 16);
                                fetched += kcur;
                                (p, 16)
                            }
                            _ => (null(), 0),
                        };
                        let st = Store {
                            pf,
                            pf_stride,
                            ..st
                        };
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
                                c.add(p0 * ldm + c0 - lo),
                                ldm,
                                nv,
                                &st,
                            )
                        };
                    }
                }
            }
        }
    }

    /// Transforms M back and stores the block's output pixels inside the map, channels
    /// `lo..hi`.
    ///
    /// # Safety
    /// `m` holds `36 × (t1 − t0) × (hi − lo)` floats; `out` (and `res` unless null) the
    /// output of the samples of tiles `t0..t1`; `bias` null or `cout` floats; `lo..hi` a
    /// chunk.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn output_block<S: Simd>(
        &self,
        s: S,
        m: *const f32,
        t0: usize,
        t1: usize,
        (lo, hi): (usize, usize),
        bias: *const f32,
        res: *const f32,
        out: *mut f32,
    ) {
        let (cout, nt) = (self.cout, t1 - t0);
        let act = ActV::new(s, self.act);
        for t in t0..t1 {
            let (sample, tile) = (t / self.tiles(), t % self.tiles());
            let at_sample = sample * self.oh * self.ow * cout;
            let out = out.wrapping_add(at_sample);
            let res = if res.is_null() {
                res
            } else {
                res.wrapping_add(at_sample)
            };
            let (ty, tx) = (tile / self.ntx, tile % self.ntx);
            let (rows, cols) = ((self.oh - 4 * ty).min(4), (self.ow - 4 * tx).min(4));
            let ldm = hi - lo;
            let src = m.wrapping_add((t - t0) * ldm);
            for c0 in (lo..hi).step_by(S::LANES) {
                let p = |xi: usize| src.wrapping_add(xi * nt * ldm + c0 - lo);
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
