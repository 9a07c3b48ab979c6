//! im2col straight into the GEMM's packed-B panels: row `k = (ci·kh + ky)·kw + kx` of B,
//! column `j = oy·ow + ox`, holds `x[ci, oy·sh + ky·dh − pt, ox·sw + kx·dw − pl]` (zero in
//! the padding). The full im2col matrix is never materialized: each `kc × nc` block is
//! produced when the GEMM driver asks for it.
//!
//! The AVX2 and AVX-512 tiers write the panels directly, one vector of output columns at
//! a time (see [`simd_x86`]); the portable tier builds each row contiguously and lets
//! the driver scatter it into panels.

use crate::kernels::gemm::PackB;
use crate::simd::Isa;

/// The input of one group (`cig × h × w`) and the convolution geometry.
pub(crate) struct Im2col<'a> {
    /// The tier whose panel width the GEMM uses (already clamped to this CPU).
    pub isa: Isa,
    pub x: &'a [f32],
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pt: usize,
    pub pl: usize,
    pub ow: usize,
}

/// Where row `k` of B reads: the channel plane and the offsets of its kernel tap.
struct Tap {
    /// Index in `x` of the row's channel plane.
    plane: usize,
    /// Input column of output column ox: `ox·sw + off`.
    off: isize,
    /// Input row of output row oy: `oy·sh + ky_off`.
    ky_off: isize,
    /// Output columns whose input column is inside `0..w`: `ox_lo .. ox_hi`.
    ox_lo: usize,
    ox_hi: usize,
}

impl Im2col<'_> {
    fn tap(&self, k: usize) -> Tap {
        let kx = k % self.kw;
        let ky = (k / self.kw) % self.kh;
        let ci = k / (self.kw * self.kh);
        let (w, sw, ow) = (self.w, self.sw, self.ow);
        let off = (kx * self.dw) as isize - self.pl as isize;
        let ox_lo = if off >= 0 { 0 } else { (-off) as usize }.div_ceil(sw).min(ow);
        let ox_hi = if (w as isize) > off { (w as isize - off) as usize } else { 0 }.div_ceil(sw).clamp(ox_lo, ow);
        Tap { plane: ci * self.h * w, off, ky_off: (ky * self.dh) as isize - self.pt as isize, ox_lo, ox_hi }
    }
}

impl PackB for Im2col<'_> {
    fn pack_panels(&self, k0: usize, kc: usize, n0: usize, nc: usize, nr: usize, dst: &mut [f32]) -> bool {
        let plane = self.h * self.w;
        assert!(dst.len() >= kc * nc.div_ceil(nr) * nr, "im2col: panel buffer");
        assert!(plane > 0 && (k0 + kc).div_ceil(self.kh * self.kw) * plane <= self.x.len(), "im2col: channels");
        match (self.isa, nr) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 16) => {
                // SAFETY: the AVX2 tier is only planned when the CPU has AVX2 and FMA; the
                // asserts above bound `dst` and the channel planes rows k0..k0+kc read.
                unsafe { simd_x86::pack_avx2(self, k0, kc, n0, nc, dst.as_mut_ptr()) };
                true
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 32) => {
                // SAFETY: as above, for AVX-512 F/VL/BW.
                unsafe { simd_x86::pack_avx512(self, k0, kc, n0, nc, dst.as_mut_ptr()) };
                true
            }
            _ => false,
        }
    }

    fn row(&self, k: usize, n0: usize, row: &mut [f32]) {
        let (h, w, ow, sw) = (self.h, self.w, self.ow, self.sw);
        let t = self.tap(k);
        let plane = &self.x[t.plane..t.plane + h * w];
        let nc = row.len();
        let (mut oy, mut ox0) = (n0 / ow, n0 % ow);
        let iy_first = (oy * self.sh) as isize + t.ky_off;
        let iy_last = (((n0 + nc - 1) / ow) * self.sh) as isize + t.ky_off;
        // One memset for all the padding, then copies of the valid runs over it.
        if t.ox_lo > 0 || t.ox_hi < ow || iy_first < 0 || iy_last >= h as isize {
            row.fill(0.0);
        }
        let mut pos = 0;
        while pos < nc {
            let seg = (ow - ox0).min(nc - pos);
            let iy = (oy * self.sh) as isize + t.ky_off;
            if iy >= 0 && iy < h as isize {
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                let a = t.ox_lo.clamp(ox0, ox0 + seg);
                let b = t.ox_hi.clamp(a, ox0 + seg);
                if b > a {
                    let ix0 = (a as isize * sw as isize + t.off) as usize;
                    let dst = &mut row[pos + (a - ox0)..pos + (b - ox0)];
                    if sw == 1 {
                        dst.copy_from_slice(&src[ix0..ix0 + (b - a)]);
                    } else {
                        let sv = &src[ix0..ix0 + (b - a - 1) * sw + 1];
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d = sv[i * sw];
                        }
                    }
                }
            }
            pos += seg;
            oy += 1;
            ox0 = 0;
        }
    }
}

