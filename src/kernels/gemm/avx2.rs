//! AVX2+FMA micro-kernels: up to 6 rows × 16 columns (two ymm per row, 12 accumulators),
//! broadcast A, FMA; `vmaskmov` loads and stores for the N remainder.

use super::{
    act_is_vector, act_tile_vector, clamp_of, MultiKernel, OffsKernel, Store, TapsKernel, UKernel,
    Ukr, MR_MAX,
};
use crate::graph::Activation;
use crate::simd::Isa;
use core::arch::x86_64::*;
use std::ptr::null;

const MR: usize = 6;

#[inline]
#[target_feature(enable = "avx2,fma")]
fn act_ymm(x: __m256, act: Activation) -> __m256 {
    let zero = _mm256_setzero_ps();
    match act {
        // max/min return their second operand when either is NaN, so NaN propagates.
        Activation::Relu => _mm256_max_ps(zero, x),
        Activation::Clip { min, max } => {
            _mm256_min_ps(_mm256_set1_ps(max), _mm256_max_ps(_mm256_set1_ps(min), x))
        }
        Activation::LeakyRelu { alpha } => {
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(x, zero);
            _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(alpha)), neg)
        }
        Activation::HardSigmoid { alpha, beta } => {
            let t = _mm256_fmadd_ps(_mm256_set1_ps(alpha), x, _mm256_set1_ps(beta));
            _mm256_min_ps(_mm256_set1_ps(1.0), _mm256_max_ps(zero, t))
        }
        Activation::HardSwish => {
            let t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.0 / 6.0), _mm256_set1_ps(0.5));
            let t = _mm256_min_ps(_mm256_set1_ps(1.0), _mm256_max_ps(zero, t));
            _mm256_mul_ps(x, t)
        }
        _ => x,
    }
}

/// Lane mask with the first `r` (0..=8) lanes set.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lane_mask(r: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(r as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

#[target_feature(enable = "avx2,fma")]
/// # Safety
/// AVX2 and FMA present (dispatch); `a` / `b` / `c` / bias / residual valid for R rows
/// and nv (MASKED) or 8·NV columns over kc steps (the UKernel contract).
unsafe fn ukr<const R: usize, const NV: usize, const MASKED: bool>(
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
    unsafe {
        body::<R, NV, MASKED, false, false, 0, false>(
            kc,
            a,
            lda,
            b,
            ldb,
            null(),
            c,
            ldc,
            nv,
            st.pf,
            st,
        )
    }
}

#[target_feature(enable = "avx2,fma")]
/// # Safety
/// As [`ukr`], with A row `i` of step `k` at `a + i·lda + k` (see `Ukr::rows`).
unsafe fn ukr_rows<const R: usize, const NV: usize, const MASKED: bool>(
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
    unsafe {
        body::<R, NV, MASKED, false, true, 0, false>(
            kc,
            a,
            lda,
            b,
            ldb,
            null(),
            c,
            ldc,
            nv,
            st.pf,
            st,
        )
    }
}

#[target_feature(enable = "avx2,fma")]
/// # Safety
/// As [`ukr`], with row `k` of B at `b + offs[k]` (`offs` has `kc` entries).
unsafe fn ukr_offs<const R: usize, const NV: usize, const MASKED: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    st: &Store,
) {
    // SAFETY: forwarded (same contract).
    unsafe {
        body::<R, NV, MASKED, true, false, 0, false>(kc, a, lda, b, 0, offs, c, ldc, nv, st.pf, st)
    }
}

#[target_feature(enable = "avx2,fma")]
/// # Safety
/// The TapsKernel contract (A row `i` of step `k` at `a + offs[k] + i·S`).
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_taps<const R: usize, const NV: usize, const MASKED: bool, const S: usize>(
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
    unsafe {
        body::<R, NV, MASKED, false, false, S, false>(kc, a, 0, b, ldb, offs, c, ldc, nv, st.pf, st)
    }
}

