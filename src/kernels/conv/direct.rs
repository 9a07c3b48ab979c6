//! Direct convolution for ungrouped layers whose weights fit in L2 and that neither
//! Winograd nor the 1×1 GEMM covers: first layers (1–4 input channels, 7×7 or 3×3,
//! stride 2), strided 3×3 and 1×1 layers, dilated ones. No im2col matrix is built.
//!
//! For each output row `y`, the input rows it touches are copied once into a small row
//! buffer, zero-padded and split by stride phase: for input channel `c`, kernel row `ky`
//! and phase `r < sw`, `Q[c][ky][r][j] = P[j·sw + r]` with `P` the padded input row
//! `y·sh + ky·dh − pt`. The input column of output `x` under tap `kx` is then
//! `Q[c][ky][(kx·dw) % sw][x + (kx·dw) / sw]`, so every tap reads a *contiguous* run of
//! outputs: tap `k = (c·kh + ky)·kw + kx` starts at a fixed offset `offs[k]` in the
//! buffer, computed once at plan time.
//!
//! The micro-kernel is the GEMM's register tile (up to 6 output channels × 2 vectors of
//! outputs: 12 accumulators on AVX2) with B read through `offs` instead of a packed
//! panel: per tap, 2 loads, up to 6 broadcasts of packed weights, 12 FMAs. Bias, residual
//! and the activation are applied in the store.
//!
//! Weights are the `conv_gemm` packed-A layout (see the parent module), so a file packed
//! for the GEMM runs here unchanged.
//!
//! # Tiles and determinism
//! Work items are blocks of output rows × blocks of output channels. Each output element
//! is one FMA chain over the taps in order, whatever the split: bit-identical results for
//! any number of threads. The AVX-512 tier runs the AVX2 kernel (the same FLOP rate on
//! AMD Zen 4, which splits 512-bit operations).

use crate::graph::{Activation, Conv};
use crate::kernels::elementwise::{ActV, Portable, Simd};
use crate::kernels::gemm::{SharedOut, MR_PACK};
use crate::simd::Isa;

/// Output channels per register tile.
const MR: usize = 6;
/// Vectors of outputs per register tile.
const NV: usize = 2;
/// Widest vector any tier uses here (AVX2: 8 lanes); sizes the row buffer's slack.
const MAX_LANES: usize = 8;
/// Weights up to this size (bytes) stay in L2 across output rows; larger layers are left
/// to the im2col GEMM, which keeps a weight sliver in L1 over many columns.
const MAX_WEIGHT_BYTES: usize = 512 << 10;
/// Row blocks the split aims for (parallelism for small maps).
const WANT_ROW_TILES: usize = 16;

/// A direct convolution planned for one ISA tier and one input shape.
#[derive(Clone, Debug)]
pub struct DirectKernel {
    isa: Isa,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    pt: usize,
    pl: usize,
    activation: Activation,
    /// Taps (`cin·kh·kw`), the GEMM's K.
    k: usize,
    /// Length of one phase row of the buffer.
    qlen: usize,
    /// Offset of tap `k`'s first output in the row buffer.
    offs: Vec<u32>,
    rows_per_tile: usize,
    row_tiles: usize,
    /// Output channels per work item (a multiple of MR_PACK) and work items over them.
    mc: usize,
    m_tiles: usize,
}

impl DirectKernel {
    /// Whether the direct kernel is the better choice for `conv` (ungrouped, not a 1×1
    /// stride-1 unpadded layer, weights small enough to stay in L2).
    pub fn suits(conv: &Conv) -> bool {
        let one_by_one =
            conv.kernel == [1, 1] && conv.stride == [1, 1] && conv.pads == [0, 0, 0, 0];
        let weight_bytes =
            4 * conv.out_channels * conv.in_channels * conv.kernel[0] * conv.kernel[1];
        conv.groups == 1 && !one_by_one && weight_bytes <= MAX_WEIGHT_BYTES
    }