/// Vectorized im2col into panels: each vector of output columns is one load (all lanes
/// in one output row and inside the input), or else one masked load / gather per output
/// row it touches, with the padding lanes masked off (zero). Masked-off lanes are never
/// accessed, and every accessed element lies inside its channel plane.
#[cfg(target_arch = "x86_64")]
mod simd_x86 {
    use super::Im2col;
    use core::arch::x86_64::*;

    /// Safety: AVX2+FMA present; `dst` valid for `kc · ceil(nc/16) · 16` elements; rows
    /// `k0 .. k0+kc` inside the input's channels.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_avx2(p: &Im2col, k0: usize, kc: usize, n0: usize, nc: usize, dst: *mut f32) {
        const NR: usize = 16;
        const W: usize = 8;
        let (h, w, ow, sw, sh) = (p.h as isize, p.w as isize, p.ow, p.sw, p.sh);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let idx = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(sw as i32));
        let even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        for kk in 0..kc {
            let t = p.tap(k0 + kk);
            let plane = p.x.as_ptr().add(t.plane);
            let (mut oy, mut ox) = (n0 / ow, n0 % ow);
            let mut c = 0;
            while c < nc {
                let iy = (oy * sh) as isize + t.ky_off;
                let v = if ox + W <= ow && iy >= 0 && iy < h && ox >= t.ox_lo && ox + W <= t.ox_hi {
                    // All lanes valid, in one input row: they read input columns
                    // ix, ix + sw, …, ix + (W−1)·sw, all inside 0..w of row iy.
                    let ix = (ox * sw) as isize + t.off;
                    let src = plane.offset(iy * w + ix);
                    if sw == 1 {
                        _mm256_loadu_ps(src)
                    } else if sw == 2 && ix + 2 * W as isize <= w {
                        // The even elements of 2·W consecutive ones (all inside the row).
                        let a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(src), even);
                        let b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(src.add(W)), even);
                        _mm256_blend_ps::<0b1111_0000>(a, b)
                    } else {
                        _mm256_i32gather_ps::<4>(src, idx)
                    }
                } else {
                    // One masked load / gather per output row the vector touches.
                    let mut acc = _mm256_setzero_ps();
                    let (mut oyp, mut oxp, mut l0) = (oy, ox, 0usize);
                    while l0 < W {
                        let l1 = W.min(l0 + (ow - oxp));
                        let iyp = (oyp * sh) as isize + t.ky_off;
                        if iyp >= 0 && iyp < h {
                            // Lanes l0..l1 are output columns oxp.. of row oyp; of those,
                            // lo..hi have their input column inside 0..w.
                            let lo = l0 + t.ox_lo.saturating_sub(oxp).min(l1 - l0);
                            let hi = (l0 + t.ox_hi.saturating_sub(oxp).min(l1 - l0)).max(lo);
                            if hi > lo {
                                let m = _mm256_and_si256(
                                    _mm256_cmpgt_epi32(lanes, _mm256_set1_epi32(lo as i32 - 1)),
                                    _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), lanes),
                                );
                                // Lane l reads input column (oxp + l − l0)·sw + off of row
                                // iyp; only lanes lo..hi are accessed.
                                let base = plane.wrapping_offset(iyp * w + (oxp as isize - l0 as isize) * sw as isize + t.off);
                                let part = if sw == 1 {
                                    _mm256_maskload_ps(base, m)
                                } else {
                                    _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), base, idx, _mm256_castsi256_ps(m))
                                };
                                acc = _mm256_or_ps(acc, part);
                            }
                        }
                        l0 = l1;
                        oxp = 0;
                        oyp += 1;
                    }
                    acc
                };
                // c is a multiple of W and below the padded width ceil(nc/NR)·NR, so the
                // vector lies inside panel c / NR.
                _mm256_storeu_ps(dst.add((c / NR) * kc * NR + kk * NR + c % NR), v);
                c += W;
                ox += W;
                while ox >= ow {
                    ox -= ow;
                    oy += 1;
                }
            }
        }
    }

    /// Safety: AVX-512 F/VL/BW present; `dst` valid for `kc · ceil(nc/32) · 32`
    /// elements; rows `k0 .. k0+kc` inside the input's channels.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
    pub(super) unsafe fn pack_avx512(p: &Im2col, k0: usize, kc: usize, n0: usize, nc: usize, dst: *mut f32) {
        const NR: usize = 32;
        const W: usize = 16;
        let (h, w, ow, sw, sh) = (p.h as isize, p.w as isize, p.ow, p.sw, p.sh);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(sw as i32));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for kk in 0..kc {
            let t = p.tap(k0 + kk);
            let plane = p.x.as_ptr().add(t.plane);
            let (mut oy, mut ox) = (n0 / ow, n0 % ow);
            let mut c = 0;
            while c < nc {
                let iy = (oy * sh) as isize + t.ky_off;
                let v = if ox + W <= ow && iy >= 0 && iy < h && ox >= t.ox_lo && ox + W <= t.ox_hi {
                    // All lanes valid, in one input row (see pack_avx2).
                    let ix = (ox * sw) as isize + t.off;
                    let src = plane.offset(iy * w + ix);
                    if sw == 1 {
                        _mm512_loadu_ps(src)
                    } else if sw == 2 && ix + 2 * W as isize <= w {
                        _mm512_permutex2var_ps(_mm512_loadu_ps(src), even, _mm512_loadu_ps(src.add(W)))
                    } else {
                        _mm512_i32gather_ps::<4>(idx, src)
                    }
                } else {
                    let mut acc = _mm512_setzero_ps();
                    let (mut oyp, mut oxp, mut l0) = (oy, ox, 0usize);
                    while l0 < W {
                        let l1 = W.min(l0 + (ow - oxp));
                        let iyp = (oyp * sh) as isize + t.ky_off;
                        if iyp >= 0 && iyp < h {
                            let lo = l0 + t.ox_lo.saturating_sub(oxp).min(l1 - l0);
                            let hi = (l0 + t.ox_hi.saturating_sub(oxp).min(l1 - l0)).max(lo);
                            if hi > lo {
                                // Lanes lo..hi (hi <= 16).
                                let m: __mmask16 = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16;
                                let base = plane.wrapping_offset(iyp * w + (oxp as isize - l0 as isize) * sw as isize + t.off);
                                // Merge-masked: the lanes outside lo..hi keep acc.
                                acc = if sw == 1 {
                                    _mm512_mask_loadu_ps(acc, m, base)
                                } else {
                                    _mm512_mask_i32gather_ps::<4>(acc, m, idx, base)
                                };
                            }
                        }
                        l0 = l1;
                        oxp = 0;
                        oyp += 1;
                    }
                    acc
                };
                _mm512_storeu_ps(dst.add((c / NR) * kc * NR + kk * NR + c % NR), v);
                c += W;
                ox += W;
                while ox >= ow {
                    ox -= ow;
                    oy += 1;
                }
            }
        }
    }
}
