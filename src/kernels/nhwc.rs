//! Channels-last (NHWC) kernels for a region of a network kept channels-last between
//! layers: 1×1 convolutions with pixels as the GEMM's rows, the 3×3 depthwise
//! convolution with a vector of channels per pixel, and the conversions at the region's
//! edges. `region` chooses the layers (see docs/KERNELS.md).
//!
//! Why: on small maps (MobileNetV2's 28-, 14- and 7-wide layers) the planar layout puts
//! pixels in the vectors: a 7×7 map is one 32-wide tile, one 16-wide and a one-column
//! tail per panel of the 1×1 GEMMs, and the planar depthwise needs partial vectors or
//! transposes. Channels-last, the vectors hold channels (all multiples of 16 in such
//! networks), the 1×1 GEMM's rows are pixels (any count, cut into tiles of nearly equal
//! rows) and its streamed operand is the weights, in panels read once per layer; every
//! depthwise tap is a whole vector.
//!
//! Bit-identical to the planar kernels: every 1×1 output is the micro-kernel's chain of
//! FMAs over k in order, then the bias, the residual and the activation (the same
//! micro-kernel bodies, A addressed by rows); every depthwise output is the bias, then
//! the nine taps in order with padded taps adding `0·w`, then the clamp — the planar
//! layer's chain where `DepthwiseKernel::uniform_chain` holds, which the session checks.

use std::ptr::null;

use crate::graph::{Activation, Conv};
use crate::kernels::elementwise::{clamp_bounds, dispatch, vector_lanes, Simd};
use crate::kernels::gemm::{self, PrefetchTo, SharedOut, Store, MR_PACK, NR_PACK};
use crate::kernels::parallel;
use crate::simd::Isa;

/// Writes the weights of a 1×1 convolution as this kernel reads them, from their
/// conv-gemm packed form (`MR_PACK`-row panels of A, see `gemm`; `cout × k`): the
/// `LinearGemm` layout of fully connected layers, `Wᵀ` in panels of [`NR_PACK`] output
/// channels, K-major inside, the last one narrower (channel `c` of step `kk` at
/// `q·32·k + kk·w + c − 32q`, `q = c / 32`, `w` the panel's width). Every tier reads it
/// in place (its `nr` divides 32), so the converter stores it in the file.
pub fn panels_from_conv_gemm(k: usize, cout: usize, packed: &[f32], out: &mut [f32]) {
    assert_eq!(packed.len(), k * cout, "nhwc: packed weights");
    assert_eq!(out.len(), k * cout, "nhwc: panels");
    // Panel by panel of the packed weights, reading them in order (a session makes
    // megabytes of these at creation when the file has them packed for planar kernels).
    for (p, panel) in packed.chunks(MR_PACK * k).enumerate() {
        let h = panel.len() / k;
        for (kk, col) in panel.chunks(h).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                let c = p * MR_PACK + i;
                let q0 = c / NR_PACK * NR_PACK;
                let w = NR_PACK.min(cout - q0);
                out[q0 * k + kk * w + c - q0] = v;
            }
        }
    }
}

/// The inverse of [`panels_from_conv_gemm`]: panels back to packed A (a file that
/// stores weights for a channels-last kernel, run by a planar one).
pub fn conv_gemm_from_panels(k: usize, cout: usize, panels: &[f32], out: &mut [f32]) {
    assert_eq!(panels.len(), k * cout, "nhwc: panels");
    assert_eq!(out.len(), k * cout, "nhwc: packed weights");
    for (p, panel) in out.chunks_mut(MR_PACK * k).enumerate() {
        let h = panel.len() / k;
        for (kk, col) in panel.chunks_mut(h).enumerate() {
            for (i, v) in col.iter_mut().enumerate() {
                let c = p * MR_PACK + i;
                let q0 = c / NR_PACK * NR_PACK;
                let w = NR_PACK.min(cout - q0);
                *v = panels[q0 * k + kk * w + c - q0];
            }
        }
    }
}

/// `[C][HW]` planes of `n` samples to `[HW][C]` pixels, on `isa` (clamped to this CPU).
pub fn to_nhwc(isa: Isa, x: &[f32], n: usize, c: usize, hw: usize, out: &mut [f32]) {
    transpose_samples(isa, x, n, c, hw, out);
}

