//! Implicit-GEMM convolution: output pixels are the GEMM's rows and output channels its
//! vectors, and each row of A is the input read in place, tap by tap, never gathered into
//! an im2col matrix.
//!
//! Why: the planar `im2col_gemm` puts output pixels in the vectors, so a stride-2 layer
//! must gather every other input column into its packed B (ResNet-18's 3×3 stride-2
//! layers spent 10–45% of their time there) and a 7- or 14-wide output row fills a
//! 32-wide tile by half. Here a vector holds output channels (weights in the 32-wide
//! `LinearGemm` panels, which the converter stores), and the micro-kernel broadcasts the
//! input value of each output pixel for each tap: pixel `i` of tap `k` is at
//! `buf + offs[k] + i·stride` in a zero-padded copy of the input rows a band of output
//! rows needs (`buf[ci][row][col]`), so any kernel size, dilation and padding costs one
//! copy of those rows and nothing per tap. Stride 2 (or 1) along the rows; any stride
//! down the columns.
//!
//! Per band of output rows and 32-wide panel of output channels, the tiles (one output
//! row's pixels, at most the tier's `mr`) run K block by K block into a pixel-major
//! scratch, which is then transposed into the planar output; the residual, when there is
//! one, is added there, before the activation.
//!
//! Every output element is one FMA chain over the taps in `(ci, ky, kx)` order from 0,
//! then the bias (and residual), then the activation, whatever the band, panel or worker:
//! results are bit-identical for any number of threads.

use crate::graph::{Activation, Conv, Pool};
use crate::kernels::elementwise::{dispatch, ActV, Simd};
use crate::kernels::gemm::{self, PrefetchTo, SharedOut, Store, TapsKernels, NR_PACK};
use crate::kernels::parallel;
use crate::simd::Isa;
use std::ptr::null;

/// Bytes of a band's padded input rows at most (while the band has more than one row):
/// with the weights' K block and the output scratch they stay in L2.
const BUFFER_BYTES: usize = 256 << 10;
/// Bytes of one K block of a weight panel (`kc × nr` floats), kept in L1 while every
/// tile of the band passes over it.
const KC_BYTES: usize = 24 << 10;
/// Weight bytes from which a layer with more output channels than output pixels splits
/// its channel panels over the workers first (each then streams only its share of the
/// weights); below, or with more pixels, it splits bands of rows (each worker copies
/// only its own input rows).
const COL_SPLIT_MIN_WEIGHT_BYTES: usize = 256 << 10;

/// A convolution planned as an implicit GEMM for one tier and one input shape.
#[derive(Clone, Debug)]
pub struct ImplicitConv {
    isa: Isa,
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
    act: Activation,
    /// Taps: `cin · kh · kw`.
    k: usize,
    kc: usize,
    /// Output rows per band.
    band: usize,
    /// Buffer rows: a band's, `(band − 1)·sh + (kh − 1)·dh + 1`, or with `shared` the
    /// whole padded input's, `(oh − 1)·sh + (kh − 1)·dh + 1`.
    rows: usize,
    /// Buffer row length: the padded input width.
    rs: usize,
    /// `offs[k]`: where tap `k = (ci·kh + ky)·kw + kx` of output pixel 0 lies in the
    /// band buffer: `(ci·rows + ky·dh)·rs + kx·dw`.
    offs: Vec<usize>,
    row_groups: usize,
    col_groups: usize,
    /// The padded input is made once per sample, by all workers, in scratch they share,
    /// instead of band by band by each part: when parts split the channels, every one of
    /// them would otherwise copy the whole input.
    shared: bool,
    /// A 2×2 stride-2 max pool without padding (floor) follows, done band by band in
    /// the store ([`ImplicitConv::with_max_pool`]).
    max_pool: bool,
    prefetch: PrefetchTo,
}

