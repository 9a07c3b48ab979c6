//! Element-wise kernels (affine, activations, binary, PReLU, softmax, layer / instance
//! norm), and the small SIMD layer that they, [`super::depthwise`] and [`super::pool`]
//! share.
//!
//! # The SIMD layer
//!
//! Each kernel body is written once, generic over `Simd`, a zero-sized token whose type
//! names a tier: `Portable` (`[f32; 4]` lanes, plain Rust, runs anywhere), `Avx2Fma`
//! (`__m256`) and `Avx512` (`__m512`, masked tails). `dispatch!` picks the token for an
//! [`Isa`] (clamped to [`Isa::detect`]) and runs the body inside a
//! `#[target_feature]` trampoline, so that everything `#[inline(always)]` below it compiles
//! for that tier. Every generic helper on a hot path must therefore be
//! `#[inline(always)]`: a helper left out of line would be compiled without the tier's
//! features and call its intrinsics one by one.
//!
//! Min / max follow the x86 rule on every tier: `max(a, b) = if a > b { a } else { b }`,
//! so a NaN in `b` always comes through and a NaN in `a` never does. Kernels put the data
//! operand second where NaN must propagate.
//!
//! # Batches and layouts
//!
//! The functions here mirror [`super::reference`]: same arguments in the same order, with a
//! leading `isa`, and the same batch convention (`n` samples of a per-sample `shape`, all
//! contiguous). Each has an `_in_place` twin where the output can overwrite the input.
//!
//! # Accuracy
//!
//! * `exp` (sigmoid, SiLU, softmax, tanh): Cephes `expf` (degree-5 polynomial after a
//!   two-constant `ln 2` range reduction, `2^n` applied in two halves so the whole
//!   `[-104, 88.72]` range, denormal results included, comes out right); overflow gives
//!   `+inf`, NaN stays NaN. Max relative error against f64 over a dense sweep (every
//!   61st f32 bit pattern in `[-87, 88]`, about 37 M points): 8.2e-8 (1.4 ulp), on the
//!   AVX2 and the portable tier alike.
//! * sigmoid / SiLU: `1/(1+e^{-x})`, `x·sigmoid(x)`; max relative error 1.44e-7 /
//!   1.65e-7 (every 97th f32 in `±[0, 88]`, results below `f32::MIN_POSITIVE` aside).
//! * `tanh`: Cephes `tanhf` (odd polynomial below |x| = 0.625, `1 - 2/(e^{2|x|}+1)`
//!   above); max relative error 1.33e-7.
//!
//! The `exp_sweep_accuracy` unit test re-measures these (sparser, to stay fast) and holds
//! them under 1.5e-7 (exp) and 2.5e-7 (the others); `cargo test --lib exp_sweep --
//! --nocapture` prints them.
//! * softmax, layer norm, instance norm and the average pools sum in f64.

// The polynomial coefficients are quoted as published (Cephes), digits and all.
#![allow(clippy::excessive_precision)]

use crate::graph::{Activation, BinaryKind};
use crate::simd::Isa;

// ---------------------------------------------------------------------------------------
// The SIMD layer
// ---------------------------------------------------------------------------------------

/// A tier's vector operations. Implemented by zero-sized tokens; a token of an x86 tier
/// exists only while the CPU is known to have its features (see `with_avx2`).
pub(crate) trait Simd: Copy {
    /// f32 lanes per vector.
    const LANES: usize;
    /// A vector of `LANES` f32.
    type V: Copy;
    /// A lane mask.
    type M: Copy;
    /// `LANES` f64 accumulators.
    type D: Copy;

