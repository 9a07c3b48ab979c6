//! The tile shuffles the transforms need on top of [`Simd`]: gathering the columns of
//! `LANES` consecutive tiles of one tile row (stride 4 for F(4x4,3x3), stride 2 for
//! F(2x2,3x3)) into one vector per column, and the inverse for the output rows.
//!
//! The gathers read the input rows in place through a [`Window`]: masked loads that take
//! only the columns inside the image and leave zeros for the padding, so no padded copy
//! of the rows is made (that copy, stored and then reloaded at other offsets, cost as
//! much as the transform itself: each reload straddled two stores and waited for them).
//!
//! Implemented for the portable tier (4 lanes), AVX2 (8 lanes) and AVX-512 (16 lanes).

use crate::kernels::elementwise::{Portable, Simd};

/// Which columns of a group's gather lie in the image, as the tier's load masks: the
/// gather reads columns `0 .. k·LANES + 2` after its base (`k` = 4 or 2, the tile
/// stride); columns outside `lo..hi` read as zero and are not accessed.
#[derive(Clone, Copy)]
pub(crate) struct Window<S: Simd> {
    /// Vector `j < k`: columns `j·LANES ..`.
    body: [S::L; 4],
    /// Column `k·LANES + q`, loaded into the last lane of a vector that starts
    /// `LANES − 1` columns before it.
    tail: [S::L; 2],
}

impl<S: Simd> Window<S> {
    /// The window of columns `lo..hi` for a gather of tile stride `k` (4 or 2).
    #[inline(always)]
    pub(crate) fn new(s: S, k: usize, lo: isize, hi: isize) -> Window<S> {
        let l = S::LANES as isize;
        let part = |o: isize| {
            let a = (lo - o).clamp(0, l);
            let b = (hi - o).clamp(a, l);
            s.lanes(a as usize, b as usize)
        };
        let tail = |c: isize| {
            if lo <= c && c < hi {
                s.lanes(S::LANES - 1, S::LANES)
            } else {
                s.lanes(0, 0)
            }
        };
        let k = k as isize;
        Window {
            body: [part(0), part(l), part(2 * l), part(3 * l)],
            tail: [tail(k * l), tail(k * l + 1)],
        }
    }

    /// Loads vector `j` of the window: columns `j·LANES .. (j + 1)·LANES` after `p`.
    ///
    /// Safety: `p + c` readable for each column `c` of the window.
    #[inline(always)]
    unsafe fn body(&self, s: S, p: *const f32, j: usize) -> S::V {
        // SAFETY: only the window's columns are read (caller).
        unsafe { s.load_mz(p.wrapping_add(j * S::LANES), self.body[j]) }
    }

    /// Column `k·LANES + q` (`k` the stride given to [`Window::new`]) in the last lane
    /// (zero outside the window), the other lanes zero.
    ///
    /// Safety: as [`Window::body`].
    #[inline(always)]
    unsafe fn tail(&self, s: S, p: *const f32, k: usize, q: usize) -> S::V {
        let at = p.wrapping_add(k * S::LANES + q).wrapping_sub(S::LANES - 1);
        // SAFETY: only the window's columns are read (caller).
        unsafe { s.load_mz(at, self.tail[q]) }
    }
}

pub(crate) trait Lanes: Simd {
    /// Columns `0..6` of `LANES` tiles 4 apart: lane `i` of `out[j]` is `p[4i + j]`
    /// where column `4i + j` is in `w` (a window of stride 4), else zero.
    ///
    /// # Safety
    /// `p + c` readable for each column `c` of `w` (`p` itself may point anywhere).
    unsafe fn gather_s4(self, p: *const f32, w: &Window<Self>) -> [Self::V; 6];

    /// Columns `0..4` of `LANES` tiles 2 apart: lane `i` of `out[j]` is `p[2i + j]`
    /// where column `2i + j` is in `w` (a window of stride 2), else zero.
    ///
    /// # Safety
    /// As [`Lanes::gather_s4`].
    unsafe fn gather_s2(self, p: *const f32, w: &Window<Self>) -> [Self::V; 4];