macro_rules! taps_table {
    ($nv:literal, $masked:literal, $s:literal) => {
        [
            ukr_taps::<1, $nv, $masked, $s> as TapsKernel, // index 0 unused
            ukr_taps::<1, $nv, $masked, $s>,
            ukr_taps::<2, $nv, $masked, $s>,
            ukr_taps::<3, $nv, $masked, $s>,
            ukr_taps::<4, $nv, $masked, $s>,
            ukr_taps::<5, $nv, $masked, $s>,
            ukr_taps::<6, $nv, $masked, $s>,
        ]
    };
}

/// Tap-addressed 16-wide kernels (see [`TapsKernel`]), indexed by rows `1..=6`, for
/// output pixels 1 and 2 input columns apart (`[stride − 1]`): full, masked, one vector.
pub(crate) static TAPS_FULL: [[TapsKernel; MR + 1]; 2] =
    [taps_table!(2, false, 1), taps_table!(2, false, 2)];
pub(crate) static TAPS_TAIL: [[TapsKernel; MR + 1]; 2] =
    [taps_table!(2, true, 1), taps_table!(2, true, 2)];
pub(crate) static TAPS_HALF: [[TapsKernel; MR + 1]; 2] =
    [taps_table!(1, true, 1), taps_table!(1, true, 2)];

/// Offset-addressed 16-wide kernels (see [`OffsKernel`]), indexed by rows `1..=6`: full
/// width and masked (`nv < 16`).
pub(crate) static OFFS_FULL: [OffsKernel; MR + 1] = [
    ukr_offs::<1, 2, false>,
    ukr_offs::<1, 2, false>,
    ukr_offs::<2, 2, false>,
    ukr_offs::<3, 2, false>,
    ukr_offs::<4, 2, false>,
    ukr_offs::<5, 2, false>,
    ukr_offs::<6, 2, false>,
];
pub(crate) static OFFS_TAIL: [OffsKernel; MR + 1] = [
    ukr_offs::<1, 2, true>,
    ukr_offs::<1, 2, true>,
    ukr_offs::<2, 2, true>,
    ukr_offs::<3, 2, true>,
    ukr_offs::<4, 2, true>,
    ukr_offs::<5, 2, true>,
    ukr_offs::<6, 2, true>,
];
/// One vector (8 columns), masked: tails of at most 8 columns, which the two-vector
/// tail would compute twice over.
pub(crate) static OFFS_HALF: [OffsKernel; MR + 1] = [
    ukr_offs::<1, 1, true>,
    ukr_offs::<1, 1, true>,
    ukr_offs::<2, 1, true>,
    ukr_offs::<3, 1, true>,
    ukr_offs::<4, 1, true>,
    ukr_offs::<5, 1, true>,
    ukr_offs::<6, 1, true>,
];

/// `nt` full 6-or-fewer × 16 tiles side by side (see `Ukr::multi`): tile `t` reads B at
/// `b + t·bstep` and writes C (bias_col, residual) 16·t columns on. Prefetches `st.pf`
/// during the first tile only.
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// AVX2 and FMA present (dispatch); every tile satisfies the UKernel contract for
/// `ukr::<R, 2, false>` at its B, C, bias_col and residual addresses.
#[allow(clippy::too_many_arguments)]
unsafe fn multi<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    bstep: usize,
    nt: usize,
    c: *mut f32,
    ldc: usize,
    st: &Store,
) {
    let mut s = *st;
    let mut pf = st.pf;
    for t in 0..nt {
        // SAFETY: tile t's addresses (caller); wrapping adds only form them.
        unsafe {
            body::<R, 2, false, false, false, 0, false>(
                kc,
                a,
                lda,
                b.wrapping_add(t * bstep),
                ldb,
                null(),
                c.wrapping_add(16 * t),
                ldc,
                16,
                pf,
                &s,
            );
        }
        pf = std::ptr::null();
        if !s.bias_col.is_null() {
            s.bias_col = s.bias_col.wrapping_add(16);
        }
        if !s.residual.is_null() {
            s.residual = s.residual.wrapping_add(16);
        }
    }
}