/// `[HW][C]` pixels of `n` samples to `[C][HW]` planes, on `isa` (clamped to this CPU).
pub fn to_planar(isa: Isa, x: &[f32], n: usize, c: usize, hw: usize, out: &mut [f32]) {
    transpose_samples(isa, x, n, hw, c, out);
}

/// Each of `n` row-major `rows × cols` matrices to `cols × rows`: blocks of the tier's
/// `LANES × LANES` through registers (`Simd::transpose`), the edges element by element.
/// Pure data movement, so every tier gives the same bits. (MobileNetV2 spent 1.7% of a
/// run in the element loop, on its two layout copies of 100 and 250 KB.)
fn transpose_samples(isa: Isa, x: &[f32], n: usize, rows: usize, cols: usize, out: &mut [f32]) {
    let len = rows * cols;
    assert!(
        x.len() >= n * len && out.len() >= n * len,
        "nhwc: conversion"
    );
    dispatch!(isa, |s| {
        for smp in 0..n {
            let (x, o) = (
                &x[smp * len..(smp + 1) * len],
                &mut out[smp * len..(smp + 1) * len],
            );
            transpose_blocks(s, x, rows, cols, o);
        }
    })
}

/// [`transpose_samples`] of one matrix (`x` and `o` of `rows · cols` floats).
#[inline(always)]
fn transpose_blocks<S: Simd>(s: S, x: &[f32], rows: usize, cols: usize, o: &mut [f32]) {
    let l = S::LANES;
    let (rb, cb) = (rows / l * l, cols / l * l);
    let (xp, op) = (x.as_ptr(), o.as_mut_ptr());
    let mut v = [s.zero(); 16];
    // Column blocks outermost: the output rows of a column block are written start to end,
    // and the input lines it reads serve the next block too. Best time of 3000 copies, in
    // L2, AVX2 8 × 8 blocks (AVX-512 16 × 16 the same): MobileNetV2's 32 × 784 to channels-last 4.2 µs (row blocks
    // outermost 7.4, the element loop 17.7); its 1280 × 49 to planar 16.5 (17.8; 45.0).
    for c0 in (0..cb).step_by(l) {
        for r0 in (0..rb).step_by(l) {
            for (i, vi) in v[..l].iter_mut().enumerate() {
                // SAFETY: row r0 + i < rows, columns c0..c0 + l <= cols of `x`.
                *vi = unsafe { s.load(xp.add((r0 + i) * cols + c0)) };
            }
            s.transpose(&mut v[..l]);
            for (i, vi) in v[..l].iter().enumerate() {
                // SAFETY: row c0 + i < cols, columns r0..r0 + l <= rows of `o`.
                unsafe { s.store(op.add((c0 + i) * rows + r0), *vi) };
            }
        }
    }
    transpose_edges(x, rows, cols, o, rb, cb);
}

/// `o[col·rows + r] = x[r·cols + col]` for the elements with `r >= r_done` or
/// `col >= c_done` (the block kernel did the rest), in 16 × 16 blocks.
fn transpose_edges(
    x: &[f32],
    rows: usize,
    cols: usize,
    o: &mut [f32],
    r_done: usize,
    c_done: usize,
) {
    const B: usize = 16;
    let mut part = |rs: std::ops::Range<usize>, cs: std::ops::Range<usize>| {
        for r0 in rs.clone().step_by(B) {
            for c0 in cs.clone().step_by(B) {
                for r in r0..(r0 + B).min(rs.end) {
                    for col in c0..(c0 + B).min(cs.end) {
                        o[col * rows + r] = x[r * cols + col];
                    }
                }
            }
        }
    };
    part(0..r_done, c_done..cols);
    part(r_done..rows, 0..cols);
}

/// Bytes of one K block of a weight panel (`kc × nr` floats): with a tile's input rows
/// (at most 12 × kc floats) it stays in a 48 KiB L1.
const KC_BYTES: usize = 24 << 10;

