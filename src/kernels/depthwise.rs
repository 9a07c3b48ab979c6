//! Depthwise convolution (`groups == in_channels == out_channels`, multiplier 1), NCHW,
//! one sample at a time.
//!
//! Each channel plane is computed one output row at a time, vectorized along the row:
//!
//! * the leading border columns (whose window starts in the left padding) are computed one
//!   by one with bounds checks;
//! * the inner columns in whole vectors with no checks at all: for stride 1 a tap is one
//!   unaligned load, for stride 2 it is the even lanes of a two-vector load
//!   (de-interleaved in registers);
//! * the rest of the row (the last partial vector and the trailing border) with masked
//!   loads, which read only inside the input row and fill zeros where the window covers
//!   padding, and a masked store.
//!
//! Output rows whose window covers top / bottom padding simply use fewer kernel rows.
//! Three variants of the vector body:
//!
//! | `algorithm()` | when | body |
//! |---|---|---|
//! | `dw3x3_interleaved_s1`, `_s2` | as `dw3x3_s1/s2` with left/right padding ≤ 1, input rows ≤ 16 wide, at least one vector of channels | a vector of channels per pixel (transposed in and out), one FMA chain per output pixel; bit-identical to `dw3x3_s1/s2` |
//! | `dw3x3_s1`, `dw3x3_s2` | 3×3, dilation 1, stride along W 1 or 2 (any padding, any stride along H) | 9 weights in registers, the rows of the window unrolled |
//! | `dw_rows_s1`, `dw_rows_s2` | any kernel and dilation, stride along W 1 or 2 | taps in loops, weights broadcast from memory, 8 planes in lockstep (independent FMA chains over shared masks) |
//! | `dw_generic` | stride along W of 3 or more | scalar, per output |
//!
//! Bias goes into the accumulator; residual and activation are applied to each output row
//! while it is still in L1 (`elementwise::epilogue`). Nothing is allocated in `run`.

use std::ops::Range;

use super::elementwise::{dispatch, epilogue, ActV, Simd};
use crate::graph::shape::window_output;
use crate::graph::{Activation, Conv};
use crate::simd::Isa;

/// One spatial axis of a sliding window (shared with [`super::pool`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Axis {
    pub input: usize,
    pub output: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_begin: usize,
    pub pad_end: usize,
}

impl Axis {
    /// Input index of tap 0 of output `o` (negative in the leading padding).
    #[inline(always)]
    pub fn origin(&self, o: usize) -> isize {
        (o * self.stride) as isize - self.pad_begin as isize
    }

    /// The taps `lo..hi` of output `o` that land inside the input (`lo == hi` if none).
    #[inline(always)]
    pub fn taps(&self, o: usize) -> (usize, usize) {
        let start = self.origin(o);
        if self.dilation == 1 {
            let lo = (-start).clamp(0, self.kernel as isize);
            let hi = (self.input as isize - start).clamp(lo, self.kernel as isize);
            return (lo as usize, hi as usize);
        }
        let d = self.dilation as isize;
        let lo = if start >= 0 {
            0
        } else {
            ((-start + d - 1) / d) as usize
        };
        let last = self.input as isize - 1 - start;
        if last < 0 {
            return (0, 0);
        }
        let hi = ((last / d) as usize + 1).min(self.kernel);
        if lo >= hi {
            (0, 0)
        } else {
            (lo, hi)
        }
    }

    /// How many taps of output `o` land inside the padded input (a `ceil_mode` window
    /// can run past it).
    #[inline(always)]
    pub fn padded_taps(&self, o: usize) -> usize {
        let padded = self.input + self.pad_begin + self.pad_end;
        let p0 = o * self.stride;
        if p0 >= padded {
            0
        } else {
            ((padded - 1 - p0) / self.dilation + 1).min(self.kernel)
        }
    }

    /// The first output whose window starts inside the input; the ones before it are the
    /// leading border.
    #[inline(always)]
    pub fn first_inner(&self) -> usize {
        self.pad_begin.div_ceil(self.stride).min(self.output)
    }

    /// Whether outputs `o..o + lanes` (with `o >= first_inner()`) can be computed with
    /// whole-vector loads that stay inside the input: for stride 1 each tap loads `lanes`
    /// floats, for stride 2 it loads `2 * lanes`.
    #[inline(always)]
    pub fn full(&self, o: usize, lanes: usize) -> bool {
        o + lanes <= self.output
            && o * self.stride + (self.kernel - 1) * self.dilation + self.stride * lanes
                <= self.input + self.pad_begin
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    K3,
    Rows,
    Generic,
}

/// A planned depthwise convolution for one layer; see the module docs.
#[derive(Clone, Debug)]
pub struct DepthwiseKernel {
    isa: Isa,
    algo: Algo,
    channels: usize,
    rows: Axis,
    cols: Axis,
    /// `cols.first_inner()`: output columns before it are done with masked loads.
    inner_from: usize,
    /// 3×3 through padded row copies (see [`plane_padded`]).
    padded: bool,
    /// 3×3 on small planes through a channel-interleaved copy (see [`planes_interleaved`]).
    interleaved: bool,
    activation: Activation,
}

impl DepthwiseKernel {
    /// Plans `conv` for per-sample shapes `[C, H, W] -> [C, OH, OW]`. `None` if the
    /// convolution is not depthwise with multiplier 1 or the shapes do not fit it.
    /// `isa` is lowered to what this CPU runs.
    pub fn new(isa: Isa, conv: &Conv, in_shape: [usize; 3], out_shape: [usize; 3]) -> Option<Self> {
        let c = conv.groups;
        if c == 0
            || conv.in_channels != c
            || conv.out_channels != c
            || in_shape[0] != c
            || out_shape[0] != c
        {
            return None;
        }
        let axis = |i: usize| -> Option<Axis> {
            let (input, output) = (in_shape[1 + i], out_shape[1 + i]);
            let (kernel, stride, dilation) = (conv.kernel[i], conv.stride[i], conv.dilation[i]);
            let (pad_begin, pad_end) = (conv.pads[i], conv.pads[i + 2]);
            if input == 0
                || window_output(input, kernel, stride, dilation, pad_begin, pad_end, false)?
                    != output
            {
                return None;
            }
            Some(Axis {
                input,
                output,
                kernel,
                stride,
                dilation,
                pad_begin,
                pad_end,
            })
        };
        let (rows, cols) = (axis(0)?, axis(1)?);
        let algo = match (conv.kernel, conv.dilation, cols.stride) {
            (_, _, s) if s > 2 => Algo::Generic,
            ([3, 3], [1, 1], _) => Algo::K3,
            _ => Algo::Rows,
        };
        let inner_from = cols.first_inner();
        let padded = algo == Algo::K3
            && cols.input <= PAD_MAX_W
            && cols.pad_begin <= 1
            && cols.pad_end <= 1
            && cols.stride <= 2;
        let isa = super::elementwise::clamp_isa(isa);
        let lanes = super::elementwise::vector_lanes(isa);
        let padded_plane = (rows.input + rows.pad_begin + rows.pad_end)
            * (cols.input + cols.pad_begin + cols.pad_end);
        let interleaved = padded
            && c >= lanes
            && cols.input <= interleave_max_width()
            && padded_plane * lanes <= IL_BUF
            && (rows.output * cols.output + lanes) * lanes <= IL_BUF;
        Some(DepthwiseKernel {
            isa,
            algo,
            channels: c,
            rows,
            cols,
            inner_from,
            padded,
            interleaved,
            activation: conv.activation,
        })
    }