impl ImplicitConv {
    /// `None` unless `conv` has one group and a column stride of 1 or 2, on shapes `[c,
    /// h, w]` that agree with it.
    pub fn new(
        isa: Isa,
        conv: &Conv,
        in_shape: [usize; 3],
        out_shape: [usize; 3],
        threads: usize,
    ) -> Option<Self> {
        let [cin, h, w] = in_shape;
        let [cout, oh, ow] = out_shape;
        let taps = gemm::taps_kernels(isa, conv.stride[1])?;
        if conv.groups != 1 || cin != conv.in_channels || cout != conv.out_channels {
            return None;
        }
        let [kh, kw] = conv.kernel;
        let [sh, sw] = conv.stride;
        let [dh, dw] = conv.dilation;
        let [pt, pl, pb, pr] = conv.pads;
        let out_dim = |i: usize, p: usize, k: usize, s: usize, d: usize| {
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            (i + p).checked_sub(span).map(|r| r / s + 1)
        };
        if kh == 0 || kw == 0 || sh == 0 || dh == 0 || dw == 0 || cin == 0 || cout == 0 {
            return None;
        }
        if out_dim(h, pt + pb, kh, sh, dh)? != oh || out_dim(w, pl + pr, kw, sw, dw)? != ow {
            return None;
        }
        if oh == 0 || ow == 0 {
            return None;
        }
        let rs = w + pl + pr;
        let buffer_rows = |band: usize| (band - 1) * sh + (kh - 1) * dh + 1;
        // The most rows whose buffer fits BUFFER_BYTES (at least one), then bands of
        // nearly equal height.
        let mut most = 1;
        while most < oh && 4 * cin * buffer_rows(most + 1) * rs <= BUFFER_BYTES {
            most += 1;
        }
        let band = oh.div_ceil(oh.div_ceil(most));
        let k = cin * kh * kw;
        let mut kernel = ImplicitConv {
            isa: gemm::ukr(isa).isa,
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
            act: conv.activation,
            k,
            kc: k.min((KC_BYTES / (4 * taps.nr)).max(1)),
            band,
            rows: 0,
            rs,
            offs: Vec::new(),
            row_groups: 1,
            col_groups: 1,
            shared: false,
            max_pool: false,
            prefetch: PrefetchTo::default(),
        };
        if threads > 1 && kernel.flops() >= parallel::min_parallel_flops() {
            // More than two workers and fewer bands × channel panels than workers
            // (LeNet-5's conv2: one band, 2 panels, and no faster past 2 threads on a
            // 16-core Xeon): thinner bands, down to one row. Bands are independent
            // output rows, so the bits do not change.
            if threads > 2 && kernel.bands() * kernel.panels() < threads {
                let bands = threads.div_ceil(kernel.panels()).min(oh);
                kernel.band = kernel.band.min(oh.div_ceil(bands)).max(1);
            }
            // About two parts per worker.
            let target = 2 * threads;
            let (panels, bands) = (kernel.panels(), kernel.bands());
            if cout >= oh * ow && 4 * k * cout >= COL_SPLIT_MIN_WEIGHT_BYTES {
                kernel.col_groups = panels.min(target);
                kernel.row_groups = bands.min(target.div_ceil(kernel.col_groups));
            } else {
                kernel.row_groups = bands.min(target);
                kernel.col_groups = panels.min(target.div_ceil(kernel.row_groups));
            }
        }
        kernel.lay_out();
        Some(kernel)
    }

    /// The same layer split into `row_groups` runs of bands × `col_groups` runs of channel
    /// panels per sample (each clamped to what there is; tests use it to check that
    /// every split gives the same bits).
    pub fn with_parts(mut self, row_groups: usize, col_groups: usize) -> Self {
        self.row_groups = row_groups.clamp(1, self.bands());
        self.col_groups = col_groups.clamp(1, self.panels());
        self.lay_out();
        self
    }

