//! AVX-512 micro-kernels: up to 12 rows × 32 columns (two zmm per row, 24 accumulators),
//! broadcast A, FMA; masked loads and stores for the N remainder.

use super::{act_is_vector, act_tile_vector, OffsKernel, Store, TapsKernel, UKernel, Ukr, MR_MAX};
use crate::graph::Activation;
use crate::simd::Isa;
use core::arch::x86_64::*;

const MR: usize = 12;

/// The vector epilogue activation; `false` when `act` needs the scalar pass.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
fn act_zmm(x: __m512, act: Activation) -> __m512 {
    let zero = _mm512_setzero_ps();
    match act {
        Activation::Relu => _mm512_max_ps(zero, x),
        // max/min return their second operand when either is NaN, so NaN propagates.
        Activation::Clip { min, max } => {
            _mm512_min_ps(_mm512_set1_ps(max), _mm512_max_ps(_mm512_set1_ps(min), x))
        }
        Activation::LeakyRelu { alpha } => {
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero);
            _mm512_mask_mul_ps(x, neg, x, _mm512_set1_ps(alpha))
        }
        Activation::HardSigmoid { alpha, beta } => {
            let t = _mm512_fmadd_ps(_mm512_set1_ps(alpha), x, _mm512_set1_ps(beta));
            _mm512_min_ps(_mm512_set1_ps(1.0), _mm512_max_ps(zero, t))
        }
        Activation::HardSwish => {
            let t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.0 / 6.0), _mm512_set1_ps(0.5));
            let t = _mm512_min_ps(_mm512_set1_ps(1.0), _mm512_max_ps(zero, t));
            _mm512_mul_ps(x, t)
        }
        _ => x,
    }
}

/// `MR` rows × `16·NV` columns; `MASKED` limits loads and stores of B, C, bias and
/// residual to the first `nv` columns.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
/// # Safety
/// AVX-512 present (dispatch); `a` / `b` / `c` / bias / residual valid for R rows and
/// nv (MASKED) or 16·NV columns over kc steps (the UKernel contract).
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
            std::ptr::null(),
            c,
            ldc,
            nv,
            st,
        )
    }
}

/// The offset-addressed kernel (see [`OffsKernel`]): B row `k` at `b + offs[k]`.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
/// # Safety
/// AVX-512 present (dispatch); the OffsKernel contract.
#[allow(clippy::too_many_arguments)]
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
    unsafe { body::<R, NV, MASKED, true, false, 0, false>(kc, a, lda, b, 0, offs, c, ldc, nv, st) }
}

/// The row-addressed kernel (see [`Ukr::rows`]): A row `i` of step `k` at
/// `a + i·lda + k`.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
/// # Safety
/// AVX-512 present (dispatch); the UKernel contract with A addressed by rows.
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
            std::ptr::null(),
            c,
            ldc,
            nv,
            st,
        )
    }
}

/// The tap-addressed kernel (see [`TapsKernel`]): A row `i` of step `k` at
/// `a + offs[k] + i·S`.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
/// # Safety
/// AVX-512 present (dispatch); the TapsKernel contract.
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
    unsafe { body::<R, NV, MASKED, false, false, S, false>(kc, a, 0, b, ldb, offs, c, ldc, nv, st) }
}