    /// The same plan without the channel-interleaved path (the row-by-row one instead),
    /// to compare the two: their results are bit-identical.
    #[doc(hidden)]
    pub fn without_interleaved(mut self) -> Self {
        self.interleaved = false;
        self
    }

    /// Taps per output (`kh · kw`).
    pub(crate) fn taps(&self) -> usize {
        self.rows.kernel * self.cols.kernel
    }

    /// The tier the kernel runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether every output is the same chain of operations whatever its position (the
    /// bias, then the nine taps in order, padded taps adding `0·w`): the padded-row and
    /// interleaved bodies. Other bodies skip taps or order them differently at the
    /// borders, so a kernel that must match this layer bit for bit needs this to hold.
    pub fn uniform_chain(&self) -> bool {
        self.padded
    }

    /// Which body the kernel uses (see the module docs).
    pub fn algorithm(&self) -> &'static str {
        match (self.algo, self.cols.stride) {
            (Algo::K3, 1) if self.interleaved => "dw3x3_interleaved_s1",
            (Algo::K3, _) if self.interleaved => "dw3x3_interleaved_s2",
            (Algo::K3, 1) => "dw3x3_s1",
            (Algo::K3, _) => "dw3x3_s2",
            (Algo::Rows, 1) => "dw_rows_s1",
            (Algo::Rows, _) => "dw_rows_s2",
            (Algo::Generic, _) => "dw_generic",
        }
    }

    /// `out = act(dwconv(x) + bias + residual)` for one sample: `x` is `[C, H, W]`,
    /// `weights` `[C, 1, kh, kw]`, `bias` `[C]`, `residual` and `out` `[C, OH, OW]`.
    pub fn run(
        &self,
        weights_oihw: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        self.run_channels(0..self.channels, weights_oihw, bias, x, residual, out)
    }

    /// As [`Self::run`] for the channels `channels` only (so that threads can split a
    /// sample): `weights`, `bias` and `x` are whole, `residual` and `out` hold just those
    /// channels' `[channels.len(), OH, OW]`.
    pub fn run_channels(
        &self,
        channels: Range<usize>,
        weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let isize_ = self.rows.input * self.cols.input;
        assert_eq!(x.len(), self.channels * isize_, "input");
        self.run_strided(channels, weights, bias, x, isize_, residual, out)
    }

    /// As [`Self::run_channels`] with input plane `c` at `x[c · x_stride ..]` (a band of
    /// rows kept in a buffer sized for the tallest band: `kernels::fused`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_strided(
        &self,
        channels: Range<usize>,
        weights: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        x_stride: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let (rows, cols) = (self.rows, self.cols);
        let (ksize, isize_, osize) = (
            rows.kernel * cols.kernel,
            rows.input * cols.input,
            rows.output * cols.output,
        );
        assert!(
            channels.start <= channels.end && channels.end <= self.channels,
            "channels {channels:?} of {}",
            self.channels
        );
        assert_eq!(weights.len(), self.channels * ksize, "weights");
        assert!(
            x_stride >= isize_ && x.len() >= (self.channels - 1) * x_stride + isize_,
            "input"
        );
        assert_eq!(out.len(), channels.len() * osize, "output");
        if let Some(b) = bias {
            assert_eq!(b.len(), self.channels, "bias");
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "residual");
        }
        let (wp, xp, op, rp) = (
            weights.as_ptr(),
            x.as_ptr(),
            out.as_mut_ptr(),
            residual.map(|r| r.as_ptr()),
        );
        if self.interleaved {
            let mut buf = std::mem::MaybeUninit::<[f32; 2 * IL_BUF]>::uninit();
            let bp = buf.as_mut_ptr().cast::<f32>();
            dispatch!(self.isa, |s| {
                // SAFETY: the lengths asserted above hold the weights, bias, input planes
                // (`x_stride` apart) of `channels`, and their output / residual planes;
                // `new` checked that the padded interleaved plane fits IL_BUF floats.
                unsafe {
                    planes_interleaved(
                        s,
                        self,
                        channels.clone(),
                        wp,
                        bias,
                        xp,
                        x.len(),
                        x_stride,
                        rp,
                        op,
                        bp,
                    )
                }
            });
            return;
        }
        if self.padded {
            // The padded rows' buffer, zeroed once: the fills write only data positions
            // and zeros, so the padding stays zero.
            let mut slots = [0f32; PAD_BUF];
            let sp = slots.as_mut_ptr();
            dispatch!(self.isa, |s| {
                let act = ActV::new(s, self.activation);
                for (i, ch) in channels.clone().enumerate() {
                    let b = bias.map_or(0.0, |b| b[ch]);
                    // SAFETY: as below; `slots` holds PAD_BUF floats.
                    unsafe {
                        plane_padded(
                            s,
                            self,
                            &act,
                            wp.add(ch * ksize),
                            b,
                            xp.add(ch * x_stride),
                            rp.map(|r| r.add(i * osize)),
                            op.add(i * osize),
                            sp,
                        );
                    }
                }
            });
            return;
        }
        if self.algo == Algo::Rows {
            dispatch!(self.isa, |s| {
                let act = ActV::new(s, self.activation);
                let (first, len) = (channels.start, channels.len());
                let mut i = 0;
                while i < len {
                    // SAFETY: as below, for channels first + i .. first + i + P.
                    unsafe {
                        if len - i >= ROWS_PLANES {
                            planes_rows::<_, ROWS_PLANES>(
                                s, self, &act, wp, bias, xp, x_stride, rp, op, first, i,
                            );
                            i += ROWS_PLANES;
                        } else {
                            planes_rows::<_, 1>(
                                s, self, &act, wp, bias, xp, x_stride, rp, op, first, i,
                            );
                            i += 1;
                        }
                    }
                }
            });
            return;
        }
        dispatch!(self.isa, |s| {
            let act = ActV::new(s, self.activation);
            for (i, ch) in channels.clone().enumerate() {
                let b = bias.map_or(0.0, |b| b[ch]);
                // SAFETY: the lengths asserted above hold channel `ch`'s weights, input
                // plane (`x_stride` apart), and output / residual plane `i`.
                unsafe {
                    plane(
                        s,
                        self,
                        &act,
                        wp.add(ch * ksize),
                        b,
                        xp.add(ch * x_stride),
                        rp.map(|r| r.add(i * osize)),
                        op.add(i * osize),
                    );
                }
            }
        })
    }
}