    fn splat(self, x: f32) -> Self::V;
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// # Safety
    /// `p..p + LANES` must be writable.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// A set of lanes for masked loads and stores.
    type L: Copy;
    /// Lanes `lo..hi` (`lo <= hi <= LANES`).
    fn lanes(self, lo: usize, hi: usize) -> Self::L;
    /// The lanes in `m` from `p + lane`, the others from `fill`; only those lanes are read
    /// (no fault, no access, elsewhere).
    ///
    /// # Safety
    /// `p + i` readable for each lane `i` in `m` (`p` itself may point anywhere).
    unsafe fn load_m(self, p: *const f32, m: Self::L, fill: Self::V) -> Self::V;
    /// [`Simd::load_m`] with zeros in the other lanes.
    ///
    /// # Safety
    /// As [`Simd::load_m`].
    #[inline(always)]
    unsafe fn load_mz(self, p: *const f32, m: Self::L) -> Self::V {
        // SAFETY: forwarded.
        unsafe { self.load_m(p, m, self.zero()) }
    }
    /// Stores the lanes in `m` to `p + lane`, nothing else.
    ///
    /// # Safety
    /// `p + i` writable for each lane `i` in `m`.
    unsafe fn store_m(self, p: *mut f32, m: Self::L, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused on the x86 tiers, two roundings on the portable one.
    fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `if a > b { a } else { b }` per lane.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `if a < b { a } else { b }` per lane.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a < b` (false for NaN).
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    fn is_nan(self, a: Self::V) -> Self::M;
    fn mask_or(self, a: Self::M, b: Self::M) -> Self::M;
    fn mask_none(self) -> Self::M;
    fn any(self, m: Self::M) -> bool;
    /// `if m { a } else { b }` per lane.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// The magnitude of `mag` with the sign of `sign`.
    fn copysign(self, mag: Self::V, sign: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `[-126, 127]`.
    fn pow2i(self, n: Self::V) -> Self::V;
    /// The even and the odd lanes of the `2 * LANES` lanes `a ‖ b`.
    fn deinterleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V);
    fn dzero(self) -> Self::D;
    /// `acc + v` lane by lane, in f64.
    fn dadd(self, acc: Self::D, v: Self::V) -> Self::D;
    fn dsum(self, acc: Self::D) -> f64;
    /// The accumulators rounded to f32.
    fn dcvt(self, acc: Self::D) -> Self::V;

    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }

    /// Lanes `0..n` from `p`, the others from `fill`; nothing is read past `p + n`.
    ///
    /// # Safety
    /// `n <= LANES` and `p..p + n` readable (any `p` when `n == 0`).
    #[inline(always)]
    unsafe fn load_part(self, p: *const f32, n: usize, fill: Self::V) -> Self::V {
        // SAFETY: forwarded.
        unsafe { self.load_m(p, self.lanes(0, n), fill) }
    }

    /// The lane numbers `0, 1, .. LANES − 1` as floats.
    #[inline(always)]
    fn lane_index(self) -> Self::V {
        const INDEX: [f32; 16] = [
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
        ];
        // SAFETY: INDEX holds 16 >= LANES floats.
        unsafe { self.load(INDEX.as_ptr()) }
    }

    /// Stores lanes `0..n`; nothing is written past `p + n`.
    ///
    /// # Safety
    /// `n <= LANES` and `p..p + n` writable (any `p` when `n == 0`).
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize, v: Self::V) {
        // SAFETY: forwarded.
        unsafe { self.store_m(p, self.lanes(0, n), v) }
    }

    #[inline(always)]
    fn neg(self, a: Self::V) -> Self::V {
        self.mul(a, self.splat(-1.0))
    }

    /// Round to nearest (ties to even) for |a| < 2^22; NaN stays NaN.
    #[inline(always)]
    fn round(self, a: Self::V) -> Self::V {
        let magic = self.splat(12_582_912.0); // 1.5 * 2^23
        self.sub(self.add(a, magic), magic)
    }

    /// `-|a|`.
    #[inline(always)]
    fn neg_abs(self, a: Self::V) -> Self::V {
        self.neg(self.abs(a))
    }

    /// `y · 2^n` for integral `n` in `[-150, 128]` and `y` in `[0.5, 2]` (or NaN), rounded
    /// once: by two exact factors here, each a normal number, so that a subnormal
    /// result is rounded only at the last product (AVX-512 has one instruction for it).
    #[inline(always)]
    fn ldexp(self, y: Self::V, n: Self::V) -> Self::V {
        let n1 = self.round(self.mul(n, self.splat(0.5)));
        let n2 = self.sub(n, n1);
        self.mul(self.mul(y, self.pow2i(n1)), self.pow2i(n2))
    }

    /// `a / d` for `d` in `[1, 2]` (or NaN). The x86 tiers refine a reciprocal estimate
    /// instead of dividing (a divide's throughput there is several times an FMA's, and it
    /// bounded the sigmoid): within 1 ulp of the quotient, usually equal to it.
    #[inline(always)]
    fn div_1_2(self, a: Self::V, d: Self::V) -> Self::V {
        self.div(a, d)
    }

    /// Lane `l` from `base + idx[l]` (a gather; the tiers with one override this).
    ///
    /// # Safety
    /// `base + idx[l]` readable for `l < LANES`.
    #[inline(always)]
    unsafe fn gather(self, base: *const f32, idx: &[i32; 16]) -> Self::V {
        let mut buf = [0.0f32; 16];
        for (b, &i) in buf.iter_mut().zip(idx).take(Self::LANES) {
            // SAFETY: the caller's guarantee.
            *b = unsafe { *base.offset(i as isize) };
        }
        // SAFETY: `buf` has 16 >= LANES readable floats.
        unsafe { self.load(buf.as_ptr()) }
    }

    /// The lanes as an array (lanes past `LANES` are zero).
    #[inline(always)]
    fn to_array(self, v: Self::V) -> [f32; 16] {
        let mut buf = [0.0f32; 16];
        // SAFETY: `buf` has 16 >= LANES writable floats.
        unsafe { self.store(buf.as_mut_ptr(), v) };
        buf
    }

    /// Transposes the `LANES × LANES` block in `v[..LANES]`: lane `j` of `v[i]` becomes
    /// lane `i` of `v[j]`. Through memory here; tiers with a register shuffle network
    /// override it.
    #[inline(always)]
    fn transpose(self, v: &mut [Self::V]) {
        let l = Self::LANES;
        assert!(v.len() >= l && l <= 16);
        let (mut rows, mut cols) = ([0.0f32; 256], [0.0f32; 256]);
        for (i, &vi) in v.iter().take(l).enumerate() {
            // SAFETY: rows holds 16 · 16 >= (i + 1) · LANES floats.
            unsafe { self.store(rows.as_mut_ptr().add(i * l), vi) };
        }
        for i in 0..l {
            for j in 0..l {
                cols[j * l + i] = rows[i * l + j];
            }
        }
        for (j, vj) in v.iter_mut().take(l).enumerate() {
            // SAFETY: as above.
            *vj = unsafe { self.load(cols.as_ptr().add(j * l)) };
        }
    }

    #[inline(always)]
    fn hmax(self, v: Self::V) -> f32 {
        let a = self.to_array(v);
        a[1..Self::LANES]
            .iter()
            .fold(a[0], |m, &x| if m > x { m } else { x })
    }
}

/// The portable tier: four f32 lanes in an array, plain Rust that LLVM vectorizes for the
/// baseline target. No `f32::mul_add` here: without FMA it becomes a libm call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

#[inline(always)]
fn map4(a: [f32; 4], f: impl Fn(f32) -> f32) -> [f32; 4] {
    [f(a[0]), f(a[1]), f(a[2]), f(a[3])]
}

#[inline(always)]
fn zip4(a: [f32; 4], b: [f32; 4], f: impl Fn(f32, f32) -> f32) -> [f32; 4] {
    [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])]
}

impl Simd for Portable {
    const LANES: usize = 4;
    type V = [f32; 4];
    type M = [bool; 4];
    type D = [f64; 4];

    #[inline(always)]
    fn splat(self, x: f32) -> [f32; 4] {
        [x; 4]
    }
    #[inline(always)]
    // Safety: the caller guarantees 4 readable floats at `p` (Simd::load contract).
    unsafe fn load(self, p: *const f32) -> [f32; 4] {
        // SAFETY: the caller guarantees 4 readable floats at `p`.
        unsafe { p.cast::<[f32; 4]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: [f32; 4]) {
        // SAFETY: the caller guarantees 4 writable floats at `p`.
        unsafe { p.cast::<[f32; 4]>().write_unaligned(v) }
    }
    type L = (usize, usize);
    #[inline(always)]
    fn lanes(self, lo: usize, hi: usize) -> (usize, usize) {
        (lo, hi)
    }
    #[inline(always)]
    unsafe fn load_m(self, p: *const f32, (lo, hi): (usize, usize), fill: [f32; 4]) -> [f32; 4] {
        let mut v = fill;
        for (i, lane) in v.iter_mut().enumerate().take(hi).skip(lo) {
            // SAFETY: lane i is in the set, which the caller guarantees readable.
            *lane = unsafe { *p.wrapping_add(i) };
        }
        v
    }
    #[inline(always)]
    unsafe fn store_m(self, p: *mut f32, (lo, hi): (usize, usize), v: [f32; 4]) {
        for (i, &lane) in v.iter().enumerate().take(hi).skip(lo) {
            // SAFETY: lane i is in the set, which the caller guarantees writable.
            unsafe { *p.wrapping_add(i) = lane };
        }
    }
    #[inline(always)]
    fn add(self, a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        zip4(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        zip4(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(self, a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        zip4(a, b, |x, y| x * y)
    }
    #[inline(always)]
    fn div(self, a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        zip4(a, b, |x, y| x / y)
    }
    #[inline(always)]
    fn fmadd(self, a: [f32; 4], b: [f32; 4], c: [f32; 4]) -> [f32; 4] {
        [
            a[0] * b[0] + c[0],
            a[1] * b[1] + c[1],
            a[2] * b[2] + c[2],
            a[3] * b[3] + c[3],
        ]
    }
    #[inline(always)]
    fn max(self, a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        zip4(a, b, |x, y| if x > y { x } else { y })
    }
    #[inline(always)]
    fn min(self, a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        zip4(a, b, |x, y| if x < y { x } else { y })
    }
    #[inline(always)]
    fn lt(self, a: [f32; 4], b: [f32; 4]) -> [bool; 4] {
        [a[0] < b[0], a[1] < b[1], a[2] < b[2], a[3] < b[3]]
    }
    #[inline(always)]
    fn is_nan(self, a: [f32; 4]) -> [bool; 4] {
        [a[0].is_nan(), a[1].is_nan(), a[2].is_nan(), a[3].is_nan()]
    }
    #[inline(always)]
    fn mask_or(self, a: [bool; 4], b: [bool; 4]) -> [bool; 4] {
        [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]
    }
    #[inline(always)]
    fn mask_none(self) -> [bool; 4] {
        [false; 4]
    }
    #[inline(always)]
    fn any(self, m: [bool; 4]) -> bool {
        m[0] | m[1] | m[2] | m[3]
    }
    #[inline(always)]
    fn select(self, m: [bool; 4], a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| if m[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn abs(self, a: [f32; 4]) -> [f32; 4] {
        map4(a, f32::abs)
    }
    #[inline(always)]
    fn copysign(self, mag: [f32; 4], sign: [f32; 4]) -> [f32; 4] {
        zip4(mag, sign, f32::copysign)
    }
    #[inline(always)]
    fn pow2i(self, n: [f32; 4]) -> [f32; 4] {
        map4(n, |x| f32::from_bits(((x as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    fn deinterleave(self, a: [f32; 4], b: [f32; 4]) -> ([f32; 4], [f32; 4]) {
        ([a[0], a[2], b[0], b[2]], [a[1], a[3], b[1], b[3]])
    }
    #[inline(always)]
    fn dzero(self) -> [f64; 4] {
        [0.0; 4]
    }
    #[inline(always)]
    fn dadd(self, acc: [f64; 4], v: [f32; 4]) -> [f64; 4] {
        std::array::from_fn(|i| acc[i] + v[i] as f64)
    }
    #[inline(always)]
    fn dsum(self, acc: [f64; 4]) -> f64 {
        (acc[0] + acc[1]) + (acc[2] + acc[3])
    }
    #[inline(always)]
    fn dcvt(self, acc: [f64; 4]) -> [f32; 4] {
        std::array::from_fn(|i| acc[i] as f32)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2Fma, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// Runs value-only intrinsics of a token's tier.
    macro_rules! tf {
        ($e:expr) => {
            // SAFETY: a token is made only by `new_unchecked`, whose callers guarantee that
            // the CPU has the tier's features; the expression touches no memory.
            unsafe { $e }
        };
    }

    /// Proof that the CPU has AVX2 and FMA.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2Fma(());

    /// Proof that the CPU has AVX-512 F/BW/VL, AVX2 and FMA.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512(());

    impl Avx2Fma {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[inline(always)]
        pub(crate) unsafe fn new_unchecked() -> Self {
            Avx2Fma(())
        }

        /// Runs `f` compiled with AVX2 + FMA enabled (`f` must be an `#[inline(always)]`
        /// closure for its body to be compiled that way).
        #[inline(always)]
        pub(crate) fn vectorize<R>(self, f: impl FnOnce(Self) -> R) -> R {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn tramp<R>(t: Avx2Fma, f: impl FnOnce(Avx2Fma) -> R) -> R {
                f(t)
            }
            // SAFETY: the token proves that the CPU has these features.
            unsafe { tramp(self, f) }
        }
    }

    impl Avx512 {
        /// # Safety
        /// The CPU must support AVX-512 F, BW and VL, AVX2 and FMA.
        #[inline(always)]
        pub(crate) unsafe fn new_unchecked() -> Self {
            Avx512(())
        }

        /// As [`Avx2Fma::vectorize`], for AVX-512.
        #[inline(always)]
        pub(crate) fn vectorize<R>(self, f: impl FnOnce(Self) -> R) -> R {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn tramp<R>(t: Avx512, f: impl FnOnce(Avx512) -> R) -> R {
                f(t)
            }
            // SAFETY: the token proves that the CPU has these features.
            unsafe { tramp(self, f) }
        }
    }

