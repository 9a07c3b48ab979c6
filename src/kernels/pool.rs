//! Max and average pooling, NCHW, one sample at a time; global pooling.
//!
//! Same structure as [`super::depthwise`]: per plane, per output row, vectorized along the
//! row, with the leading border columns scalar, the inner columns in whole unchecked
//! vectors, and the rest of the row masked (masked-off lanes read as `-inf` for max and
//! `0` for average, so padding and `ceil_mode` overrun never count).
//!
//! | `algorithm()` | when | body |
//! |---|---|---|
//! | `pool2x2_s2`, `pool3x3_s2` | 2×2 / 3×3 window, stride 2 along W, dilation 1 (any padding, any stride along H) | rows of the window combined first on raw loads, then one de-interleave per vector |
//! | `pool_rows_s1`, `pool_rows_s2` | any window and dilation, stride along W 1 or 2 | taps in loops |
//! | `pool_generic` | stride along W of 3 or more | scalar, per output |
//!
//! Semantics are [`super::reference::pool`]'s: padding never wins a max and a NaN in the
//! window makes the max NaN; average divides by the window cells inside the padded input
//! (`count_include_pad`) or inside the input, at least 1. The specialized max bodies look
//! for NaN in the raw loads of each vector of outputs and redo that vector with per-tap
//! NaN tracking when they find one, so NaN costs nothing when there is none.
//! The 2×2 / 3×3 stride-2 max also does the end of each row (a partial vector, e.g. the
//! 14- and 7-wide rows of LeNet-5) that way, on loads masked to the row, instead of tap
//! by tap: 17 µs → 7–12 µs per LeNet-5 pool (AVX2, `cnnrt bench --profile`).

use super::depthwise::{load_win, tap, win, Axis};
use super::elementwise::{dispatch, sum_f64, Simd};
use crate::graph::shape::window_output;
use crate::graph::{Pool, PoolKind};
use crate::kernels::gemm::SharedOut;
use crate::simd::Isa;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    K2S2,
    K3S2,
    Rows,
    Generic,
}

/// A planned pooling layer; see the module docs.
#[derive(Clone, Debug)]
pub struct PoolKernel {
    isa: Isa,
    algo: Algo,
    kind: PoolKind,
    include_pad: bool,
    channels: usize,
    rows: Axis,
    cols: Axis,
    /// `cols.first_inner()`: output columns before it are done with masked loads.
    inner_from: usize,
}

impl PoolKernel {
    /// Plans `pool` for per-sample shapes `[C, H, W] -> [C, OH, OW]`; `None` if the shapes
    /// do not fit it. `isa` is lowered to what this CPU runs.
    pub fn new(isa: Isa, pool: &Pool, in_shape: [usize; 3], out_shape: [usize; 3]) -> Option<Self> {
        if in_shape[0] != out_shape[0] {
            return None;
        }
        let axis = |i: usize| -> Option<Axis> {
            let (input, output) = (in_shape[1 + i], out_shape[1 + i]);
            let (kernel, stride, dilation) = (pool.kernel[i], pool.stride[i], pool.dilation[i]);
            let (pad_begin, pad_end) = (pool.pads[i], pool.pads[i + 2]);
            if input == 0
                || window_output(
                    input,
                    kernel,
                    stride,
                    dilation,
                    pad_begin,
                    pad_end,
                    pool.ceil_mode,
                )? != output
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
        let algo = match (pool.kernel, pool.dilation, cols.stride) {
            (_, _, s) if s > 2 => Algo::Generic,
            ([2, 2], [1, 1], 2) => Algo::K2S2,
            ([3, 3], [1, 1], 2) => Algo::K3S2,
            _ => Algo::Rows,
        };
        Some(PoolKernel {
            isa: super::elementwise::clamp_isa(isa),
            algo,
            kind: pool.kind,
            include_pad: pool.count_include_pad,
            channels: in_shape[0],
            rows,
            cols,
            inner_from: cols.first_inner(),
        })
    }

    /// The tier the kernel runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Which body the kernel uses (see the module docs).
    pub fn algorithm(&self) -> &'static str {
        match (self.algo, self.cols.stride) {
            (Algo::K2S2, _) => "pool2x2_s2",
            (Algo::K3S2, _) => "pool3x3_s2",
            (Algo::Rows, 1) => "pool_rows_s1",
            (Algo::Rows, _) => "pool_rows_s2",
            (Algo::Generic, _) => "pool_generic",
        }
    }