/// Widest input row the padded 3×3 path takes (its buffer lives on the stack).
const PAD_MAX_W: usize = 512;
/// Floats of padded input rows the buffer holds (a band of rows at a time).
const BAND: usize = 8192;
/// Floats of the all-zero row that stands for the rows of the top and bottom padding
/// (the longest padded row, plus whole vectors of the widest tier).
const ZROW: usize = PAD_MAX_W + 128;
/// Floats the padded path's buffer holds: the band, room for whole-vector reads and
/// writes past its last row, and the zero row.
const PAD_BUF: usize = BAND + 64 + ZROW;

/// Floats of the stack buffer of [`planes_interleaved`]: one zero-padded plane of
/// `LANES` interleaved channels (64 KiB: a 30×30 padded plane at 16 lanes).
const IL_BUF: usize = 8192;

/// The widest input row that takes the channel-interleaved path: 16 (MobileNetV2's 14×14
/// and 7×7 maps, where it measured 1.1–1.7× faster than the row path; on 28×28 maps it
/// was slower). The environment variable `CNNRT_DW_INTERLEAVE_MAX_W`, read once,
/// overrides it for tuning.
fn interleave_max_width() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("CNNRT_DW_INTERLEAVE_MAX_W")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16)
    })
}

/// 3×3 depthwise on small planes, `LANES` channels at a time, in a channel-interleaved
/// copy: position `(r, q)` of a zero-padded plane holds one vector of the group's
/// channels, so one output pixel is nine loads and nine FMAs whose weights are vectors of
/// the group's channels, and consecutive pixels are independent FMA chains.
///
/// Why: on a 7×7 or 14×14 plane a row is one or two vectors, so the row-by-row path
/// ([`plane_padded`]) pays its per-row and per-plane overheads and its single FMA chain on
/// very few outputs (5–10 GFLOP/s on MobileNetV2's last blocks). Here the copies in and
/// out are `LANES × LANES` transposes.
///
/// Every output is the same chain of operations as in [`plane_padded`] (the bias, then
/// the nine taps in order, padded taps contributing `0·w`, then residual and
/// activation), so the two paths are bit-identical.
///
/// # Safety
/// `w`, `bias`: the layer's weights and biases (all channels); `x`: channel `c`'s plane at
/// `x + c·x_stride`; `out` (and `res`): `channels.len()` output planes; `buf`: `IL_BUF`
/// floats, at least the padded plane times `LANES` (checked by `new`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn planes_interleaved<S: Simd>(
    s: S,
    k: &DepthwiseKernel,
    channels: Range<usize>,
    w: *const f32,
    bias: Option<&[f32]>,
    x: *const f32,
    x_len: usize,
    x_stride: usize,
    res: Option<*const f32>,
    out: *mut f32,
    buf: *mut f32,
) {
    let l = S::LANES;
    let out_len = channels.len() * k.rows.output * k.cols.output;
    let (rows, cols) = (&k.rows, &k.cols);
    let (ih, iw) = (rows.input, cols.input);
    let (pt, pl) = (rows.pad_begin, cols.pad_begin);
    let pw = iw + pl + cols.pad_end;
    let ph = ih + pt + rows.pad_end;
    let (oh, ow) = (rows.output, cols.output);
    let osize = oh * ow;
    let (sh, sw) = (rows.stride, cols.stride);
    debug_assert!(ph * pw * l <= IL_BUF && (osize + l) * l <= IL_BUF);
    // `pad`: the padded input plane, `acc`: the outputs, both one vector per pixel.
    // SAFETY: buf holds 2·IL_BUF floats.
    let (pad, accs) = (buf, unsafe { buf.add(IL_BUF) });
    // The padding stays zero: the fills below write data positions only. The vectors
    // past the last output are zero so that the transposes read defined lanes.
    // SAFETY: within the two halves (checked by `new`).
    unsafe {
        std::ptr::write_bytes(pad, 0, ph * pw * l);
        std::ptr::write_bytes(accs.add(osize * l), 0, l * l);
    }
    let act = ActV::new(s, k.activation);
    let clamp = clamp_bounds(s, k.activation);
    let mut v = [s.zero(); 16];
    let mut g0 = channels.start;
    while g0 < channels.end {
        let n = l.min(channels.end - g0);
        // The group's weights and biases as vectors over its channels (zero lanes past
        // n): all scalars first, then the vector loads.
        let mut tmp = [0.0f32; 10 * 16];
        for i in 0..n {
            for t in 0..9 {
                // SAFETY: channel g0 + i < C has 9 weights at (g0 + i)·9.
                tmp[t * 16 + i] = unsafe { *w.add((g0 + i) * 9 + t) };
            }
            tmp[9 * 16 + i] = bias.map_or(0.0, |b| b[g0 + i]);
        }
        // SAFETY: tmp holds 10 rows of 16 >= l floats.
        let wk: [S::V; 9] = std::array::from_fn(|t| unsafe { s.load(tmp.as_ptr().add(t * 16)) });
        // SAFETY: as above.
        let bv = unsafe { s.load(tmp.as_ptr().add(9 * 16)) };

        // Interleave: input pixels p0..p0 + np of the group's planes, transposed into
        // one vector per pixel at its padded position.
        let (mut iy, mut ix) = (0, 0);
        let mut p0 = 0;
        while p0 < ih * iw {
            let np = l.min(ih * iw - p0);
            for (i, vi) in v.iter_mut().enumerate().take(l) {
                *vi = if i < n {
                    let at = (g0 + i) * x_stride + p0;
                    // SAFETY: np floats of channel g0 + i's plane from pixel p0, or a
                    // whole vector where `x` holds one (the lanes past np are not used).
                    unsafe {
                        if at + l <= x_len {
                            s.load(x.add(at))
                        } else {
                            s.load_part(x.add(at), np, s.zero())
                        }
                    }
                } else {
                    s.zero()
                };
            }
            s.transpose(&mut v[..l]);
            for vj in v.iter().take(np) {
                // SAFETY: (iy, ix) is an input pixel, inside the padded plane.
                unsafe { s.store(pad.add(((iy + pt) * pw + ix + pl) * l), *vj) };
                ix += 1;
                if ix == iw {
                    (iy, ix) = (iy + 1, 0);
                }
            }
            p0 += np;
        }

        // One FMA chain per output pixel, row by row.
        for oy in 0..oh {
            // SAFETY: the windows of row oy lie in the padded plane ((OH − 1)·sh + 3 <=
            // ph, likewise along W); output vectors oy·OW.. are inside `accs`.
            unsafe {
                let src = pad.add(oy * sh * pw * l);
                let dst = accs.add(oy * ow * l);
                for ox in 0..ow {
                    let base = src.add(ox * sw * l);
                    let mut acc = bv;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let t = s.load(base.add((ky * pw + kx) * l));
                            acc = s.fmadd(t, wk[ky * 3 + kx], acc);
                        }
                    }
                    s.store(dst.add(ox * l), acc);
                }
            }
        }

        // Back to planes: pixels p0..p0 + np of the group's channels, the last vectors
        // first, each whole unless it would pass the end of `out`: the lanes past a
        // plane's end land in the next plane's first vector, written afterwards.
        let mut end = osize;
        while end > 0 {
            let p0 = (end - 1) / l * l;
            let np = end - p0;
            end = p0;
            for (j, vj) in v.iter_mut().enumerate().take(l) {
                // SAFETY: vector p0 + j <= osize + l − 1 of `accs` (zero past osize).
                *vj = unsafe { s.load(accs.add((p0 + j) * l)) };
            }
            s.transpose(&mut v[..l]);
            for (i, &vi) in v.iter().enumerate().take(n) {
                let off = (g0 + i - channels.start) * osize + p0;
                // SAFETY: np outputs of plane g0 + i − start from pixel p0 (and residual).
                unsafe {
                    let mut r = vi;
                    let whole = off + l <= out_len;
                    if let Some(rp) = res {
                        let rv = if whole {
                            s.load(rp.add(off))
                        } else {
                            s.load_part(rp.add(off), np, s.zero())
                        };
                        r = s.add(r, rv);
                    }
                    r = match clamp {
                        Some((lo, hi)) => s.min(hi, s.max(lo, r)),
                        None => act.apply(s, r),
                    };
                    if whole {
                        s.store(out.add(off), r)
                    } else {
                        s.store_part(out.add(off), np, r)
                    }
                }
            }
        }
        g0 += n;
    }
}