    impl Simd for Avx2Fma {
        const LANES: usize = 8;
        type V = __m256;
        type M = __m256;
        type D = (__m256d, __m256d);

        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            tf!(_mm256_set1_ps(x))
        }
        #[inline(always)]
        // Safety: the caller guarantees `base + idx[l]` readable (Simd::gather contract).
        unsafe fn gather(self, base: *const f32, idx: &[i32; 16]) -> __m256 {
            // SAFETY: the caller guarantees `base + idx[l]` readable for l < 8; `idx` has
            // 16 readable i32; the token guarantees AVX2.
            unsafe { _mm256_i32gather_ps::<4>(base, _mm256_loadu_si256(idx.as_ptr().cast())) }
        }
        #[inline(always)]
        // Safety: the caller guarantees 8 readable floats at `p` (Simd::load contract).
        unsafe fn load(self, p: *const f32) -> __m256 {
            // SAFETY: the caller guarantees 8 readable floats; the token guarantees AVX.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m256) {
            // SAFETY: the caller guarantees 8 writable floats; the token guarantees AVX.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        type L = __m256i;
        #[inline(always)]
        fn lanes(self, lo: usize, hi: usize) -> __m256i {
            tf!({
                let i = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                _mm256_andnot_si256(
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(lo as i32), i),
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), i),
                )
            })
        }
        #[inline(always)]
        unsafe fn load_m(self, p: *const f32, m: __m256i, fill: __m256) -> __m256 {
            // SAFETY: masked-off lanes are neither read nor fault (VMASKMOVPS); the lanes
            // in `m` are readable (caller); the token guarantees AVX2.
            let v = unsafe { _mm256_maskload_ps(p, m) };
            tf!(_mm256_blendv_ps(fill, v, _mm256_castsi256_ps(m)))
        }
        #[inline(always)]
        unsafe fn load_mz(self, p: *const f32, m: __m256i) -> __m256 {
            // SAFETY: as `load_m`; VMASKMOVPS zeroes the masked-off lanes itself.
            unsafe { _mm256_maskload_ps(p, m) }
        }
        #[inline(always)]
        unsafe fn store_m(self, p: *mut f32, m: __m256i, v: __m256) {
            // SAFETY: only the lanes in `m`, writable by the caller's guarantee, are written.
            unsafe { _mm256_maskstore_ps(p, m, v) }
        }
        #[inline(always)]
        unsafe fn store_part(self, p: *mut f32, n: usize, v: __m256) {
            // VMASKMOVPS stores are microcoded and slow on AMD cores (Zen 1–4): plain
            // stores of 4, 2 and 1 lanes write exactly lanes 0..n instead.
            // SAFETY: `p..p + n` writable (caller), each store below stays inside it; the
            // token guarantees AVX2.
            unsafe {
                if n >= 8 {
                    _mm256_storeu_ps(p, v);
                    return;
                }
                let (mut p, mut n) = (p, n);
                let mut lo = _mm256_castps256_ps128(v);
                if n >= 4 {
                    _mm_storeu_ps(p, lo);
                    lo = _mm256_extractf128_ps::<1>(v);
                    p = p.add(4);
                    n -= 4;
                }
                if n >= 2 {
                    _mm_store_sd(p.cast(), _mm_castps_pd(lo));
                    lo = _mm_movehl_ps(lo, lo);
                    p = p.add(2);
                    n -= 2;
                }
                if n == 1 {
                    _mm_store_ss(p, lo);
                }
            }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_add_ps(a, b))
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_sub_ps(a, b))
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_mul_ps(a, b))
        }
        #[inline(always)]
        fn div(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_div_ps(a, b))
        }
        #[inline(always)]
        fn fmadd(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            tf!(_mm256_fmadd_ps(a, b, c))
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_max_ps(a, b))
        }
        #[inline(always)]
        fn min(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_min_ps(a, b))
        }
        #[inline(always)]
        fn lt(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_cmp_ps::<_CMP_LT_OQ>(a, b))
        }
        #[inline(always)]
        fn is_nan(self, a: __m256) -> __m256 {
            tf!(_mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
        }
        #[inline(always)]
        fn mask_or(self, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_or_ps(a, b))
        }
        #[inline(always)]
        fn mask_none(self) -> __m256 {
            tf!(_mm256_setzero_ps())
        }
        #[inline(always)]
        fn any(self, m: __m256) -> bool {
            tf!(_mm256_movemask_ps(m)) != 0
        }
        #[inline(always)]
        fn select(self, m: __m256, a: __m256, b: __m256) -> __m256 {
            tf!(_mm256_blendv_ps(b, a, m))
        }
        #[inline(always)]
        fn abs(self, a: __m256) -> __m256 {
            tf!(_mm256_andnot_ps(_mm256_set1_ps(-0.0), a))
        }
        #[inline(always)]
        fn copysign(self, mag: __m256, sign: __m256) -> __m256 {
            tf!({
                let s = _mm256_set1_ps(-0.0);
                _mm256_or_ps(_mm256_andnot_ps(s, mag), _mm256_and_ps(s, sign))
            })
        }
        #[inline(always)]
        fn pow2i(self, n: __m256) -> __m256 {
            tf!(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(
                _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))
            )))
        }
        #[inline(always)]
        fn neg_abs(self, a: __m256) -> __m256 {
            tf!(_mm256_or_ps(_mm256_set1_ps(-0.0), a))
        }
        #[inline(always)]
        fn div_1_2(self, a: __m256, d: __m256) -> __m256 {
            tf!({
                // 1/d to 1.5·2^-12, one Newton step (about 2^-23), then the quotient
                // and one correction from its exact residual a − d·q.
                let one = _mm256_set1_ps(1.0);
                let r = _mm256_rcp_ps(d);
                let r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
                let q = _mm256_mul_ps(a, r);
                _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, q, a), q)
            })
        }
        #[inline(always)]
        fn transpose(self, v: &mut [__m256]) {
            assert!(v.len() >= 8);
            tf!({
                // 2×2 blocks of floats, then of pairs, then of 128-bit halves.
                let t0 = _mm256_unpacklo_ps(v[0], v[1]);
                let t1 = _mm256_unpackhi_ps(v[0], v[1]);
                let t2 = _mm256_unpacklo_ps(v[2], v[3]);
                let t3 = _mm256_unpackhi_ps(v[2], v[3]);
                let t4 = _mm256_unpacklo_ps(v[4], v[5]);
                let t5 = _mm256_unpackhi_ps(v[4], v[5]);
                let t6 = _mm256_unpacklo_ps(v[6], v[7]);
                let t7 = _mm256_unpackhi_ps(v[6], v[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                v[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
                v[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
                v[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
                v[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
                v[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
                v[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
                v[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
                v[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
            })
        }
        #[inline(always)]
        fn deinterleave(self, a: __m256, b: __m256) -> (__m256, __m256) {
            tf!({
                // Per 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; then 64-bit blocks 0,2,1,3.
                let e = _mm256_shuffle_ps::<0x88>(a, b);
                let o = _mm256_shuffle_ps::<0xDD>(a, b);
                (
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(e))),
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(o))),
                )
            })
        }
        #[inline(always)]
        fn dzero(self) -> (__m256d, __m256d) {
            tf!((_mm256_setzero_pd(), _mm256_setzero_pd()))
        }
        #[inline(always)]
        fn dadd(self, acc: (__m256d, __m256d), v: __m256) -> (__m256d, __m256d) {
            tf!((
                _mm256_add_pd(acc.0, _mm256_cvtps_pd(_mm256_castps256_ps128(v))),
                _mm256_add_pd(acc.1, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v))),
            ))
        }
        #[inline(always)]
        fn dsum(self, acc: (__m256d, __m256d)) -> f64 {
            let mut buf = [0.0f64; 4];
            // SAFETY: `buf` has 4 writable f64.
            unsafe { _mm256_storeu_pd(buf.as_mut_ptr(), _mm256_add_pd(acc.0, acc.1)) };
            (buf[0] + buf[1]) + (buf[2] + buf[3])
        }
        #[inline(always)]
        fn dcvt(self, acc: (__m256d, __m256d)) -> __m256 {
            tf!(_mm256_set_m128(
                _mm256_cvtpd_ps(acc.1),
                _mm256_cvtpd_ps(acc.0)
            ))
        }
    }

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        type M = __mmask16;
        type D = (__m512d, __m512d);

        #[inline(always)]
        fn splat(self, x: f32) -> __m512 {
            tf!(_mm512_set1_ps(x))
        }
        #[inline(always)]
        // Safety: the caller guarantees `base + idx[l]` readable (Simd::gather contract).
        unsafe fn gather(self, base: *const f32, idx: &[i32; 16]) -> __m512 {
            // SAFETY: the caller guarantees `base + idx[l]` readable for l < 16; `idx` has
            // 16 readable i32; the token guarantees AVX-512F.
            unsafe { _mm512_i32gather_ps::<4>(_mm512_loadu_si512(idx.as_ptr().cast()), base) }
        }
        #[inline(always)]
        // Safety: the caller guarantees 16 readable floats at `p` (Simd::load contract).
        unsafe fn load(self, p: *const f32) -> __m512 {
            // SAFETY: the caller guarantees 16 readable floats; the token guarantees AVX-512F.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m512) {
            // SAFETY: the caller guarantees 16 writable floats; the token guarantees AVX-512F.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        type L = __mmask16;
        #[inline(always)]
        fn lanes(self, lo: usize, hi: usize) -> __mmask16 {
            (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
        }
        #[inline(always)]
        unsafe fn load_m(self, p: *const f32, m: __mmask16, fill: __m512) -> __m512 {
            // SAFETY: masked-off lanes are neither read nor fault; the lanes in `m` are
            // readable (caller); the token guarantees AVX-512F.
            unsafe { _mm512_mask_loadu_ps(fill, m, p) }
        }
        #[inline(always)]
        unsafe fn load_mz(self, p: *const f32, m: __mmask16) -> __m512 {
            // SAFETY: as `load_m`.
            unsafe { _mm512_maskz_loadu_ps(m, p) }
        }
        #[inline(always)]
        unsafe fn store_m(self, p: *mut f32, m: __mmask16, v: __m512) {
            // SAFETY: only the lanes in `m`, writable by the caller's guarantee, are written.
            unsafe { _mm512_mask_storeu_ps(p, m, v) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            tf!(_mm512_add_ps(a, b))
        }
        #[inline(always)]
        fn sub(self, a: __m512, b: __m512) -> __m512 {
            tf!(_mm512_sub_ps(a, b))
        }
        #[inline(always)]
        fn mul(self, a: __m512, b: __m512) -> __m512 {
            tf!(_mm512_mul_ps(a, b))
        }
        #[inline(always)]
        fn div(self, a: __m512, b: __m512) -> __m512 {
            tf!(_mm512_div_ps(a, b))
        }
        #[inline(always)]
        fn fmadd(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            tf!(_mm512_fmadd_ps(a, b, c))
        }
        #[inline(always)]
        fn max(self, a: __m512, b: __m512) -> __m512 {
            tf!(_mm512_max_ps(a, b))
        }
        #[inline(always)]
        fn min(self, a: __m512, b: __m512) -> __m512 {
            tf!(_mm512_min_ps(a, b))
        }
        #[inline(always)]
        fn lt(self, a: __m512, b: __m512) -> __mmask16 {
            tf!(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b))
        }
        #[inline(always)]
        fn is_nan(self, a: __m512) -> __mmask16 {
            tf!(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a))
        }
        #[inline(always)]
        fn mask_or(self, a: __mmask16, b: __mmask16) -> __mmask16 {
            a | b
        }
        #[inline(always)]
        fn mask_none(self) -> __mmask16 {
            0
        }
        #[inline(always)]
        fn any(self, m: __mmask16) -> bool {
            m != 0
        }
        #[inline(always)]
        fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
            // blend(k, x, y) takes y where k is set.
            tf!(_mm512_mask_blend_ps(m, b, a))
        }
        #[inline(always)]
        fn abs(self, a: __m512) -> __m512 {
            tf!(_mm512_castsi512_ps(_mm512_and_si512(
                _mm512_castps_si512(a),
                _mm512_set1_epi32(0x7fff_ffff)
            )))
        }
        #[inline(always)]
        fn copysign(self, mag: __m512, sign: __m512) -> __m512 {
            tf!({
                let m = _mm512_set1_epi32(0x7fff_ffff);
                _mm512_castsi512_ps(_mm512_or_si512(
                    _mm512_and_si512(_mm512_castps_si512(mag), m),
                    _mm512_andnot_si512(m, _mm512_castps_si512(sign)),
                ))
            })
        }
        #[inline(always)]
        fn pow2i(self, n: __m512) -> __m512 {
            tf!(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(
                _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127))
            )))
        }
        #[inline(always)]
        fn neg_abs(self, a: __m512) -> __m512 {
            tf!(_mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(a),
                _mm512_set1_epi32(i32::MIN)
            )))
        }
        #[inline(always)]
        fn ldexp(self, y: __m512, n: __m512) -> __m512 {
            // y · 2^floor(n), one rounding: the two-factor default's result.
            tf!(_mm512_scalef_ps(y, n))
        }
        #[inline(always)]
        fn div_1_2(self, a: __m512, d: __m512) -> __m512 {
            tf!({
                // 1/d to 2^-14, one Newton step (about 2^-23), then the quotient and one
                // correction from its exact residual a − d·q.
                let one = _mm512_set1_ps(1.0);
                let r = _mm512_rcp14_ps(d);
                let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);
                let q = _mm512_mul_ps(a, r);
                _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, q, a), q)
            })
        }
        #[inline(always)]
        fn transpose(self, v: &mut [__m512]) {
            assert!(v.len() >= 16);
            tf!({
                // Rows a, b interleaved per 128-bit lane (t[2k], t[2k + 1]); then 4×4
                // blocks inside each lane: u[4g + j] lane q holds rows 4g..4g + 4 of
                // column 4q + j; then the 4×4 transpose of 128-bit lanes across
                // u[j], u[4 + j], u[8 + j], u[12 + j] gives columns j, 4 + j, 8 + j, 12 + j.
                let t: [__m512; 16] = std::array::from_fn(|i| {
                    let (a, b) = (v[i & !1], v[i | 1]);
                    if i % 2 == 0 {
                        _mm512_unpacklo_ps(a, b)
                    } else {
                        _mm512_unpackhi_ps(a, b)
                    }
                });
                let u: [__m512; 16] = std::array::from_fn(|i| {
                    let (g, j) = (i / 4, i % 4);
                    let (a, b) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
                    if j % 2 == 0 {
                        _mm512_shuffle_ps::<0x44>(a, b)
                    } else {
                        _mm512_shuffle_ps::<0xEE>(a, b)
                    }
                });
                for j in 0..4 {
                    let x0 = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
                    let x1 = _mm512_shuffle_f32x4::<0xEE>(u[j], u[4 + j]);
                    let y0 = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
                    let y1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + j], u[12 + j]);
                    v[j] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
                    v[4 + j] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
                    v[8 + j] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
                    v[12 + j] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
                }
            })
        }
        #[inline(always)]
        fn deinterleave(self, a: __m512, b: __m512) -> (__m512, __m512) {
            tf!({
                // Indices 0..15 pick from `a`, 16..31 from `b`.
                let even =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odd =
                    _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                (
                    _mm512_permutex2var_ps(a, even, b),
                    _mm512_permutex2var_ps(a, odd, b),
                )
            })
        }
        #[inline(always)]
        fn dzero(self) -> (__m512d, __m512d) {
            tf!((_mm512_setzero_pd(), _mm512_setzero_pd()))
        }
        #[inline(always)]
        fn dadd(self, acc: (__m512d, __m512d), v: __m512) -> (__m512d, __m512d) {
            tf!({
                let lo = _mm512_castps512_ps256(v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                (
                    _mm512_add_pd(acc.0, _mm512_cvtps_pd(lo)),
                    _mm512_add_pd(acc.1, _mm512_cvtps_pd(hi)),
                )
            })
        }
        #[inline(always)]
        fn dsum(self, acc: (__m512d, __m512d)) -> f64 {
            let mut buf = [0.0f64; 8];
            // SAFETY: `buf` has 8 writable f64; the token guarantees AVX-512F.
            unsafe { _mm512_storeu_pd(buf.as_mut_ptr(), _mm512_add_pd(acc.0, acc.1)) };
            ((buf[0] + buf[1]) + (buf[2] + buf[3])) + ((buf[4] + buf[5]) + (buf[6] + buf[7]))
        }
        #[inline(always)]
        fn dcvt(self, acc: (__m512d, __m512d)) -> __m512 {
            tf!({
                let lo = _mm512_castps256_ps512(_mm512_cvtpd_ps(acc.0));
                let hi = _mm256_castps_pd(_mm512_cvtpd_ps(acc.1));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(lo), hi))
            })
        }
    }
}