/// The body of [`ukr`] and [`ukr_offs`], inlined into each so that it compiles with
/// AVX-512. With `OFFS`, row `k` of B is at `b + offs[k]` instead of `b + k·ldb`; with
/// `TAPS > 0`, row `i` of A's step `k` is at `a + offs[k] + i·TAPS` (a tap of a
/// convolution's input read in place, output pixels `TAPS` columns apart). With `PAIR`
/// (`NV` = 4, unmasked), columns 32.. come from the next 32-wide panel of pre-packed B,
/// `32·kc` floats on (see [`ROW64`]), and the prefetch hints cover both panels.
///
/// # Safety
/// As [`ukr`]; with `OFFS`, as [`OffsKernel`]; with `PAIR`, as [`ROW64`].
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
    st: &Store,
) {
    let mut mask = [0xffffu16; NV];
    if MASKED {
        for (v, m) in mask.iter_mut().enumerate() {
            let r = nv.saturating_sub(16 * v).min(16) as u32;
            *m = ((1u32 << r) - 1) as u16;
        }
    }
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    if st.load_c {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                // SAFETY: C rows i < R, columns < nv (masked) are valid (UKernel contract).
                *x = unsafe { _mm512_maskz_loadu_ps(mask[v], c.add(i * ldc + 16 * v)) };
            }
        }
    }
    let (mut ap, mut bp, mut op) = (a, b, offs);
    // By rows: row i at bases[i / 3] + (i % 3)·lda, each base stepped once per k (one
    // add per three rows, the rest base + index addressing).
    let mut bases = [a; 4];
    for (j, p) in bases.iter_mut().enumerate() {
        *p = a.wrapping_add(3 * j * lda);
    }
    let mut pf = st.pf;
    let do_pf = !pf.is_null();
    let pf_to = st.pf_to;
    // With PAIR: the second panel's distance from the first.
    let pstride = if PAIR { super::NR_PACK * kc } else { 0 };
    const { assert!(!PAIR || (NV == 4 && !MASKED && !OFFS && TAPS == 0)) };
    for _ in 0..kc {
        if do_pf {
            // A hint: never faults, whatever the address (wrapping arithmetic below).
            super::prefetch(pf, pf_to);
            if PAIR {
                super::prefetch(pf.wrapping_add(pstride), pf_to);
            }
            pf = pf.wrapping_add(st.pf_stride);
        }
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
        let mut bv = [_mm512_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            // SAFETY: B row k, columns < nv (or all 16·NV when unmasked) are valid; with
            // PAIR, vectors 2 and 3 are row k of the next panel (ROW64's contract).
            *x = unsafe {
                if MASKED {
                    _mm512_maskz_loadu_ps(mask[v], bp.add(16 * v))
                } else if PAIR {
                    _mm512_loadu_ps(bp.add(v / 2 * pstride + 16 * (v % 2)))
                } else {
                    _mm512_loadu_ps(bp.add(16 * v))
                }
            };
        }
        // Row i's FMAs take A's element straight from memory ({1to16} broadcast, see
        // `fma_bcast`): no broadcast uop per row, so fewer uops than FMA slots even when
        // the front end runs at half width. Each such row loads its element once per
        // vector, though, and a core loads two vectors a cycle: with the last SEPARATE
        // rows broadcast once into a register, a step's 2·R FMAs (R cycles on two FMA ports)
        // need 2 + R + (R − SEPARATE) ≤ 2R loads, i.e. the load ports keep up too.
        // conv3x3_stress, 1 thread, `scripts/paired_ab.py`: 0.93–0.96 of the time with
        // separate broadcasts everywhere; ResNet-18 0.98–1.01, MobileNetV2 0.99–1.00.
        const SEPARATE: usize = 2;
        macro_rules! rows {
            ($($i:literal)*) => {$(
                if let Some(row) = acc.get_mut($i) {
                    // A row-addressed row off its base pointer takes an index register,
                    // and an FMA so addressed splits into two uops again: those keep the
                    // separate broadcast (one load uop).
                    if $i + SEPARATE >= R || (ROWS && $i % 3 != 0) {
                        // SAFETY: A row $i < R of step k is valid.
                        let av = unsafe {
                            if ROWS {
                                bcast_rows::<{ $i % 3 }>(bases[$i / 3], lda)
                            } else if TAPS > 0 {
                                _mm512_set1_ps(*ap.add($i * TAPS))
                            } else {
                                _mm512_set1_ps(*ap.add($i))
                            }
                        };
                        for (v, x) in row.iter_mut().enumerate() {
                            *x = _mm512_fmadd_ps(av, bv[v], *x);
                        }
                    } else {
                        for (v, x) in row.iter_mut().enumerate() {
                            // SAFETY: A row $i < R of step k is valid.
                            unsafe {
                                if ROWS {
                                    fma_bcast::<0, 0>(x, bv[v], bases[$i / 3])
                                } else {
                                    fma_bcast::<$i, TAPS>(x, bv[v], ap)
                                }
                            }
                        }
                    }
                }
            )*};
        }
        const { assert!(R <= MR) };
        rows!(0 1 2 3 4 5 6 7 8 9 10 11);
        // Wrapping: the pointers step one past the block on the last iteration.
        if ROWS {
            for p in bases.iter_mut().take(R.div_ceil(3)) {
                *p = p.wrapping_add(1);
            }
        } else if TAPS == 0 {
            ap = ap.wrapping_add(lda);
        }
        if !OFFS {
            bp = bp.wrapping_add(ldb);
        }
    }
    let vector_act = act_is_vector(st.act);
    if st.finish {
        if !st.bias_row.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: the row bias covers rows < R.
                let bb = _mm512_set1_ps(unsafe { *st.bias_row.add(i) });
                for x in row.iter_mut() {
                    *x = _mm512_add_ps(*x, bb);
                }
            }
        }
        if !st.bias_col.is_null() {
            for v in 0..NV {
                // SAFETY: the column bias covers columns < nv (masked).
                let bb = unsafe { _mm512_maskz_loadu_ps(mask[v], st.bias_col.add(16 * v)) };
                for row in acc.iter_mut() {
                    row[v] = _mm512_add_ps(row[v], bb);
                }
            }
        }
        if !st.residual.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    // SAFETY: the residual has C's shape and stride.
                    let r = unsafe {
                        _mm512_maskz_loadu_ps(mask[v], st.residual.add(i * ldc + 16 * v))
                    };
                    *x = _mm512_add_ps(*x, r);
                }
            }
        }
        if vector_act && !st.act.is_identity() {
            for row in acc.iter_mut() {
                for x in row.iter_mut() {
                    *x = act_zmm(*x, st.act);
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            // SAFETY: C rows < R, columns < nv (masked) or all 16·NV are valid.
            unsafe {
                if MASKED {
                    _mm512_mask_storeu_ps(c.add(i * ldc + 16 * v), mask[v], *x);
                } else {
                    _mm512_storeu_ps(c.add(i * ldc + 16 * v), *x);
                }
            }
        }
    }
    if st.finish && !vector_act {
        let w = if MASKED { nv } else { 16 * NV };
        // SAFETY: the tile just stored.
        unsafe { act_tile_vector(Isa::Avx512, c, ldc, R, w, st.act) };
    }
}