/// A 1×1 stride-1 convolution (one group, no padding) writing channels-last:
/// `out[p][co] = act(Σ_k x[p][k]·W[co][k] + bias[co] + residual[p][co])`, its input
/// channels-last or planar (read in place either way).
#[derive(Clone, Debug)]
pub struct PointwiseNhwc {
    isa: Isa,
    k: usize,
    m: usize,
    hw: usize,
    act: Activation,
    input_nhwc: bool,
    /// Per sample: column groups (runs of panels) × row groups (runs of tiles).
    col_groups: usize,
    row_groups: usize,
    prefetch: PrefetchTo,
}

/// Weight bytes up to which a 1×1 layer splits its pixel rows over the workers even when
/// it has more output channels than pixels: each worker then reads all the weights (few
/// enough to come from L2 or L3) but writes whole pixels, so the depthwise layer after it,
/// which splits by rows, finds most of its input in its own core's cache. MobileNetV2,
/// 2 threads (AVX-512 Xeon, `cnnrt bench`, 10 interleaved rounds): 3.398 ms splitting by
/// weight panels, 3.340 from 128 KiB, 3.253 from 256 KiB (its 14×14 expansions of 98 and
/// 221 KB), 3.269 from 400 KiB; in the profile the 1×1 layers 1.61–1.64 → 1.48–1.50 ms
/// and the depthwise ones 0.344–0.349 → 0.316–0.318.
const ROW_SPLIT_MAX_WEIGHT_BYTES: usize = 256 << 10;

impl PointwiseNhwc {
    /// `None` unless `conv` is a 1×1 stride-1 one-group unpadded convolution.
    pub fn new(isa: Isa, conv: &Conv, hw: usize, input_nhwc: bool, threads: usize) -> Option<Self> {
        let one = |a: [usize; 2]| a == [1, 1];
        if !(one(conv.kernel) && one(conv.stride) && one(conv.dilation))
            || conv.groups != 1
            || conv.pads != [0; 4]
            || hw == 0
        {
            return None;
        }
        let mut k = PointwiseNhwc {
            isa: gemm::ukr(isa).isa,
            k: conv.in_channels,
            m: conv.out_channels,
            hw,
            act: conv.activation,
            input_nhwc,
            col_groups: 1,
            row_groups: 1,
            prefetch: PrefetchTo::default(),
        };
        if threads > 1 && k.flops() >= parallel::min_parallel_flops() {
            // About two parts per worker; the weights split first where they outweigh
            // the input (each worker then streams its share of them once), are large, and
            // the layer widens. A projection (fewer outputs than inputs) splits its rows
            // whatever its weights: split by columns, each worker read the whole input,
            // half of it from the other core's cache (the depthwise layer before splits
            // by rows), and MobileNetV2's 160-channel ones split 5 panels 1 + 1 + 1 + 2.
            // Six 7×7 160→960→160 blocks, 2 threads, 8 interleaved rounds: 1.440 →
            // 1.329 ms.
            let target = 2 * threads;
            let (panels, tiles) = (k.panels(), k.tiles());
            if k.m >= hw && k.m >= k.k && 4 * k.k * k.m > ROW_SPLIT_MAX_WEIGHT_BYTES {
                k.col_groups = panels.min(target);
                k.row_groups = tiles.min(target.div_ceil(k.col_groups));
            } else {
                k.row_groups = tiles.min(target);
                k.col_groups = panels.min(target.div_ceil(k.row_groups));
            }
        }
        Some(k)
    }