/// A 3×3 plane (dilation 1, stride along W 1 or 2, left and right padding at most 1)
/// through padded copies of its input rows, so that every output vector is made of
/// whole-vector loads, with no masks and no bounds checks, edges included.
///
/// A band of input rows at a time is copied into `buf`, one padded row every `pw`
/// floats:
///
/// * stride 1: `P[pl + i] = x[i]`, zeros around; tap `kx` of outputs `xo..` is
///   `P[xo + kx ..]`;
/// * stride 2: the padded row split into its even and odd columns, `E[j] = P[2j]` then
///   `O[j] = P[2j + 1]` `pw / 2` floats on; taps 0, 1, 2 of outputs `xo..` are `E[xo..]`,
///   `O[xo..]`, `E[xo + 1..]`, so the de-interleave happens once per input row, not
///   per tap.
///
/// Rows of the top and bottom padding read an all-zero row. Every output is the same
/// chain of operations, whatever its position: the bias, then the nine taps in order
/// through one FMA each (padded taps contributing `0·w`). Lanes of an output vector past
/// the row's end are junk: they are stored anyway, into the next rows of the plane,
/// which are written afterwards; only where a vector would pass the plane's end is the
/// store partial.
///
/// # Safety
/// `w`: 9 weights; `x`: an H*W plane; `out` (and `res`): OH*OW; `buf`: PAD_BUF floats,
/// zero except where earlier calls of this kernel wrote row data.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn plane_padded<S: Simd>(
    s: S,
    k: &DepthwiseKernel,
    act: &ActV<S>,
    w: *const f32,
    bias: f32,
    x: *const f32,
    res: Option<*const f32>,
    out: *mut f32,
    buf: *mut f32,
) {
    let (rows, cols) = (&k.rows, &k.cols);
    let (ow, oh, ih) = (cols.output, rows.output, rows.input);
    let pw = pad_row_len::<S>(cols);
    let band_rows = BAND / pw;
    debug_assert!(band_rows >= 3);
    let mut wk = [s.zero(); 9];
    for (i, wv) in wk.iter_mut().enumerate() {
        // SAFETY: a 3×3 kernel has 9 weights.
        *wv = s.splat(unsafe { *w.add(i) });
    }
    // SAFETY: the zero row follows the band and its slack.
    let zero = unsafe { buf.add(BAND + 64) } as *const f32;
    let bias = s.splat(bias);
    let clamp = clamp_bounds(s, k.activation);
    // Output rows per band: their windows span (n − 1)·sh + 3 input rows.
    let per_band = ((band_rows - 3) / rows.stride + 1).max(1);
    let mut oy0 = 0;
    while oy0 < oh {
        let oy1 = oh.min(oy0 + per_band);
        let lo = rows.origin(oy0).max(0) as usize;
        let hi = ((rows.origin(oy1 - 1) + 3).max(0) as usize).min(ih);
        // Fill in increasing row order: a row's tail may write zeros over the start of
        // the next one, which is filled after it.
        for iy in lo..hi {
            // SAFETY: iy < H; buffer row iy − lo < band_rows.
            unsafe { fill_row(s, cols, x.add(iy * cols.input), buf.add((iy - lo) * pw), pw) };
        }
        for oy in oy0..oy1 {
            let iy0 = rows.origin(oy);
            let mut src = [zero; 3];
            for (ky, sp) in src.iter_mut().enumerate() {
                let iy = iy0 + ky as isize;
                if iy >= 0 && (iy as usize) < ih {
                    // SAFETY: a filled row of the band.
                    *sp = unsafe { buf.add((iy as usize - lo) * pw) };
                }
            }
            // SAFETY: row oy of the output (and residual) plane; `room` floats from
            // its start to the plane's end.
            unsafe {
                let o = out.add(oy * ow);
                let r = res.map(|r| r.add(oy * ow));
                let room = (oh - oy) * ow;
                match (cols.stride, clamp) {
                    (1, Some(c)) => {
                        row_padded::<S, 1>(s, act, &src, &wk, bias, o, r, ow, room, pw, Some(c))
                    }
                    (1, None) => {
                        row_padded::<S, 1>(s, act, &src, &wk, bias, o, r, ow, room, pw, None)
                    }
                    (_, Some(c)) => {
                        row_padded::<S, 2>(s, act, &src, &wk, bias, o, r, ow, room, pw, Some(c))
                    }
                    (_, None) => {
                        row_padded::<S, 2>(s, act, &src, &wk, bias, o, r, ow, room, pw, None)
                    }
                }
            }
        }
        oy0 = oy1;
    }
}

