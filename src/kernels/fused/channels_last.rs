//! The channels-last band path of a fused block: the expansion writes its band rows as
//! `[row][column][channel]`, and the 3×3 depthwise kernel reads them one vector of
//! channels per pixel and tap, writing its output through one `LANES × LANES` transpose
//! per group of pixels straight into the projection GEMM's packed B panels ([`DwOut`]).
//!
//! Why: in planar rows a depthwise tap is a vector of pixels, so rows of 7–112 pixels
//! cost partial vectors, padded row copies and a per-row setup on every channel plane
//! (dw layers at 11–30 GFLOP/s on this project's AVX2 machines, against 96 of FMA peak).
//! Channels-last, every tap is a whole vector whatever the width, `LANES` neighbouring
//! output pixels are independent FMA chains that share their input loads, and no
//! padded copy is made: taps in the padding read a zero vector.
//!
//! The expansion swaps the GEMM's roles: the micro-kernel's rows are pixels, read in
//! place from the planar input (`a + k·lda + i` with `lda` the plane), and its vector
//! columns are output channels, from the expansion weights transposed into panels of the
//! micro-kernel's width (made once per session by [`channels_last_weights`]); the bias is
//! a column bias. A tile stays within a row, since the buffer's rows have zero columns
//! between them.
//!
//! Bit-identical to the planar path: every expanded element is the same chain of FMAs
//! over k, then the bias, then the activation (the same micro-kernel, only its tiles
//! cover other elements); every depthwise output is the bias, then the nine taps in
//! order with padded taps contributing `0·w`, then the clamp, as in
//! `depthwise::plane_padded`.

use std::ops::Range;
use std::ptr::null;

use crate::graph::Activation;
use crate::kernels::elementwise::{dispatch, Simd};
use crate::kernels::gemm::{self, Store, MR_PACK};
use crate::kernels::nhwc;
use crate::simd::Isa;

/// Bytes of the expansion's outputs done channel tile by channel tile (8 to 64 KiB
/// measured the same on MobileNetV2's blocks, AVX2).
const PIXEL_BLOCK_BYTES: usize = 24 << 10;

/// The depthwise geometry on the whole expanded map (3×3, dilation 1).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dw3 {
    pub eh: usize,
    pub ew: usize,
    pub ow: usize,
    pub cexp: usize,
    pub sh: usize,
    pub sw: usize,
    pub pt: usize,
    /// Zero columns before and after each row of the buffer: the window's padding.
    pub pl: usize,
    pub pr: usize,
    /// The activation as a clamp (Identity, ReLU and Clip only).
    pub lo: f32,
    pub hi: f32,
}

impl Dw3 {
    /// Pixels per buffer row: the map's row between its zero columns.
    pub fn row_pixels(&self) -> usize {
        self.pl + self.ew + self.pr
    }

    /// Pixels the buffer holds past its last row: a group of outputs past the row's end
    /// (whose lanes are not stored) still reads whole vectors.
    pub fn slack_pixels(lanes: usize) -> usize {
        2 * lanes + 3
    }
}

/// Where the depthwise outputs go: channel `ch`, band pixel `j` at
/// `kb·kc·npad + (j / nr)·kcur·nr + (ch − kb·kc)·nr + j % nr`, with `kb = ch / kc` and
/// `kcur` the rows of K block `kb` (`kc`, less in the last). With `nr = npad = n_out`
/// and `kc = cexp` these are planar rows (channel `ch` at `ch·n_out`); with the
/// projection's `nr` and `kc` they are its B already in the GEMM's packed panels
/// (`gemm::BSrc::Panels`), so a group's vectors land in `LANES · nr` contiguous floats
/// instead of `LANES` rows `n_out` apart (the stores were half the kernel's time when
/// measured in cache, see docs/KERNELS.md), and the projection packs nothing.
#[derive(Clone, Copy, Debug)]
pub(super) struct DwOut {
    pub nr: usize,
    pub npad: usize,
    pub kc: usize,
}