    /// Pools one sample: `x` is `[C, H, W]`, `out` `[C, OH, OW]`.
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        let (isz, osz) = self.plane_sizes();
        assert_eq!(x.len(), self.channels * isz, "input");
        assert_eq!(out.len(), self.channels * osz, "output");
        self.run_planes(x, out);
    }

    /// Elements of one input plane and of one output plane.
    pub fn plane_sizes(&self) -> (usize, usize) {
        (
            self.rows.input * self.cols.input,
            self.rows.output * self.cols.output,
        )
    }

    /// Pools any number of whole planes (a block of channels, or several samples):
    /// `x` holds `p` input planes and `out` `p` output planes.
    pub fn run_planes(&self, x: &[f32], out: &mut [f32]) {
        let (isz, osz) = self.plane_sizes();
        let planes = x.len() / isz.max(1);
        assert_eq!(x.len(), planes * isz, "input: whole planes");
        assert_eq!(
            out.len(),
            planes * osz,
            "output: as many planes as the input"
        );
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let oh = self.rows.output;
        dispatch!(self.isa, |s| {
            for ch in 0..planes {
                // SAFETY: the asserted lengths hold plane `ch` of input and output.
                unsafe { plane(s, self, xp.add(ch * isz), 0, op.add(ch * osz), 0..oh) }
            }
        })
    }

    /// Planes (channels) of one sample.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Output rows of a plane.
    pub fn out_rows(&self) -> usize {
        self.rows.output
    }

    /// Input columns of a plane.
    pub fn input_width(&self) -> usize {
        self.cols.input
    }

    /// The first input row that output rows from `oy` on can read: no later output row
    /// reads a row before it (their first rows need not increase: with dilation, the
    /// rows of the top padding's windows start at 0 or just after).
    pub fn first_row_from(&self, oy: usize) -> usize {
        self.rows.origin(oy).max(0) as usize
    }

    /// Input rows one output row's window spans, padding included.
    pub fn window_rows(&self) -> usize {
        (self.rows.kernel - 1) * self.rows.dilation + 1
    }

    /// The input rows `lo..hi` that output row `oy` reads (`lo == hi` if none).
    pub fn input_rows(&self, oy: usize) -> std::ops::Range<usize> {
        let (lo, hi) = self.rows.taps(oy);
        if lo >= hi {
            return 0..0;
        }
        let o = self.rows.origin(oy);
        let row = |t: usize| (o + (t * self.rows.dilation) as isize) as usize;
        row(lo)..row(hi - 1) + 1
    }

    /// Output rows `oys` of `planes` planes from a window of their input rows: `x` holds
    /// input rows `x_row0 .. x_row0 + x_rows` of each plane (planes `x_rows × W` apart),
    /// which must include [`PoolKernel::input_rows`] of every row in `oys`; `out` the
    /// whole output planes (`OH × OW` apart), of which only rows `oys` are written.
    ///
    /// # Safety
    /// No concurrent writer or reader of those rows of `out`.
    pub unsafe fn run_rows(
        &self,
        x: &[f32],
        x_row0: usize,
        x_rows: usize,
        planes: usize,
        out: SharedOut,
        oys: std::ops::Range<usize>,
    ) {
        let (w, ow, oh) = (self.cols.input, self.cols.output, self.rows.output);
        if oys.is_empty() || planes == 0 {
            return;
        }
        assert!(oys.end <= oh, "pool: output rows");
        assert!(x.len() >= planes * x_rows * w, "pool: input window");
        assert!(out.len() >= planes * oh * ow, "pool: output planes");
        for oy in oys.clone() {
            let need = self.input_rows(oy);
            assert!(
                need.is_empty() || (need.start >= x_row0 && need.end <= x_row0 + x_rows),
                "pool: output row {oy} reads input rows outside the window"
            );
        }
        let (xp, op) = (x.as_ptr(), out.ptr());
        dispatch!(self.isa, |s| {
            for ch in 0..planes {
                // SAFETY: asserted above: plane `ch` of the window holds every input row
                // the rows `oys` read, and of the output every row in `oys`.
                unsafe {
                    plane(
                        s,
                        self,
                        xp.add(ch * x_rows * w),
                        x_row0,
                        op.add(ch * oh * ow),
                        oys.clone(),
                    )
                }
            }
        })
    }
}