/// `acc += b · broadcast(a[I·S])` (`S` = `TAPS`, or 1 when 0) as one FMA with an
/// embedded broadcast: the compiler, given a broadcast that feeds two FMAs, loads it once
/// into a register instead, one more uop per row. Those uops decide the speed whenever
/// the front end is shared: a register-only FMA loop and one with a {1to16} operand per
/// FMA run alike on this Xeon VM, while one with a separate broadcast per FMA pair runs
/// at 0.72 of them (medians of 300 paired bursts, deciles 0.62–0.97). Same product and
/// single rounding as `_mm512_fmadd_ps(set1(a), b, acc)`: bit-identical.
///
/// # Safety
/// AVX-512 present; `a + I·S` readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fma_bcast<const I: usize, const TAPS: usize>(acc: &mut __m512, b: __m512, a: *const f32) {
    // SAFETY: reads the one f32 at a + I·S (the caller's contract), writes only acc.
    unsafe {
        core::arch::asm!(
            "vfmadd231ps {acc}, {b}, dword ptr [{a} + {off}]{{1to16}}",
            acc = inout(zmm_reg) *acc,
            b = in(zmm_reg) b,
            a = in(reg) a,
            off = const 4 * I * if TAPS > 0 { TAPS } else { 1 },
            options(pure, readonly, nostack, preserves_flags),
        )
    }
}

