//! Portable micro-kernels: up to 4 rows × 8 columns of plain Rust (`a * b + c`, two
//! roundings, never `f32::mul_add`, which is a libm call without FMA). LLVM vectorizes
//! the fixed-size inner loops with whatever the baseline target has (SSE2 on x86-64).

use super::{act_f32, Store, UKernel, Ukr, MR_MAX};
use crate::simd::Isa;

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
    unsafe { body::<R, FULL, false>(kc, a, lda, b, ldb, c, ldc, nv, st) }
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
    unsafe { body::<R, FULL, true>(kc, a, lda, b, ldb, c, ldc, nv, st) }
}

/// The body of [`ukr`] and [`ukr_rows`] (`ROWS`: A addressed by rows).
///
/// # Safety
/// As [`ukr`] or [`ukr_rows`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body<const R: usize, const FULL: bool, const ROWS: bool>(
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
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
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
            let av = unsafe { *ap.add(if ROWS { i * lda } else { i }) };
            for (x, &bj) in row.iter_mut().zip(&bv) {
                *x += av * bj;
            }
        }
        ap = ap.wrapping_add(if ROWS { 1 } else { lda });
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