/// The body of [`ukr`], inlined into each caller so that it compiles with AVX2 and FMA.
///
/// # Safety
/// As [`ukr`]; `pf` replaces `st.pf` (null: no prefetch).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body<
    const R: usize,
    const NV: usize,
    const MASKED: bool,
    const OFFS: bool,
    const ROWS: bool,
    const TAPS: usize,
    const PAIR: bool,
>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    nv: usize,
    pf: *const f32,
    st: &Store,
) {
    let all = _mm256_set1_epi32(-1);
    let mut mask = [all; NV];
    if MASKED {
        for (v, m) in mask.iter_mut().enumerate() {
            *m = lane_mask(nv.saturating_sub(8 * v).min(8));
        }
    }
    // SAFETY (all loads and stores below): rows < R, columns < nv (masked lanes are not
    // accessed) or all 8·NV columns when unmasked, k < kc are valid (UKernel contract).
    macro_rules! load {
        ($p:expr, $v:expr) => {
            if MASKED {
                // SAFETY: masked lanes >= nv are not touched; the rest is in the tile (see above).
                unsafe { _mm256_maskload_ps($p, mask[$v]) }
            } else {
                // SAFETY: unmasked: all 8 lanes are within the 8·NV-column tile (see above).
                unsafe { _mm256_loadu_ps($p) }
            }
        };
    }
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    if st.load_c {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = load!(c.add(i * ldc + 8 * v), v);
            }
        }
    }
    let (mut ap, mut bp, mut op) = (a, b, offs);
    // With PAIR (NV = 8, unmasked): vectors 4.. are the next 32-wide panel of pre-packed
    // B, 32·kc floats on (see ROW64).
    let pstride = if PAIR { super::NR_PACK * kc } else { 0 };
    const { assert!(!PAIR || (NV == 8 && !MASKED && !OFFS && TAPS == 0)) };
    // One k step: NV vectors of B, R broadcasts of A, R·NV FMAs. With OFFS, row k of B
    // is at `b + offs[k]` instead of `b + k·ldb`.
    macro_rules! step {
        () => {{
            if OFFS {
                // SAFETY: offs has kc entries (OffsKernel contract); one per step.
                bp = b.wrapping_add(unsafe { *op });
                op = op.wrapping_add(1);
            }
            if TAPS > 0 {
                // SAFETY: offs has kc entries (TapsKernel contract); one per step.
                ap = a.wrapping_add(unsafe { *op });
                op = op.wrapping_add(1);
            }
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = if PAIR {
                    // SAFETY: row k of panel v / 4 (ROW64's contract), 8 columns.
                    unsafe { _mm256_loadu_ps(bp.add(v / 4 * pstride + 8 * (v % 4))) }
                } else {
                    load!(bp.add(8 * v), v)
                };
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
                let av = _mm256_set1_ps(unsafe { *ap.add(at) });
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(av, bv[v], *x);
                }
            }
            if TAPS == 0 {
                ap = ap.wrapping_add(if ROWS { 1 } else { lda });
            }
            if !OFFS {
                bp = bp.wrapping_add(ldb);
            }
        }};
    }
    if !pf.is_null() {
        let (mut pf, pf_to) = (pf, st.pf_to);
        for _ in 0..kc {
            // A hint: never faults, whatever the address (wrapping arithmetic below).
            super::prefetch(pf, pf_to);
            if PAIR {
                super::prefetch(pf.wrapping_add(pstride), pf_to);
            }
            pf = pf.wrapping_add(st.pf_stride);
            step!();
        }
    } else {
        // Unrolled by 4: short K blocks (1×1 convolutions with few input channels)
        // spend less on loop control.
        for _ in 0..kc / 4 {
            step!();
            step!();
            step!();
            step!();
        }
        for _ in 0..kc % 4 {
            step!();
        }
    }
    if st.finish {
        if !st.bias_row.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: non-null bias_row holds R floats; i < R.
                let bb = _mm256_set1_ps(unsafe { *st.bias_row.add(i) });
                for x in row.iter_mut() {
                    *x = _mm256_add_ps(*x, bb);
                }
            }
        }
        if !st.bias_col.is_null() {
            for v in 0..NV {
                let bb = load!(st.bias_col.add(8 * v), v);
                for row in acc.iter_mut() {
                    row[v] = _mm256_add_ps(row[v], bb);
                }
            }
        }
        if !st.residual.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm256_add_ps(*x, load!(st.residual.add(i * ldc + 8 * v), v));
                }
            }
        }
        // Clamps here, with the accumulators in registers; other activations after the
        // store (below).
        if let Some((lo, hi)) = clamp_of(st.act) {
            let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
            for row in acc.iter_mut() {
                for x in row.iter_mut() {
                    *x = _mm256_min_ps(hi, _mm256_max_ps(lo, *x));
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            // SAFETY: i < R, v < NV; masked lanes beyond nv are not written.
            unsafe {
                if MASKED {
                    _mm256_maskstore_ps(c.add(i * ldc + 8 * v), mask[v], *x);
                } else {
                    _mm256_storeu_ps(c.add(i * ldc + 8 * v), *x);
                }
            }
        }
    }
    if st.finish && clamp_of(st.act).is_none() && !st.act.is_identity() {
        let w = if MASKED { nv } else { 8 * NV };
        // SAFETY: the R × w tile of C was just written and is valid (UKernel contract).
        unsafe {
            if act_is_vector(st.act) {
                act_tile(c, ldc, R, w, st.act)
            } else {
                act_tile_vector(Isa::Avx2, c, ldc, R, w, st.act)
            }
        };
    }
}

