//! AVX2+FMA micro-kernels: up to 6 rows × 16 columns (two ymm per row, 12 accumulators),
//! broadcast A, FMA; `vmaskmov` loads and stores for the N remainder.

use super::{act_is_vector, act_tile_scalar, Store, UKernel, Ukr, MR_MAX};
use crate::graph::Activation;
use crate::simd::Isa;
use core::arch::x86_64::*;

const MR: usize = 6;

#[inline]
#[target_feature(enable = "avx2,fma")]
fn act_ymm(x: __m256, act: Activation) -> __m256 {
    let zero = _mm256_setzero_ps();
    match act {
        // max/min return their second operand when either is NaN, so NaN propagates.
        Activation::Relu => _mm256_max_ps(zero, x),
        Activation::Clip { min, max } => _mm256_min_ps(_mm256_set1_ps(max), _mm256_max_ps(_mm256_set1_ps(min), x)),
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
    _mm256_cmpgt_epi32(_mm256_set1_epi32(r as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

#[target_feature(enable = "avx2,fma")]
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
                unsafe { _mm256_maskload_ps($p, mask[$v]) }
            } else {
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
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        let mut bv = [_mm256_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = load!(bp.add(8 * v), v);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_ps(unsafe { *ap.add(i) });
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(av, bv[v], *x);
            }
        }
        ap = ap.wrapping_add(lda);
        bp = bp.wrapping_add(ldb);
    }
    let vector_act = act_is_vector(st.act);
    if st.finish {
        if !st.bias_row.is_null() {
            for (i, row) in acc.iter_mut().enumerate() {
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
        if vector_act && !st.act.is_identity() {
            for row in acc.iter_mut() {
                for x in row.iter_mut() {
                    *x = act_ymm(*x, st.act);
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            unsafe {
                if MASKED {
                    _mm256_maskstore_ps(c.add(i * ldc + 8 * v), mask[v], *x);
                } else {
                    _mm256_storeu_ps(c.add(i * ldc + 8 * v), *x);
                }
            }
        }
    }
    if st.finish && !vector_act {
        let w = if MASKED { nv } else { 8 * NV };
        unsafe { act_tile_scalar(c, ldc, R, w, st.act) };
    }
}

macro_rules! table {
    ($nv:literal, $masked:literal) => {
        [
            ukr::<1, $nv, $masked> as UKernel, // index 0 unused
            ukr::<1, $nv, $masked>,
            ukr::<2, $nv, $masked>,
            ukr::<3, $nv, $masked>,
            ukr::<4, $nv, $masked>,
            ukr::<5, $nv, $masked>,
            ukr::<6, $nv, $masked>,
            // Never selected (mr <= 6); present to fill the table.
            ukr::<6, $nv, $masked>,
            ukr::<6, $nv, $masked>,
            ukr::<6, $nv, $masked>,
            ukr::<6, $nv, $masked>,
            ukr::<6, $nv, $masked>,
            ukr::<6, $nv, $masked>,
        ]
    };
}

const _: () = assert!(MR <= MR_MAX);

pub(crate) static UKR: Ukr = Ukr {
    isa: Isa::Avx2,
    mr: MR,
    nr: 16,
    full: table!(2, false),
    tail: table!(2, true),
    narrow: table!(1, true),
    narrow_max: 8,
};