    /// Where the GEMM's prefetch hints put the weights they fetch ahead (the session
    /// chooses, see [`PrefetchTo`]); results do not change.
    pub fn set_prefetch(&mut self, to: PrefetchTo) {
        self.prefetch = to;
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether the input is read channels-last (else planar).
    pub fn input_nhwc(&self) -> bool {
        self.input_nhwc
    }

    pub fn flops(&self) -> u64 {
        2 * (self.k * self.m * self.hw) as u64
    }

    /// Floats of the weights ([`panels_from_conv_gemm`]): `k × m`.
    pub fn weights_len(&self) -> usize {
        self.k * self.m
    }

    fn panels(&self) -> usize {
        self.m.div_ceil(gemm::ukr(self.isa).nr)
    }

    /// Row tiles of a sample on one worker (49 pixels as 10 + 10 + 10 + 10 + 9 on
    /// AVX-512): a tile of `r` rows has `2r` independent FMA chains. With row groups,
    /// each group's pixels are tiled on their own (49 in 4 groups: 12 | 12 | 12 | 7 + 6),
    /// so that two workers get 24 and 25 rows, not 20 and 29.
    fn tiles(&self) -> usize {
        self.hw.div_ceil(gemm::ukr(self.isa).mr)
    }

    /// Independent parts of one sample.
    pub fn parts(&self) -> usize {
        self.col_groups * self.row_groups
    }

    /// Runs `n` samples on `slots` workers. `wt`: the weights in 32-wide panels
    /// ([`panels_from_conv_gemm`]); `x`: `n × k × hw` (channels-last or planar, see
    /// `input_nhwc`);
    /// `residual`, `out`: `n × hw × m` channels-last.
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
    ) {
        let (k, m, hw) = (self.k, self.m, self.hw);
        assert_eq!(wt.len(), self.weights_len(), "nhwc 1x1: weights");
        assert!(bias.is_none_or(|b| b.len() == m), "nhwc 1x1: bias");
        assert!(x.len() >= n * k * hw, "nhwc 1x1: input");
        assert!(out.len() >= n * m * hw, "nhwc 1x1: output");
        assert!(
            residual.is_none_or(|r| r.len() >= n * m * hw),
            "nhwc 1x1: residual"
        );
        let parts = n * self.parts();
        let shared = SharedOut::new(out);
        let body = |part: usize| {
            // SAFETY: lengths checked above; part `part` writes only its own rows ×
            // columns of `out`, which no other part writes and nothing reads meanwhile.
            unsafe {
                self.part(
                    part,
                    wt.as_ptr(),
                    bias.map_or(null(), |b| b.as_ptr()),
                    x.as_ptr(),
                    residual.map_or(null(), |r| r.as_ptr()),
                    shared.ptr(),
                )
            }
        };
        if slots <= 1 || parts == 1 {
            (0..parts).for_each(body);
        } else {
            parallel::for_tiles(slots, parts, &mut [], 0, |_, part| body(part));
        }
    }