/// Applies a vector activation other than a clamp to an `r × w` tile of C in place (a
/// second pass, out of line, so that the micro-kernels keep their accumulators in
/// registers).
///
/// # Safety
/// AVX2 and FMA present; `c + i·ldc + j` valid for `i < r`, `j < w`.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn act_tile(c: *mut f32, ldc: usize, r: usize, w: usize, act: Activation) {
    for i in 0..r {
        let mut j = 0;
        while j < w {
            let m = lane_mask((w - j).min(8));
            // SAFETY: row i < r, lanes j.. below w only (mask).
            unsafe {
                let p = c.add(i * ldc + j);
                _mm256_maskstore_ps(p, m, act_ymm(_mm256_maskload_ps(p, m), act));
            }
            j += 8;
        }
    }
}

/// Column-tail kernel: all `h = lda <= 12` rows of an A panel (two ymm, masked) against
/// `NV` columns of B, one broadcast per column and k. See `Ukr::tcol`.
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// AVX2 and FMA present (dispatch); A has h = lda <= 12 rows, B / C / bias / residual
/// are valid for h rows and NV columns over kc steps (UKernel contract, nv = NV).
unsafe fn tcol<const NV: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    _nv: usize,
    st: &Store,
) {
    let h = lda;
    debug_assert!((1..=12).contains(&h));
    let m = [lane_mask(h.min(8)), lane_mask(h.saturating_sub(8))];
    // SAFETY (all accesses below): A rows < h of steps < kc, B columns < NV, C, bias and
    // residual rows < h / columns < NV are valid (UKernel contract, mr = h, nv = NV);
    // masked-off lanes are not accessed.
    let mut acc = [[_mm256_setzero_ps(); 2]; NV];
    if st.load_c {
        // SAFETY: C is valid for h rows and NV columns (contract).
        unsafe { tcol_load_c(&mut acc, c, ldc, h) };
    }
    let (mut ap, mut bp) = (a, b);
    let mut pf = st.pf;
    let do_pf = !pf.is_null();
    let pf_to = st.pf_to;
    for _ in 0..kc {
        if do_pf {
            super::prefetch(pf, pf_to);
            pf = pf.wrapping_add(st.pf_stride);
        }
        // SAFETY: masks cover exactly the h rows of this k's A column.
        let av = unsafe {
            [
                _mm256_maskload_ps(ap, m[0]),
                _mm256_maskload_ps(ap.add(8), m[1]),
            ]
        };
        for (j, col) in acc.iter_mut().enumerate() {
            // SAFETY: j < NV, inside this k's B row.
            let bj = _mm256_set1_ps(unsafe { *bp.add(j) });
            col[0] = _mm256_fmadd_ps(av[0], bj, col[0]);
            col[1] = _mm256_fmadd_ps(av[1], bj, col[1]);
        }
        ap = ap.wrapping_add(lda);
        bp = bp.wrapping_add(ldb);
    }
    // SAFETY: as above.
    unsafe { tcol_finish(acc, h, c, ldc, st) };
}