    /// [`Lanes::gather_s2`] for two tile rows of `LANES / 2` tiles at once: lane `i` of
    /// `out[j]` is `a[2i + j]` for `i < LANES / 2` and `b[2(i − LANES / 2) + j]` above.
    /// This default goes through memory; AVX2 (where it is used: 7×7 maps, 4 tiles a
    /// row) overrides it with 128-bit halves.
    ///
    /// # Safety
    /// `a[0 .. LANES + 2]` and `b[0 .. LANES + 2]` readable.
    #[inline(always)]
    unsafe fn gather_s2_pair(self, a: *const f32, b: *const f32) -> [Self::V; 4] {
        let (l, h) = (Self::LANES, Self::LANES / 2);
        let mut cols = [[0f32; 16]; 4];
        for (j, col) in cols.iter_mut().enumerate() {
            for (i, v) in col.iter_mut().enumerate().take(l) {
                // SAFETY: 2i + j < LANES + 2 for i < LANES / 2 (caller).
                *v = unsafe {
                    if i < h {
                        *a.add(2 * i + j)
                    } else {
                        *b.add(2 * (i - h) + j)
                    }
                };
            }
        }
        // SAFETY: each column holds 16 >= LANES floats.
        unsafe {
            [
                self.load(cols[0].as_ptr()),
                self.load(cols[1].as_ptr()),
                self.load(cols[2].as_ptr()),
                self.load(cols[3].as_ptr()),
            ]
        }
    }

    /// The inverse of a 4-wide gather: lane `i` of `y[j]` (tile `i`, column `j`) goes to
    /// flat position `4i + j` of the `4·LANES` values `out[0] ‖ out[1] ‖ out[2] ‖ out[3]`.
    fn scatter_s4(self, y: [Self::V; 4]) -> [Self::V; 4];

    /// Lane `i` of `y[j]` goes to flat position `2i + j` of `out[0] ‖ out[1]`.
    fn scatter_s2(self, y: [Self::V; 2]) -> [Self::V; 2];

    /// Flat positions `f ..` of `w[0] ‖ w[1] ‖ w[2] ‖ w[3]` from lane 0 of `out[0]` on,
    /// zeros past the end (`f` a multiple of 4 below `4·LANES`): the outputs of a group's
    /// tiles from the `f / 4`-th on, where a group spans two tile rows.
    fn shift_flat(self, w: [Self::V; 4], f: usize) -> [Self::V; 4];
}

/// Columns `0 .. K·4 + 2` after `p` through window `w` (stride `K`), flat.
///
/// Safety: as [`Lanes::gather_s4`].
#[inline(always)]
unsafe fn flat<const K: usize>(s: Portable, p: *const f32, w: &Window<Portable>) -> [f32; 18] {
    let mut f = [0f32; 18];
    // SAFETY: the window's columns only (caller).
    unsafe {
        for j in 0..K {
            f[4 * j..4 * j + 4].copy_from_slice(&w.body(s, p, j));
        }
        f[4 * K] = w.tail(s, p, K, 0)[3];
        f[4 * K + 1] = w.tail(s, p, K, 1)[3];
    }
    f
}

impl Lanes for Portable {
    // Safety: the trait's contracts (`Lanes::gather_s4`, `Lanes::gather_s2`).
    #[inline(always)]
    unsafe fn gather_s4(self, p: *const f32, w: &Window<Portable>) -> [[f32; 4]; 6] {
        // SAFETY: the window's columns only (caller).
        let f = unsafe { flat::<4>(self, p, w) };
        std::array::from_fn(|j| std::array::from_fn(|i| f[4 * i + j]))
    }
    #[inline(always)]
    unsafe fn gather_s2(self, p: *const f32, w: &Window<Portable>) -> [[f32; 4]; 4] {
        // SAFETY: the window's columns only (caller).
        let f = unsafe { flat::<2>(self, p, w) };
        std::array::from_fn(|j| std::array::from_fn(|i| f[2 * i + j]))
    }
    #[inline(always)]
    fn scatter_s4(self, y: [[f32; 4]; 4]) -> [[f32; 4]; 4] {
        // Flat 4q + e is tile q, column e.
        std::array::from_fn(|q| std::array::from_fn(|e| y[e][q]))
    }
    #[inline(always)]
    fn scatter_s2(self, y: [[f32; 4]; 2]) -> [[f32; 4]; 2] {
        // Flat 4q + e is tile 2q + e/2, column e%2.
        std::array::from_fn(|q| std::array::from_fn(|e| y[e % 2][2 * q + e / 2]))
    }
    #[inline(always)]
    fn shift_flat(self, w: [[f32; 4]; 4], f: usize) -> [[f32; 4]; 4] {
        // Whole vectors: f is a multiple of the 4 lanes.
        std::array::from_fn(|q| w.get(f / 4 + q).copied().unwrap_or([0.0; 4]))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lanes, Window};
    use crate::kernels::elementwise::Avx2Fma;
    use std::arch::x86_64::*;