    /// The same layer followed by `pool`, pooled in the pixel-major scratch before the
    /// transpose: `run` then writes the pool's `cout × ⌊oh/2⌋ × ⌊ow/2⌋` (an odd last row
    /// or column dropped). `None` unless `pool` is a 2×2 stride-2 max pool without
    /// padding or dilation whose output shape `pool_out` is that, on at least 2 rows and
    /// columns.
    ///
    /// Why: LeNet-5's conv2 → 2×2 max pool. Apart, the pool re-reads the convolution's
    /// planar output with 14-wide rows, masked loads and a de-interleave per row (about
    /// 3% of a run on one thread, 5% on two, one more fork-join); here each pooled pixel
    /// is four whole-vector loads of channels, and the transpose moves a quarter of the
    /// data.
    pub fn with_max_pool(mut self, pool: &Pool, pool_out: [usize; 3]) -> Option<Self> {
        let max_2x2 = pool.is_plain_max_2x2();
        if !max_2x2 || self.oh < 2 || self.ow < 2 {
            return None;
        }
        if pool_out != [self.cout, self.oh / 2, self.ow / 2] {
            return None;
        }
        // Bands of whole pool windows: an even band (the last may be odd when oh is,
        // and drops its last row).
        if self.band % 2 == 1 && self.band < self.oh {
            self.band += 1;
        }
        self.max_pool = true;
        self.row_groups = self.row_groups.min(self.bands());
        self.lay_out();
        Some(self)
    }

    /// The output's `[channels, rows, columns]`: the convolution's, or the pool's.
    pub fn out_shape(&self) -> [usize; 3] {
        if self.max_pool {
            [self.cout, self.oh / 2, self.ow / 2]
        } else {
            [self.cout, self.oh, self.ow]
        }
    }