    /// One part: sample, column group, row group.
    ///
    /// # Safety
    /// The buffers hold what `run` checks; no other writer of this part's outputs.
    unsafe fn part(
        &self,
        part: usize,
        wt: *const f32,
        bias: *const f32,
        x: *const f32,
        residual: *const f32,
        out: *mut f32,
    ) {
        let u = gemm::ukr(self.isa);
        let (k, m, hw) = (self.k, self.m, self.hw);
        let per = self.parts();
        let (s, rest) = (part / per, part % per);
        let (cg, rg) = (rest / self.row_groups, rest % self.row_groups);
        let split = |total: usize, groups: usize, g: usize| {
            (g * total / groups)..((g + 1) * total / groups)
        };
        let panels = self.panels();
        let pr = split(panels, self.col_groups, cg);
        // This row group's pixels, in tiles of nearly equal height.
        let rows = split(hw, self.row_groups, rg);
        let tiles = (rows.end - rows.start).div_ceil(u.mr);
        let x = x.wrapping_add(s * k * hw);
        let out = out.wrapping_add(s * m * hw);
        let residual = if residual.is_null() {
            residual
        } else {
            residual.wrapping_add(s * m * hw)
        };
        // Row p0 of tile t: tiles of len / tiles rows, the first len % tiles one more.
        let len = rows.end - rows.start;
        let (base, extra) = (len / tiles.max(1), len % tiles.max(1));
        let row0 = |t: usize| rows.start + t * base + t.min(extra);
        let (full, tail, lda) = if self.input_nhwc {
            (&u.rows, &u.rows_tail, k)
        } else {
            (&u.full, &u.tail, hw)
        };
        // Tier panel t (nr columns from c0 = t·nr) lies in 32-wide panel q = c0 / 32 of
        // width w, at column c0 − 32q: B at `wt + 32q·k + (c0 − 32q)`, rows `w` apart.
        let at = |t: usize| {
            let c0 = t * u.nr;
            let q0 = c0 / NR_PACK * NR_PACK;
            let w = NR_PACK.min(m - q0);
            (q0 * k + c0 - q0, w)
        };
        let end = pr.end;
        // K in blocks whose weights (kc × nr) stay in L1 beside a tile's rows, all row
        // tiles of a block before the next: the later blocks start from C (exact f32
        // stores and loads, so the chain over k, hence every bit, is unchanged).
        let kc = k.min((KC_BYTES / (4 * u.nr)).max(1));
        for t in pr {
            let c0 = t * u.nr;
            let nv = u.nr.min(m - c0);
            let kernels = if nv == u.nr { full } else { tail };
            let st = Store {
                load_c: false,
                finish: true,
                bias_row: null(),
                bias_col: if bias.is_null() {
                    bias
                } else {
                    bias.wrapping_add(c0)
                },
                residual: null(),
                act: self.act,
                pf: null(),
                pf_stride: 0,
                pf_to: self.prefetch,
            };
            // The next 32-wide panel's weights, one 16-float line per k step of this
            // panel's calls until all are asked for: at batch 1 they come from memory,
            // and one panel's tiles leave time to fetch the next. (A tier panel in the
            // same 32-wide panel streams in with this one.)
            let (b_off, ldb) = at(t);
            let next = (t + 1 < end && (t + 1) * u.nr / NR_PACK != t * u.nr / NR_PACK).then(|| {
                let q0 = (t + 1) * u.nr;
                (q0 * k, NR_PACK.min(m - q0) * k / 16)
            });
            let mut fetched = 0;
            for k0 in (0..k).step_by(kc) {
                let kcur = kc.min(k - k0);
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
                    let a = if self.input_nhwc {
                        x.wrapping_add(p0 * k + k0)
                    } else {
                        x.wrapping_add(p0 + k0 * hw)
                    };
                    let last = k0 + kcur == k;
                    let st = Store {
                        load_c: k0 > 0,
                        finish: last,
                        pf,
                        pf_stride,
                        residual: if residual.is_null() || !last {
                            null()
                        } else {
                            residual.wrapping_add(p0 * m + c0)
                        },
                        ..st
                    };
                    // SAFETY: rows p0 .. p0 + r (≤ mr) of this sample's input (k steps
                    // k0 .. k0 + kcur) and output; columns c0 .. c0 + nv of the output,
                    // bias and residual, and of the weights' 32-wide panel (nv ≤ w − (c0
                    // − 32q), as nr divides 32) over those k steps.
                    unsafe {
                        kernels[r](
                            kcur,
                            a,
                            lda,
                            wt.add(b_off + k0 * ldb),
                            ldb,
                            out.add(p0 * m + c0),
                            m,
                            nv,
                            &st,
                        )
                    };
                }
            }
        }
    }
}

/// A 3×3 depthwise convolution (dilation 1, stride 1 or 2 in both directions, padding
/// at most 1 per side, a clamp activation) from channels-last to channels-last.
#[derive(Clone, Debug)]
pub struct DepthwiseNhwc {
    isa: Isa,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    pt: usize,
    pl: usize,
    lo: f32,
    hi: f32,
    /// Per sample: row groups × channel groups.
    row_groups: usize,
    chan_groups: usize,
}