    /// Lane `i` of the result is lane `i + 1` of `v`, lane 7 is lane 7 of `last`.
    ///
    /// Safety: AVX2 present (the token).
    #[inline(always)]
    unsafe fn shift_in(v: __m256, last: __m256) -> __m256 {
        // SAFETY: value-only intrinsics; AVX2 (caller).
        unsafe {
            let s = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7));
            _mm256_blend_ps::<0x80>(s, last)
        }
    }

    impl Lanes for Avx2Fma {
        #[inline(always)]
        unsafe fn gather_s4(self, p: *const f32, w: &Window<Self>) -> [__m256; 6] {
            // SAFETY: reads the window's columns of p[0..34] only (caller); the token
            // proves AVX2.
            unsafe {
                // a = tiles 0,1; b = 2,3; c = 4,5; d = 6,7 (4 columns each).
                let a = w.body(self, p, 0);
                let b = w.body(self, p, 1);
                let c = w.body(self, p, 2);
                let d = w.body(self, p, 3);
                let p0 = _mm256_permute2f128_ps::<0x20>(a, c); // t0 | t4
                let p1 = _mm256_permute2f128_ps::<0x31>(a, c); // t1 | t5
                let p2 = _mm256_permute2f128_ps::<0x20>(b, d); // t2 | t6
                let p3 = _mm256_permute2f128_ps::<0x31>(b, d); // t3 | t7
                                                               // 4×4 transposes inside each 128-bit half.
                let u0 = _mm256_unpacklo_ps(p0, p1);
                let u1 = _mm256_unpackhi_ps(p0, p1);
                let u2 = _mm256_unpacklo_ps(p2, p3);
                let u3 = _mm256_unpackhi_ps(p2, p3);
                let c0 = _mm256_shuffle_ps::<0x44>(u0, u2);
                let c1 = _mm256_shuffle_ps::<0xEE>(u0, u2);
                let c2 = _mm256_shuffle_ps::<0x44>(u1, u3);
                let c3 = _mm256_shuffle_ps::<0xEE>(u1, u3);
                // Columns 4 and 5 are columns 0 and 1 of the next tile.
                let c4 = shift_in(c0, w.tail(self, p, 4, 0));
                let c5 = shift_in(c1, w.tail(self, p, 4, 1));
                [c0, c1, c2, c3, c4, c5]
            }
        }

        #[inline(always)]
        // Safety: the caller's contract (`Lanes::gather_s2`).
        unsafe fn gather_s2(self, p: *const f32, w: &Window<Self>) -> [__m256; 4] {
            // SAFETY: reads the window's columns of p[0..18] only (caller); the token
            // proves AVX2.
            unsafe {
                let a = w.body(self, p, 0);
                let b = w.body(self, p, 1);
                // Per half [a0 a2 b0 b2 | a4 a6 b4 b6], then 64-bit blocks 0, 2, 1, 3.
                let e = _mm256_shuffle_ps::<0x88>(a, b);
                let o = _mm256_shuffle_ps::<0xDD>(a, b);
                let c0 = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(e)));
                let c1 = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(o)));
                let c2 = shift_in(c0, w.tail(self, p, 2, 0));
                let c3 = shift_in(c1, w.tail(self, p, 2, 1));
                [c0, c1, c2, c3]
            }
        }

        #[inline(always)]
        // Safety: the caller's contract (`Lanes::gather_s2_pair`).
        unsafe fn gather_s2_pair(self, a: *const f32, b: *const f32) -> [__m256; 4] {
            // SAFETY: reads a[0..10] and b[0..10] (caller: LANES + 2); the token proves
            // AVX2.
            unsafe {
                // Row a's four tiles in the low 128-bit half, row b's in the high one;
                // then per half [x0 x2 y0 y2] and [x1 x3 y1 y3] are two columns.
                let x0 = _mm256_loadu2_m128(b, a);
                let x1 = _mm256_loadu2_m128(b.add(4), a.add(4));
                let y0 = _mm256_loadu2_m128(b.add(2), a.add(2));
                let y1 = _mm256_loadu2_m128(b.add(6), a.add(6));
                [
                    _mm256_shuffle_ps::<0x88>(x0, x1),
                    _mm256_shuffle_ps::<0xDD>(x0, x1),
                    _mm256_shuffle_ps::<0x88>(y0, y1),
                    _mm256_shuffle_ps::<0xDD>(y0, y1),
                ]
            }
        }

        #[inline(always)]
        fn scatter_s4(self, y: [__m256; 4]) -> [__m256; 4] {
            // SAFETY: value-only intrinsics; the token proves AVX2.
            unsafe {
                let u0 = _mm256_unpacklo_ps(y[0], y[1]);
                let u1 = _mm256_unpackhi_ps(y[0], y[1]);
                let u2 = _mm256_unpacklo_ps(y[2], y[3]);
                let u3 = _mm256_unpackhi_ps(y[2], y[3]);
                let r0 = _mm256_shuffle_ps::<0x44>(u0, u2); // t0 | t4
                let r1 = _mm256_shuffle_ps::<0xEE>(u0, u2); // t1 | t5
                let r2 = _mm256_shuffle_ps::<0x44>(u1, u3); // t2 | t6
                let r3 = _mm256_shuffle_ps::<0xEE>(u1, u3); // t3 | t7
                [
                    _mm256_permute2f128_ps::<0x20>(r0, r1),
                    _mm256_permute2f128_ps::<0x20>(r2, r3),
                    _mm256_permute2f128_ps::<0x31>(r0, r1),
                    _mm256_permute2f128_ps::<0x31>(r2, r3),
                ]
            }
        }

        #[inline(always)]
        fn scatter_s2(self, y: [__m256; 2]) -> [__m256; 2] {
            // SAFETY: value-only intrinsics; the token proves AVX2.
            unsafe {
                let lo = _mm256_unpacklo_ps(y[0], y[1]); // t0 t1 | t4 t5
                let hi = _mm256_unpackhi_ps(y[0], y[1]); // t2 t3 | t6 t7
                [
                    _mm256_permute2f128_ps::<0x20>(lo, hi),
                    _mm256_permute2f128_ps::<0x31>(lo, hi),
                ]
            }
        }

        #[inline(always)]
        fn shift_flat(self, w: [__m256; 4], f: usize) -> [__m256; 4] {
            // SAFETY: value-only intrinsics; the token proves AVX2.
            unsafe {
                let z = _mm256_setzero_ps();
                let x = [w[0], w[1], w[2], w[3], z, z, z, z];
                let k = f / 8 % 4;
                if f.is_multiple_of(8) {
                    return [x[k], x[k + 1], x[k + 2], x[k + 3]];
                }
                // f % 8 == 4: the high half of one vector and the low half of the next.
                [
                    _mm256_permute2f128_ps::<0x21>(x[k], x[k + 1]),
                    _mm256_permute2f128_ps::<0x21>(x[k + 1], x[k + 2]),
                    _mm256_permute2f128_ps::<0x21>(x[k + 2], x[k + 3]),
                    _mm256_permute2f128_ps::<0x21>(x[k + 3], x[k + 4]),
                ]
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use super::{Lanes, Window};
    use crate::kernels::elementwise::Avx512;
    use std::arch::x86_64::*;

    /// Index vectors for `_mm512_permutex2var_ps` (0..15 pick from the first source,
    /// 16..31 from the second).
    #[inline(always)]
    fn idx(f: impl Fn(i32) -> i32) -> __m512i {
        let a: [i32; 16] = std::array::from_fn(|m| f(m as i32));
        // SAFETY: an unaligned load of 16 i32 from a local array (SSE2/AVX-512F baseline
        // for this module's callers, which hold the AVX-512 token).
        unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
    }

    /// Lane `i` of the result is lane `i + 1` of `v`, lane 15 is lane 15 of `last`.
    ///
    /// Safety: AVX-512F present (the token).
    #[inline(always)]
    unsafe fn shift_in(v: __m512, last: __m512) -> __m512 {
        // SAFETY: value-only intrinsics; AVX-512F (caller).
        unsafe { _mm512_permutex2var_ps(v, idx(|m| if m < 15 { m + 1 } else { 31 }), last) }
    }

    impl Lanes for Avx512 {
        #[inline(always)]
        unsafe fn gather_s4(self, p: *const f32, w: &Window<Self>) -> [__m512; 6] {
            // SAFETY: reads the window's columns of p[0..66] only (caller); the token
            // proves AVX-512F.
            unsafe {
                let (a, b) = (w.body(self, p, 0), w.body(self, p, 1));
                let (c, d) = (w.body(self, p, 2), w.body(self, p, 3));
                // Lanes 0..8: column j of tiles 0..8 (of a‖b or c‖d); lanes 8..16:
                // column j + 1.
                let i01 = idx(|m| 4 * (m % 8) + m / 8);
                let i23 = idx(|m| 4 * (m % 8) + m / 8 + 2);
                let (e01, f01) = (
                    _mm512_permutex2var_ps(a, i01, b),
                    _mm512_permutex2var_ps(c, i01, d),
                );
                let (e23, f23) = (
                    _mm512_permutex2var_ps(a, i23, b),
                    _mm512_permutex2var_ps(c, i23, d),
                );
                let c0 = _mm512_shuffle_f32x4::<0x44>(e01, f01);
                let c1 = _mm512_shuffle_f32x4::<0xEE>(e01, f01);
                let c2 = _mm512_shuffle_f32x4::<0x44>(e23, f23);
                let c3 = _mm512_shuffle_f32x4::<0xEE>(e23, f23);
                // Columns 4 and 5 are columns 0 and 1 of the next tile: shift one lane
                // down and bring in p[64], p[65].
                let c4 = shift_in(c0, w.tail(self, p, 4, 0));
                let c5 = shift_in(c1, w.tail(self, p, 4, 1));
                [c0, c1, c2, c3, c4, c5]
            }
        }

        #[inline(always)]
        // Safety: the caller's contract (`Lanes::gather_s2`).
        unsafe fn gather_s2(self, p: *const f32, w: &Window<Self>) -> [__m512; 4] {
            // SAFETY: reads the window's columns of p[0..34] only (caller); the token
            // proves AVX-512F.
            unsafe {
                let (a, b) = (w.body(self, p, 0), w.body(self, p, 1));
                let c0 = _mm512_permutex2var_ps(a, idx(|m| 2 * m), b);
                let c1 = _mm512_permutex2var_ps(a, idx(|m| 2 * m + 1), b);
                let c2 = shift_in(c0, w.tail(self, p, 2, 0));
                let c3 = shift_in(c1, w.tail(self, p, 2, 1));
                [c0, c1, c2, c3]
            }
        }

        #[inline(always)]
        fn scatter_s4(self, y: [__m512; 4]) -> [__m512; 4] {
            // SAFETY: value-only intrinsics; the token proves AVX-512F.
            unsafe {
                // e01: column 0 of tiles 0..8 ‖ column 1 of tiles 0..8; f01 the same for
                // tiles 8..16; e23 / f23 for columns 2 and 3.
                let e01 = _mm512_shuffle_f32x4::<0x44>(y[0], y[1]);
                let f01 = _mm512_shuffle_f32x4::<0xEE>(y[0], y[1]);
                let e23 = _mm512_shuffle_f32x4::<0x44>(y[2], y[3]);
                let f23 = _mm512_shuffle_f32x4::<0xEE>(y[2], y[3]);
                // Flat lane m = 4i + j (tile i of the four, column j): column j < 2 at
                // lane 8j + i of e01, column j >= 2 at lane 8(j − 2) + i of e23 (+16).
                let pick = |t0: i32| {
                    idx(move |m| {
                        let (i, j) = (m / 4 + t0, m % 4);
                        if j < 2 {
                            8 * j + i
                        } else {
                            16 + 8 * (j - 2) + i
                        }
                    })
                };
                let (lo, hi) = (pick(0), pick(4));
                [
                    _mm512_permutex2var_ps(e01, lo, e23),
                    _mm512_permutex2var_ps(e01, hi, e23),
                    _mm512_permutex2var_ps(f01, lo, f23),
                    _mm512_permutex2var_ps(f01, hi, f23),
                ]
            }
        }

        #[inline(always)]
        fn scatter_s2(self, y: [__m512; 2]) -> [__m512; 2] {
            // SAFETY: value-only intrinsics; the token proves AVX-512F.
            unsafe {
                // Flat lane m = 2i + j: lane i of y[j].
                let lo = idx(|m| 16 * (m % 2) + m / 2);
                let hi = idx(|m| 16 * (m % 2) + m / 2 + 8);
                [
                    _mm512_permutex2var_ps(y[0], lo, y[1]),
                    _mm512_permutex2var_ps(y[0], hi, y[1]),
                ]
            }
        }

        #[inline(always)]
        fn shift_flat(self, w: [__m512; 4], f: usize) -> [__m512; 4] {
            /// Lanes R.. of `a`, then lanes ..R of `b`.
            #[inline(always)]
            fn align<const R: i32>(a: __m512, b: __m512) -> __m512 {
                // SAFETY: value-only intrinsics; only called under the token (AVX-512F).
                unsafe {
                    _mm512_castsi512_ps(_mm512_alignr_epi32::<R>(
                        _mm512_castps_si512(b),
                        _mm512_castps_si512(a),
                    ))
                }
            }
            // SAFETY: value-only intrinsic; the token proves AVX-512F.
            let z = unsafe { _mm512_setzero_ps() };
            let x = [w[0], w[1], w[2], w[3], z, z, z, z];
            let k = f / 16 % 4;
            match f % 16 {
                4 => [
                    align::<4>(x[k], x[k + 1]),
                    align::<4>(x[k + 1], x[k + 2]),
                    align::<4>(x[k + 2], x[k + 3]),
                    align::<4>(x[k + 3], x[k + 4]),
                ],
                8 => [
                    align::<8>(x[k], x[k + 1]),
                    align::<8>(x[k + 1], x[k + 2]),
                    align::<8>(x[k + 2], x[k + 3]),
                    align::<8>(x[k + 3], x[k + 4]),
                ],
                12 => [
                    align::<12>(x[k], x[k + 1]),
                    align::<12>(x[k + 1], x[k + 2]),
                    align::<12>(x[k + 2], x[k + 3]),
                    align::<12>(x[k + 3], x[k + 4]),
                ],
                _ => [x[k], x[k + 1], x[k + 2], x[k + 3]],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<S: Lanes>(s: S) {
        let l = S::LANES;
        let src: Vec<f32> = (0..80).map(|i| i as f32).collect();
        // Windows: everything, the middle, the edges, nothing; columns outside read as 0.
        let windows = [
            (-5, 200),
            (0, 80),
            (1, 30),
            (3, 17),
            (17, 66),
            (40, 41),
            (-3, 0),
            (10, 10),
            (64, 65),
            (65, 66),
            (33, 34),
        ];
        for (lo, hi) in windows {
            let want = |c: usize| {
                if lo <= c as isize && (c as isize) < hi {
                    c as f32
                } else {
                    0.0
                }
            };
            // SAFETY: src holds 80 floats, more than the 4·LANES + 2 <= 66 that
            // gather_s4 may read.
            let g4 = unsafe { s.gather_s4(src.as_ptr(), &Window::new(s, 4, lo, hi)) };
            for (j, v) in g4.iter().enumerate() {
                let a = s.to_array(*v);
                for i in 0..l {
                    assert_eq!(a[i], want(4 * i + j), "s4 {lo}..{hi} col {j} lane {i}");
                }
            }
            // SAFETY: as above, 2·LANES + 2 floats.
            let g2 = unsafe { s.gather_s2(src.as_ptr(), &Window::new(s, 2, lo, hi)) };
            for (j, v) in g2.iter().enumerate() {
                let a = s.to_array(*v);
                for i in 0..l {
                    assert_eq!(a[i], want(2 * i + j), "s2 {lo}..{hi} col {j} lane {i}");
                }
            }
        }
        // Two rows at once: lanes below LANES / 2 from the first, the rest from the second.
        let other: Vec<f32> = (0..40).map(|i| 1000.0 + i as f32).collect();
        // SAFETY: both hold more than LANES + 2 <= 18 floats.
        let gp = unsafe { s.gather_s2_pair(src.as_ptr(), other.as_ptr()) };
        for (j, v) in gp.iter().enumerate() {
            let a = s.to_array(*v);
            for i in 0..l {
                let want = if i < l / 2 {
                    src[2 * i + j]
                } else {
                    other[2 * (i - l / 2) + j]
                };
                assert_eq!(a[i], want, "s2 pair col {j} lane {i}");
            }
        }
        // Scatter: y[j] lane i = 100 j + i must land at 4i + j.
        // SAFETY: the temporary Vec holds 16 >= LANES floats and lives through the load.
        let mk = |j: usize| unsafe {
            s.load(
                (0..16)
                    .map(|i| (100 * j + i) as f32)
                    .collect::<Vec<_>>()
                    .as_ptr(),
            )
        };
        let w4 = s.scatter_s4([mk(0), mk(1), mk(2), mk(3)]);
        let flat: Vec<f32> = w4
            .iter()
            .flat_map(|v| s.to_array(*v)[..l].to_vec())
            .collect();
        for (f, &v) in flat.iter().enumerate() {
            assert_eq!(v, (100 * (f % 4) + f / 4) as f32, "scatter s4 at {f}");
        }
        let w2 = s.scatter_s2([mk(0), mk(1)]);
        let flat: Vec<f32> = w2
            .iter()
            .flat_map(|v| s.to_array(*v)[..l].to_vec())
            .collect();
        for (f, &v) in flat.iter().enumerate() {
            assert_eq!(v, (100 * (f % 2) + f / 2) as f32, "scatter s2 at {f}");
        }
        // Shift: flat position f + p of the input at p, zeros past the end.
        let seq = |q: usize| {
            let lane: Vec<f32> = (0..16).map(|i| (1 + q * l + i) as f32).collect();
            // SAFETY: lane holds 16 >= LANES floats.
            unsafe { s.load(lane.as_ptr()) }
        };
        let w = [seq(0), seq(1), seq(2), seq(3)];
        for f in (0..4 * l).step_by(4) {
            let shifted: Vec<f32> = s
                .shift_flat(w, f)
                .iter()
                .flat_map(|v| s.to_array(*v)[..l].to_vec())
                .collect();
            for (p, &v) in shifted.iter().enumerate() {
                let want = if f + p < 4 * l {
                    (1 + f + p) as f32
                } else {
                    0.0
                };
                assert_eq!(v, want, "shift_flat by {f} at {p}");
            }
        }
    }

    #[test]
    fn shuffles_portable() {
        check(Portable);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn shuffles_avx512() {
        use crate::kernels::elementwise::Avx512;
        if crate::simd::Isa::Avx512.is_supported() {
            // SAFETY: AVX-512 F/BW/VL, AVX2 and FMA are present.
            let t = unsafe { Avx512::new_unchecked() };
            t.vectorize(check);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn shuffles_avx2() {
        use crate::kernels::elementwise::Avx2Fma;
        if crate::simd::Isa::Avx2.is_supported() {
            // SAFETY: AVX2 and FMA are present.
            let t = unsafe { Avx2Fma::new_unchecked() };
            t.vectorize(check);
        }
    }
}
