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
//! | `dw3x3_s1`, `dw3x3_s2` | 3×3, dilation 1, stride along W 1 or 2 (any padding, any stride along H) | 9 weights in registers, the rows of the window unrolled |
//! | `dw_rows_s1`, `dw_rows_s2` | any kernel and dilation, stride along W 1 or 2 | taps in loops, weights broadcast from memory |
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
        let d = self.dilation as isize;
        let lo = if start >= 0 { 0 } else { ((-start + d - 1) / d) as usize };
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
        o + lanes <= self.output && o * self.stride + (self.kernel - 1) * self.dilation + self.stride * lanes <= self.input + self.pad_begin
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
    activation: Activation,
}

impl DepthwiseKernel {
    /// Plans `conv` for per-sample shapes `[C, H, W] -> [C, OH, OW]`. `None` if the
    /// convolution is not depthwise with multiplier 1 or the shapes do not fit it.
    /// `isa` is lowered to what this CPU runs.
    pub fn new(isa: Isa, conv: &Conv, in_shape: [usize; 3], out_shape: [usize; 3]) -> Option<Self> {
        let c = conv.groups;
        if c == 0 || conv.in_channels != c || conv.out_channels != c || in_shape[0] != c || out_shape[0] != c {
            return None;
        }
        let axis = |i: usize| -> Option<Axis> {
            let (input, output) = (in_shape[1 + i], out_shape[1 + i]);
            let (kernel, stride, dilation) = (conv.kernel[i], conv.stride[i], conv.dilation[i]);
            let (pad_begin, pad_end) = (conv.pads[i], conv.pads[i + 2]);
            if input == 0 || window_output(input, kernel, stride, dilation, pad_begin, pad_end, false)? != output {
                return None;
            }
            Some(Axis { input, output, kernel, stride, dilation, pad_begin, pad_end })
        };
        let (rows, cols) = (axis(0)?, axis(1)?);
        let algo = match (conv.kernel, conv.dilation, cols.stride) {
            (_, _, s) if s > 2 => Algo::Generic,
            ([3, 3], [1, 1], _) => Algo::K3,
            _ => Algo::Rows,
        };
        Some(DepthwiseKernel { isa: super::elementwise::clamp_isa(isa), algo, channels: c, rows, cols, activation: conv.activation })
    }

    /// The tier the kernel runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Which body the kernel uses (see the module docs).
    pub fn algorithm(&self) -> &'static str {
        match (self.algo, self.cols.stride) {
            (Algo::K3, 1) => "dw3x3_s1",
            (Algo::K3, _) => "dw3x3_s2",
            (Algo::Rows, 1) => "dw_rows_s1",
            (Algo::Rows, _) => "dw_rows_s2",
            (Algo::Generic, _) => "dw_generic",
        }
    }

    /// `out = act(dwconv(x) + bias + residual)` for one sample: `x` is `[C, H, W]`,
    /// `weights` `[C, 1, kh, kw]`, `bias` `[C]`, `residual` and `out` `[C, OH, OW]`.
    pub fn run(&self, weights_oihw: &[f32], bias: Option<&[f32]>, x: &[f32], residual: Option<&[f32]>, out: &mut [f32]) {
        self.run_channels(0..self.channels, weights_oihw, bias, x, residual, out)
    }

    /// As [`Self::run`] for the channels `channels` only (so that threads can split a
    /// sample): `weights`, `bias` and `x` are whole, `residual` and `out` hold just those
    /// channels' `[channels.len(), OH, OW]`.
    pub fn run_channels(&self, channels: Range<usize>, weights: &[f32], bias: Option<&[f32]>, x: &[f32], residual: Option<&[f32]>, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let (ksize, isize_, osize) = (rows.kernel * cols.kernel, rows.input * cols.input, rows.output * cols.output);
        assert!(channels.start <= channels.end && channels.end <= self.channels, "channels {channels:?} of {}", self.channels);
        assert_eq!(weights.len(), self.channels * ksize, "weights");
        assert_eq!(x.len(), self.channels * isize_, "input");
        assert_eq!(out.len(), channels.len() * osize, "output");
        if let Some(b) = bias {
            assert_eq!(b.len(), self.channels, "bias");
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "residual");
        }
        let (wp, xp, op, rp) = (weights.as_ptr(), x.as_ptr(), out.as_mut_ptr(), residual.map(|r| r.as_ptr()));
        dispatch!(self.isa, |s| {
            let act = ActV::new(s, self.activation);
            for (i, ch) in channels.clone().enumerate() {
                let b = bias.map_or(0.0, |b| b[ch]);
                // SAFETY: the lengths asserted above hold channel `ch`'s weights, input
                // plane, and output / residual plane `i`.
                unsafe {
                    plane(s, self, &act, wp.add(ch * ksize), b, xp.add(ch * isize_), rp.map(|r| r.add(i * osize)), op.add(i * osize));
                }
            }
        })
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
    unsafe fn input(&self, rows: &Axis, cols: &Axis, ky: usize) -> *const f32 {
        // SAFETY: ky in self.ky puts the row inside the plane (Axis::taps).
        unsafe { self.x.add((self.iy0 + (ky * rows.dilation) as isize) as usize * cols.input) }
    }
}