    /// The buffer rows and tap offsets for the split: with channel panels split over
    /// parts, one shared buffer of the whole padded input.
    fn lay_out(&mut self) {
        let [kh, kw] = self.kernel;
        let [dh, dw] = self.dilation;
        self.shared = self.col_groups > 1;
        let band = if self.shared { self.oh } else { self.band };
        self.rows = (band - 1) * self.stride[0] + (kh - 1) * dh + 1;
        self.offs.clear();
        for ci in 0..self.cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    self.offs
                        .push((ci * self.rows + ky * dh) * self.rs + kx * dw);
                }
            }
        }
    }

    /// `"implicit_gemm"`.
    pub fn algorithm(&self) -> &'static str {
        "implicit_gemm"
    }

    /// Where the GEMM's prefetch hints put the weights they fetch ahead (the session
    /// chooses, see [`PrefetchTo`]); results do not change.
    pub fn set_prefetch(&mut self, to: PrefetchTo) {
        self.prefetch = to;
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn flops(&self) -> u64 {
        2 * (self.k * self.cout * self.oh * self.ow) as u64
    }

    /// Floats of the weights: `cout × K` in 32-wide `LinearGemm` panels
    /// ([`gemm::pack_b_transposed`] of the OIHW weights, `K = cin·kh·kw`).
    pub fn weights_len(&self) -> usize {
        self.k * self.cout
    }

    fn taps(&self) -> TapsKernels {
        gemm::taps_kernels(self.isa, self.stride[1]).expect("implicit conv: planned stride")
    }

    /// The tier's column panels (`nr` output channels each).
    fn panels(&self) -> usize {
        self.cout.div_ceil(self.taps().nr)
    }

    fn bands(&self) -> usize {
        self.oh.div_ceil(self.band)
    }

    fn buffer_len(&self) -> usize {
        // Whole lines: what follows it in scratch (the output tile, or the workers'
        // own scratch after the shared buffer) starts on a line.
        crate::kernels::whole_lines(self.cin * self.rows * self.rs)
    }

    /// Floats of scratch each worker needs: the band buffer (unless shared) and the
    /// output scratch.
    pub fn scratch_len(&self) -> usize {
        let own = if self.shared { 0 } else { self.buffer_len() };
        crate::kernels::whole_lines(own + self.band * self.ow * self.taps().nr)
    }

    /// Floats of scratch the workers share: the padded input, with `shared`.
    pub fn shared_scratch_len(&self) -> usize {
        if self.shared {
            self.buffer_len()
        } else {
            0
        }
    }

    /// Independent parts of one sample.
    pub fn parts(&self) -> usize {
        self.row_groups * self.col_groups
    }

    /// Runs `n` samples on `slots` workers: `x` `n × cin × h × w`, `residual` and `out`
    /// `n × cout × oh × ow`, `wt` the weights in 32-wide panels (see
    /// [`ImplicitConv::weights_len`]); `scratch` holds `scratch_len()` floats per worker.
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
        let [_, oh, ow] = self.out_shape();
        let (in_len, out_len) = (self.cin * self.h * self.w, self.cout * oh * ow);
        assert_eq!(wt.len(), self.weights_len(), "implicit conv: weights");
        assert!(
            bias.is_none_or(|b| b.len() == self.cout),
            "implicit conv: bias"
        );
        assert!(x.len() >= n * in_len, "implicit conv: input");
        assert!(out.len() >= n * out_len, "implicit conv: output");
        assert!(
            residual.is_none_or(|r| r.len() >= n * out_len && !self.max_pool),
            "implicit conv: residual"
        );
        let per = self.scratch_len();
        let (common, own) = scratch.split_at_mut(self.shared_scratch_len());
        assert!(own.len() >= per, "implicit conv: scratch");
        let outs = SharedOut::new(out);
        let common = SharedOut::new(common);
        // Parts `first · parts() ..` of `count` samples.
        let mut run_parts = |first: usize, count: usize| {
            let body = |scr: &mut [f32], part: usize| {
                // SAFETY: lengths checked above; part `part` writes only its own bands ×
                // channel panels of its sample, which no other part writes; the shared
                // buffer, if any, is complete and only read.
                unsafe {
                    self.part(
                        first * self.parts() + part,
                        wt.as_ptr(),
                        bias.map_or(null(), |b| b.as_ptr()),
                        x,
                        residual.map_or(null(), |r| r.as_ptr()),
                        outs.ptr(),
                        common.ptr(),
                        &mut scr[..per],
                    )
                }
            };
            let parts = count * self.parts();
            if slots <= 1 || parts == 1 {
                (0..parts).for_each(|part| body(&mut *own, part));
            } else {
                parallel::for_tiles(slots, parts, &mut *own, per, body);
            }
        };
        if !self.shared {
            run_parts(0, n);
            return;
        }
        // Sample by sample: all workers pad its input into the shared buffer (a few
        // channels each), then run its parts.
        let chans = self.cin.min(4 * slots.max(1));
        for s in 0..n {
            let xs = &x[s * in_len..(s + 1) * in_len];
            let fill = |_: &mut [f32], p: usize| {
                let (c0, c1) = (p * self.cin / chans, (p + 1) * self.cin / chans);
                let len = self.rows * self.rs;
                // SAFETY: part p alone writes channels c0 .. c1 of the shared buffer
                // (`buffer_len` floats, checked by the split above), read only after
                // `for_tiles` returns.
                let buf = unsafe {
                    std::slice::from_raw_parts_mut(common.ptr().add(c0 * len), (c1 - c0) * len)
                };
                self.fill(xs, c0..c1, 0, self.oh, buf);
            };
            if slots <= 1 {
                (0..chans).for_each(|p| fill(&mut [], p));
            } else {
                parallel::for_tiles(slots, chans, &mut [], 0, fill);
            }
            run_parts(s, 1);
        }
    }

    /// Copies the input rows of output rows `oy0..oy1`, channels `chans`, into `buf`
    /// (`buf[ci − chans.start][r][col]` holds padded input row `oy0·sh + r`, column `col`),
    /// zero outside the image.
    fn fill(
        &self,
        x: &[f32],
        chans: std::ops::Range<usize>,
        oy0: usize,
        oy1: usize,
        buf: &mut [f32],
    ) {
        let [sh, _] = self.stride;
        let (pt, pl) = (self.pads[0], self.pads[1]);
        let used = (oy1 - oy0 - 1) * sh + (self.kernel[0] - 1) * self.dilation[0] + 1;
        let (h, w, rs) = (self.h, self.w, self.rs);
        for (j, ci) in chans.enumerate() {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for r in 0..used {
                let dst = &mut buf[(j * self.rows + r) * rs..][..rs];
                let iy = (oy0 * sh + r).wrapping_sub(pt);
                if iy >= h {
                    dst.fill(0.0);
                    continue;
                }
                dst[..pl].fill(0.0);
                dst[pl..pl + w].copy_from_slice(&plane[iy * w..(iy + 1) * w]);
                dst[pl + w..].fill(0.0);
            }
        }
    }

    /// One part: sample, channel-panel group, band group.
    ///
    /// # Safety
    /// The buffers hold what `run` checks; no other writer of this part's outputs.
    #[allow(clippy::too_many_arguments)]
    unsafe fn part(
        &self,
        part: usize,
        wt: *const f32,
        bias: *const f32,
        x: &[f32],
        residual: *const f32,
        out: *mut f32,
        common: *const f32,
        scratch: &mut [f32],
    ) {
        let taps = self.taps();
        let (k, cout, ow) = (self.k, self.cout, self.ow);
        // The output plane: the convolution's, or the pool's.
        let [_, out_h, out_w] = self.out_shape();
        let plane = out_h * out_w;
        let per = self.parts();
        let (s, rest) = (part / per, part % per);
        let (cg, rg) = (rest / self.row_groups, rest % self.row_groups);
        let split = |total: usize, groups: usize, g: usize| {
            (g * total / groups)..((g + 1) * total / groups)
        };
        let panels = split(self.panels(), self.col_groups, cg);
        let bands = split(self.bands(), self.row_groups, rg);
        let in_len = self.cin * self.h * self.w;
        let x = &x[s * in_len..(s + 1) * in_len];
        let out = out.wrapping_add(s * cout * plane);
        let residual = if residual.is_null() {
            residual
        } else {
            residual.wrapping_add(s * cout * plane)
        };
        let (own, cs) = scratch.split_at_mut(if self.shared { 0 } else { self.buffer_len() });
        let nr = taps.nr;
        // Row tiles of nearly equal width: `tiles` of them per output row.
        let tiles = ow.div_ceil(taps.mr());
        let col0 = |t: usize| t * ow / tiles;
        // With a residual the transpose adds it, then activates.
        let kernel_act = if residual.is_null() {
            self.act
        } else {
            Activation::Identity
        };
        for b in bands {
            let oy0 = b * self.band;
            let oy1 = self.oh.min(oy0 + self.band);
            // The buffer's first row: padded input row `base·sh`.
            let (buf, base) = if self.shared {
                (common, 0)
            } else {
                self.fill(x, 0..self.cin, oy0, oy1, own);
                (own.as_ptr(), oy0)
            };
            let pixels = (oy1 - oy0) * ow;
            for t in panels.clone() {
                let c0 = t * nr;
                let nv = nr.min(cout - c0);
                // Tier panel t lies in 32-wide panel q0 of width `ldb`, at column c0 − q0.
                let q0 = c0 / NR_PACK * NR_PACK;
                let ldb = NR_PACK.min(cout - q0);
                let b_off = q0 * k + c0 - q0;
                for k0 in (0..k).step_by(self.kc) {
                    let kcur = self.kc.min(k - k0);
                    let last = k0 + kcur == k;
                    // The next K block's weights (`kn · ldb` floats), one line per k step
                    // of this block's calls until all are asked for: with large weights
                    // they come from L3 or memory.
                    let next = wt.wrapping_add(b_off + (k0 + kcur) * ldb);
                    let lines = if last {
                        0
                    } else {
                        (self.kc.min(k - k0 - kcur) * ldb).div_ceil(16)
                    };
                    let mut fetched = 0;
                    let st = Store {
                        load_c: k0 > 0,
                        finish: last,
                        bias_row: null(),
                        bias_col: if bias.is_null() {
                            bias
                        } else {
                            bias.wrapping_add(c0)
                        },
                        residual: null(),
                        act: kernel_act,
                        pf: null(),
                        pf_stride: 0,
                        pf_to: self.prefetch,
                    };
                    for oy in oy0..oy1 {
                        let row = (oy - base) * self.stride[0] * self.rs;
                        for tile in 0..tiles {
                            let (x0, x1) = (col0(tile), col0(tile + 1));
                            let kern = taps.pick(x1 - x0, nv);
                            let p = (oy - oy0) * ow + x0;
                            let st = if fetched < lines {
                                let pf = next.wrapping_add(fetched * 16);
                                fetched += kcur;
                                Store {
                                    pf,
                                    pf_stride: 16,
                                    ..st
                                }
                            } else {
                                st
                            };
                            // SAFETY: A: output pixels x0 .. x1 of row oy read buffer
                            // rows (oy − base)·sh + ky·dh < rows and columns
                            // x·sw + kx·dw < rs (the padded width) of channels < cin,
                            // filled above; offs has K entries. B: columns c0 .. c0 + nv
                            // of 32-wide panel q0 (nr divides 32), K steps k0 .. k0 +
                            // kcur, inside `wt` (checked by `run`). C: pixels p .. p +
                            // (x1 − x0) < band·ow of `cs`, nr floats each.
                            unsafe {
                                kern(
                                    kcur,
                                    buf.add(row + x0 * self.stride[1]),
                                    self.offs.as_ptr().add(k0),
                                    wt.add(b_off + k0 * ldb),
                                    ldb,
                                    cs.as_mut_ptr().add(p * nr),
                                    nr,
                                    nv,
                                    &st,
                                )
                            };
                        }
                    }
                }
                let (pixels, first) = if self.max_pool {
                    // Bands start on even rows (`with_max_pool`): pooled rows oy0 / 2 ..
                    // oy1 / 2.
                    let pooled = self.pool_scratch(cs, oy1 - oy0);
                    (pooled, oy0 / 2 * out_w)
                } else {
                    (pixels, oy0 * ow)
                };
                // SAFETY: `cs` holds `pixels` rows of nr floats (nv valid); output and
                // residual channels c0 .. c0 + nv, pixels `first` .. + pixels of this
                // sample, which only this part writes.
                unsafe {
                    self.store(
                        cs,
                        pixels,
                        nv,
                        out.add(c0 * plane + first),
                        if residual.is_null() {
                            residual
                        } else {
                            residual.add(c0 * plane + first)
                        },
                        plane,
                    )
                };
            }
        }
    }

    /// Max-pools `rows` output rows of the pixel-major scratch `cs` (`ow` pixels of `nr`
    /// floats each) 2×2 with stride 2, in place: pooled pixel `q` lands in row `q`, which
    /// no later pooled pixel reads. Returns the pooled pixels, `⌊rows/2⌋ · ⌊ow/2⌋`.
    fn pool_scratch(&self, cs: &mut [f32], rows: usize) -> usize {
        let (ow, nr) = (self.ow, self.taps().nr);
        let (ph, pw) = (rows / 2, ow / 2);
        assert!(cs.len() >= rows * ow * nr, "implicit conv: scratch");
        dispatch!(self.isa, |s| {
            // SAFETY: rows · ow pixels of nr floats are in `cs` (checked above).
            unsafe { pool_2x2(s, cs.as_mut_ptr(), nr, ow, ph, pw) }
        });
        ph * pw
    }

    /// Transposes `pixels × nv` of the pixel-major scratch `cs` (rows `nr` apart) into
    /// `nv` channel rows `plane` apart at `out`, adding `residual` (same layout) and
    /// applying the activation when there is a residual.
    ///
    /// # Safety
    /// `out` (and non-null `residual`) valid for `nv` rows of `pixels` floats, `plane`
    /// apart; `cs` holds `pixels · nr` floats.
    unsafe fn store(
        &self,
        cs: &[f32],
        pixels: usize,
        nv: usize,
        out: *mut f32,
        residual: *const f32,
        plane: usize,
    ) {
        let nr = self.taps().nr;
        assert!(
            cs.len() >= pixels * nr && nv <= nr,
            "implicit conv: scratch"
        );
        dispatch!(self.isa, |s| {
            // SAFETY: forwarded.
            unsafe { transpose_out(s, cs, nr, pixels, nv, out, residual, plane, self.act) }
        })
    }
}