/// One output row's window rows.
#[derive(Clone, Copy)]
struct Row {
    x: *const f32,
    /// Input row of tap 0, counted from the row `x` points at.
    iy0: isize,
    ky: (usize, usize),
    /// Row factor of the average's divisor.
    ry: usize,
}

impl Row {
    /// Input row of kernel row `ky` (which must be in `self.ky`).
    #[inline(always)]
    /// # Safety
    /// `ky` must lie in `self.ky`, and `self.x` must hold that input row (`plane`).
    unsafe fn input(&self, rows: &Axis, cols: &Axis, ky: usize) -> *const f32 {
        // SAFETY: ky in self.ky puts the row inside the plane (Axis::taps).
        unsafe {
            self.x
                .add((self.iy0 + (ky * rows.dilation) as isize) as usize * cols.input)
        }
    }
}

impl PoolKernel {
    /// The average's divisor for column `xo` of `row`.
    #[inline(always)]
    fn divisor(&self, row: &Row, xo: usize) -> f32 {
        let cx = if self.include_pad {
            self.cols.padded_taps(xo)
        } else {
            let (lo, hi) = self.cols.taps(xo);
            hi - lo
        };
        (row.ry * cx).max(1) as f32
    }
}

/// Output rows `oys` of one plane; `x` points at input row `x_row0` of the plane and
/// holds every input row those output rows read; `out` at the output plane's row 0.
/// Vector stores may run past a row's end into the next row of `oys`, never past
/// `oys`' last row.
///
/// # Safety
/// As above: `x` readable for those input rows, `out` writable for rows `oys`.
#[inline(always)]
unsafe fn plane<S: Simd>(
    s: S,
    k: &PoolKernel,
    x: *const f32,
    x_row0: usize,
    out: *mut f32,
    oys: std::ops::Range<usize>,
) {
    let (rows, cols) = (&k.rows, &k.cols);
    let (l, ow) = (S::LANES, cols.output);
    for oy in oys.clone() {
        let ky = rows.taps(oy);
        let ry = if k.include_pad {
            rows.padded_taps(oy)
        } else {
            ky.1 - ky.0
        };
        let row = Row {
            x,
            iy0: rows.origin(oy) - x_row0 as isize,
            ky,
            ry,
        };
        // SAFETY: oy < oh, so row oy of the checked `oh × ow` output plane is in bounds;
        // the pointers below derive from the plane bounds and window geometry.
        let o = unsafe { out.add(oy * ow) };
        if k.algo == Algo::Generic {
            for xo in 0..ow {
                // SAFETY: xo < ow stays inside output row oy; `point` reads in-plane taps.
                unsafe { *o.add(xo) = point(k, &row, xo) };
            }
            continue;
        }
        let mut xo = 0;
        let room = (oys.end - oy) * ow;
        let s2_max = matches!(k.algo, Algo::K2S2 | Algo::K3S2) && k.kind == PoolKind::Max;
        while xo < k.inner_from {
            let n = l.min(ow - xo);
            // SAFETY: xo < OW; o..o+room is inside the output plane. (Not on the portable
            // tier, whose masked loads go lane by lane: slower there than the tap path.)
            if s2_max && l > 4 && unsafe { masked_s2_max(s, k, &row, o, xo, room) } {
                xo += n;
                continue;
            }
            // SAFETY: xo + n <= OW, so o..o+n is inside the output row; edge_sw masks its loads.
            unsafe { edge_sw(s, k, &row, o, xo, n) };
            xo += n;
        }
        // SAFETY: xo starts at inner_from; each body stays within `full` columns of the row.
        xo = unsafe {
            match (k.algo, k.kind, cols.stride) {
                (Algo::K2S2 | Algo::K3S2, PoolKind::Max, _) => body_s2_max(s, k, &row, o, xo),
                (Algo::K2S2 | Algo::K3S2, PoolKind::Average, _) => body_s2_avg(s, k, &row, o, xo),
                (_, _, 1) => body::<S, 1>(s, k, &row, o, xo),
                _ => body::<S, 2>(s, k, &row, o, xo),
            }
        };
        while xo < ow {
            let n = l.min(ow - xo);
            if s2_max {
                // SAFETY: xo < OW; o..o+room is inside the output plane.
                if unsafe { masked_s2_max(s, k, &row, o, xo, room) } {
                    xo += n;
                    continue;
                }
            }
            // SAFETY: xo + n <= OW, so o..o+n is inside the output row; edge_sw masks its loads.
            unsafe { edge_sw(s, k, &row, o, xo, n) };
            xo += n;
        }
    }
}