impl DwOut {
    /// Planar rows of `n_out` pixels per channel.
    pub fn rows(n_out: usize, cexp: usize) -> DwOut {
        DwOut {
            nr: n_out.max(1),
            npad: n_out,
            kc: cexp.max(1),
        }
    }

    /// The packed panels of a GEMM with `nr` columns per panel and K blocks of `kc`.
    pub fn panels(n_out: usize, nr: usize, kc: usize) -> DwOut {
        DwOut {
            nr,
            npad: n_out.div_ceil(nr) * nr,
            kc,
        }
    }

    /// Floats the layout spans for `cexp` channels.
    pub fn len(&self, cexp: usize) -> usize {
        cexp * self.npad
    }
}

/// Floats of the transposed expansion weights for `isa`: `k × cexp` in panels of the
/// micro-kernel's `nr` channels (the last one padded with zeros).
pub(super) fn expand_weights_len(isa: Isa, k: usize, cexp: usize) -> usize {
    let nr = gemm::ukr(isa).nr;
    cexp.div_ceil(nr) * nr * k
}

/// The weights this path reads, from the block's: the expansion transposed (from its
/// conv-gemm packed layout, see `gemm`) into panels of `nr` channels, K-major inside —
/// channel `c` of step `kk` at `(c / nr)·nr·k + kk·nr + c % nr`, so that a tile's
/// weights are contiguous —, then the depthwise taps transposed to `taps × cexp`.
pub(super) fn channels_last_weights(
    isa: Isa,
    k: usize,
    cexp: usize,
    taps: usize,
    expand_packed: &[f32],
    depthwise: &[f32],
) -> Vec<f32> {
    assert_eq!(expand_packed.len(), k * cexp, "block: expand weights");
    assert_eq!(depthwise.len(), taps * cexp, "block: depthwise weights");
    let nr = gemm::ukr(isa).nr;
    let elen = expand_weights_len(isa, k, cexp);
    let mut out = vec![0.0; elen + taps * cexp];
    let (et, dt) = out.split_at_mut(elen);
    for c in 0..cexp {
        let (p, i) = (c / MR_PACK, c % MR_PACK);
        let h = MR_PACK.min(cexp - p * MR_PACK);
        let (t, j) = (c / nr, c % nr);
        for kk in 0..k {
            et[t * nr * k + kk * nr + j] = expand_packed[p * MR_PACK * k + kk * h + i];
        }
        for tap in 0..taps {
            dt[tap * cexp + c] = depthwise[c * taps + tap];
        }
    }
    out
}

/// `C[n × cexp] = act(Aᵀ · Wᵀ + bias)`, channels-last: pixel `p`'s channels at
/// `c + p·cexp`, from `A` = `k` rows of `n` pixels (row `kk` at `a + kk·lda`) and
/// `wt` the transposed weights in panels ([`channels_last_weights`]).
///
/// # Safety
/// `a + kk·lda + p` readable for `kk < k`, `p < n`; `wt` holds
/// [`expand_weights_len`], `bias` (unless null) `cexp`; `c` writable for `n·cexp`
/// floats, written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn expand(
    isa: Isa,
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    wt: *const f32,
    bias: *const f32,
    act: Activation,
    c: *mut f32,
    cexp: usize,
) {
    let u = gemm::ukr(isa);
    let (mr, nr) = (u.mr, u.nr);
    let (nt, tail) = (cexp / nr, cexp % nr);
    let st = Store {
        load_c: false,
        finish: true,
        bias_row: null(),
        bias_col: bias,
        residual: null(),
        act,
        pf: null(),
        pf_stride: 0,
        pf_to: gemm::PrefetchTo::L1,
    };
    // Blocks of pixels whose outputs (all channels) stay in L1, each done channel tile
    // by channel tile: a tile's weights are read once per block, and the block's C
    // lines are complete before it moves on.
    let block = (PIXEL_BLOCK_BYTES / (4 * cexp)).max(mr);
    for b0 in (0..n).step_by(block) {
        let nb = block.min(n - b0);
        // Tiles of nearly equal rows (14 pixels as 5 + 5 + 4, not 6 + 6 + 2): a tile
        // of r rows has 2r independent FMA chains.
        let tiles = nb.div_ceil(mr);
        for t in 0..nt + usize::from(tail > 0) {
            let (c0, nv) = (t * nr, nr.min(cexp - t * nr));
            let s = Store {
                bias_col: if bias.is_null() {
                    bias
                } else {
                    bias.wrapping_add(c0)
                },
                ..st
            };
            let kernels = if nv == nr { &u.full } else { &u.tail };
            let mut p0 = b0;
            for i in 0..tiles {
                let r = nb / tiles + usize::from(i < nb % tiles);
                // SAFETY: rows p0..p0 + r of A (pixels) and of C; columns c0 .. c0 + nv
                // (channels, below cexp) of the tile's weights (nr wide), the bias and C.
                unsafe {
                    kernels[r](
                        k,
                        a.add(p0),
                        lda,
                        wt.add(t * nr * k),
                        nr,
                        c.add(p0 * cexp + c0),
                        cexp,
                        nv,
                        &s,
                    )
                };
                p0 += r;
            }
        }
    }
}