    /// Plans `conv` (any ungrouped convolution) for `isa`, clamped to this CPU. Returns
    /// `None` for grouped convolutions or when an offset would not fit in `u32`.
    pub fn new(
        isa: Isa,
        conv: &Conv,
        in_shape: [usize; 3],
        out_shape: [usize; 3],
    ) -> Option<DirectKernel> {
        if conv.groups != 1 {
            return None;
        }
        let [cin, h, w] = in_shape;
        let [cout, oh, ow] = out_shape;
        let [kh, kw] = conv.kernel;
        let [sh, sw] = conv.stride;
        let [dh, dw] = conv.dilation;
        assert_eq!(cin, conv.in_channels, "direct conv: input channels");
        assert_eq!(cout, conv.out_channels, "direct conv: output channels");
        assert!(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1);
        let span_h = h + conv.pads[0] + conv.pads[2];
        let span_w = w + conv.pads[1] + conv.pads[3];
        let (eff_h, eff_w) = (dh * (kh - 1) + 1, dw * (kw - 1) + 1);
        assert!(
            span_h >= eff_h && span_w >= eff_w,
            "direct conv: kernel larger than the padded input"
        );
        assert_eq!(oh, (span_h - eff_h) / sh + 1, "direct conv: output height");
        assert_eq!(ow, (span_w - eff_w) / sw + 1, "direct conv: output width");
        // Outputs rounded up to whole register tiles, plus the largest tap shift.
        let qlen =
            (ow.div_ceil(NV * MAX_LANES) * NV * MAX_LANES + (kw - 1) * dw / sw + 1).div_ceil(8) * 8;
        let k = cin * kh * kw;
        let mut offs = Vec::with_capacity(k);
        for c in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    let phase_row = (c * kh + ky) * sw + (kx * dw) % sw;
                    let off = phase_row * qlen + (kx * dw) / sw;
                    offs.push(u32::try_from(off).ok()?);
                }
            }
        }
        let rows_per_tile = oh.div_ceil(WANT_ROW_TILES.min(oh).max(1)).max(1);
        let row_tiles = oh.div_ceil(rows_per_tile).max(1);
        let mut mc = cout.max(1);
        if row_tiles < 4 && cout >= 4 * MR_PACK {
            mc = cout.div_ceil(4).div_ceil(MR_PACK) * MR_PACK;
        }
        let m_tiles = cout.div_ceil(mc).max(1);
        // The AVX2 kernel serves the AVX-512 tier too (module doc).
        let isa = isa.min(Isa::detect()).min(Isa::Avx2);
        Some(DirectKernel {
            isa,
            cin,
            h,
            w,
            cout,
            oh,
            ow,
            kh,
            sh,
            sw,
            dh,
            pt: conv.pads[0],
            pl: conv.pads[1],
            activation: conv.activation,
            k,
            qlen,
            offs,
            rows_per_tile,
            row_tiles,
            mc,
            m_tiles,
        })
    }

    /// The tier the kernel runs (AVX2 for the AVX-512 tier).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn algorithm(&self) -> &'static str {
        "direct"
    }

    /// `[cout, oh, ow]`.
    pub fn out_shape(&self) -> [usize; 3] {
        [self.cout, self.oh, self.ow]
    }

    /// Multiply-adds times two for one sample.
    pub fn flops(&self) -> u64 {
        2 * (self.cout * self.k * self.oh * self.ow) as u64
    }

    /// The `conv_gemm` packed length: `cout · cin · kh · kw`.
    pub fn packed_weight_len(&self) -> usize {
        self.cout * self.k
    }

    /// f32 elements of scratch one `run` (or one concurrent `run_tile`) needs: the row
    /// buffer, plus room to align it to 64 bytes.
    pub fn scratch_len(&self) -> usize {
        self.cin * self.kh * self.sw * self.qlen + 16
    }

    /// Number of independent work items.
    pub fn tiles(&self) -> usize {
        self.row_tiles * self.m_tiles
    }

    fn check(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out_len: usize,
        scratch: &[f32],
    ) {
        assert_eq!(
            packed.len(),
            self.packed_weight_len(),
            "direct conv: packed weight length"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.cout, "direct conv: bias length");
        }
        assert_eq!(
            x.len(),
            self.cin * self.h * self.w,
            "direct conv: input length"
        );
        let out_elems = self.cout * self.oh * self.ow;
        assert_eq!(out_len, out_elems, "direct conv: output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), out_elems, "direct conv: residual length");
        }
        assert!(
            scratch.len() >= self.scratch_len(),
            "direct conv: scratch too short"
        );
    }

    /// `out = act(conv(x) + bias + residual)` for one sample, all work items in order on
    /// this thread. No allocation.
    pub fn run(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        self.check(packed, bias, x, residual, out.len(), scratch);
        let out = SharedOut::new(out);
        // SAFETY: checked above; one thread, all rows and channels once.
        unsafe {
            self.block(
                packed, bias, x, residual, out, scratch, 0, self.oh, 0, self.cout,
            )
        };
    }

    /// Runs work item `tile` (`< tiles()`).
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

    /// Runs work item `tile` (`< tiles()`) writing through a [`SharedOut`].
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
        self.check(packed, bias, x, residual, out.len(), scratch);
        assert!(tile < self.tiles(), "direct conv: tile index");
        let (rt, mt) = (tile / self.m_tiles, tile % self.m_tiles);
        let y0 = rt * self.rows_per_tile;
        let y1 = self.oh.min(y0 + self.rows_per_tile);
        let m0 = mt * self.mc;
        let m1 = self.cout.min(m0 + self.mc);
        // SAFETY: checked above; the caller guarantees no concurrent writer of this tile.
        unsafe { self.block(packed, bias, x, residual, out, scratch, y0, y1, m0, m1) };
    }

    /// Output rows `y0..y1`, output channels `m0..m1` (`m0` a multiple of MR_PACK).
    ///
    /// Safety: arguments checked by `check`; no concurrent writer of these outputs.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        y0: usize,
        y1: usize,
        m0: usize,
        m1: usize,
    ) {
        if y0 >= y1 || m0 >= m1 {
            return;
        }
        let al = scratch.as_ptr().align_offset(64).min(16);
        let buf = &mut scratch[al..al + self.cin * self.kh * self.sw * self.qlen];
        let args = Rows {
            packed,
            bias,
            residual,
            out: out.ptr(),
            y0,
            y1,
            m0,
            m1,
        };
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: `isa` was clamped to `Isa::detect()` at plan time, so this CPU
                // has AVX2 and FMA.
                let t = unsafe { crate::kernels::elementwise::Avx2Fma::new_unchecked() };
                // SAFETY: the caller's guarantees, forwarded.
                t.vectorize(
                    #[inline(always)]
                    |s| unsafe { self.rows(s, x, buf, &args) },
                )
            }
            // SAFETY: the caller's guarantees, forwarded.
            _ => unsafe { self.rows(Portable, x, buf, &args) },
        }
    }

    /// Fills the row buffer for output row `y`: phase rows of every (channel, kernel
    /// row), zero outside the image.
    #[inline(always)]
    fn fill_rows(&self, x: &[f32], y: usize, buf: &mut [f32]) {
        let (sw, qlen) = (self.sw, self.qlen);
        for c in 0..self.cin {
            for ky in 0..self.kh {
                let iy = (y * self.sh + ky * self.dh) as isize - self.pt as isize;
                let base = (c * self.kh + ky) * sw * qlen;
                let dst = &mut buf[base..base + sw * qlen];
                if iy < 0 || iy >= self.h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let row = &x[(c * self.h + iy as usize) * self.w..][..self.w];
                for r in 0..sw {
                    let q = &mut dst[r * qlen..(r + 1) * qlen];
                    // q[j] is input column j·sw + r − pl: inside the row for lo <= j < hi.
                    let lo = self.pl.saturating_sub(r).div_ceil(sw).min(qlen);
                    let hi = if self.w + self.pl > r {
                        ((self.w + self.pl - r - 1) / sw + 1).clamp(lo, qlen)
                    } else {
                        lo
                    };
                    q[..lo].fill(0.0);
                    q[hi..].fill(0.0);
                    if sw == 1 {
                        let c0 = lo + r - self.pl;
                        q[lo..hi].copy_from_slice(&row[c0..c0 + hi - lo]);
                    } else {
                        for (j, v) in q[lo..hi].iter_mut().enumerate() {
                            *v = row[(lo + j) * sw + r - self.pl];
                        }
                    }
                }
            }
        }
    }

    /// Safety: as `block`; `buf` holds `cin·kh·sw·qlen` floats.
    #[inline(always)]
    unsafe fn rows<S: Simd>(&self, s: S, x: &[f32], buf: &mut [f32], a: &Rows) {
        let act = ActV::new(s, self.activation);
        let width = NV * S::LANES;
        let plane = self.oh * self.ow;
        for y in a.y0..a.y1 {
            self.fill_rows(x, y, buf);
            let b = buf.as_ptr();
            for p0 in (a.m0..a.m1).step_by(MR_PACK) {
                let h = MR_PACK.min(self.cout - p0);
                let panel = a.packed.as_ptr().wrapping_add(p0 * self.k);
                let mut s0 = 0;
                while s0 < h {
                    let mr = MR.min(h - s0);
                    for x0 in (0..self.ow).step_by(width) {
                        let valid = width.min(self.ow - x0);
                        let o0 = p0 + s0;
                        let st = Store {
                            out: a.out.wrapping_add(o0 * plane + y * self.ow + x0),
                            res: a.residual.map_or(std::ptr::null(), |r| {
                                r.as_ptr().wrapping_add(o0 * plane + y * self.ow + x0)
                            }),
                            bias: a
                                .bias
                                .map_or(std::ptr::null(), |bb| bb.as_ptr().wrapping_add(o0)),
                            plane,
                            valid,
                            act: &act,
                        };
                        let ap = panel.wrapping_add(s0);
                        let bp = b.wrapping_add(x0);
                        // SAFETY: the panel holds h·k packed weights (rows s0..s0+mr of
                        // each tap); every tap reads buf[offs[k] + x0 .. + width], inside
                        // the buffer (qlen covers whole tiles plus the largest shift);
                        // outputs o0..o0+mr, row y, columns x0..x0+valid are this
                        // block's.
                        unsafe {
                            match (mr, valid > S::LANES) {
                                (6, true) => tile::<S, 6, 2>(s, self, ap, h, bp, &st),
                                (5, true) => tile::<S, 5, 2>(s, self, ap, h, bp, &st),
                                (4, true) => tile::<S, 4, 2>(s, self, ap, h, bp, &st),
                                (3, true) => tile::<S, 3, 2>(s, self, ap, h, bp, &st),
                                (2, true) => tile::<S, 2, 2>(s, self, ap, h, bp, &st),
                                (1, true) => tile::<S, 1, 2>(s, self, ap, h, bp, &st),
                                (6, false) => tile::<S, 6, 1>(s, self, ap, h, bp, &st),
                                (5, false) => tile::<S, 5, 1>(s, self, ap, h, bp, &st),
                                (4, false) => tile::<S, 4, 1>(s, self, ap, h, bp, &st),
                                (3, false) => tile::<S, 3, 1>(s, self, ap, h, bp, &st),
                                (2, false) => tile::<S, 2, 1>(s, self, ap, h, bp, &st),
                                _ => tile::<S, 1, 1>(s, self, ap, h, bp, &st),
                            }
                        }
                    }
                    s0 += mr;
                }
            }
        }
    }
}