/// Broadcast of row `J` (0–2) of a base pointer's three rows: `base[J·lda]`, addressed
/// `[base + lda·4J]` in the instruction. Written out because the compiler otherwise turns
/// the three-rows-per-base addressing into one running pointer with an add per row (a
/// dozen more uops per k step of the row-addressed kernel).
///
/// # Safety
/// AVX-512 present; `base + J·lda` readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bcast_rows<const J: usize>(base: *const f32, lda: usize) -> __m512 {
    let v: __m512;
    // SAFETY: reads the one f32 at base + J·lda (the caller's contract).
    unsafe {
        match J {
            0 => core::arch::asm!(
                "vbroadcastss {v}, dword ptr [{a}]",
                v = out(zmm_reg) v,
                a = in(reg) base,
                options(pure, readonly, nostack, preserves_flags),
            ),
            1 => core::arch::asm!(
                "vbroadcastss {v}, dword ptr [{a} + {l}*4]",
                v = out(zmm_reg) v,
                a = in(reg) base,
                l = in(reg) lda,
                options(pure, readonly, nostack, preserves_flags),
            ),
            _ => core::arch::asm!(
                "vbroadcastss {v}, dword ptr [{a} + {l}*8]",
                v = out(zmm_reg) v,
                a = in(reg) base,
                l = in(reg) lda,
                options(pure, readonly, nostack, preserves_flags),
            ),
        }
    }
    v
}

/// Column-tail kernel: all `h = lda <= 12` rows of an A panel (one zmm, masked) against
/// `NV` columns of B, one broadcast per column and k. See `Ukr::tcol`.
///
/// # Safety
/// AVX-512 present (dispatch); the UKernel contract for exactly `NV` columns of B and
/// C (`nv` is not read).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
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
    let m: __mmask16 = ((1u32 << h) - 1) as u16;
    let mut acc = [_mm512_setzero_ps(); NV];
    if st.load_c {
        // SAFETY: C rows < h, columns < NV are valid (UKernel contract, mr = h, nv = NV).
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
        // SAFETY: mask m covers exactly the h rows of this k's A column.
        let av = unsafe { _mm512_maskz_loadu_ps(m, ap) };
        for (j, col) in acc.iter_mut().enumerate() {
            // SAFETY: j < NV, inside this k's B row.
            *col = _mm512_fmadd_ps(av, _mm512_set1_ps(unsafe { *bp.add(j) }), *col);
        }
        ap = ap.wrapping_add(lda);
        bp = bp.wrapping_add(ldb);
    }
    // SAFETY: C, bias and residual rows < h / columns < NV are valid (UKernel contract).
    unsafe { tcol_finish(acc, h, c, ldc, st) };
}