/// The outputs `xo..` (at most a vector) of a 2×2 / 3×3 stride-2 max before or past the
/// whole vectors of [`body_s2_max`], as that body does them (window rows combined on raw
/// loads, one de-interleave) but with the loads masked to the input row (`-inf` outside
/// it, on either side: the left padding too). The vector is stored whole when the plane
/// has room (lanes past the row land in the next output row, which is written
/// afterwards), else partially. Returns `false`, having written nothing, when the loads
/// hold a NaN: the caller then takes the per-tap path.
///
/// Why: rows of MaxPool outputs are often a vector and a few (14, 7 in LeNet-5); the
/// per-tap masked path costs about ten times this on them. At the left edge of a padded
/// row (ResNet's 3×3 stride-2 pool: the first 16 of every 56 outputs) the per-tap path
/// took most of the layer's time.
///
/// # Safety
/// `xo < OW`; `row` from `plane` for a valid input plane; `o` the output row, with
/// `room` floats from `o` to the plane's end.
#[inline(always)]
unsafe fn masked_s2_max<S: Simd>(
    s: S,
    k: &PoolKernel,
    row: &Row,
    o: *mut f32,
    xo: usize,
    room: usize,
) -> bool {
    let (l, cols) = (S::LANES, &k.cols);
    let k3 = k.algo == Algo::K3S2;
    // First window column of output xo, negative inside the left padding.
    let b = (2 * xo) as isize - cols.pad_begin as isize;
    // Lanes of the load at `b + skip` that fall inside the row.
    let part = |skip: usize| {
        let start = b + skip as isize;
        let lo = (-start).clamp(0, l as isize) as usize;
        let hi = (cols.input as isize - start).clamp(0, l as isize) as usize;
        s.lanes(lo, hi.max(lo))
    };
    let (ma, mb, mc, md) = (part(0), part(l), part(2), part(2 + l));
    let ninf = s.splat(f32::NEG_INFINITY);
    let (mut a, mut bb, mut c, mut d) = (ninf, ninf, ninf, ninf);
    let mut nan = s.mask_none();
    for ky in row.ky.0..row.ky.1 {
        // SAFETY: ky in row.ky; the masks keep every load inside the input row.
        unsafe {
            let p = row.input(&k.rows, cols, ky).wrapping_offset(b);
            let (ra, rb) = (s.load_m(p, ma, ninf), s.load_m(p.wrapping_add(l), mb, ninf));
            nan = s.mask_or(nan, s.mask_or(s.is_nan(ra), s.is_nan(rb)));
            (a, bb) = (s.max(a, ra), s.max(bb, rb));
            if k3 {
                let (rc, rd) = (
                    s.load_m(p.wrapping_add(2), mc, ninf),
                    s.load_m(p.wrapping_add(2 + l), md, ninf),
                );
                nan = s.mask_or(nan, s.mask_or(s.is_nan(rc), s.is_nan(rd)));
                (c, d) = (s.max(c, rc), s.max(d, rd));
            }
        }
    }
    if s.any(nan) {
        return false;
    }
    let (e, od) = s.deinterleave(a, bb);
    let mut v = s.max(e, od);
    if k3 {
        v = s.max(v, s.deinterleave(c, d).0);
    }
    // SAFETY: o + xo .. o + room is inside the output plane (caller).
    unsafe {
        if xo + l <= room {
            s.store(o.add(xo), v)
        } else {
            s.store_part(o.add(xo), (cols.output - xo).min(l), v)
        }
    }
    true
}