/// What one `block` call covers.
struct Rows<'a> {
    packed: &'a [f32],
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    out: *mut f32,
    y0: usize,
    y1: usize,
    m0: usize,
    m1: usize,
}

/// Where one register tile goes: `out`/`res` at its first output channel's first
/// element, `plane` apart per channel; `valid` outputs per channel.
struct Store<'a, S: Simd> {
    out: *mut f32,
    res: *const f32,
    bias: *const f32,
    plane: usize,
    valid: usize,
    act: &'a ActV<S>,
}

/// One register tile: `R` output channels × `V` vectors of outputs, every tap in order.
///
/// Safety: `a + k·lda + r` readable for every tap `k` and `r < R`; `b + offs[k] + j`
/// readable for `j < V·LANES`; the store targets (and residual, bias) valid for `R`
/// channels × `valid` outputs.
#[inline(always)]
unsafe fn tile<S: Simd, const R: usize, const V: usize>(
    s: S,
    kern: &DirectKernel,
    a: *const f32,
    lda: usize,
    b: *const f32,
    st: &Store<S>,
) {
    let mut acc = [[s.zero(); V]; R];
    let mut ap = a;
    for &off in &kern.offs {
        // SAFETY: the caller's guarantees.
        unsafe {
            let bk = b.add(off as usize);
            // A plain loop, not `array::from_fn`, whose closure may not inline into the
            // `#[target_feature]` caller.
            let mut bv = [s.zero(); V];
            for (v, b) in bv.iter_mut().enumerate() {
                *b = s.load(bk.add(v * S::LANES));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let w = s.splat(*ap.add(r));
                for (v, acc) in row.iter_mut().enumerate() {
                    *acc = s.fmadd(w, bv[v], *acc);
                }
            }
            ap = ap.add(lda);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let bias = if st.bias.is_null() {
            None
        } else {
            // SAFETY: bias holds R values (caller).
            Some(s.splat(unsafe { *st.bias.add(r) }))
        };
        for (v, &acc) in row.iter().enumerate() {
            let off = r * st.plane + v * S::LANES;
            let n = st.valid.saturating_sub(v * S::LANES).min(S::LANES);
            if n == 0 {
                break;
            }
            let mut y = acc;
            if let Some(bv) = bias {
                y = s.add(y, bv);
            }
            // SAFETY: channel r, outputs v·LANES .. + n < valid (caller).
            unsafe {
                if !st.res.is_null() {
                    y = s.add(y, s.load_part(st.res.add(off), n, s.zero()));
                }
                s.store_part(st.out.add(off), n, st.act.apply(s, y));
            }
        }
    }
}
