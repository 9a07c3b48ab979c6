//! Portable micro-kernels: up to 4 rows × 8 columns of plain Rust (`a * b + c`, two
//! roundings, never `f32::mul_add`, which is a libm call without FMA). LLVM vectorizes
//! the fixed-size inner loops with whatever the baseline target has (SSE2 on x86-64).

use super::{act_f32, Store, TapsKernel, UKernel, Ukr, MR_MAX};
use crate::simd::Isa;
use std::ptr::null;

const MR: usize = 4;
const NR: usize = 8;

/// # Safety
/// `a` / `b` hold kc steps of R rows / w columns, `c` (and residual) R rows of w columns
/// at stride `ldc`, bias_row R and bias_col w floats (the UKernel contract).
unsafe fn ukr<const R: usize, const FULL: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
) {
    // SAFETY: forwarded (same contract).
    unsafe { body::<R, FULL, false, 0>(kc, a, lda, b, ldb, null(), c, ldc, nv, st) }
}

/// # Safety
/// As [`ukr`], with A row `i` of step `k` at `a + i·lda + k` (see `Ukr::rows`).
unsafe fn ukr_rows<const R: usize, const FULL: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
) {
    // SAFETY: forwarded (same contract).
    unsafe { body::<R, FULL, true, 0>(kc, a, lda, b, ldb, null(), c, ldc, nv, st) }
}

/// # Safety
/// The TapsKernel contract (A row `i` of step `k` at `a + offs[k] + i·S`).
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_taps<const R: usize, const FULL: bool, const S: usize>(
    kc: usize,
    a: *const f32,
    offs: *const usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
) {
    // SAFETY: forwarded (same contract).
    unsafe { body::<R, FULL, false, S>(kc, a, 0, b, ldb, offs, c, ldc, nv, st) }
}

/// The body of [`ukr`], [`ukr_rows`] (`ROWS`: A addressed by rows) and [`ukr_taps`]
/// (`TAPS > 0`: A row `i` of step `k` at `a + offs[k] + i·TAPS`).
///
/// # Safety
/// As [`ukr`] or [`ukr_rows`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body<const R: usize, const FULL: bool, const ROWS: bool, const TAPS: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
) {
    let w = if FULL { NR } else { nv.min(NR) };
    let mut acc = [[0f32; NR]; R];
    // SAFETY (all accesses below): rows < R, columns < w, k < kc are valid (UKernel
    // contract).
    if st.load_c {
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate().take(w) {
                // SAFETY: i < R and j < w, inside the C tile (UKernel contract).
                *x = unsafe { *c.add(i * ldc + j) };
            }
        }
    }
    let (mut ap, mut bp, mut op) = (a, b, offs);
    for _ in 0..kc {
        if TAPS > 0 {
            // SAFETY: offs has kc entries (TapsKernel contract); one per step.
            ap = a.wrapping_add(unsafe { *op });
            op = op.wrapping_add(1);
        }
        let mut bv = [0f32; NR];
        if FULL {
            // SAFETY: FULL means NR = 8 readable floats of B at bp for this k < kc.
            bv = unsafe { std::ptr::read_unaligned(bp as *const [f32; NR]) };
        } else {
            for (j, x) in bv.iter_mut().enumerate().take(w) {
                // SAFETY: j < w, inside this k's B row.
                *x = unsafe { *bp.add(j) };
            }
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: i < R, inside this k's A column.
            let at = if ROWS {
                i * lda
            } else if TAPS > 0 {
                i * TAPS
            } else {
                i
            };
            let av = unsafe { *ap.add(at) };
            for (x, &bj) in row.iter_mut().zip(&bv) {
                *x += av * bj;
            }
        }
        if TAPS == 0 {
            ap = ap.wrapping_add(if ROWS { 1 } else { lda });
        }
        bp = bp.wrapping_add(ldb);
    }
    if st.finish {
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: non-null bias_row holds R floats; i < R.
            let br = if st.bias_row.is_null() {
                0.0
            } else {
                unsafe { *st.bias_row.add(i) }
            };
            for (j, x) in row.iter_mut().enumerate().take(w) {
                let mut v = *x + br;
                if !st.bias_col.is_null() {
                    // SAFETY: non-null bias_col holds w floats; j < w.
                    v += unsafe { *st.bias_col.add(j) };
                }
                if !st.residual.is_null() {
                    // SAFETY: non-null residual is shaped like C; i < R, j < w.
                    v += unsafe { *st.residual.add(i * ldc + j) };
                }
                *x = act_f32(st.act, v);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &x) in row.iter().enumerate().take(w) {
            // SAFETY: i < R and j < w, inside the C tile (UKernel contract).
            unsafe { *c.add(i * ldc + j) = x };
        }
    }
}

macro_rules! table {
    ($full:literal) => {
        table!(ukr, $full)
    };
    ($f:ident, $full:literal) => {
        [
            $f::<1, $full> as UKernel, // index 0 unused
            $f::<1, $full>,
            $f::<2, $full>,
            $f::<3, $full>,
            $f::<4, $full>,
            // Never selected (mr <= 4); present to fill the table.
            $f::<4, $full>,
            $f::<4, $full>,
            $f::<4, $full>,
            $f::<4, $full>,
            $f::<4, $full>,
            $f::<4, $full>,
            $f::<4, $full>,
            $f::<4, $full>,
        ]
    };
}

const _: () = assert!(MR <= MR_MAX);

pub(crate) static UKR: Ukr = Ukr {
    isa: Isa::Scalar,
    mr: MR,
    nr: NR,
    full: table!(true),
    multi: None,
    tail: table!(false),
    rows: table!(ukr_rows, true),
    rows_tail: table!(ukr_rows, false),
    narrow: table!(false),
    narrow_max: NR,
    narrow_mr: MR,
    // No column-tail kernels: the portable tiles are only 8 wide.
    tcol: [ukr::<1, false>; 9],
    tcol_max: 0,
    tcol_panels: [None; 9],
};

macro_rules! taps_table {
    ($full:literal, $s:literal) => {
        [
            ukr_taps::<1, $full, $s> as TapsKernel, // index 0 unused
            ukr_taps::<1, $full, $s>,
            ukr_taps::<2, $full, $s>,
            ukr_taps::<3, $full, $s>,
            ukr_taps::<4, $full, $s>,
        ]
    };
}

/// Tap-addressed 8-wide kernels (see [`TapsKernel`]), indexed by rows `1..=4`, for output
/// pixels 1 and 2 input columns apart (`[stride − 1]`): full and any `nv < 8`.
pub(crate) static TAPS_FULL: [[TapsKernel; MR + 1]; 2] =
    [taps_table!(true, 1), taps_table!(true, 2)];
pub(crate) static TAPS_TAIL: [[TapsKernel; MR + 1]; 2] =
    [taps_table!(false, 1), taps_table!(false, 2)];