/// Identity, ReLU and Clip as the bounds of one clamp, applied with no branch per
/// vector; `None` for the other activations.
#[inline(always)]
fn clamp_bounds<S: Simd>(s: S, act: Activation) -> Option<(S::V, S::V)> {
    match act {
        Activation::Identity => Some((f32::NEG_INFINITY, f32::INFINITY)),
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Clip { min, max } => Some((min, max)),
        _ => None,
    }
    .map(|(lo, hi)| (s.splat(lo), s.splat(hi)))
}

/// Floats from one padded row to the next in [`plane_padded`]'s buffer: stride 1, the
/// padded row; stride 2, two halves, each with room for a whole vector past its data
/// (the tail of a fill writes one).
#[inline(always)]
fn pad_row_len<S: Simd>(cols: &Axis) -> usize {
    if cols.stride == 1 {
        cols.input + 2
    } else {
        2 * (cols.input / 2 + S::LANES + 3)
    }
}

/// Copies input row `xr` into the padded row at `d` (layout in [`plane_padded`]),
/// writing the data positions and, past them, zeros or nothing, so that the padding
/// stays zero.
///
/// # Safety
/// `xr`: `cols.input` floats; `d`: `pw` floats plus a whole vector after them.
#[inline(always)]
unsafe fn fill_row<S: Simd>(s: S, cols: &Axis, xr: *const f32, d: *mut f32, pw: usize) {
    let (l, w, pl) = (S::LANES, cols.input, cols.pad_begin);
    // SAFETY: reads stay in the row (whole vectors while they fit, then partial loads);
    // writes stay below pl + w + l (stride 1) or each half's w/2 + 1 + l (stride 2), at
    // most a vector past the row (`pad_row_len`).
    unsafe {
        if cols.stride == 1 {
            let d = d.add(pl);
            let mut i = 0;
            while i + l <= w {
                s.store(d.add(i), s.load(xr.add(i)));
                i += l;
            }
            if i < w {
                // Zeros past the data: padding.
                s.store(d.add(i), s.load_part(xr.add(i), w - i, s.zero()));
            }
        } else {
            // x[2m] is P[pl + 2m], x[2m + 1] is P[pl + 2m + 1].
            let (e, o) = (d, d.add(pw / 2));
            let (de, dod) = if pl == 0 { (e, o) } else { (o, e.add(1)) };
            let mut m = 0;
            while 2 * m + 2 * l <= w {
                let (ev, od) = s.deinterleave(s.load(xr.add(2 * m)), s.load(xr.add(2 * m + l)));
                s.store(de.add(m), ev);
                s.store(dod.add(m), od);
                m += l;
            }
            let i = 2 * m;
            if i < w {
                let n = w - i;
                let (ev, od) = s.deinterleave(
                    s.load_part(xr.add(i), n.min(l), s.zero()),
                    s.load_part(xr.add(i + l), n.saturating_sub(l), s.zero()),
                );
                s.store(de.add(m), ev);
                s.store(dod.add(m), od);
            }
        }
    }
}

/// One output row of [`plane_padded`] from the padded rows `src` (kernel rows 0, 1, 2),
/// stride `SW`.
///
/// # Safety
/// `src`: padded rows (or the zero row) with whole vectors readable past them; `o` (and
/// `res`) valid for `room >= ow` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_padded<S: Simd, const SW: usize>(
    s: S,
    act: &ActV<S>,
    src: &[*const f32; 3],
    w: &[S::V; 9],
    bias: S::V,
    o: *mut f32,
    res: Option<*const f32>,
    ow: usize,
    room: usize,
    pw: usize,
    clamp: Option<(S::V, S::V)>,
) {
    let l = S::LANES;
    let mut xo = 0;
    while xo < ow {
        let mut acc = bias;
        for (r, &sp) in src.iter().enumerate() {
            // SAFETY: junk lanes read at most a vector past a row (buffer slack).
            unsafe {
                let (t0, t1, t2) = if SW == 1 {
                    let p = sp.add(xo);
                    (s.load(p), s.load(p.add(1)), s.load(p.add(2)))
                } else {
                    let (e, od) = (sp.add(xo), sp.add(pw / 2 + xo));
                    (s.load(e), s.load(od), s.load(e.add(1)))
                };
                acc = s.fmadd(t0, w[3 * r], acc);
                acc = s.fmadd(t1, w[3 * r + 1], acc);
                acc = s.fmadd(t2, w[3 * r + 2], acc);
            }
        }
        // Whole vector unless it would pass the plane's end; lanes past the row's end
        // are rewritten by the next rows.
        // SAFETY: n floats from xo are inside the plane (o / res hold `room`).
        unsafe {
            if xo + l <= room {
                let mut v = acc;
                if let Some(r) = res {
                    v = s.add(v, s.load(r.add(xo)));
                }
                v = match clamp {
                    Some((lo, hi)) => s.min(hi, s.max(lo, v)),
                    None => act.apply(s, v),
                };
                s.store(o.add(xo), v);
            } else {
                finish(s, act, acc, o.add(xo), res.map(|r| r.add(xo)), ow - xo);
            }
        }
        xo += l;
    }
}

/// One output row's inputs: the plane, where its window's rows start, which kernel rows
/// land inside the input, the weights and the bias.
#[derive(Clone, Copy)]
struct Row {
    x: *const f32,
    iy0: isize,
    ky: (usize, usize),
    w: *const f32,
    bias: f32,
}