impl DepthwiseNhwc {
    /// `None` unless this kernel takes `conv` on a `[c, h, w]` input (see the type).
    pub fn new(
        isa: Isa,
        conv: &Conv,
        ins: [usize; 3],
        outs: [usize; 3],
        threads: usize,
    ) -> Option<Self> {
        let [c, h, w] = ins;
        let [_, oh, ow] = outs;
        let (lo, hi) = clamp_bounds(conv.activation)?;
        let s = conv.stride[0];
        let ok = conv.kernel == [3, 3]
            && conv.dilation == [1, 1]
            && conv.stride == [s, s]
            && (s == 1 || s == 2)
            && conv.groups == c
            && conv.in_channels == c
            && conv.out_channels == c
            && conv.pads.iter().all(|&p| p <= 1)
            && c > 0
            && c.is_multiple_of(vector_lanes(isa))
            && oh == (h + conv.pads[0] + conv.pads[2]).checked_sub(3)? / s + 1
            && ow == (w + conv.pads[1] + conv.pads[3]).checked_sub(3)? / s + 1;
        if !ok {
            return None;
        }
        let mut k = DepthwiseNhwc {
            isa: crate::kernels::elementwise::clamp_isa(isa),
            c,
            h,
            w,
            oh,
            ow,
            stride: s,
            pt: conv.pads[0],
            pl: conv.pads[1],
            lo,
            hi,
            row_groups: 1,
            chan_groups: 1,
        };
        if threads > 1 && k.flops() >= parallel::min_parallel_flops() / 4 {
            let target = 2 * threads;
            k.row_groups = oh.min(target);
            k.chan_groups = (c / vector_lanes(isa)).min(target.div_ceil(k.row_groups));
        }
        Some(k)
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn flops(&self) -> u64 {
        2 * 9 * (self.c * self.oh * self.ow) as u64
    }

    /// Tap-major weights (`9 × c`) from the layer's `[c][9]`.
    pub fn transpose_weights(&self, w: &[f32], out: &mut [f32]) {
        let c = self.c;
        assert!(w.len() == 9 * c && out.len() == 9 * c, "nhwc dw: weights");
        for ch in 0..c {
            for tap in 0..9 {
                out[tap * c + ch] = w[ch * 9 + tap];
            }
        }
    }

    /// Runs `n` samples on `slots` workers: `x` `n × h × w × c`, `out` `n × oh × ow × c`,
    /// `wt` from [`DepthwiseNhwc::transpose_weights`].
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        slots: usize,
        n: usize,
        wt: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        out: &mut [f32],
    ) {
        let c = self.c;
        assert_eq!(wt.len(), 9 * c, "nhwc dw: weights");
        assert!(bias.is_none_or(|b| b.len() == c), "nhwc dw: bias");
        assert!(x.len() >= n * self.h * self.w * c, "nhwc dw: input");
        assert!(out.len() >= n * self.oh * self.ow * c, "nhwc dw: output");
        let per = self.row_groups * self.chan_groups;
        let parts = n * per;
        let shared = SharedOut::new(out);
        let l = vector_lanes(self.isa);
        let body = |part: usize| {
            let (s, rest) = (part / per, part % per);
            let (rg, cg) = (rest / self.chan_groups, rest % self.chan_groups);
            let vecs = c / l;
            let rows = (rg * self.oh / self.row_groups)..((rg + 1) * self.oh / self.row_groups);
            let chans =
                (cg * vecs / self.chan_groups * l)..((cg + 1) * vecs / self.chan_groups * l);
            let xs = x[s * self.h * self.w * c..].as_ptr();
            let os = shared.ptr().wrapping_add(s * self.oh * self.ow * c);
            let b = bias.map_or(null(), |b| b.as_ptr());
            dispatch!(self.isa, |v| {
                // SAFETY: lengths checked above; this part writes only its rows ×
                // channels of sample s, which no other part writes.
                unsafe { self.rows(v, xs, wt.as_ptr(), b, rows.clone(), chans.clone(), os) }
            })
        };
        if slots <= 1 || parts == 1 {
            (0..parts).for_each(body);
        } else {
            parallel::for_tiles(slots, parts, &mut [], 0, |_, part| body(part));
        }
    }