/// [`tcol`] over `P` consecutive full (12-row) panels of A in one call: `2·P·NV`
/// independent FMA chains instead of `2·NV`. With one or two columns, `tcol`'s two or
/// four chains leave the FMA units waiting on latency most of the time (a 7×7 map's
/// 49 = 3·16 + 1 columns: that one column took about 8% of the layer). Each element's
/// chain of FMAs over k is the same as in every other kernel.
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// AVX2 and FMA present (dispatch); for each `p < P`, the [`tcol`] contract with
/// `h = lda = 12` for the panel whose A starts at `a + p·pstride` and whose C rows, row
/// bias and residual rows start `12·p` rows on.
unsafe fn tcol_panels<const NV: usize, const P: usize>(
    kc: usize,
    a: *const f32,
    pstride: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    st: &Store,
) {
    const H: usize = 12;
    let m4 = lane_mask(4);
    // SAFETY (all accesses below): as the contract, panel by panel; the masked loads
    // read rows 8..12 of a full panel.
    let mut acc = [[[_mm256_setzero_ps(); 2]; NV]; P];
    if st.load_c {
        for (p, accp) in acc.iter_mut().enumerate() {
            // SAFETY: panel p's C rows (12 of them) and NV columns are valid (contract).
            unsafe { tcol_load_c(accp, c.add(p * H * ldc), ldc, H) };
        }
    }
    let mut bp = b;
    let mut ak = 0;
    for _ in 0..kc {
        let mut bj = [_mm256_setzero_ps(); NV];
        for (j, x) in bj.iter_mut().enumerate() {
            // SAFETY: j < NV, inside this k's B row.
            *x = _mm256_set1_ps(unsafe { *bp.add(j) });
        }
        for (p, accp) in acc.iter_mut().enumerate() {
            // SAFETY: panel p (p < P) holds 12 rows at each of the kc steps (contract):
            // rows 0..8 by the plain load, rows 8..12 by the masked one.
            let ap = unsafe { a.add(p * pstride + ak) };
            // SAFETY: as above.
            let a0 = unsafe { _mm256_loadu_ps(ap) };
            // SAFETY: as above.
            let a1 = unsafe { _mm256_maskload_ps(ap.add(8), m4) };
            for (col, &bv) in accp.iter_mut().zip(&bj) {
                col[0] = _mm256_fmadd_ps(a0, bv, col[0]);
                col[1] = _mm256_fmadd_ps(a1, bv, col[1]);
            }
        }
        ak += H;
        bp = bp.wrapping_add(ldb);
    }
    for (p, accp) in acc.into_iter().enumerate() {
        let off = |q: *const f32, n: usize| if q.is_null() { q } else { q.wrapping_add(n) };
        let sp = Store {
            bias_row: off(st.bias_row, p * H),
            residual: off(st.residual, p * H * ldc),
            ..*st
        };
        // SAFETY: panel p's C rows, row bias and residual rows (offset above) are valid
        // for 12 rows and NV columns (contract).
        unsafe { tcol_finish(accp, H, c.add(p * H * ldc), ldc, &sp) };
    }
}