impl Row {
    /// Input row of kernel row `ky` (which must be in `self.ky`).
    #[inline(always)]
    /// # Safety
    /// `ky` must lie in `self.ky`, and `self.x` must point at a whole H*W input plane.
    unsafe fn input(&self, rows: &Axis, cols: &Axis, ky: usize) -> *const f32 {
        // SAFETY: ky in self.ky puts the row inside the plane (Axis::taps).
        unsafe {
            self.x
                .add((self.iy0 + (ky * rows.dilation) as isize) as usize * cols.input)
        }
    }
}

/// # Safety
/// `w`: kh*kw weights; `x`: an H*W plane; `out` (and `res`): OH*OW.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn plane<S: Simd>(
    s: S,
    k: &DepthwiseKernel,
    act: &ActV<S>,
    w: *const f32,
    bias: f32,
    x: *const f32,
    res: Option<*const f32>,
    out: *mut f32,
) {
    let (rows, cols) = (&k.rows, &k.cols);
    let ow = cols.output;
    let mut wk = [[s.zero(); 3]; 3];
    if k.algo == Algo::K3 {
        for (r, wr) in wk.iter_mut().enumerate() {
            for (c, wv) in wr.iter_mut().enumerate() {
                // SAFETY: a 3×3 kernel has 9 weights.
                *wv = s.splat(unsafe { *w.add(r * 3 + c) });
            }
        }
    }
    for oy in 0..rows.output {
        let row = Row {
            x,
            iy0: rows.origin(oy),
            ky: rows.taps(oy),
            w,
            bias,
        };
        // SAFETY: row oy of the OH*OW output (and residual) planes.
        let (o, r) = unsafe { (out.add(oy * ow), res.map(|r| r.add(oy * ow))) };
        // SAFETY (all arms): the helpers' bounds come from the window geometry.
        unsafe {
            match (k.algo, cols.stride) {
                (Algo::K3, 1) => row3::<S, 1>(s, k, act, &row, &wk, o, r),
                (Algo::K3, _) => row3::<S, 2>(s, k, act, &row, &wk, o, r),
                // Generic (`run_strided` takes `dw_rows` layers through `planes_rows`;
                // this scalar path would also be right for them).
                _ => {
                    for xo in 0..ow {
                        *o.add(xo) = point(rows, cols, &row, xo);
                    }
                    epilogue(s, act, o, r, ow);
                }
            }
        }
    }
}

/// Planes a `dw_rows` layer computes in lockstep. 8 against 4 (MNASNet 1.0, one thread,
/// `cnnrt bench --profile`, two rounds): its `dw_rows` layers 1.58–1.59 ms against
/// 1.71–1.75 on AVX-512, 1.84–1.88 against 2.17 on AVX2.
const ROWS_PLANES: usize = 8;

/// Channels `first + i .. first + i + P` of a `dw_rows` layer (any kernel and dilation,
/// stride along W 1 or 2), in lockstep: the planes share the window geometry, so each
/// group of outputs of one row is `P` independent FMA chains over the same masks. Why:
/// one plane at a time, a vector of outputs is a single chain of `kh·kw` dependent FMAs
/// (25 for 5×5: MNASNet's and MobileNetV3's 5×5 layers ran at 4–16% of the peak), and on
/// rows of 7–28 pixels most vectors are masked edges whose masks were made per tap.
/// Each output's chain is unchanged (the bias, then the taps row by row in order), so
/// the results are the same bits as one plane at a time. Whole models, one thread,
/// against one plane at a time (`scripts/paired_ab.py`, 8 rounds): MNASNet 1.0 0.81 of
/// the time, MobileNetV3-Small 0.77, EfficientNet-B0 0.85.
///
/// # Safety
/// As `plane` for each of the `P` channels: `w` the layer's weights, `x` its input planes
/// `x_stride` apart, `out` / `res` the output / residual planes of `channels` (plane
/// `i + p` for channel `first + i + p`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn planes_rows<S: Simd, const P: usize>(
    s: S,
    k: &DepthwiseKernel,
    act: &ActV<S>,
    w: *const f32,
    bias: Option<&[f32]>,
    x: *const f32,
    x_stride: usize,
    res: Option<*const f32>,
    out: *mut f32,
    first: usize,
    i: usize,
) {
    let (rows, cols) = (&k.rows, &k.cols);
    let (ow, osize, ksize) = (
        cols.output,
        rows.output * cols.output,
        rows.kernel * cols.kernel,
    );
    let mut xs = [x; P];
    let mut ws = [w; P];
    let mut bs = [0.0f32; P];
    let mut os = [out; P];
    let mut rs = [res; P];
    for p in 0..P {
        let ch = first + i + p;
        xs[p] = x.wrapping_add(ch * x_stride);
        ws[p] = w.wrapping_add(ch * ksize);
        bs[p] = bias.map_or(0.0, |b| b[ch]);
        os[p] = out.wrapping_add((i + p) * osize);
        rs[p] = res.map(|r| r.wrapping_add((i + p) * osize));
    }
    for oy in 0..rows.output {
        let (iy0, ky) = (rows.origin(oy), rows.taps(oy));
        let mut o = [out; P];
        let mut r = [None; P];
        for p in 0..P {
            o[p] = os[p].wrapping_add(oy * ow);
            r[p] = rs[p].map(|q| q.wrapping_add(oy * ow));
        }
        // SAFETY: row oy of each plane (caller); the window geometry bounds every load.
        unsafe {
            if cols.stride == 1 {
                rows_lockstep::<S, 1, P>(s, k, act, &xs, &ws, &bs, iy0, ky, &o, &r)
            } else {
                rows_lockstep::<S, 2, P>(s, k, act, &xs, &ws, &bs, iy0, ky, &o, &r)
            }
        }
    }
}