/// See [`ImplicitConv::pool_scratch`]: per lane, `max(max(p00, p10), max(p01, p11))` in
/// the order of the planar pool's vector body (`pool::body_s2_max`), NaN if any of the
/// four is.
///
/// # Safety
/// `cs` valid for `2·ph` rows of `ow ≥ 2·pw` pixels of `nr` floats; `nr` a multiple of
/// the lanes.
#[inline(always)]
unsafe fn pool_2x2<S: Simd>(s: S, cs: *mut f32, nr: usize, ow: usize, ph: usize, pw: usize) {
    let l = S::LANES;
    debug_assert_eq!(nr % l, 0);
    for py in 0..ph {
        for px in 0..pw {
            let p00 = (2 * py * ow + 2 * px) * nr;
            let (p01, p10, p11) = (p00 + nr, p00 + ow * nr, p00 + (ow + 1) * nr);
            let q = (py * pw + px) * nr;
            for j in (0..nr).step_by(l) {
                // SAFETY: the four pixels lie in the 2·ph × ow rows (caller); pixel q is
                // at most p00, and every lane of it is read before it is written.
                unsafe {
                    let (a, b) = (s.load(cs.add(p00 + j)), s.load(cs.add(p01 + j)));
                    let (c, d) = (s.load(cs.add(p10 + j)), s.load(cs.add(p11 + j)));
                    let nan = s.mask_or(
                        s.mask_or(s.is_nan(a), s.is_nan(b)),
                        s.mask_or(s.is_nan(c), s.is_nan(d)),
                    );
                    let m = s.max(s.max(a, c), s.max(b, d));
                    s.store(cs.add(q + j), s.select(nan, s.splat(f32::NAN), m));
                }
            }
        }
    }
}