/// One output, scalar, with bounds checks (the stride >= 3 path).
#[inline(always)]
/// # Safety
/// `row` must come from `plane` for a valid input plane, and `xo` must be < OW.
unsafe fn point(k: &PoolKernel, row: &Row, xo: usize) -> f32 {
    let (rows, cols) = (&k.rows, &k.cols);
    let (lo, hi) = cols.taps(xo);
    let ix0 = cols.origin(xo);
    let (mut max, mut sum, mut nan) = (f32::NEG_INFINITY, 0.0f32, false);
    for ky in row.ky.0..row.ky.1 {
        // SAFETY: ky and kx are taps inside the input (Axis::taps).
        let src = unsafe { row.input(rows, cols, ky) };
        for kx in lo..hi {
            let v = unsafe { *src.add((ix0 + (kx * cols.dilation) as isize) as usize) };
            nan |= v.is_nan();
            max = if max > v { max } else { v };
            sum += v;
        }
    }
    match k.kind {
        PoolKind::Max if nan => f32::NAN,
        PoolKind::Max => max,
        PoolKind::Average => sum / k.divisor(row, xo),
    }
}

/// Max (with NaN tracking) or sum of the taps of one vector of outputs, each tap loaded
/// by `load(src_row, kx, fill)`.
#[inline(always)]
fn reduce<S: Simd>(
    s: S,
    k: &PoolKernel,
    row: &Row,
    load: impl Fn(*const f32, usize, S::V) -> S::V,
) -> S::V {
    let max = k.kind == PoolKind::Max;
    let fill = s.splat(if max { f32::NEG_INFINITY } else { 0.0 });
    let mut acc = fill;
    let mut nan = s.mask_none();
    for ky in row.ky.0..row.ky.1 {
        // SAFETY: ky in row.ky.
        let src = unsafe { row.input(&k.rows, &k.cols, ky) };
        for kx in 0..k.cols.kernel {
            let v = load(src, kx, fill);
            if max {
                nan = s.mask_or(nan, s.is_nan(v));
                acc = s.max(acc, v);
            } else {
                acc = s.add(acc, v);
            }
        }
    }
    if max {
        s.select(nan, s.splat(f32::NAN), acc)
    } else {
        acc
    }
}

/// [`reduce`] over whole vectors at `xo`.
///
/// # Safety
/// `cols.full(xo, LANES)`, `xo >= first_inner`.
#[inline(always)]
unsafe fn reduce_full<S: Simd, const SW: usize>(
    s: S,
    k: &PoolKernel,
    row: &Row,
    xo: usize,
) -> S::V {
    // SAFETY: as the caller guarantees.
    reduce(
        s,
        k,
        row,
        #[inline(always)]
        |src, kx, _| unsafe { tap::<S, SW>(s, &k.cols, src, xo, kx) },
    )
}

/// Whole vectors from `xo` while they fit; returns where it stopped.
#[inline(always)]
unsafe fn body<S: Simd, const SW: usize>(
    s: S,
    k: &PoolKernel,
    row: &Row,
    o: *mut f32,
    mut xo: usize,
) -> usize {
    let l = S::LANES;
    // Inner columns have every tap inside the input.
    let inv = s.splat(1.0 / (row.ry * k.cols.kernel).max(1) as f32);
    while k.cols.full(xo, l) {
        // SAFETY: `full(xo)`, xo >= first_inner.
        let mut v = unsafe { reduce_full::<S, SW>(s, k, row, xo) };
        if k.kind == PoolKind::Average {
            v = s.mul(v, inv);
        }
        // SAFETY: xo + l <= OW (`full`).
        unsafe { s.store(o.add(xo), v) };
        xo += l;
    }
    xo
}

/// [`edge`] for the kernel's stride.
///
/// # Safety
/// As [`edge`].
#[inline(always)]
unsafe fn edge_sw<S: Simd>(s: S, k: &PoolKernel, row: &Row, o: *mut f32, xo: usize, n: usize) {
    // SAFETY: forwarded.
    unsafe {
        if k.cols.stride == 1 {
            edge::<S, 1>(s, k, row, o, xo, n)
        } else {
            edge::<S, 2>(s, k, row, o, xo, n)
        }
    }
}