/// One output row of `P` planes (see [`planes_rows`]): masked edge vectors, whole
/// vectors between.
///
/// # Safety
/// `x[p]` a valid input plane, `w[p]` its `kh·kw` weights, `o[p]` / `r[p]` its output /
/// residual row of `OW` floats; `iy0`, `ky` the row's window (`Axis::origin`, `taps`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_lockstep<S: Simd, const SW: usize, const P: usize>(
    s: S,
    k: &DepthwiseKernel,
    act: &ActV<S>,
    x: &[*const f32; P],
    w: &[*const f32; P],
    bias: &[f32; P],
    iy0: isize,
    ky: (usize, usize),
    o: &[*mut f32; P],
    r: &[Option<*const f32>; P],
) {
    let (rows, cols) = (&k.rows, &k.cols);
    let (l, ow, kw) = (S::LANES, cols.output, cols.kernel);
    let mut xo = 0;
    while xo < ow {
        let full = xo >= k.inner_from && cols.full(xo, l);
        let n = if full { l } else { l.min(ow - xo) };
        let mut acc = [s.zero(); P];
        for p in 0..P {
            acc[p] = s.splat(bias[p]);
        }
        let b0 = cols.origin(xo);
        for ky in ky.0..ky.1 {
            let mut src = [x[0]; P];
            for p in 0..P {
                // Input row iy0 + ky·dilation, inside the plane (`Axis::taps`).
                src[p] = x[p]
                    .wrapping_offset((iy0 + (ky * rows.dilation) as isize) * cols.input as isize);
            }
            for kx in 0..kw {
                let t = ky * kw + kx;
                if full {
                    for p in 0..P {
                        // SAFETY: `full(xo, LANES)` and xo >= first_inner bound the tap's
                        // load by the row; weight t of kh·kw.
                        unsafe {
                            let v = tap::<S, SW>(s, cols, src[p], xo, kx);
                            acc[p] = s.fmadd(v, s.splat(*w[p].add(t)), acc[p]);
                        }
                    }
                } else {
                    let b = b0 + (kx * cols.dilation) as isize;
                    let m = win::<S, SW>(s, cols.input, b, n);
                    for p in 0..P {
                        // SAFETY: the masks keep the load inside the row; weight t.
                        unsafe {
                            let v = load_win::<S, SW>(s, src[p], b, &m, None);
                            acc[p] = s.fmadd(v, s.splat(*w[p].add(t)), acc[p]);
                        }
                    }
                }
            }
        }
        let mut op = *o;
        let mut rp = *r;
        for p in 0..P {
            op[p] = op[p].wrapping_add(xo);
            rp[p] = rp[p].map(|q| q.wrapping_add(xo));
        }
        // SAFETY: xo + n <= OW floats of each plane's output / residual row.
        unsafe { finish_n(s, act, acc, &op, &rp, n) };
        xo += n;
    }
}

/// One output, scalar, with bounds checks (the stride >= 3 path).
#[inline(always)]
/// # Safety
/// `row` must come from a valid input plane and weight row, and `xo` must be < OW.
unsafe fn point(rows: &Axis, cols: &Axis, row: &Row, xo: usize) -> f32 {
    let (lo, hi) = cols.taps(xo);
    let ix0 = cols.origin(xo);
    let mut acc = row.bias;
    for ky in row.ky.0..row.ky.1 {
        // SAFETY: ky and kx are taps inside the input (Axis::taps), weights have kh*kw.
        unsafe {
            let src = row.input(rows, cols, ky);
            for kx in lo..hi {
                let ix = (ix0 + (kx * cols.dilation) as isize) as usize;
                acc += *row.w.add(ky * cols.kernel + kx) * *src.add(ix);
            }
        }
    }
    acc
}

/// The lane masks of one tap for `n` outputs whose first input column is `b` (negative
/// in the left padding): the lanes that land inside the row `0..width`. Stride 2 reads
/// `2n` raw floats in two vectors.
#[derive(Clone, Copy)]
pub(crate) struct Win<S: Simd> {
    m0: S::L,
    m1: S::L,
}

#[inline(always)]
pub(crate) fn win<S: Simd, const SW: usize>(s: S, width: usize, b: isize, n: usize) -> Win<S> {
    let span = (SW * n) as isize;
    let lo = (-b).clamp(0, span);
    let hi = (width as isize - b).clamp(lo, span);
    if SW == 1 {
        Win {
            m0: s.lanes(lo as usize, hi as usize),
            m1: s.lanes(0, 0),
        }
    } else {
        let l = S::LANES as isize;
        Win {
            m0: s.lanes(lo.min(l) as usize, hi.min(l) as usize),
            m1: s.lanes((lo - l).max(0) as usize, (hi - l).max(0) as usize),
        }
    }
}

/// The tap at input column `b` of the row `src` through the masks `w`; lanes outside
/// the row are `fill` (zero when `None`, which skips a blend on AVX2).
///
/// # Safety
/// `src` a row of the width `w` was made for.
#[inline(always)]
pub(crate) unsafe fn load_win<S: Simd, const SW: usize>(
    s: S,
    src: *const f32,
    b: isize,
    w: &Win<S>,
    fill: Option<S::V>,
) -> S::V {
    #[inline(always)]
    unsafe fn ld<S: Simd>(s: S, p: *const f32, m: S::L, fill: Option<S::V>) -> S::V {
        // SAFETY: forwarded.
        unsafe {
            match fill {
                Some(f) => s.load_m(p, m, f),
                None => s.load_mz(p, m),
            }
        }
    }
    let p = src.wrapping_offset(b);
    // SAFETY: the masks hold only lanes inside the row.
    unsafe {
        if SW == 1 {
            ld(s, p, w.m0, fill)
        } else {
            s.deinterleave(
                ld(s, p, w.m0, fill),
                ld(s, p.wrapping_add(S::LANES), w.m1, fill),
            )
            .0
        }
    }
}

/// Tap `kx` of outputs `xo..xo+LANES` from input row `src`, whole vectors.
///
/// # Safety
/// `cols.full(xo, LANES)` and `xo >= cols.first_inner()`.
#[inline(always)]
pub(crate) unsafe fn tap<S: Simd, const SW: usize>(
    s: S,
    cols: &Axis,
    src: *const f32,
    xo: usize,
    kx: usize,
) -> S::V {
    // SAFETY: `full` bounds the last float read by the last tap by the row's end, and
    // `first_inner` makes the first one non-negative.
    unsafe {
        let p = src.add(xo * SW + kx * cols.dilation - cols.pad_begin);
        if SW == 1 {
            s.load(p)
        } else {
            s.deinterleave(s.load(p), s.load(p.add(S::LANES))).0
        }
    }
}

/// Adds the residual, applies the activation and stores `n` outputs at `o`.
///
/// # Safety
/// `o..o+n` writable, `res..res+n` readable.
#[inline(always)]
unsafe fn finish<S: Simd>(
    s: S,
    act: &ActV<S>,
    acc: S::V,
    o: *mut f32,
    res: Option<*const f32>,
    n: usize,
) {
    // SAFETY: forwarded (same contract).
    unsafe { finish_n(s, act, [acc], &[o], &[res], n) }
}