/// See [`ImplicitConv::store`].
///
/// # Safety
/// As [`ImplicitConv::store`]; `cs.len() >= pixels · ldc`, `nv <= ldc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transpose_out<S: Simd>(
    s: S,
    cs: &[f32],
    ldc: usize,
    pixels: usize,
    nv: usize,
    out: *mut f32,
    residual: *const f32,
    plane: usize,
    act: Activation,
) {
    let l = S::LANES;
    let act = ActV::new(s, act);
    let mut v = [s.zero(); 16];
    for p0 in (0..pixels).step_by(l) {
        let np = l.min(pixels - p0);
        for j0 in (0..nv).step_by(l) {
            let nj = l.min(nv - j0);
            for (i, vi) in v.iter_mut().enumerate().take(l) {
                *vi = if i < np {
                    // SAFETY: pixel p0 + i < pixels, columns j0 .. j0 + nj of its row;
                    // load_part reads nothing past them.
                    unsafe { s.load_part(cs.as_ptr().add((p0 + i) * ldc + j0), nj, s.zero()) }
                } else {
                    s.zero()
                };
            }
            s.transpose(&mut v[..l]);
            for (j, &vj) in v.iter().enumerate().take(nj) {
                let at = (j0 + j) * plane + p0;
                let y = if residual.is_null() {
                    vj
                } else {
                    // SAFETY: channel j0 + j < nv, pixels p0 .. p0 + np (caller).
                    let r = unsafe { s.load_part(residual.add(at), np, s.zero()) };
                    act.apply(s, s.add(vj, r))
                };
                // SAFETY: as above, in the output.
                unsafe { s.store_part(out.add(at), np, y) };
            }
        }
    }
}