/// `isa`, lowered to what this CPU runs.
#[inline]
pub(crate) fn clamp_isa(isa: Isa) -> Isa {
    isa.min(Isa::detect())
}

/// f32 lanes of the vectors `dispatch!` gives `isa` (the channel granule of the
/// channels-last kernels).
pub(crate) fn vector_lanes(isa: Isa) -> usize {
    match clamp_isa(isa) {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
        Isa::Scalar => 4,
    }
}

/// The bounds of `act` as a clamp, if it is one (Identity, ReLU and Clip): the
/// activations the channels-last depthwise kernels apply in registers.
pub(crate) fn clamp_bounds(act: crate::graph::Activation) -> Option<(f32, f32)> {
    use crate::graph::Activation;
    match act {
        Activation::Identity => Some((f32::NEG_INFINITY, f32::INFINITY)),
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Clip { min, max } => Some((min, max)),
        _ => None,
    }
}

/// `dispatch!(isa, |s| body)`: evaluates `body` with `s` bound to the token of
/// `clamp_isa(isa)`'s tier, inside that tier's `#[target_feature]` trampoline.
macro_rules! dispatch {
    ($isa:expr, |$s:ident| $body:expr) => {{
        let isa = $crate::kernels::elementwise::clamp_isa($isa);
        #[cfg(target_arch = "x86_64")]
        {
            match isa {
                $crate::simd::Isa::Avx512 => {
                    // SAFETY: `clamp_isa` never goes above `Isa::detect()`, so this CPU has
                    // AVX-512 F/BW/VL, AVX2 and FMA.
                    let t = unsafe { $crate::kernels::elementwise::Avx512::new_unchecked() };
                    t.vectorize(
                        #[inline(always)]
                        |$s| $body,
                    )
                }
                $crate::simd::Isa::Avx2 => {
                    // SAFETY: as above, this CPU has AVX2 and FMA.
                    let t = unsafe { $crate::kernels::elementwise::Avx2Fma::new_unchecked() };
                    t.vectorize(
                        #[inline(always)]
                        |$s| $body,
                    )
                }
                $crate::simd::Isa::Scalar => {
                    let $s = $crate::kernels::elementwise::Portable;
                    $body
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            let $s = $crate::kernels::elementwise::Portable;
            $body
        }
    }};
}
pub(crate) use dispatch;

// ---------------------------------------------------------------------------------------
// Vector math
// ---------------------------------------------------------------------------------------

/// `out[i] = expr` for `i < N`: one step of a computation on `N` independent vectors,
/// written stage by stage so that their dependency chains interleave. Each chain of the
/// exp-based functions is some 25 dependent operations; one vector at a time, the
/// out-of-order window held too few chains to keep the vector units busy (SiLU over an
/// L2-resident map on AVX-512: 11.3 µs one vector at a time, 9.8 four at a time).
macro_rules! each {
    ($s:expr, $n:expr, $i:ident => $e:expr) => {{
        let mut out = [$s.zero(); $n];
        for $i in 0..$n {
            out[$i] = $e;
        }
        out
    }};
}

/// `e^x` (Cephes `expf`): see the module docs for its accuracy.
#[inline(always)]
pub(crate) fn exp_v<S: Simd>(s: S, x: S::V) -> S::V {
    exp_n(s, [x])[0]
}

/// [`exp_v`] of `N` vectors.
#[inline(always)]
fn exp_n<S: Simd, const N: usize>(s: S, x: [S::V; N]) -> [S::V; N] {
    // The data operand second, so that NaN comes through.
    let xc = each!(s, N, i => s.min(s.splat(EXP_HI), s.max(s.splat(EXP_LO), x[i])));
    let e = exp_clamped(s, xc);
    each!(s, N, i => {
        let e = s.select(s.lt(s.splat(EXP_HI), x[i]), s.splat(f32::INFINITY), e[i]);
        s.select(s.lt(x[i], s.splat(EXP_LO)), s.zero(), e)
    })
}

/// Below ln(f32::MAX).
const EXP_HI: f32 = 88.722_83;
/// ln(2^-150): below, `e^x` rounds to 0.
const EXP_LO: f32 = -103.972_08;

/// `e^x` for `x` in `[EXP_LO, EXP_HI]` (or NaN), `N` vectors.
#[inline(always)]
fn exp_clamped<S: Simd, const N: usize>(s: S, xc: [S::V; N]) -> [S::V; N] {
    let n = each!(s, N, i => s.round(s.mul(xc[i], s.splat(std::f32::consts::LOG2_E))));
    // r = x - n ln2, with ln2 in two parts (the first exact in 9 bits).
    let r = each!(s, N, i => s.fmadd(n[i], s.splat(-0.693_359_4), xc[i]));
    let r = each!(s, N, i => s.fmadd(n[i], s.splat(2.121_944_4e-4), r[i]));
    let mut p = [s.splat(1.987_569_1e-4); N];
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        p = each!(s, N, i => s.fmadd(p[i], r[i], s.splat(c)));
    }
    let y = each!(s, N, i => s.add(s.fmadd(p[i], s.mul(r[i], r[i]), r[i]), s.splat(1.0)));
    each!(s, N, i => s.ldexp(y[i], n[i]))
}

/// `1 / (1 + e^-x)`, as `1 / (1 + e)` for `x >= 0` and `e / (1 + e)` below, with
/// `e = e^-|x|`: nothing overflows, so `x · sigmoid(x)` stays right where `e^-x` would be
/// infinite (SiLU of -88.8 is a normal -2.4e-37). `e^-|x|` needs no overflow side, and
/// `1 + e` lies in `[1, 2]`, where the x86 tiers divide by a refined reciprocal. `N`
/// vectors.
#[inline(always)]
fn sigmoid_n<S: Simd, const N: usize>(s: S, x: [S::V; N]) -> [S::V; N] {
    let one = s.splat(1.0);
    let t = each!(s, N, i => s.neg_abs(x[i]));
    // The data operand second, so that NaN comes through.
    let e = exp_clamped(s, each!(s, N, i => s.max(s.splat(EXP_LO), t[i])));
    let e = each!(s, N, i => s.select(s.lt(t[i], s.splat(EXP_LO)), s.zero(), e[i]));
    each!(s, N, i => s.div_1_2(s.select(s.lt(x[i], s.zero()), e[i], one), s.add(one, e[i])))
}

/// `x · sigmoid(x)`, `N` vectors.
#[inline(always)]
fn silu_n<S: Simd, const N: usize>(s: S, x: [S::V; N]) -> [S::V; N] {
    let g = sigmoid_n(s, x);
    each!(s, N, i => s.mul(x[i], g[i]))
}

/// `tanh x` (Cephes `tanhf`), `N` vectors.
#[inline(always)]
fn tanh_n<S: Simd, const N: usize>(s: S, x: [S::V; N]) -> [S::V; N] {
    let one = s.splat(1.0);
    let a = each!(s, N, i => s.abs(x[i]));
    // |x| >= 0.625: 1 - 2 / (e^{2|x|} + 1), with the sign of x.
    let e = exp_n(s, each!(s, N, i => s.add(a[i], a[i])));
    let big = each!(s, N, i => s.copysign(
        s.sub(one, s.div(s.splat(2.0), s.add(e[i], one))),
        x[i],
    ));
    // |x| < 0.625: x + x^3 P(x^2).
    let z = each!(s, N, i => s.mul(x[i], x[i]));
    let mut p = [s.splat(-5.704_988_7e-3); N];
    for c in [
        2.063_908_9e-2,
        -5.373_971_6e-2,
        1.333_144_2e-1,
        -3.333_328_2e-1,
    ] {
        p = each!(s, N, i => s.fmadd(p[i], z[i], s.splat(c)));
    }
    each!(s, N, i => {
        let small = s.fmadd(s.mul(p[i], z[i]), x[i], x[i]);
        s.select(s.lt(a[i], s.splat(0.625)), small, big[i])
    })
}

/// An [`Activation`] with its constants splatted, applied one vector at a time. The
/// `match` is loop-invariant and predicts perfectly.
#[derive(Clone, Copy)]
pub(crate) struct ActV<S: Simd> {
    act: Activation,
    a: S::V,
    b: S::V,
}

impl<S: Simd> ActV<S> {
    #[inline(always)]
    pub(crate) fn new(s: S, act: Activation) -> Self {
        let (a, b) = match act {
            Activation::LeakyRelu { alpha } => (alpha, 0.0),
            Activation::Clip { min, max } => (min, max),
            Activation::HardSigmoid { alpha, beta } => (alpha, beta),
            Activation::HardSwish => (1.0 / 6.0, 0.5),
            _ => (0.0, 0.0),
        };
        ActV {
            act,
            a: s.splat(a),
            b: s.splat(b),
        }
    }

    #[inline(always)]
    pub(crate) fn is_identity(&self) -> bool {
        self.act.is_identity()
    }

    #[inline(always)]
    pub(crate) fn apply(&self, s: S, x: S::V) -> S::V {
        match self.act {
            Activation::Identity => x,
            Activation::Relu => s.max(s.zero(), x),
            Activation::LeakyRelu { .. } => s.select(s.lt(x, s.zero()), s.mul(x, self.a), x),
            Activation::Clip { .. } => s.min(self.b, s.max(self.a, x)),
            Activation::Sigmoid => sigmoid_n(s, [x])[0],
            Activation::HardSigmoid { .. } => {
                s.min(s.splat(1.0), s.max(s.zero(), s.fmadd(x, self.a, self.b)))
            }
            Activation::HardSwish => s.mul(
                x,
                s.min(s.splat(1.0), s.max(s.zero(), s.fmadd(x, self.a, self.b))),
            ),
            Activation::Silu => silu_n(s, [x])[0],
            Activation::Tanh => tanh_n(s, [x])[0],
        }
    }

    /// [`ActV::apply`] to `N` independent vectors, the exp-based activations' steps
    /// interleaved across them (see `each!`): same operations per lane, same results.
    #[inline(always)]
    pub(crate) fn apply_n<const N: usize>(&self, s: S, x: [S::V; N]) -> [S::V; N] {
        match self.act {
            Activation::Sigmoid => sigmoid_n(s, x),
            Activation::Silu => silu_n(s, x),
            Activation::Tanh => tanh_n(s, x),
            _ => each!(s, N, i => self.apply(s, x[i])),
        }
    }
}

/// `dst[i] = act(src[i])` over `rows` rows of `n` floats, `ld` apart in both (a stored
/// GEMM tile; `rows = 1` for a flat run): the rows' whole vectors four at a time through
/// [`ActV::apply_n`], across row ends (a 32-float tile row has only two), then each row's
/// masked tail. `src` may equal `dst`.
///
/// # Safety
/// `src + r·ld .. + n` readable and `dst + r·ld .. + n` writable for `r < rows`; if they
/// overlap they are equal.
#[inline(always)]
pub(crate) unsafe fn map_act<S: Simd>(
    s: S,
    act: &ActV<S>,
    src: *const f32,
    dst: *mut f32,
    ld: usize,
    rows: usize,
    n: usize,
) {
    const N: usize = 4;
    let l = S::LANES;
    let full = n / l;
    // The offset of whole vector v of row r, then the next one's.
    let (mut r, mut v) = (0, 0);
    let mut next = || {
        let o = r * ld + v * l;
        v += 1;
        if v == full {
            (r, v) = (r + 1, 0);
        }
        o
    };
    let mut left = rows * full;
    while left >= N {
        let mut at = [0; N];
        for o in &mut at {
            *o = next();
        }
        // SAFETY: N whole vectors, each inside its row.
        unsafe {
            let x = each!(s, N, j => s.load(src.add(at[j])));
            let y = act.apply_n(s, x);
            for (&o, &y) in at.iter().zip(&y) {
                s.store(dst.add(o), y);
            }
        }
        left -= N;
    }
    for _ in 0..left {
        let o = next();
        // SAFETY: a whole vector inside its row.
        unsafe { s.store(dst.add(o), act.apply(s, s.load(src.add(o)))) };
    }
    let tail = n - full * l;
    if tail > 0 {
        for r in 0..rows {
            let o = r * ld + full * l;
            // SAFETY: the row's last `tail` floats.
            unsafe {
                let y = act.apply(s, s.load_part(src.add(o), tail, s.zero()));
                s.store_part(dst.add(o), tail, y)
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loops
// ---------------------------------------------------------------------------------------

/// `dst[i] = f(src[i])` for `i < len`, with a masked tail. `src` may equal `dst`.
///
/// # Safety
/// `src..src+len` readable, `dst..dst+len` writable; if they overlap they are equal.
#[inline(always)]
pub(crate) unsafe fn map1<S: Simd>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    len: usize,
    f: impl Fn(S::V) -> S::V,
) {
    let l = S::LANES;
    let mut i = 0;
    // SAFETY (all blocks): every access is at i..i+l <= len or i..len.
    while i + 2 * l <= len {
        unsafe {
            let a = s.load(src.add(i));
            let b = s.load(src.add(i + l));
            s.store(dst.add(i), f(a));
            s.store(dst.add(i + l), f(b));
        }
        i += 2 * l;
    }
    while i + l <= len {
        // SAFETY: i + l <= len, one full vector inside src / dst.
        unsafe { s.store(dst.add(i), f(s.load(src.add(i)))) };
        i += l;
    }
    if i < len {
        let n = len - i;
        // SAFETY: n = len - i < l floats remain in src / dst.
        unsafe { s.store_part(dst.add(i), n, f(s.load_part(src.add(i), n, s.zero()))) };
    }
}

/// `dst[i] = f(a[i], b[i])` for `i < len`. `a` may equal `dst`.
///
/// # Safety
/// As [`map1`], for both sources.
#[inline(always)]
pub(crate) unsafe fn map2<S: Simd>(
    s: S,
    a: *const f32,
    b: *const f32,
    dst: *mut f32,
    len: usize,
    f: impl Fn(S::V, S::V) -> S::V,
) {
    let l = S::LANES;
    let mut i = 0;
    // SAFETY (all blocks): every access is at i..i+l <= len or i..len.
    while i + l <= len {
        unsafe { s.store(dst.add(i), f(s.load(a.add(i)), s.load(b.add(i)))) };
        i += l;
    }
    if i < len {
        let n = len - i;
        // SAFETY: the n = len - i tail elements from i lie inside a, b and dst (len each).
        unsafe {
            let x = s.load_part(a.add(i), n, s.zero());
            let y = s.load_part(b.add(i), n, s.zero());
            s.store_part(dst.add(i), n, f(x, y));
        }
    }
}

/// `dst = act(dst + residual)` over `len` floats (the epilogue of the windowed kernels).
///
/// # Safety
/// `dst..dst+len` writable, `residual..residual+len` readable when given.
#[inline(always)]
pub(crate) unsafe fn epilogue<S: Simd>(
    s: S,
    act: &ActV<S>,
    dst: *mut f32,
    residual: Option<*const f32>,
    len: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match residual {
            Some(r) => map2(
                s,
                dst,
                r,
                dst,
                len,
                #[inline(always)]
                |x, y| act.apply(s, s.add(x, y)),
            ),
            None if act.is_identity() => {}
            None => map1(
                s,
                dst,
                dst,
                len,
                #[inline(always)]
                |x| act.apply(s, x),
            ),
        }
    }
}

/// Sum of `len` floats, in f64.
///
/// # Safety
/// `p..p+len` readable.
#[inline(always)]
pub(crate) unsafe fn sum_f64<S: Simd>(s: S, p: *const f32, len: usize) -> f64 {
    let l = S::LANES;
    let (mut a, mut b) = (s.dzero(), s.dzero());
    let mut i = 0;
    // SAFETY (all blocks): every access is at i..i+l <= len or i..len.
    while i + 2 * l <= len {
        unsafe {
            a = s.dadd(a, s.load(p.add(i)));
            b = s.dadd(b, s.load(p.add(i + l)));
        }
        i += 2 * l;
    }
    while i + l <= len {
        a = s.dadd(a, unsafe { s.load(p.add(i)) });
        i += l;
    }
    if i < len {
        // SAFETY: the last len - i < l floats, inside p..p+len.
        a = s.dadd(a, unsafe { s.load_part(p.add(i), len - i, s.zero()) });
    }
    s.dsum(a) + s.dsum(b)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

// ---------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------

/// Per-channel `act(x * scale[c] + shift[c])` over `n` samples of `shape` (`[C, ...]`); a
/// 1-element scale or shift broadcasts. As [`super::reference::channel_affine`].
#[allow(clippy::too_many_arguments)]
pub fn channel_affine(
    isa: Isa,
    x: &[f32],
    n: usize,
    shape: &[usize],
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) {
    assert_eq!(out.len(), x.len());
    affine_impl(
        isa,
        x.as_ptr(),
        out.as_mut_ptr(),
        x.len(),
        n,
        shape,
        scale,
        shift,
        act,
    )
}

/// [`channel_affine`] overwriting its input.
pub fn channel_affine_in_place(
    isa: Isa,
    x: &mut [f32],
    n: usize,
    shape: &[usize],
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    act: Activation,
) {
    let p = x.as_mut_ptr();
    affine_impl(isa, p, p, x.len(), n, shape, scale, shift, act)
}

#[allow(clippy::too_many_arguments)]
fn affine_impl(
    isa: Isa,
    src: *const f32,
    dst: *mut f32,
    len: usize,
    n: usize,
    shape: &[usize],
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    act: Activation,
) {
    let c = shape[0];
    let inner = numel(&shape[1..]);
    assert_eq!(len, n * c * inner);
    for v in [scale, shift].into_iter().flatten() {
        assert!(
            v.len() == 1 || v.len() == c,
            "per-channel vector of {} for {c} channels",
            v.len()
        );
    }
    let pick = |v: Option<&[f32]>, ch: usize, default: f32| {
        v.map_or(default, |v| if v.len() == 1 { v[0] } else { v[ch] })
    };
    dispatch!(isa, |s| {
        let act = ActV::new(s, act);
        for sc in 0..n * c {
            let ch = sc % c;
            let (a, b) = (s.splat(pick(scale, ch, 1.0)), s.splat(pick(shift, ch, 0.0)));
            // SAFETY: plane `sc` is `sc*inner..(sc+1)*inner` of the `len` floats asserted above.
            unsafe {
                map1(
                    s,
                    src.add(sc * inner),
                    dst.add(sc * inner),
                    inner,
                    #[inline(always)]
                    |v| act.apply(s, s.fmadd(v, a, b)),
                );
            }
        }
    })
}

/// `out = act(x)` element-wise.
pub fn activation(isa: Isa, x: &[f32], act: Activation, out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    activation_impl(isa, x.as_ptr(), out.as_mut_ptr(), x.len(), act)
}

/// [`activation`] overwriting its input.
pub fn activation_in_place(isa: Isa, x: &mut [f32], act: Activation) {
    let p = x.as_mut_ptr();
    activation_impl(isa, p, p, x.len(), act)
}

fn activation_impl(isa: Isa, src: *const f32, dst: *mut f32, len: usize, act: Activation) {
    dispatch!(isa, |s| {
        let act = ActV::new(s, act);
        // SAFETY: the callers pass `len` readable / writable floats (equal when aliased).
        unsafe { map_act(s, &act, src, dst, len, 1, len) }
    })
}

/// `act(a op b)` where `b` has `a`'s shape or is a per-channel broadcast (`n * C`
/// values, `[C, 1, 1]` or `[C]` per sample). As [`super::reference::binary`].
#[allow(clippy::too_many_arguments)]
pub fn binary(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    n: usize,
    a_shape: &[usize],
    b_shape: &[usize],
    kind: BinaryKind,
    act: Activation,
    out: &mut [f32],
) {
    assert_eq!(out.len(), a.len());
    binary_impl(
        isa,
        a.as_ptr(),
        b,
        out.as_mut_ptr(),
        a.len(),
        n,
        a_shape,
        b_shape,
        kind,
        act,
    )
}

/// [`binary`] overwriting `a`.
#[allow(clippy::too_many_arguments)]
pub fn binary_in_place(
    isa: Isa,
    a: &mut [f32],
    b: &[f32],
    n: usize,
    a_shape: &[usize],
    b_shape: &[usize],
    kind: BinaryKind,
    act: Activation,
) {
    let p = a.as_mut_ptr();
    binary_impl(isa, p, b, p, a.len(), n, a_shape, b_shape, kind, act)
}

#[allow(clippy::too_many_arguments)]
fn binary_impl(
    isa: Isa,
    a: *const f32,
    b: &[f32],
    dst: *mut f32,
    len: usize,
    n: usize,
    a_shape: &[usize],
    b_shape: &[usize],
    kind: BinaryKind,
    act: Activation,
) {
    let c = a_shape[0];
    let inner = numel(&a_shape[1..]);
    let same = a_shape == b_shape;
    assert_eq!(len, n * c * inner);
    assert_eq!(b.len(), if same { len } else { n * c });
    dispatch!(isa, |s| {
        let act = ActV::new(s, act);
        if same {
            // SAFETY: a, b and dst all hold `len` floats (asserted above).
            unsafe {
                map2(
                    s,
                    a,
                    b.as_ptr(),
                    dst,
                    len,
                    #[inline(always)]
                    |x, y| act.apply(s, binop(s, kind, x, y)),
                )
            }
        } else {
            for (sc, &bv) in b.iter().enumerate() {
                let y = s.splat(bv);
                // SAFETY: plane `sc` lies within the `len = b.len() * inner` floats.
                unsafe {
                    map1(
                        s,
                        a.add(sc * inner),
                        dst.add(sc * inner),
                        inner,
                        #[inline(always)]
                        |x| act.apply(s, binop(s, kind, x, y)),
                    )
                }
            }
        }
    })
}

#[inline(always)]
fn binop<S: Simd>(s: S, kind: BinaryKind, x: S::V, y: S::V) -> S::V {
    match kind {
        BinaryKind::Add => s.add(x, y),
        BinaryKind::Mul => s.mul(x, y),
    }
}

/// `x` where `x >= 0`, else `slope[c] * x` (slope has C or 1 elements). As
/// [`super::reference::prelu`].
pub fn prelu(isa: Isa, x: &[f32], n: usize, shape: &[usize], slope: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), x.len());
    prelu_impl(isa, x.as_ptr(), out.as_mut_ptr(), x.len(), n, shape, slope)
}

/// [`prelu`] overwriting its input.
pub fn prelu_in_place(isa: Isa, x: &mut [f32], n: usize, shape: &[usize], slope: &[f32]) {
    let p = x.as_mut_ptr();
    prelu_impl(isa, p, p, x.len(), n, shape, slope)
}

fn prelu_impl(
    isa: Isa,
    src: *const f32,
    dst: *mut f32,
    len: usize,
    n: usize,
    shape: &[usize],
    slope: &[f32],
) {
    let c = shape.first().copied().unwrap_or(1);
    let inner = numel(shape.get(1..).unwrap_or(&[]));
    assert_eq!(len, n * c * inner);
    assert!(
        slope.len() == 1 || slope.len() == c,
        "slope of {} for {c} channels",
        slope.len()
    );
    dispatch!(isa, |s| {
        for sc in 0..n * c {
            let a = s.splat(if slope.len() == 1 {
                slope[0]
            } else {
                slope[sc % c]
            });
            // SAFETY: plane `sc` lies within the `len` floats asserted above.
            unsafe {
                map1(
                    s,
                    src.add(sc * inner),
                    dst.add(sc * inner),
                    inner,
                    #[inline(always)]
                    |v| s.select(s.lt(v, s.zero()), s.mul(v, a), v),
                )
            }
        }
    })
}

/// Softmax over per-sample `axis` (or all dims from `axis` on, flattened), `n` samples.
/// As [`super::reference::softmax`]. The exponentials are summed in f64; the result's
/// relative error is that of `exp` plus about `|x - max| * 6e-8` plus 2 ulp.
pub fn softmax(
    isa: Isa,
    x: &[f32],
    n: usize,
    shape: &[usize],
    axis: usize,
    flatten_from_axis: bool,
    out: &mut [f32],
) {
    let outer = n * numel(&shape[..axis]);
    let (len, inner) = if flatten_from_axis {
        (numel(&shape[axis..]), 1)
    } else {
        (shape[axis], numel(&shape[axis + 1..]))
    };
    assert_eq!(x.len(), outer * len * inner);
    assert_eq!(out.len(), x.len());
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    dispatch!(isa, |s| {
        for o in 0..outer {
            let base = o * len * inner;
            // SAFETY: rows `base..base + len*inner` lie within the asserted length.
            unsafe {
                if inner == 1 {
                    softmax_row(s, src.add(base), dst.add(base), len);
                } else {
                    softmax_strided(s, src.add(base), dst.add(base), len, inner);
                }
            }
        }
    })
}

/// Softmax of `len` contiguous floats.
#[inline(always)]
unsafe fn softmax_row<S: Simd>(s: S, src: *const f32, dst: *mut f32, len: usize) {
    let l = S::LANES;
    let ninf = s.splat(f32::NEG_INFINITY);
    let mut m = ninf;
    let mut i = 0;
    // SAFETY (all blocks): accesses at i..i+l <= len or i..len.
    while i + l <= len {
        // SAFETY: i + l <= len, a full vector inside src.
        m = s.max(m, unsafe { s.load(src.add(i)) });
        i += l;
    }
    if i < len {
        // SAFETY: the len - i < l tail floats, inside src.
        m = s.max(m, unsafe { s.load_part(src.add(i), len - i, ninf) });
    }
    let m = s.splat(s.hmax(m));
    let mut acc = s.dzero();
    let mut i = 0;
    while i + l <= len {
        // SAFETY: i + l <= len, a full vector inside src and dst.
        let e = exp_v(s, s.sub(unsafe { s.load(src.add(i)) }, m));
        // SAFETY: i + l <= len, a full vector inside dst.
        unsafe { s.store(dst.add(i), e) };
        acc = s.dadd(acc, e);
        i += l;
    }
    if i < len {
        // The fill gives e^-inf = 0 in the unused lanes.
        // SAFETY: the len - i < l tail floats, inside src.
        let e = exp_v(
            s,
            s.sub(unsafe { s.load_part(src.add(i), len - i, ninf) }, m),
        );
        // SAFETY: the len - i < l tail floats, inside dst.
        unsafe { s.store_part(dst.add(i), len - i, e) };
        acc = s.dadd(acc, e);
    }
    let inv = s.splat((1.0 / s.dsum(acc)) as f32);
    // SAFETY: dst holds len floats (caller); src == dst is the allowed overlap.
    unsafe {
        map1(
            s,
            dst,
            dst,
            len,
            #[inline(always)]
            |v| s.mul(v, inv),
        )
    }
}

/// Softmax over `len` rows of `inner` floats, across rows, vectorized along `inner`.
#[inline(always)]
/// # Safety
/// `src` readable and `dst` writable for `len * inner` floats.
unsafe fn softmax_strided<S: Simd>(s: S, src: *const f32, dst: *mut f32, len: usize, inner: usize) {
    let ninf = s.splat(f32::NEG_INFINITY);
    let mut i = 0;
    while i < inner {
        let w = S::LANES.min(inner - i);
        // SAFETY (all blocks): element (k, i..i+w) is at k*inner + i, within len*inner.
        let mut m = ninf;
        for k in 0..len {
            // SAFETY: k < len and w <= inner - i, so k*inner+i..+w is inside src.
            m = s.max(m, unsafe { s.load_part(src.add(k * inner + i), w, ninf) });
        }
        let mut acc = s.dzero();
        for k in 0..len {
            // SAFETY: k < len and w <= inner - i, so k*inner+i..+w is inside src.
            let e = exp_v(
                s,
                s.sub(unsafe { s.load_part(src.add(k * inner + i), w, ninf) }, m),
            );
            // SAFETY: k < len and w <= inner - i, so k*inner+i..+w is inside dst.
            unsafe { s.store_part(dst.add(k * inner + i), w, e) };
            acc = s.dadd(acc, e);
        }
        let inv = s.div(s.splat(1.0), s.dcvt(acc));
        for k in 0..len {
            // SAFETY: k*inner + i < len*inner, inside dst.
            let p = unsafe { dst.add(k * inner + i) };
            // SAFETY: w floats at p = dst + k*inner + i, within len*inner.
            unsafe { s.store_part(p, w, s.mul(s.load_part(p, w, s.zero()), inv)) };
        }
        i += w;
    }
}

/// Normalizes `len` floats: `(x - mean) / sqrt(var + eps)`, then `* scale + bias` where
/// `scale` / `bias` are either per element (`per_elem`) or one value each. Mean and
/// variance are summed in f64; `x - mean` is formed in f32 against the mean split in two
/// f32 parts, so a large mean costs no precision.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
/// # Safety
/// `src` readable and `dst` writable for `len` floats; `scale` (and `bias`) hold `len`
/// floats when `per_elem`, else at least one.
unsafe fn normalize<S: Simd>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    len: usize,
    eps: f32,
    scale: *const f32,
    bias: Option<*const f32>,
    per_elem: bool,
) {
    let l = S::LANES;
    // SAFETY (all blocks): accesses at i..i+l <= len or i..len; scale / bias hold `len`
    // floats when per_elem, else 1.
    // SAFETY: src holds len readable floats (caller).
    let mean = unsafe { sum_f64(s, src, len) } / len as f64;
    let mh = mean as f32;
    let ml = (mean - mh as f64) as f32;
    let vmh = s.splat(mh);
    let mut acc = s.dzero();
    let mut i = 0;
    while i + l <= len {
        // SAFETY: i + l <= len, a full vector inside src.
        let d = s.sub(unsafe { s.load(src.add(i)) }, vmh);
        acc = s.dadd(acc, s.mul(d, d));
        i += l;
    }
    if i < len {
        // Filled with the mean's high part: those lanes add exactly 0.
        // SAFETY: the len - i < l tail floats, inside src.
        let d = s.sub(unsafe { s.load_part(src.add(i), len - i, vmh) }, vmh);
        acc = s.dadd(acc, s.mul(d, d));
    }
    let var = (s.dsum(acc) / len as f64 - (ml as f64) * (ml as f64)).max(0.0);
    let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
    let vml = s.splat(ml);
    if per_elem {
        let vinv = s.splat(inv);
        let zero = s.zero();
        let mut i = 0;
        while i < len {
            let w = l.min(len - i);
            // SAFETY: w = min(l, len - i): i..i+w inside src, dst, scale and bias (per_elem).
            unsafe {
                let d = s.sub(s.sub(s.load_part(src.add(i), w, zero), vmh), vml);
                let k = s.mul(s.load_part(scale.add(i), w, zero), vinv);
                let b = match bias {
                    Some(b) => s.load_part(b.add(i), w, zero),
                    None => zero,
                };
                s.store_part(dst.add(i), w, s.fmadd(d, k, b));
            }
            i += w;
        }
    } else {
        // SAFETY: not per_elem, so scale holds at least one float (caller).
        let k = s.splat(unsafe { *scale } * inv);
        // SAFETY: not per_elem, so bias, when given, holds at least one float (caller).
        let b = s.splat(bias.map_or(0.0, |b| unsafe { *b }));
        // SAFETY: src / dst hold len floats (caller); equal if they overlap.
        unsafe {
            map1(
                s,
                src,
                dst,
                len,
                #[inline(always)]
                |v| s.fmadd(s.sub(s.sub(v, vmh), vml), k, b),
            )
        }
    }
}

/// Normalizes each sample over dims `axis..`, then `* scale + bias` element-wise. As
/// [`super::reference::layer_norm`]; `n` samples.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    isa: Isa,
    x: &[f32],
    n: usize,
    shape: &[usize],
    axis: usize,
    eps: f32,
    scale: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let inner = numel(&shape[axis..]);
    let groups = n * numel(&shape[..axis]);
    assert_eq!(x.len(), groups * inner);
    assert_eq!(out.len(), x.len());
    assert_eq!(scale.len(), inner);
    if let Some(b) = bias {
        assert_eq!(b.len(), inner);
    }
    if inner == 0 {
        return;
    }
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    dispatch!(isa, |s| {
        for g in 0..groups {
            // SAFETY: group g is `g*inner..(g+1)*inner`; scale / bias hold `inner` floats.
            unsafe {
                normalize(
                    s,
                    src.add(g * inner),
                    dst.add(g * inner),
                    inner,
                    eps,
                    scale.as_ptr(),
                    bias.map(|b| b.as_ptr()),
                    true,
                )
            }
        }
    })
}