    /// Output rows `rows`, channels `chans` (multiples of the lanes) of one sample.
    ///
    /// # Safety
    /// `x` holds the sample's `h × w × c` input, `out` its `oh × ow × c` output, `w`
    /// `9 × c` weights, `bias` (unless null) `c` floats.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<S: Simd>(
        &self,
        s: S,
        x: *const f32,
        w: *const f32,
        bias: *const f32,
        rows: std::ops::Range<usize>,
        chans: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        let l = S::LANES;
        let (c, wd, st) = (self.c, self.w, self.stride);
        let (lo, hi) = (s.splat(self.lo), s.splat(self.hi));
        // Edge outputs: the first reads column −1 (tap 0) when ox·st − pl < 0 for ox = 0,
        // the last reads column w (tap 2) when (ow − 1)·st − pl + 2 ≥ w. With padding at
        // most 1 and stride at most 2 no other output reads outside the row.
        let left = self.pl > 0;
        let right = (self.ow - 1) * st + 2 >= wd + self.pl;
        for oy in rows {
            let mut src = [null::<f32>(); 3];
            for (dy, sp) in src.iter_mut().enumerate() {
                let iy = (oy * st + dy) as isize - self.pt as isize;
                if iy >= 0 && (iy as usize) < self.h {
                    *sp = x.wrapping_add(iy as usize * wd * c);
                }
            }
            let orow = out.wrapping_add(oy * self.ow * c);
            // Channel blocks whose input columns for one group of outputs (3 rows ×
            // GROUP·st + 2 columns) stay in L1 while the block's channels pass over them:
            // by whole rows per channel vector instead, 3 rows of c channels (64 KiB for
            // 28 pixels of 192) came from L2 again for every channel vector.
            let cb = (GROUP_INPUT_BYTES / (4 * 3 * (GROUP * st + 2)) / l * l).max(l);
            for cb0 in chans.clone().step_by(cb) {
                let chs = cb0..chans.end.min(cb0 + cb);
                // Groups of up to 8 outputs, the first holding the left edge output and
                // the last the right one: every group has 8 independent chains but the
                // last (a plain checked loop per edge output was one chain each).
                let mut ox = 0;
                while ox < self.ow {
                    let n = GROUP.min(self.ow - ox);
                    let (l_edge, r_edge) = (left && ox == 0, right && ox + n == self.ow);
                    let col0 = (ox * st) as isize - self.pl as isize;
                    macro_rules! go {
                        ($n:literal, $sw:literal, $l:literal, $r:literal) => {
                            for ch in chs.clone().step_by(l) {
                                let b = if bias.is_null() {
                                    s.zero()
                                } else {
                                    // SAFETY: ch + LANES <= c floats of bias.
                                    unsafe { s.load(bias.add(ch)) }
                                };
                                // SAFETY: outputs ox .. ox + n of this row: every tap's
                                // column is inside the row but the edge taps the flags
                                // skip.
                                unsafe { group::<S, $n, $sw, $l, $r>(s, &src, col0, c, ch, w, b) }
                                    .into_iter()
                                    .enumerate()
                                    .for_each(|(p, v)| {
                                        // SAFETY: output pixel ox + p < ow, channels
                                        // below c.
                                        unsafe {
                                            s.store(
                                                orow.add((ox + p) * c + ch),
                                                s.min(hi, s.max(lo, v)),
                                            )
                                        }
                                    })
                            }
                        };
                    }
                    macro_rules! by_edges {
                        ($n:literal, $sw:literal) => {
                            match (l_edge, r_edge) {
                                (false, false) => go!($n, $sw, false, false),
                                (true, false) => go!($n, $sw, true, false),
                                (false, true) => go!($n, $sw, false, true),
                                (true, true) => go!($n, $sw, true, true),
                            }
                        };
                    }
                    macro_rules! by_stride {
                        ($n:literal) => {
                            if st == 1 {
                                by_edges!($n, 1)
                            } else {
                                by_edges!($n, 2)
                            }
                        };
                    }
                    match n {
                        8 => by_stride!(8),
                        7 => by_stride!(7),
                        6 => by_stride!(6),
                        5 => by_stride!(5),
                        4 => by_stride!(4),
                        3 => by_stride!(3),
                        2 => by_stride!(2),
                        _ => by_stride!(1),
                    }
                    ox += n;
                }
            }
        }
    }
}

/// Outputs per group of the channels-last depthwise kernel: 8 chains of FMAs (each 9
/// long) keep the FMA units busy; the group's inputs (3 rows × 10 vectors) and weights
/// stay in registers and L1.
const GROUP: usize = 8;
/// Bytes of input one group of outputs reads for a block of channels (see
/// `DepthwiseNhwc::rows`): half of a 48 KiB L1, beside the weights and the outputs.
const GROUP_INPUT_BYTES: usize = 24 << 10;