/// Loads an `h × NV` tile of C into column accumulators (rows as lanes).
///
/// # Safety
/// AVX2 present; C valid for `h <= 12` rows of stride `ldc` and `NV` columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tcol_load_c<const NV: usize>(
    acc: &mut [[__m256; 2]; NV],
    c: *const f32,
    ldc: usize,
    h: usize,
) {
    let mut tmp = [0f32; 16];
    for (j, col) in acc.iter_mut().enumerate() {
        for (i, x) in tmp.iter_mut().enumerate().take(h) {
            // SAFETY: i < h and j < NV, inside the C tile.
            *x = unsafe { *c.add(i * ldc + j) };
        }
        col[0] = _mm256_loadu_ps(tmp.as_ptr());
        col[1] = _mm256_loadu_ps(tmp.as_ptr().add(8));
    }
}

/// The epilogue of a column tile (rows as lanes): bias, residual and activation on the
/// last K block, then the store of its `h × NV` elements.
///
/// # Safety
/// AVX2 present; C (and the residual) valid for `h <= 12` rows of stride `ldc` and `NV`
/// columns, a non-null row bias for `h` and column bias for `NV` floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tcol_finish<const NV: usize>(
    mut acc: [[__m256; 2]; NV],
    h: usize,
    c: *mut f32,
    ldc: usize,
    st: &Store,
) {
    let m = [lane_mask(h.min(8)), lane_mask(h.saturating_sub(8))];
    let mut tmp = [0f32; 16];
    let vector_act = act_is_vector(st.act);
    if st.finish {
        if !st.bias_row.is_null() {
            // SAFETY: non-null bias_row holds h floats; masks cover exactly h lanes.
            let bb = unsafe {
                [
                    _mm256_maskload_ps(st.bias_row, m[0]),
                    _mm256_maskload_ps(st.bias_row.add(8), m[1]),
                ]
            };
            for col in acc.iter_mut() {
                col[0] = _mm256_add_ps(col[0], bb[0]);
                col[1] = _mm256_add_ps(col[1], bb[1]);
            }
        }
        if !st.bias_col.is_null() {
            for (j, col) in acc.iter_mut().enumerate() {
                // SAFETY: non-null bias_col holds NV floats; j < NV.
                let bb = _mm256_set1_ps(unsafe { *st.bias_col.add(j) });
                col[0] = _mm256_add_ps(col[0], bb);
                col[1] = _mm256_add_ps(col[1], bb);
            }
        }
        if !st.residual.is_null() {
            for (j, col) in acc.iter_mut().enumerate() {
                for (i, x) in tmp.iter_mut().enumerate().take(h) {
                    // SAFETY: non-null residual is shaped like C; i < h, j < NV.
                    *x = unsafe { *st.residual.add(i * ldc + j) };
                }
                col[0] = _mm256_add_ps(col[0], _mm256_loadu_ps(tmp.as_ptr()));
                col[1] = _mm256_add_ps(col[1], _mm256_loadu_ps(tmp.as_ptr().add(8)));
            }
        }
        if vector_act && !st.act.is_identity() {
            for col in acc.iter_mut() {
                col[0] = act_ymm(col[0], st.act);
                col[1] = act_ymm(col[1], st.act);
            }
        }
    }
    for (j, col) in acc.iter().enumerate() {
        _mm256_storeu_ps(tmp.as_mut_ptr(), col[0]);
        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), col[1]);
        for (i, &x) in tmp.iter().enumerate().take(h) {
            // SAFETY: i < h and j < NV, inside the C tile.
            unsafe { *c.add(i * ldc + j) = x };
        }
    }
    if st.finish && !vector_act {
        // SAFETY: the h × NV tile of C was just written and is valid.
        unsafe { act_tile_vector(Isa::Avx2, c, ldc, h, NV, st.act) };
    }
}

macro_rules! table12 {
    ($nv:literal, $masked:literal) => {
        [
            ukr::<1, $nv, $masked> as UKernel, // index 0 unused
            ukr::<1, $nv, $masked>,
            ukr::<2, $nv, $masked>,
            ukr::<3, $nv, $masked>,
            ukr::<4, $nv, $masked>,
            ukr::<5, $nv, $masked>,
            ukr::<6, $nv, $masked>,
            ukr::<7, $nv, $masked>,
            ukr::<8, $nv, $masked>,
            ukr::<9, $nv, $masked>,
            ukr::<10, $nv, $masked>,
            ukr::<11, $nv, $masked>,
            ukr::<12, $nv, $masked>,
        ]
    };
}