/// Outputs `xo..xo+n` with masked loads (lanes outside the input are `-inf` for max,
/// `0` for average) and per-lane divisors for the average.
///
/// # Safety
/// `xo + n <= OW`, `n <= LANES`.
#[inline(always)]
unsafe fn edge<S: Simd, const SW: usize>(
    s: S,
    k: &PoolKernel,
    row: &Row,
    o: *mut f32,
    xo: usize,
    n: usize,
) {
    let cols = &k.cols;
    let b0 = cols.origin(xo);
    // SAFETY: the masks keep every load inside its row.
    let mut v = reduce(
        s,
        k,
        row,
        #[inline(always)]
        |src, kx, fill| {
            let b = b0 + (kx * cols.dilation) as isize;
            unsafe { load_win::<S, SW>(s, src, b, &win::<S, SW>(s, cols.input, b, n), Some(fill)) }
        },
    );
    if k.kind == PoolKind::Average {
        let mut inv = [1.0f32; 16];
        for (i, d) in inv.iter_mut().enumerate().take(n) {
            *d = 1.0 / k.divisor(row, xo + i);
        }
        // SAFETY: `inv` has 16 >= n floats.
        v = s.mul(v, unsafe { s.load_part(inv.as_ptr(), n, s.splat(1.0)) });
    }
    // SAFETY: xo + n <= OW.
    unsafe {
        if n == S::LANES {
            s.store(o.add(xo), v)
        } else {
            s.store_part(o.add(xo), n, v)
        }
    }
}

/// The window rows' raw loads for a 2×2 / 3×3 stride-2 vector at `xo`: for each row, the
/// `2 * LANES` floats from the window's first column (`a`, `b`) and, for 3×3, the same
/// two columns on (`c`, `d`).
struct Raw<S: Simd> {
    a: S::V,
    b: S::V,
    c: S::V,
    d: S::V,
}

#[inline(always)]
/// # Safety
/// `ky` in `row.ky`, and `k.cols.full(xo, LANES)` must hold (all 2·LANES floats in the row).
unsafe fn raw<S: Simd>(s: S, k: &PoolKernel, row: &Row, ky: usize, xo: usize) -> Raw<S> {
    let l = S::LANES;
    // SAFETY: `full(xo)` bounds the last float (2xo - pad + 2 + 2l - 1 for 3×3) by the row.
    unsafe {
        let p = row
            .input(&k.rows, &k.cols, ky)
            .add(2 * xo - k.cols.pad_begin);
        let (a, b) = (s.load(p), s.load(p.add(l)));
        if k.algo == Algo::K3S2 {
            Raw {
                a,
                b,
                c: s.load(p.add(2)),
                d: s.load(p.add(2 + l)),
            }
        } else {
            Raw { a, b, c: a, d: b }
        }
    }
}

/// 2×2 / 3×3 stride-2 max: rows combined on the raw loads, then de-interleaved once.
///
/// # Safety
/// `o` points at a full output row and `row` at in-bounds input rows of this window.
#[inline(always)]
unsafe fn body_s2_max<S: Simd>(
    s: S,
    k: &PoolKernel,
    row: &Row,
    o: *mut f32,
    mut xo: usize,
) -> usize {
    let l = S::LANES;
    let k3 = k.algo == Algo::K3S2;
    while k.cols.full(xo, l) {
        let ninf = s.splat(f32::NEG_INFINITY);
        let (mut a, mut b, mut c, mut d) = (ninf, ninf, ninf, ninf);
        let mut nan = s.mask_none();
        for ky in row.ky.0..row.ky.1 {
            // SAFETY: `full(xo)`, xo >= first_inner.
            let r = unsafe { raw(s, k, row, ky, xo) };
            nan = s.mask_or(nan, s.mask_or(s.is_nan(r.a), s.is_nan(r.b)));
            (a, b) = (s.max(a, r.a), s.max(b, r.b));
            if k3 {
                nan = s.mask_or(nan, s.is_nan(r.d));
                (c, d) = (s.max(c, r.c), s.max(d, r.d));
            }
        }
        let v = if s.any(nan) {
            // A NaN somewhere in the loads: redo this vector tap by tap.
            // SAFETY: as above.
            unsafe { reduce_full::<S, 2>(s, k, row, xo) }
        } else {
            let (e, od) = s.deinterleave(a, b);
            let m = s.max(e, od);
            if k3 {
                s.max(m, s.deinterleave(c, d).0)
            } else {
                m
            }
        };
        // SAFETY: xo + l <= OW (`full`).
        unsafe { s.store(o.add(xo), v) };
        xo += l;
    }
    xo
}