/// The 3×3 depthwise convolution of output rows `out_rows` from the channels-last rows
/// `held` of the expanded map, written at `out` in layout `lay` ([`DwOut`]; band pixel
/// `j = (oy − out_rows.start)·ow + ox`). Map row `iy` is at
/// `x + (iy − held.start)·row_pixels·cexp`: `pl` zero pixels, the row's `ew`, `pr` zero
/// pixels.
///
/// # Safety
/// `held` covers every input row inside the map that the output rows' windows reach, and
/// `x` holds those rows with their zero columns, then `slack_pixels` readable pixels;
/// `w` holds `9·cexp` (tap-major), `bias` (unless null) `cexp`; `out` is writable for
/// `lay.len(cexp)` floats, `lay.npad ≥ out_rows.len()·ow`; `g.cexp` and `lay.kc` (unless
/// `lay.kc ≥ cexp`) are multiples of `vector_lanes(isa)`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn depthwise3x3(
    isa: Isa,
    g: &Dw3,
    x: *const f32,
    held: Range<usize>,
    w: *const f32,
    bias: *const f32,
    out_rows: Range<usize>,
    out: *mut f32,
    lay: DwOut,
) {
    dispatch!(isa, |s| {
        // SAFETY: forwarded (same contract).
        unsafe { rows(s, g, x, held.clone(), w, bias, out_rows.clone(), out, lay) }
    })
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<S: Simd>(
    s: S,
    g: &Dw3,
    x: *const f32,
    held: Range<usize>,
    w: *const f32,
    bias: *const f32,
    out_rows: Range<usize>,
    out: *mut f32,
    lay: DwOut,
) {
    let l = S::LANES;
    let (ow, cexp) = (g.ow, g.cexp);
    debug_assert!(cexp.is_multiple_of(l));
    debug_assert!(lay.kc >= cexp || lay.kc.is_multiple_of(l));
    debug_assert!(lay.npad >= out_rows.len() * ow);
    let kc = lay.kc.min(cexp);
    let row_len = g.row_pixels() * cexp;
    let (lo, hi) = (s.splat(g.lo), s.splat(g.hi));
    for (r, oy) in out_rows.enumerate() {
        // Rows in the top / bottom padding: null, their taps add 0·w.
        let mut src = [null::<f32>(); 3];
        for (dy, sp) in src.iter_mut().enumerate() {
            let iy = (oy * g.sh + dy) as isize - g.pt as isize;
            if iy >= 0 && (iy as usize) < g.eh {
                let iy = iy as usize;
                debug_assert!(held.contains(&iy));
                *sp = x.wrapping_add((iy - held.start) * row_len);
            }
        }
        let mut ox0 = 0;
        while ox0 < ow {
            // The group's pixels j0 .. j0 + n, from column `off` of panel `q`: a group
            // ends at the row's end and at the panel's (on rows 7, 14 or 28 wide a
            // group of fewer pixels, rather than split stores).
            let j0 = r * ow + ox0;
            let (q, off) = (j0 / lay.nr, j0 % lay.nr);
            let n = l.min(ow - ox0).min(lay.nr - off);
            // Buffer column of tap 0 of output ox0 (the zero columns included).
            let col0 = ox0 * g.sw;
            let (mut k0, mut kcur) = (0, kc.min(cexp));
            for c in (0..cexp).step_by(l) {
                if c == k0 + kcur {
                    k0 += kcur;
                    kcur = kc.min(cexp - k0);
                }
                let b = if bias.is_null() {
                    s.zero()
                } else {
                    // SAFETY: c + LANES <= cexp floats of bias.
                    unsafe { s.load(bias.add(c)) }
                };
                // SAFETY: the group reads held rows (non-null `src`), buffer columns
                // col0 .. col0 + (LANES − 1)·sw + 3, inside the row for the outputs
                // below ow and in the next row or the slack past the last row for the
                // others; channels c .. c + LANES.
                let mut acc = unsafe {
                    if g.sw == 1 {
                        group::<S, 1>(s, &src, col0, cexp, c, w, b)
                    } else {
                        group::<S, 2>(s, &src, col0, cexp, c, w, b)
                    }
                };
                for v in acc.iter_mut().take(l) {
                    *v = s.min(hi, s.max(lo, *v));
                }
                s.transpose(&mut acc[..l]);
                // Channel c's row in K block k0's panel q; the next channel nr further.
                let at = k0 * lay.npad + q * kcur * lay.nr + (c - k0) * lay.nr + off;
                for (ch, v) in acc.iter().take(l).enumerate() {
                    // SAFETY: channel c + ch < cexp, pixels j0 .. j0 + n of the band, in
                    // one panel: inside `lay.len(cexp)` (the caller).
                    unsafe {
                        let p = out.add(at + ch * lay.nr);
                        if n == l {
                            s.store(p, *v);
                        } else {
                            s.store_part(p, n, *v);
                        }
                    }
                }
            }
            ox0 += n;
        }
    }
}

/// `LANES` outputs of one row for channels `c .. c + LANES`: lane `ch` of result `p` is
/// output pixel `p` of the group, channel `c + ch` (before the clamp). `col0` is the
/// buffer column of tap 0 of the first output; stride `SW` along the row; null rows are
/// padding (every tap `0·w`).
///
/// # Safety
/// Non-null `src` rows are readable from column `col0` to `col0 + (LANES − 1)·SW + 3`
/// (`cexp` floats per column); `w` holds the 9 taps' `cexp` weights.
#[inline(always)]
unsafe fn group<S: Simd, const SW: usize>(
    s: S,
    src: &[*const f32; 3],
    col0: usize,
    cexp: usize,
    c: usize,
    w: *const f32,
    bias: S::V,
) -> [S::V; 16] {
    let l = S::LANES;
    let mut acc = [bias; 16];
    // Row by row, each input column loaded once and used by every output whose taps
    // cover it (three with stride 1, one or two with stride 2): one load per column
    // instead of one memory operand per FMA, whose runtime stride made each an indexed,
    // two-uop FMA besides an address add (the front end, not the FMA ports, limits this
    // loop). Each output's chain is still the bias then taps 0..9 in order; the outputs'
    // chains are independent.
    for (dy, &row) in src.iter().enumerate() {
        // SAFETY: taps 3·dy .. 3·dy + 3, channels c .. c + LANES of `w`.
        let wv: [S::V; 3] =
            std::array::from_fn(|dx| unsafe { s.load(w.add((3 * dy + dx) * cexp + c)) });
        if row.is_null() {
            for &wd in &wv {
                for a in acc.iter_mut().take(l) {
                    *a = s.fmadd(s.zero(), wd, *a);
                }
            }
            continue;
        }
        // Output p's taps dx = 0, 1, 2 are columns col0 + p·SW + dx.
        let q = row.wrapping_add(col0 * cexp + c);
        // SAFETY (all loads below): columns col0 .. col0 + (LANES − 1)·SW + 2 of the
        // row, inside it or its slack (the caller).
        let col = |j: usize| unsafe { s.load(q.wrapping_add(j * cexp)) };
        nhwc::row_taps::<S, SW>(s, &mut acc[..l], &wv, col);
    }
    acc
}