/// One input row's three taps `wv` for the outputs `acc`, whose output `p` takes tap
/// `dx` from column `p·SW + dx` (`col(j)` loads column `j`): a window of three columns
/// slides along the row, each column loaded once for the (up to three) outputs it
/// serves. Each output gets taps dx = 0, 1, 2 in that order, so its FMA chain is the
/// same as one tap at a time.
#[inline(always)]
pub(crate) fn row_taps<S: Simd, const SW: usize>(
    s: S,
    acc: &mut [S::V],
    wv: &[S::V; 3],
    col: impl Fn(usize) -> S::V,
) {
    let mut win = [col(0), if SW == 1 { col(1) } else { s.zero() }, s.zero()];
    for (p, a) in acc.iter_mut().enumerate() {
        if SW == 1 {
            win[2] = col(p + 2);
        } else {
            win[1] = col(SW * p + 1);
            win[2] = col(SW * p + 2);
        }
        for (&xv, &wd) in win.iter().zip(wv) {
            *a = s.fmadd(xv, wd, *a);
        }
        win = if SW == 1 {
            [win[1], win[2], win[2]]
        } else {
            [win[2], win[1], win[2]]
        };
    }
}

/// `N` outputs of one row for channels `ch .. ch + LANES`: output `p` reads columns
/// `col0 + p·SW + dx`. Null rows are padding, and so are column `col0 − 0` of output 0
/// when `L` and column `col0 + (N − 1)·SW + 2` of output `N − 1` when `R`: those taps add
/// `0·w`, as every tap of a null row does. Each output's chain: the bias, then taps 0..9
/// in order (the same chain as the planar kernels', padding included, so the same bits).
///
/// # Safety
/// Non-null `src` rows hold columns `col0 .. col0 + (N − 1)·SW + 3` of `c` channels, but
/// the edge columns the flags name; `w` the `9 × c` weights.
#[inline(always)]
unsafe fn group<S: Simd, const N: usize, const SW: usize, const L: bool, const R: bool>(
    s: S,
    src: &[*const f32; 3],
    col0: isize,
    c: usize,
    ch: usize,
    w: *const f32,
    bias: S::V,
) -> [S::V; N] {
    let mut acc = [bias; N];
    // Row by row, a window of three columns sliding along it: each column is loaded
    // once for the (up to three) outputs whose taps cover it, rather than once per
    // FMA at a runtime stride (an indexed two-uop FMA and an address add each; see
    // `fused::channels_last::group`).
    for (dy, &row) in src.iter().enumerate() {
        // SAFETY: taps 3·dy .. 3·dy + 3, channels ch .. ch + LANES.
        let wv: [S::V; 3] =
            std::array::from_fn(|dx| unsafe { s.load(w.add((3 * dy + dx) * c + ch)) });
        if row.is_null() {
            for &wd in &wv {
                for a in acc.iter_mut() {
                    *a = s.fmadd(s.zero(), wd, *a);
                }
            }
            continue;
        }
        // Output p's tap dx is column col0 + p·SW + dx; the first column is padding
        // when `L`, the last when `R` (each is only output 0's tap 0, output N − 1's
        // tap 2).
        let last = (N - 1) * SW + 2;
        let col = |j: usize| {
            if (L && j == 0) || (R && j == last) {
                s.zero()
            } else {
                let col = col0 + j as isize;
                // SAFETY: column col is inside the row (the caller; the edge columns
                // outside it are excluded above).
                unsafe { s.load(row.offset(col * c as isize).add(ch)) }
            }
        };
        row_taps::<S, SW>(s, &mut acc, &wv, col);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panels and back give the packed weights again, for widths that leave partial
    /// panels on both sides (12-row packed panels, 32-wide channel panels).
    #[test]
    fn panels_round_trip_to_packed() {
        for (k, cout) in [(1, 1), (7, 45), (16, 64), (3, 100)] {
            let packed: Vec<f32> = (0..k * cout).map(|i| i as f32).collect();
            let (mut panels, mut back) = (vec![0.0; k * cout], vec![0.0; k * cout]);
            panels_from_conv_gemm(k, cout, &packed, &mut panels);
            conv_gemm_from_panels(k, cout, &panels, &mut back);
            assert_eq!(back, packed, "k {k}, cout {cout}");
            let mut sorted = panels.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, packed, "a permutation");
        }
    }
}