/// # Safety
/// `w`: kh*kw weights; `x`: an H*W plane; `out` (and `res`): OH*OW.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn plane<S: Simd>(s: S, k: &DepthwiseKernel, act: &ActV<S>, w: *const f32, bias: f32, x: *const f32, res: Option<*const f32>, out: *mut f32) {
    let (rows, cols) = (&k.rows, &k.cols);
    let ow = cols.output;
    // SAFETY (whole body): every pointer below is derived from the plane bounds and the
    // window geometry (see each helper).
    let mut wk = [[s.zero(); 3]; 3];
    if k.algo == Algo::K3 {
        for (r, wr) in wk.iter_mut().enumerate() {
            for (c, wv) in wr.iter_mut().enumerate() {
                *wv = s.splat(unsafe { *w.add(r * 3 + c) });
            }
        }
    }
    for oy in 0..rows.output {
        let row = Row { x, iy0: rows.origin(oy), ky: rows.taps(oy), w, bias };
        let o = unsafe { out.add(oy * ow) };
        let mut xo = 0;
        while xo < cols.first_inner() {
            unsafe { *o.add(xo) = point(rows, cols, &row, xo) };
            xo += 1;
        }
        if k.algo != Algo::Generic {
            xo = unsafe {
                match (k.algo, cols.stride) {
                    (Algo::K3, 1) => body3::<S, 1>(s, rows, cols, &row, &wk, o, xo),
                    (Algo::K3, _) => body3::<S, 2>(s, rows, cols, &row, &wk, o, xo),
                    (_, 1) => body::<S, 1>(s, rows, cols, &row, o, xo),
                    _ => body::<S, 2>(s, rows, cols, &row, o, xo),
                }
            };
            unsafe {
                if cols.stride == 1 {
                    tail::<S, 1>(s, rows, cols, &row, o, xo)
                } else {
                    tail::<S, 2>(s, rows, cols, &row, o, xo)
                }
            };
        } else {
            while xo < ow {
                unsafe { *o.add(xo) = point(rows, cols, &row, xo) };
                xo += 1;
            }
        }
        unsafe { epilogue(s, act, o, res.map(|r| r.add(oy * ow)), ow) };
    }
}

/// One output, scalar, with bounds checks.
#[inline(always)]
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

/// Tap `kx` of outputs `xo..xo+LANES` from input row `src`, whole vectors.
///
/// # Safety
/// `cols.full(xo, LANES)` and `xo >= cols.first_inner()`.
#[inline(always)]
pub(crate) unsafe fn tap<S: Simd, const SW: usize>(s: S, cols: &Axis, src: *const f32, xo: usize, kx: usize) -> S::V {
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

/// Tap `kx` of outputs `xo..xo+n` from input row `src`, masked: lanes whose input column
/// is past the row are `fill`.
///
/// # Safety
/// `xo >= cols.first_inner()`, `n <= LANES`, `src` a row of `cols.input` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tap_part<S: Simd, const SW: usize>(s: S, cols: &Axis, src: *const f32, xo: usize, kx: usize, n: usize, fill: S::V) -> S::V {
    let b = xo * SW + kx * cols.dilation - cols.pad_begin;
    let m = cols.input.saturating_sub(b).min(SW * n);
    let p = src.wrapping_add(b);
    // SAFETY: only `m` floats from `b`, all inside the row, are read.
    unsafe {
        if SW == 1 {
            s.load_part(p, m, fill)
        } else {
            let l = S::LANES;
            s.deinterleave(s.load_part(p, m.min(l), fill), s.load_part(p.wrapping_add(l), m.saturating_sub(l), fill)).0
        }
    }
}