/// [`finish`] for `P` planes' outputs at once: the residuals, then the activation of all
/// `P` (`ActV::apply_n`: the exp-based activations' chains interleaved), then the stores.
/// The same operations per output as one at a time.
///
/// # Safety
/// As [`finish`], for each plane's `o[p]` / `res[p]`.
#[inline(always)]
unsafe fn finish_n<S: Simd, const P: usize>(
    s: S,
    act: &ActV<S>,
    mut acc: [S::V; P],
    o: &[*mut f32; P],
    res: &[Option<*const f32>; P],
    n: usize,
) {
    let full = n == S::LANES;
    // SAFETY: n floats at each o[p] / res[p] (caller).
    unsafe {
        for (a, r) in acc.iter_mut().zip(res) {
            if let Some(r) = *r {
                let v = if full {
                    s.load(r)
                } else {
                    s.load_part(r, n, s.zero())
                };
                *a = s.add(*a, v);
            }
        }
        let y = act.apply_n(s, acc);
        for (&v, &o) in y.iter().zip(o) {
            if full {
                s.store(o, v)
            } else {
                s.store_part(o, n, v)
            }
        }
    }
}

/// A 3×3 row (dilation 1), weights in registers.
#[inline(always)]
/// # Safety
/// `row` from a valid plane; `o` writable and `res` readable for OW floats; a 3×3
/// kernel with dilation 1 (`wk` its weights).
unsafe fn row3<S: Simd, const SW: usize>(
    s: S,
    k: &DepthwiseKernel,
    act: &ActV<S>,
    row: &Row,
    wk: &[[S::V; 3]; 3],
    o: *mut f32,
    res: Option<*const f32>,
) {
    // SAFETY: forwarded; `row.ky` has 0 to 3 rows.
    unsafe {
        match row.ky.1 - row.ky.0 {
            3 => row3n::<S, SW, 3>(s, k, act, row, wk, o, res),
            2 => row3n::<S, SW, 2>(s, k, act, row, wk, o, res),
            1 => row3n::<S, SW, 1>(s, k, act, row, wk, o, res),
            _ => row3n::<S, SW, 0>(s, k, act, row, wk, o, res),
        }
    }
}

#[inline(always)]
unsafe fn row3n<S: Simd, const SW: usize, const NR: usize>(
    s: S,
    k: &DepthwiseKernel,
    act: &ActV<S>,
    row: &Row,
    wk: &[[S::V; 3]; 3],
    o: *mut f32,
    res: Option<*const f32>,
) {
    let (rows, cols) = (&k.rows, &k.cols);
    let (l, ow) = (S::LANES, cols.output);
    let bias = s.splat(row.bias);
    let ky0 = row.ky.0;
    let mut src = [row.x; 3];
    let mut w = [wk[0]; 3];
    for r in 0..NR {
        // SAFETY: ky0 + r for r < NR is in row.ky, within 0..3.
        src[r] = unsafe { row.input(rows, cols, ky0 + r) };
        w[r] = wk[ky0 + r];
    }
    // SAFETY (whole body): loads are bounded by `full` or by their masks; outputs by OW.
    let mut xo = 0;
    while xo < k.inner_from {
        let n = l.min(ow - xo);
        unsafe { edge3::<S, SW, NR>(s, k, act, &src, &w, bias, o, res, xo, n) };
        xo += n;
    }
    while cols.full(xo, l) {
        // One accumulator per kernel row (three short dependency chains, not one long
        // one), the bias in the first; the same order as `edge3`.
        let mut acc = [bias, s.zero(), s.zero()];
        for r in 0..NR {
            unsafe {
                let p = src[r].add(xo * SW - cols.pad_begin);
                let (t0, t1, t2) = if SW == 1 {
                    (s.load(p), s.load(p.add(1)), s.load(p.add(2)))
                } else {
                    let (e0, o0) = s.deinterleave(s.load(p), s.load(p.add(l)));
                    (
                        e0,
                        o0,
                        s.deinterleave(s.load(p.add(2)), s.load(p.add(2 + l))).0,
                    )
                };
                acc[r] = s.fmadd(t0, w[r][0], acc[r]);
                acc[r] = s.fmadd(t1, w[r][1], acc[r]);
                acc[r] = s.fmadd(t2, w[r][2], acc[r]);
            }
        }
        // SAFETY: full vector at xo < OW - l + 1; o / res hold OW floats (caller).
        unsafe {
            finish(
                s,
                act,
                sum3::<S, NR>(s, acc),
                o.add(xo),
                res.map(|r| r.add(xo)),
                l,
            )
        };
        xo += l;
    }
    while xo < ow {
        let n = l.min(ow - xo);
        // SAFETY: xo + n <= OW keeps o / res in the row; edge3 masks its input loads.
        unsafe { edge3::<S, SW, NR>(s, k, act, &src, &w, bias, o, res, xo, n) };
        xo += n;
    }
}

/// Outputs `xo..xo+n` of a 3×3 row through masked loads, the masks made once per tap
/// column.
///
/// # Safety
/// As [`row3n`], with `xo + n <= OW`, `n <= LANES`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn edge3<S: Simd, const SW: usize, const NR: usize>(
    s: S,
    k: &DepthwiseKernel,
    act: &ActV<S>,
    src: &[*const f32; 3],
    w: &[[S::V; 3]; 3],
    bias: S::V,
    o: *mut f32,
    res: Option<*const f32>,
    xo: usize,
    n: usize,
) {
    let cols = &k.cols;
    let b0 = cols.origin(xo);
    let m = [
        win::<S, SW>(s, cols.input, b0, n),
        win::<S, SW>(s, cols.input, b0 + 1, n),
        win::<S, SW>(s, cols.input, b0 + 2, n),
    ];
    let mut acc = [bias, s.zero(), s.zero()];
    for r in 0..NR {
        for kx in 0..3 {
            // SAFETY: src[r] is an input row; the masks keep the load inside it.
            let v = unsafe { load_win::<S, SW>(s, src[r], b0 + kx as isize, &m[kx], None) };
            acc[r] = s.fmadd(v, w[r][kx], acc[r]);
        }
    }
    // SAFETY: xo + n <= OW.
    unsafe {
        finish(
            s,
            act,
            sum3::<S, NR>(s, acc),
            o.add(xo),
            res.map(|r| r.add(xo)),
            n,
        )
    };
}

/// `acc[0] + acc[1] + acc[2]` over the first `NR` (at least the first, which holds the bias).
#[inline(always)]
fn sum3<S: Simd, const NR: usize>(s: S, acc: [S::V; 3]) -> S::V {
    match NR {
        3 => s.add(s.add(acc[0], acc[1]), acc[2]),
        2 => s.add(acc[0], acc[1]),
        _ => acc[0],
    }
}