/// 2×2 / 3×3 stride-2 average: rows summed on the raw loads, then de-interleaved once.
#[inline(always)]
unsafe fn body_s2_avg<S: Simd>(
    s: S,
    k: &PoolKernel,
    row: &Row,
    o: *mut f32,
    mut xo: usize,
) -> usize {
    let l = S::LANES;
    let k3 = k.algo == Algo::K3S2;
    let inv = s.splat(1.0 / (row.ry * k.cols.kernel).max(1) as f32);
    while k.cols.full(xo, l) {
        let (mut a, mut b, mut c, mut d) = (s.zero(), s.zero(), s.zero(), s.zero());
        for ky in row.ky.0..row.ky.1 {
            // SAFETY: `full(xo)`, xo >= first_inner.
            let r = unsafe { raw(s, k, row, ky, xo) };
            (a, b) = (s.add(a, r.a), s.add(b, r.b));
            if k3 {
                (c, d) = (s.add(c, r.c), s.add(d, r.d));
            }
        }
        let (e, od) = s.deinterleave(a, b);
        let mut v = s.add(e, od);
        if k3 {
            v = s.add(v, s.deinterleave(c, d).0);
        }
        // SAFETY: xo + l <= OW (`full`).
        unsafe { s.store(o.add(xo), s.mul(v, inv)) };
        xo += l;
    }
    xo
}

/// Global average or max pooling of `c` planes of `hw` floats each (pass `n * C` planes
/// for a batch): `out[i]` pools `x[i*hw..(i+1)*hw]`. The average sums in f64; the max is
/// NaN when the plane holds a NaN. As [`super::reference::global_pool`].
pub fn global_pool(isa: Isa, kind: PoolKind, x: &[f32], c: usize, hw: usize, out: &mut [f32]) {
    assert!(hw > 0, "empty planes");
    assert_eq!(x.len(), c * hw, "input");
    assert_eq!(out.len(), c, "output");
    let xp = x.as_ptr();
    dispatch!(isa, |s| {
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: plane i is `i*hw..(i+1)*hw` of the asserted `c*hw` floats.
            let p = unsafe { xp.add(i * hw) };
            *o = match kind {
                PoolKind::Average => (unsafe { sum_f64(s, p, hw) } / hw as f64) as f32,
                PoolKind::Max => unsafe { plane_max(s, p, hw) },
            };
        }
    })
}

/// Max of `len` floats, NaN if any is NaN.
#[inline(always)]
unsafe fn plane_max<S: Simd>(s: S, p: *const f32, len: usize) -> f32 {
    let l = S::LANES;
    let ninf = s.splat(f32::NEG_INFINITY);
    let (mut m0, mut m1) = (ninf, ninf);
    let mut nan = s.mask_none();
    let mut i = 0;
    // SAFETY (all blocks): accesses at i..i+l <= len or i..len.
    while i + 2 * l <= len {
        // SAFETY: i + 2l <= len, so both vectors lie in p..p+len (caller's contract).
        let (a, b) = unsafe { (s.load(p.add(i)), s.load(p.add(i + l))) };
        nan = s.mask_or(nan, s.mask_or(s.is_nan(a), s.is_nan(b)));
        (m0, m1) = (s.max(m0, a), s.max(m1, b));
        i += 2 * l;
    }
    while i < len {
        let n = l.min(len - i);
        // SAFETY: n = min(l, len - i), so the partial load stays in p..p+len.
        let a = unsafe { s.load_part(p.add(i), n, ninf) };
        nan = s.mask_or(nan, s.is_nan(a));
        m0 = s.max(m0, a);
        i += n;
    }
    if s.any(nan) {
        f32::NAN
    } else {
        s.hmax(s.max(m0, m1))
    }
}