/// Whole vectors from `xo` while they fit; returns where it stopped.
#[inline(always)]
unsafe fn body<S: Simd, const SW: usize>(s: S, rows: &Axis, cols: &Axis, row: &Row, o: *mut f32, mut xo: usize) -> usize {
    let l = S::LANES;
    let bias = s.splat(row.bias);
    while cols.full(xo, l) {
        let mut acc = bias;
        for ky in row.ky.0..row.ky.1 {
            // SAFETY: `full(xo)` and xo >= first_inner (the caller starts there).
            unsafe {
                let src = row.input(rows, cols, ky);
                let wrow = row.w.add(ky * cols.kernel);
                for kx in 0..cols.kernel {
                    acc = s.fmadd(tap::<S, SW>(s, cols, src, xo, kx), s.splat(*wrow.add(kx)), acc);
                }
            }
        }
        // SAFETY: xo + l <= OW (`full`).
        unsafe { s.store(o.add(xo), acc) };
        xo += l;
    }
    xo
}

/// [`body`] for 3×3, dilation 1, with the weights in registers.
#[inline(always)]
unsafe fn body3<S: Simd, const SW: usize>(s: S, rows: &Axis, cols: &Axis, row: &Row, wk: &[[S::V; 3]; 3], o: *mut f32, xo: usize) -> usize {
    // SAFETY: forwarded; `row.ky` has 0 to 3 rows.
    unsafe {
        match row.ky.1 - row.ky.0 {
            3 => body3n::<S, SW, 3>(s, rows, cols, row, wk, o, xo),
            2 => body3n::<S, SW, 2>(s, rows, cols, row, wk, o, xo),
            1 => body3n::<S, SW, 1>(s, rows, cols, row, wk, o, xo),
            _ => body3n::<S, SW, 0>(s, rows, cols, row, wk, o, xo),
        }
    }
}

#[inline(always)]
unsafe fn body3n<S: Simd, const SW: usize, const NR: usize>(s: S, rows: &Axis, cols: &Axis, row: &Row, wk: &[[S::V; 3]; 3], o: *mut f32, mut xo: usize) -> usize {
    let l = S::LANES;
    let bias = s.splat(row.bias);
    let ky0 = row.ky.0;
    let mut src = [row.x; 3];
    let mut w = [wk[0]; 3];
    for r in 0..NR {
        // SAFETY: ky0 + r for r < NR is in row.ky, within 0..3.
        src[r] = unsafe { row.input(rows, cols, ky0 + r) };
        w[r] = wk[ky0 + r];
    }
    while cols.full(xo, l) {
        let mut acc = bias;
        for r in 0..NR {
            // SAFETY: `full(xo)` and xo >= first_inner bound every load by the row.
            unsafe {
                let p = src[r].add(xo * SW - cols.pad_begin);
                if SW == 1 {
                    acc = s.fmadd(s.load(p), w[r][0], acc);
                    acc = s.fmadd(s.load(p.add(1)), w[r][1], acc);
                    acc = s.fmadd(s.load(p.add(2)), w[r][2], acc);
                } else {
                    let (e0, o0) = s.deinterleave(s.load(p), s.load(p.add(l)));
                    let (e2, _) = s.deinterleave(s.load(p.add(2)), s.load(p.add(2 + l)));
                    acc = s.fmadd(e0, w[r][0], acc);
                    acc = s.fmadd(o0, w[r][1], acc);
                    acc = s.fmadd(e2, w[r][2], acc);
                }
            }
        }
        // SAFETY: xo + l <= OW (`full`).
        unsafe { s.store(o.add(xo), acc) };
        xo += l;
    }
    xo
}

/// Outputs `xo..OW` with masked loads and stores.
#[inline(always)]
unsafe fn tail<S: Simd, const SW: usize>(s: S, rows: &Axis, cols: &Axis, row: &Row, o: *mut f32, mut xo: usize) {
    let bias = s.splat(row.bias);
    while xo < cols.output {
        let n = S::LANES.min(cols.output - xo);
        let mut acc = bias;
        for ky in row.ky.0..row.ky.1 {
            // SAFETY: xo >= first_inner (the caller's loops start there), n <= LANES.
            unsafe {
                let src = row.input(rows, cols, ky);
                let wrow = row.w.add(ky * cols.kernel);
                for kx in 0..cols.kernel {
                    acc = s.fmadd(tap_part::<S, SW>(s, cols, src, xo, kx, n, s.zero()), s.splat(*wrow.add(kx)), acc);
                }
            }
        }
        // SAFETY: xo + n <= OW.
        unsafe { s.store_part(o.add(xo), n, acc) };
        xo += n;
    }
}