/// [`tcol`] over `P` consecutive full 12-row panels at once (panel `p`'s A at
/// `a + p·pstride`, its C rows, row bias and residual rows `12·p` on): `P·NV`
/// independent FMA chains instead of `NV`, which a one- or two-column tail needs to keep
/// the FMA units busy. Same FMA chain per element as [`tcol`].
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
/// # Safety
/// AVX-512 present (dispatch); for each `p < P`, the [`tcol`] contract with
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
    let m: __mmask16 = ((1u32 << H) - 1) as u16;
    let mut acc = [[_mm512_setzero_ps(); NV]; P];
    if st.load_c {
        for (p, accp) in acc.iter_mut().enumerate() {
            // SAFETY: panel p's C rows (12 of them) and NV columns are valid (contract).
            unsafe { tcol_load_c(accp, c.add(p * H * ldc), ldc, H) };
        }
    }
    let mut bp = b;
    let mut ak = 0;
    for _ in 0..kc {
        let mut bj = [_mm512_setzero_ps(); NV];
        for (j, x) in bj.iter_mut().enumerate() {
            // SAFETY: j < NV, inside this k's B row.
            *x = _mm512_set1_ps(unsafe { *bp.add(j) });
        }
        for (p, accp) in acc.iter_mut().enumerate() {
            // SAFETY: panel p (p < P) holds 12 rows at each of the kc steps (contract);
            // mask m covers exactly those 12.
            let av = unsafe { _mm512_maskz_loadu_ps(m, a.add(p * pstride + ak)) };
            for (col, &bv) in accp.iter_mut().zip(&bj) {
                *col = _mm512_fmadd_ps(av, bv, *col);
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
/// AVX-512 present; C valid for `h <= 12` rows of stride `ldc` and `NV` columns.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
unsafe fn tcol_load_c<const NV: usize>(
    acc: &mut [__m512; NV],
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
        *col = _mm512_loadu_ps(tmp.as_ptr());
    }
}

/// The epilogue of a column tile (rows as lanes): bias, residual and activation on the
/// last K block, then the store of its `h × NV` elements.
///
/// # Safety
/// AVX-512 present; C (and the residual) valid for `h <= 12` rows of stride `ldc` and
/// `NV` columns, a non-null row bias for `h` and column bias for `NV` floats.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
unsafe fn tcol_finish<const NV: usize>(
    mut acc: [__m512; NV],
    h: usize,
    c: *mut f32,
    ldc: usize,
    st: &Store,
) {
    let m: __mmask16 = ((1u32 << h) - 1) as u16;
    let mut tmp = [0f32; 16];
    let vector_act = act_is_vector(st.act);
    if st.finish {
        if !st.bias_row.is_null() {
            // SAFETY: non-null bias_row holds h floats; mask m covers exactly h lanes.
            let bb = unsafe { _mm512_maskz_loadu_ps(m, st.bias_row) };
            for col in acc.iter_mut() {
                *col = _mm512_add_ps(*col, bb);
            }
        }
        if !st.bias_col.is_null() {
            for (j, col) in acc.iter_mut().enumerate() {
                // SAFETY: non-null bias_col holds NV floats; j < NV.
                *col = _mm512_add_ps(*col, _mm512_set1_ps(unsafe { *st.bias_col.add(j) }));
            }
        }
        if !st.residual.is_null() {
            for (j, col) in acc.iter_mut().enumerate() {
                for (i, x) in tmp.iter_mut().enumerate().take(h) {
                    // SAFETY: non-null residual is shaped like C; i < h, j < NV.
                    *x = unsafe { *st.residual.add(i * ldc + j) };
                }
                *col = _mm512_add_ps(*col, _mm512_loadu_ps(tmp.as_ptr()));
            }
        }
        if vector_act && !st.act.is_identity() {
            for col in acc.iter_mut() {
                *col = act_zmm(*col, st.act);
            }
        }
    }
    for (j, col) in acc.iter().enumerate() {
        _mm512_storeu_ps(tmp.as_mut_ptr(), *col);
        for (i, &x) in tmp.iter().enumerate().take(h) {
            // SAFETY: i < h and j < NV, inside the C tile.
            unsafe { *c.add(i * ldc + j) = x };
        }
    }
    if st.finish && !vector_act {
        // SAFETY: the h × NV tile of C was just written and is valid.
        unsafe { act_tile_vector(Isa::Avx512, c, ldc, h, NV, st.act) };
    }
}

/// `[f::<1, args>, f::<1, args>, f::<2, args>, …, f::<12, args>]` as fn pointers of type
/// `ty` (index 0 unused): one kernel per row count.
macro_rules! table {
    ($ty:ty, $f:ident, $($arg:literal),+) => {
        [
            $f::<1, $($arg),+> as $ty, // index 0 unused
            $f::<1, $($arg),+>,
            $f::<2, $($arg),+>,
            $f::<3, $($arg),+>,
            $f::<4, $($arg),+>,
            $f::<5, $($arg),+>,
            $f::<6, $($arg),+>,
            $f::<7, $($arg),+>,
            $f::<8, $($arg),+>,
            $f::<9, $($arg),+>,
            $f::<10, $($arg),+>,
            $f::<11, $($arg),+>,
            $f::<12, $($arg),+>,
        ]
    };
}

const _: () = assert!(MR == MR_MAX);

pub(crate) static UKR: Ukr = Ukr {
    isa: Isa::Avx512,
    mr: MR,
    nr: 32,
    full: table!(UKernel, ukr, 2, false),
    multi: None,
    tail: table!(UKernel, ukr, 2, true),
    rows: table!(UKernel, ukr_rows, 2, false),
    rows_tail: table!(UKernel, ukr_rows, 2, true),
    narrow: table!(UKernel, ukr, 1, true),
    narrow_max: 16,
    narrow_mr: MR,
    tcol: [
        tcol::<1>, tcol::<1>, tcol::<2>, tcol::<3>, tcol::<4>, tcol::<5>, tcol::<6>, tcol::<7>,
        tcol::<8>,
    ],
    tcol_max: 8,
    // 8 and 4 panels: 8 FMA chains, enough to cover the FMA latency on both ports.
    tcol_panels: [
        None,
        Some((tcol_panels::<1, 8>, 8)),
        Some((tcol_panels::<2, 4>, 4)),
        None,
        None,
        None,
        None,
        None,
        None,
    ],
};

/// Offset-addressed 32-wide kernels (see [`OffsKernel`]), indexed by rows `1..=12`: full
/// width and masked (`nv < 32`).
pub(crate) static OFFS_FULL: [OffsKernel; MR + 1] = table!(OffsKernel, ukr_offs, 2, false);
pub(crate) static OFFS_TAIL: [OffsKernel; MR + 1] = table!(OffsKernel, ukr_offs, 2, true);
/// One vector (16 columns), masked: tails of at most 16 columns (a 112-wide row is
/// 3 × 32 + 16), which the two-vector tail would compute twice over.
pub(crate) static OFFS_HALF: [OffsKernel; MR + 1] = table!(OffsKernel, ukr_offs, 1, true);

/// One row × 32 columns: a batch-1 fully connected layer over a whole pre-packed 32-wide
/// weight panel (the one-row tile of [`ukr`], called directly so that the caller can
/// set its prefetch).
pub(crate) const ROW32: UKernel = ukr::<1, 2, false>;

/// One row × 64 columns from two consecutive 32-wide panels of pre-packed B (the second
/// `32·kc` floats after `b`; `ldb` = 32), the whole K in one call: four FMA chains and two
/// weight streams instead of two and one, for a batch-1 fully connected layer. Same FMA
/// chain per element as [`ROW32`].
///
/// Safety contract: AVX-512 present; `a[0..kc]` readable; `b[0 .. 64·kc]` readable (two
/// whole panels); `c[0..64]`, and the Store's column bias and residual, valid for 64
/// columns.
pub(crate) const ROW64: UKernel = row_pair;

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
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
        body::<1, 4, false, false, false, 0, true>(
            kc,
            a,
            lda,
            b,
            ldb,
            std::ptr::null(),
            c,
            ldc,
            nv,
            st,
        )
    }
}

/// Tap-addressed kernels (see [`TapsKernel`]), indexed by rows `1..=12`, for output
/// pixels 1 and 2 input columns apart (`[stride − 1]`): 32 columns, masked (`nv < 32`),
/// and one masked vector (`nv <= 16`).
pub(crate) static TAPS_FULL: [[TapsKernel; MR + 1]; 2] = [
    table!(TapsKernel, ukr_taps, 2, false, 1),
    table!(TapsKernel, ukr_taps, 2, false, 2),
];
pub(crate) static TAPS_TAIL: [[TapsKernel; MR + 1]; 2] = [
    table!(TapsKernel, ukr_taps, 2, true, 1),
    table!(TapsKernel, ukr_taps, 2, true, 2),
];
pub(crate) static TAPS_HALF: [[TapsKernel; MR + 1]; 2] = [
    table!(TapsKernel, ukr_taps, 1, true, 1),
    table!(TapsKernel, ukr_taps, 1, true, 2),
];