/// Normalizes each (sample, channel) plane, then per-channel `* scale + bias`. As
/// [`super::reference::instance_norm`]; `n` samples.
#[allow(clippy::too_many_arguments)]
pub fn instance_norm(
    isa: Isa,
    x: &[f32],
    n: usize,
    shape: &[usize],
    eps: f32,
    scale: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    let c = shape[0];
    let inner = numel(&shape[1..]);
    assert_eq!(x.len(), n * c * inner);
    assert_eq!(out.len(), x.len());
    assert!(scale.len() >= c && bias.len() >= c);
    if inner == 0 {
        return;
    }
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    dispatch!(isa, |s| {
        for sc in 0..n * c {
            let ch = sc % c;
            // SAFETY: plane sc lies within the asserted length; ch < c <= scale/bias len.
            unsafe {
                normalize(
                    s,
                    src.add(sc * inner),
                    dst.add(sc * inner),
                    inner,
                    eps,
                    scale.as_ptr().add(ch),
                    Some(bias.as_ptr().add(ch)),
                    false,
                )
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `map_act` over strided rows (four vectors at a time across row ends, then single
    /// vectors, then masked tails) gives each element the bits of `ActV::apply` one
    /// vector at a time (`map1` along each row) and leaves the gaps between rows alone; both
    /// in place and into another buffer, every tier, widths around the vector sizes.
    #[test]
    fn map_act_rows_match_one_row_at_a_time() {
        let acts = [
            Activation::Silu,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::HardSwish,
        ];
        for isa in Isa::supported() {
            for act in acts {
                for (rows, n) in [(1, 70), (3, 32), (5, 17), (2, 1), (12, 48), (4, 0), (7, 64)] {
                    let ld = n + 3;
                    let len = rows * ld;
                    let src: Vec<f32> = (0..len)
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                        .collect();
                    let mut want = src.clone();
                    for r in 0..rows {
                        let row = want[r * ld..].as_mut_ptr();
                        dispatch!(isa, |s| {
                            let a = ActV::new(s, act);
                            // SAFETY: n floats of row r, in place.
                            unsafe {
                                map1(
                                    s,
                                    row,
                                    row,
                                    n,
                                    #[inline(always)]
                                    |v| a.apply(s, v),
                                )
                            }
                        });
                    }
                    let mut inplace = src.clone();
                    let mut out = vec![f32::NAN; len];
                    for r in 0..rows {
                        out[r * ld + n..(r + 1) * ld]
                            .copy_from_slice(&src[r * ld + n..(r + 1) * ld]);
                    }
                    dispatch!(isa, |s| {
                        let a = ActV::new(s, act);
                        // SAFETY: rows rows of n floats, ld apart, in both buffers.
                        unsafe {
                            map_act(s, &a, inplace.as_ptr(), inplace.as_mut_ptr(), ld, rows, n);
                            map_act(s, &a, src.as_ptr(), out.as_mut_ptr(), ld, rows, n);
                        }
                    });
                    for (name, got) in [("in place", &inplace), ("copy", &out)] {
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "{isa} {act:?} {name} rows {rows} n {n}: element {i}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `transpose` against the definition (lane j of vector i becomes lane i of vector
    /// j), on every tier this CPU has.
    #[test]
    fn transpose_every_tier() {
        fn check<S: Simd>(s: S) {
            let l = S::LANES;
            let src: Vec<f32> = (0..l * l).map(|i| i as f32).collect();
            // SAFETY: src holds l·l floats; vector i reads l of them from i·l.
            let mut v: Vec<S::V> = (0..l)
                .map(|i| unsafe { s.load(src[i * l..].as_ptr()) })
                .collect();
            s.transpose(&mut v);
            for (j, vj) in v.iter().enumerate() {
                let a = s.to_array(*vj);
                for (i, &x) in a.iter().enumerate().take(l) {
                    assert_eq!(x, (i * l + j) as f32, "lanes {l}: vector {j} lane {i}");
                }
            }
        }
        for isa in Isa::supported() {
            dispatch!(isa, |s| check(s));
        }
    }

    /// Max relative error of `f` against `reference` over every `step`-th f32 in
    /// `[lo, hi]`, both signs' bit patterns walked in order; results whose reference is
    /// below `f32::MIN_POSITIVE` (denormal) are skipped.
    fn sweep(
        isa: Isa,
        lo: f32,
        hi: f32,
        step: u32,
        f: fn(Isa, &[f32], &mut [f32]),
        reference: fn(f64) -> f64,
    ) -> (f64, f32) {
        let mut xs = Vec::new();
        let mut push_range = |a: f32, b: f32| {
            // Walk bit patterns of |x| from |a| to |b| (same sign).
            let (mut u, end) = (a.abs().to_bits(), b.abs().to_bits());
            let neg = a < 0.0 || b < 0.0;
            while u <= end {
                let v = f32::from_bits(u);
                xs.push(if neg { -v } else { v });
                u += step;
            }
        };
        if lo < 0.0 {
            push_range(-1e-30, lo);
        }
        push_range(1e-30, hi);
        let mut out = vec![0.0f32; xs.len()];
        f(isa, &xs, &mut out);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &y) in xs.iter().zip(&out) {
            let r = reference(x as f64);
            if r.abs() < f32::MIN_POSITIVE as f64 || !r.is_finite() {
                continue;
            }
            let e = ((y as f64 - r) / r).abs();
            if e > worst.0 || e.is_nan() {
                worst = (e, x);
            }
        }
        worst
    }

    fn exp_kernel(isa: Isa, x: &[f32], out: &mut [f32]) {
        // SAFETY: x and out have x.len() floats each (asserted by the callers' equal lengths).
        dispatch!(isa, |s| unsafe {
            map1(
                s,
                x.as_ptr(),
                out.as_mut_ptr(),
                x.len(),
                #[inline(always)]
                |v| exp_v(s, v),
            )
        })
    }

    fn act_kernel(act: Activation) -> impl Fn(Isa, &[f32], &mut [f32]) {
        move |isa, x, out| activation(isa, x, act, out)
    }

    #[test]
    fn exp_sweep_accuracy() {
        for isa in Isa::supported() {
            let (e, at) = sweep(isa, -87.0, 88.0, 331, exp_kernel, f64::exp);
            println!("{isa}: exp max rel err {e:.3e} at {at}");
            assert!(e <= 1.5e-7, "{isa}: exp rel err {e:e} at {at}");
            type Check = (Activation, fn(f64) -> f64, f64);
            let checks: [Check; 3] = [
                (Activation::Sigmoid, |x| 1.0 / (1.0 + (-x).exp()), 2.5e-7),
                (Activation::Silu, |x| x / (1.0 + (-x).exp()), 2.5e-7),
                (Activation::Tanh, f64::tanh, 2.5e-7),
            ];
            for (act, r, bound) in checks {
                let k = act_kernel(act);
                let mut xs: Vec<f32> = Vec::new();
                let mut u = 0u32;
                while u < 0x42B0_0000 {
                    let v = f32::from_bits(u);
                    xs.push(v);
                    xs.push(-v);
                    u += 541;
                }
                let mut out = vec![0.0; xs.len()];
                k(isa, &xs, &mut out);
                let mut worst = (0.0f64, 0.0f32);
                for (&x, &y) in xs.iter().zip(&out) {
                    let want = r(x as f64);
                    if want.abs() < f32::MIN_POSITIVE as f64 {
                        continue;
                    }
                    let e = ((y as f64 - want) / want).abs();
                    if e > worst.0 || e.is_nan() {
                        worst = (e, x);
                    }
                }
                println!(
                    "{isa}: {} max rel err {:.3e} at {}",
                    act.name(),
                    worst.0,
                    worst.1
                );
                assert!(
                    worst.0 <= bound,
                    "{isa}: {} rel err {:e} at {}",
                    act.name(),
                    worst.0,
                    worst.1
                );
            }
        }
    }

    #[test]
    fn exp_specials() {
        for isa in Isa::supported() {
            let xs = [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
                88.73,
                88.72,
                -103.0,
                -104.0,
                -1e30,
                1e30,
            ];
            let mut out = [0.0; 11];
            exp_kernel(isa, &xs, &mut out);
            assert!(out[0].is_nan(), "{isa}");
            assert_eq!(out[1], f32::INFINITY, "{isa}");
            assert_eq!(out[2], 0.0, "{isa}");
            assert_eq!(out[3], 1.0, "{isa}");
            assert_eq!(out[4], 1.0, "{isa}");
            assert_eq!(out[5], f32::INFINITY, "{isa}");
            let r = (88.72f32 as f64).exp();
            assert!(((out[6] as f64 - r) / r).abs() < 3e-7, "{isa}: {}", out[6]);
            assert!(out[7] > 0.0 && out[7] < 1e-44, "{isa}: {}", out[7]);
            assert_eq!(out[8], 0.0, "{isa}");
            assert_eq!(out[9], 0.0, "{isa}");
            assert_eq!(out[10], f32::INFINITY, "{isa}");
        }
    }
}