macro_rules! table {
    ($nv:literal, $masked:literal) => {
        table!(ukr, $nv, $masked)
    };
    ($f:ident, $nv:literal, $masked:literal) => {
        [
            $f::<1, $nv, $masked> as UKernel, // index 0 unused
            $f::<1, $nv, $masked>,
            $f::<2, $nv, $masked>,
            $f::<3, $nv, $masked>,
            $f::<4, $nv, $masked>,
            $f::<5, $nv, $masked>,
            $f::<6, $nv, $masked>,
            // Never selected (mr <= 6); present to fill the table.
            $f::<6, $nv, $masked>,
            $f::<6, $nv, $masked>,
            $f::<6, $nv, $masked>,
            $f::<6, $nv, $masked>,
            $f::<6, $nv, $masked>,
            $f::<6, $nv, $masked>,
        ]
    };
}

const _: () = assert!(MR <= MR_MAX);

pub(crate) static UKR: Ukr = Ukr {
    isa: Isa::Avx2,
    mr: MR,
    nr: 16,
    full: table!(2, false),
    multi: Some(&[
        multi::<1> as MultiKernel, // index 0 unused
        multi::<1>,
        multi::<2>,
        multi::<3>,
        multi::<4>,
        multi::<5>,
        multi::<6>,
        // Never selected (mr <= 6).
        multi::<6>,
        multi::<6>,
        multi::<6>,
        multi::<6>,
        multi::<6>,
        multi::<6>,
    ]),
    tail: table!(2, true),
    rows: table!(ukr_rows, 2, false),
    rows_tail: table!(ukr_rows, 2, true),
    // One ymm per row: 12 accumulators fit, so a narrow tile takes a whole panel.
    narrow: table12!(1, true),
    narrow_max: 8,
    narrow_mr: 12,
    tcol: [
        tcol::<1>, tcol::<1>, tcol::<2>, tcol::<3>, tcol::<4>, tcol::<4>, tcol::<4>, tcol::<4>,
        tcol::<4>,
    ],
    tcol_max: 4,
    tcol_panels: [
        None,
        Some((tcol_panels::<1, 4>, 4)),
        Some((tcol_panels::<2, 2>, 2)),
        None,
        None,
        None,
        None,
        None,
        None,
    ],
};

/// One row × 32 columns (four ymm accumulators): a batch-1 fully connected layer over a
/// whole pre-packed 32-wide weight panel, four independent FMA chains instead of the two
/// of a 16-wide tile (one row has no other chains to hide the FMA latency behind).
pub(crate) const ROW32: UKernel = ukr::<1, 4, false>;

/// One row × 64 columns from two consecutive 32-wide panels of pre-packed B (the second
/// `32·kc` floats after `b`; `ldb` = 32), the whole K in one call: eight FMA chains and
/// two weight streams, for a batch-1 fully connected layer. Same FMA chain per element
/// as [`ROW32`].
///
/// Safety contract: AVX2 and FMA present; `a[0..kc]` readable; `b[0 .. 64·kc]` readable
/// (two whole panels); `c[0..64]`, and the Store's column bias and residual, valid for 64
/// columns.
pub(crate) const ROW64: UKernel = row_pair;

#[target_feature(enable = "avx2,fma")]
/// # Safety
/// As [`ROW64`].
#[allow(clippy::too_many_arguments)]
unsafe fn row_pair(
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
    // SAFETY: forwarded (ROW64's contract).
    unsafe {
        body::<1, 8, false, false, false, 0, true>(
            kc,
            a,
            lda,
            b,
            ldb,
            null(),
            c,
            ldc,
            nv,
            st.pf,
            st,
        )
    }
}
