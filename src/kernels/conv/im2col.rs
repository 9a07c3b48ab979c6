//! im2col straight into the GEMM's packed-B panels: row `k = (ci·kh + ky)·kw + kx` of B,
//! column `j = oy·ow + ox`, holds `x[ci, oy·sh + ky·dh − pt, ox·sw + kx·dw − pl]` (zero in
//! the padding). The full im2col matrix is never materialized: each `kc × nc` block is
//! produced when the GEMM driver asks for it.
//!
//! Each row of a block is built contiguously (zeros for the padding, runs copied from the
//! input rows), then copied into the panels. The x86 tiers build rows with inline vector
//! copies and walk the kernel taps incrementally.

use crate::kernels::gemm::{PackB, ROW_SLACK};
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

impl<'a> Im2col<'a> {
    /// The im2col matrix of `x` (`cig × h × w`) for a window of `kernel`, `stride` and
    /// `dilation` (rows, columns) whose padding starts with `top_left`, and `ow` output
    /// columns. `isa`: the tier whose panel width the GEMM uses.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: Isa,
        x: &'a [f32],
        [h, w]: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        top_left: [usize; 2],
        ow: usize,
    ) -> Im2col<'a> {
        Im2col {
            isa,
            x,
            h,
            w,
            kh: kernel[0],
            kw: kernel[1],
            sh: stride[0],
            sw: stride[1],
            dh: dilation[0],
            dw: dilation[1],
            pt: top_left[0],
            pl: top_left[1],
            ow,
        }
    }
}

impl Im2col<'_> {
    fn tap(&self, k: usize) -> Tap {
        self.tap_at(
            k / (self.kw * self.kh),
            (k / self.kw) % self.kh,
            k % self.kw,
        )
    }

    #[inline]
    fn tap_at(&self, ci: usize, ky: usize, kx: usize) -> Tap {
        let (w, sw, ow) = (self.w, self.sw, self.ow);
        let off = (kx * self.dw) as isize - self.pl as isize;
        let (lo, hi) = (
            if off >= 0 { 0 } else { (-off) as usize },
            if (w as isize) > off {
                (w as isize - off) as usize
            } else {
                0
            },
        );
        let (ox_lo, ox_hi) = if sw == 1 {
            (lo, hi)
        } else {
            (lo.div_ceil(sw), hi.div_ceil(sw))
        };
        let ox_lo = ox_lo.min(ow);
        Tap {
            plane: ci * self.h * w,
            off,
            ky_off: (ky * self.dh) as isize - self.pt as isize,
            ox_lo,
            ox_hi: ox_hi.clamp(ox_lo, ow),
        }
    }

    /// The taps of rows k0, k0+1, …, without a division per row.
    #[cfg(target_arch = "x86_64")]
    fn taps(&self, k0: usize) -> impl Iterator<Item = Tap> + '_ {
        let (mut ci, mut ky, mut kx) = (
            k0 / (self.kw * self.kh),
            (k0 / self.kw) % self.kh,
            k0 % self.kw,
        );
        std::iter::from_fn(move || {
            let t = self.tap_at(ci, ky, kx);
            kx += 1;
            if kx == self.kw {
                kx = 0;
                ky += 1;
                if ky == self.kh {
                    ky = 0;
                    ci += 1;
                }
            }
            Some(t)
        })
    }
}

impl PackB for Im2col<'_> {
    fn pack_panels(
        &self,
        isa: Isa,
        k0: usize,
        kc: usize,
        n0: usize,
        nc: usize,
        nr: usize,
        dst: &mut [f32],
        tmp: &mut [f32],
    ) -> bool {
        let plane = self.h * self.w;
        assert!(
            dst.len() >= kc * nc.div_ceil(nr) * nr,
            "im2col: panel buffer"
        );
        assert!(tmp.len() >= nc + ROW_SLACK && nc > 0, "im2col: row buffer");
        assert!(
            plane > 0 && (k0 + kc).div_ceil(self.kh * self.kw) * plane <= self.x.len(),
            "im2col: channels"
        );
        // Only the x86-64 tiers pack in place; elsewhere the caller builds rows (`row`).
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (isa, nr, k0, kc, n0, nc, dst, tmp);
        match (isa, nr) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 16) => {
                // SAFETY: the AVX2 tier is only planned when the CPU has AVX2 and FMA; the
                // asserts above bound `dst`, `tmp` and the channel planes rows k0..k0+kc read.
                unsafe { simd_x86::pack_avx2(self, k0, kc, n0, nc, dst, tmp) };
                true
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 32) => {
                // SAFETY: as above, for AVX-512 F/VL/BW (which include AVX2, FMA and BMI2
                // here: Isa::detect requires them for the AVX-512 tier).
                unsafe { simd_x86::pack_avx512(self, k0, kc, n0, nc, dst, tmp) };
                true
            }
            _ => false,
        }
    }

    fn row(&self, k: usize, n0: usize, nc: usize, row: &mut [f32]) {
        assert!(row.len() >= nc + ROW_SLACK && nc > 0);
        let t = self.tap(k);
        assert!(t.plane + self.h * self.w <= self.x.len(), "im2col: channel");
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the tier is clamped to this CPU, so AVX2+FMA are present; `row` has
            // nc + ROW_SLACK elements and the tap's plane is inside `x` (asserted).
            Isa::Avx2 | Isa::Avx512 => unsafe { simd_x86::row_avx2(self, &t, n0, nc, row) },
            _ => self.row_portable(&t, n0, &mut row[..nc]),
        }
    }
}

impl Im2col<'_> {
    /// The output rows a block of columns covers, as pieces `(iy, ox0, len, pos)`: output
    /// columns `ox0 .. ox0+len` of one output row, reading input row `iy` (maybe outside
    /// `0..h`), written at `row[pos..]`.
    #[inline]
    fn pieces(
        &self,
        t: &Tap,
        n0: usize,
        nc: usize,
    ) -> impl Iterator<Item = (isize, usize, usize, usize)> {
        let (ow, sh) = (self.ow, self.sh);
        let (mut oy, mut ox0, mut pos) = (n0 / ow, n0 % ow, 0usize);
        let ky_off = t.ky_off;
        std::iter::from_fn(move || {
            (pos < nc).then(|| {
                let len = (ow - ox0).min(nc - pos);
                let piece = ((oy * sh) as isize + ky_off, ox0, len, pos);
                pos += len;
                oy += 1;
                ox0 = 0;
                piece
            })
        })
    }

    fn row_portable(&self, t: &Tap, n0: usize, row: &mut [f32]) {
        let (h, w, sw) = (self.h as isize, self.w, self.sw);
        let plane = &self.x[t.plane..t.plane + self.h * w];
        for (iy, ox0, len, pos) in self.pieces(t, n0, row.len()) {
            let dst = &mut row[pos..pos + len];
            if iy < 0 || iy >= h {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            // Valid output columns a..b of this piece (relative to ox0).
            let a = t.ox_lo.clamp(ox0, ox0 + len) - ox0;
            let b = t.ox_hi.clamp(ox0 + a, ox0 + len) - ox0;
            dst[..a].fill(0.0);
            dst[b..].fill(0.0);
            if b > a {
                let ix0 = ((ox0 + a) as isize * sw as isize + t.off) as usize;
                if sw == 1 {
                    dst[a..b].copy_from_slice(&src[ix0..ix0 + (b - a)]);
                } else {
                    let sv = &src[ix0..ix0 + (b - a - 1) * sw + 1];
                    for (i, d) in dst[a..b].iter_mut().enumerate() {
                        *d = sv[i * sw];
                    }
                }
            }
        }
    }
}

/// Vectorized im2col for the x86 tiers: rows built with inline vector copies (no memcpy
/// calls, no divisions per row), then copied into the panels with fixed-size moves.
#[cfg(target_arch = "x86_64")]
mod simd_x86 {
    use super::{Im2col, Tap};
    use crate::kernels::gemm::scatter_row;
    use core::arch::x86_64::*;

    /// Row builder with inline AVX2 copies: per output row, zeros for the padding and
    /// one vector loop over the valid input run (the last vector overlapping, or one
    /// masked load for runs under 8). Vectors may spill past their piece: pieces are
    /// written left to right and each overwrites what the previous one spilled, and the
    /// row has ROW_SLACK (16) elements of slack for the last.
    ///
    /// Whole output rows (all but the block's first and last piece) share the tap's
    /// valid columns, so their bounds are worked out once per row of B and the loop
    /// over them only steps pointers: on small maps (LeNet-5's 14-wide rows) the
    /// per-piece bookkeeping, not the copying, was most of the packing time.
    ///
    /// Safety: AVX2+FMA present; `row.len() >= nc + 16`; the tap's plane inside `p.x`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_avx2(p: &Im2col, t: &Tap, n0: usize, nc: usize, row: &mut [f32]) {
        let (ow, sh) = (p.ow, p.sh);
        let (mut oy, ox0) = (n0 / ow, n0 % ow);
        let mut pos = 0;
        // SAFETY (all calls below): pieces lie inside row[..nc] (+ spill into the
        // slack), input rows are checked against 0..h and columns are the tap's valid
        // ones, as `piece_avx2` requires.
        if ox0 != 0 {
            let len = (ow - ox0).min(nc);
            piece_avx2(p, t, (oy * sh) as isize + t.ky_off, ox0, len, pos, row);
            pos += len;
            oy += 1;
        }
        // Whole rows: valid columns a..b, the same for each.
        let a = t.ox_lo.min(ow);
        let b = t.ox_hi.clamp(a, ow);
        let n = b - a;
        let h = p.h as isize;
        let plane = p.x.as_ptr().add(t.plane);
        let out = row.as_mut_ptr();
        let zero = _mm256_setzero_ps();
        let ix0 = (a as isize * p.sw as isize + t.off) as usize;
        while pos + ow <= nc {
            let iy = (oy * sh) as isize + t.ky_off;
            if p.sw != 1 || n < W || iy < 0 || iy >= h {
                piece_avx2(p, t, iy, 0, ow, pos, row);
            } else {
                let dst = out.add(pos);
                let mut i = 0;
                while i < a {
                    _mm256_storeu_ps(dst.add(i), zero);
                    i += W;
                }
                let src = plane.add(iy as usize * p.w + ix0);
                let d = dst.add(a);
                let mut i = 0;
                while i + W < n {
                    _mm256_storeu_ps(d.add(i), _mm256_loadu_ps(src.add(i)));
                    i += W;
                }
                _mm256_storeu_ps(d.add(n - W), _mm256_loadu_ps(src.add(n - W)));
                let mut i = b;
                while i < ow {
                    _mm256_storeu_ps(dst.add(i), zero);
                    i += W;
                }
            }
            pos += ow;
            oy += 1;
        }
        if pos < nc {
            piece_avx2(p, t, (oy * sh) as isize + t.ky_off, 0, nc - pos, pos, row);
        }
    }

    const W: usize = 8;

    /// Output columns `ox0 .. ox0+len` of one output row (input row `iy`, maybe outside
    /// `0..h`) written at `row[pos..]`: zeros for the padding, the valid run copied.
    ///
    /// Safety: AVX2+FMA present; `pos + len + 16 <= row.len()`; the tap's plane inside
    /// `p.x`; `ox0 + len <= ow`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn piece_avx2(
        p: &Im2col,
        t: &Tap,
        iy: isize,
        ox0: usize,
        len: usize,
        pos: usize,
        row: &mut [f32],
    ) {
        let (h, w, sw) = (p.h as isize, p.w, p.sw);
        let plane = p.x.as_ptr().add(t.plane);
        let out = row.as_mut_ptr();
        let zero = _mm256_setzero_ps();
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        // Zeros at out[a..b] (spilling up to W−1 past b).
        macro_rules! zeros {
            ($a:expr, $b:expr) => {{
                let (mut i, b) = ($a, $b);
                while i < b {
                    _mm256_storeu_ps(out.add(i), zero);
                    i += W;
                }
            }};
        }
        if iy < 0 || iy >= h {
            zeros!(pos, pos + len);
            return;
        }
        let a = t.ox_lo.clamp(ox0, ox0 + len) - ox0;
        let b = t.ox_hi.clamp(ox0 + a, ox0 + len) - ox0;
        zeros!(pos, pos + a);
        let n = b - a;
        if n > 0 {
            // Input columns ix0, ix0 + sw, …, ix0 + (n−1)·sw, all inside 0..w.
            let ix0 = ((ox0 + a) as isize * sw as isize + t.off) as usize;
            let src = plane.add(iy as usize * w + ix0);
            let dst = out.add(pos + a);
            if sw == 1 {
                if n >= W {
                    let mut i = 0;
                    while i + W < n {
                        _mm256_storeu_ps(dst.add(i), _mm256_loadu_ps(src.add(i)));
                        i += W;
                    }
                    _mm256_storeu_ps(dst.add(n - W), _mm256_loadu_ps(src.add(n - W)));
                } else {
                    let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
                    _mm256_storeu_ps(dst, _mm256_maskload_ps(src, m));
                }
            } else if sw == 2 {
                // Full vectors while 2·W input elements stay inside the row.
                let mut i = 0;
                while i + W <= n && ix0 + 2 * (i + W) <= w {
                    let s = src.add(2 * i);
                    let lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(s), even);
                    let hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(s.add(W)), even);
                    _mm256_storeu_ps(dst.add(i), _mm256_blend_ps::<0b1111_0000>(lo, hi));
                    i += W;
                }
                while i < n {
                    *dst.add(i) = *src.add(2 * i);
                    i += 1;
                }
            } else {
                for i in 0..n {
                    *dst.add(i) = *src.add(i * sw);
                }
            }
        }
        zeros!(pos + b, pos + len);
    }

    /// Packs rows `k0 .. k0+kc` (columns `n0 .. n0+nc`) into 16-wide panels: each row
    /// built contiguously in `tmp` by [`row_avx2`], then copied into the panels.
    ///
    /// Safety: AVX2+FMA present; `dst` holds `kc · ceil(nc/16) · 16`, `tmp` `nc + 16`
    /// elements; the channels of rows `k0 .. k0+kc` inside `p.x`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_avx2(
        p: &Im2col,
        k0: usize,
        kc: usize,
        n0: usize,
        nc: usize,
        dst: &mut [f32],
        tmp: &mut [f32],
    ) {
        for (kk, t) in (0..kc).zip(p.taps(k0)) {
            row_avx2(p, &t, n0, nc, tmp);
            scatter_row::<16>(&tmp[..nc], dst, kk, kc);
        }
    }

    /// [`pack_avx2`] for the AVX-512 tier's 32-wide panels (zmm copies).
    ///
    /// Safety: AVX-512 F/VL/BW with AVX2+FMA and BMI2 present; `dst` holds
    /// `kc · ceil(nc/32) · 32`, `tmp` `nc + 16` elements; the channels of rows
    /// `k0 .. k0+kc` inside `p.x`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,bmi2")]
    pub(super) unsafe fn pack_avx512(
        p: &Im2col,
        k0: usize,
        kc: usize,
        n0: usize,
        nc: usize,
        dst: &mut [f32],
        tmp: &mut [f32],
    ) {
        if p.ow <= 16 && p.sw <= 2 && nc <= NARROW_MAX_NC {
            pack_avx512_narrow(p, k0, kc, n0, nc, dst);
            return;
        }
        for (kk, t) in (0..kc).zip(p.taps(k0)) {
            row_avx2(p, &t, n0, nc, tmp);
            scatter_row::<32>(&tmp[..nc], dst, kk, kc);
        }
    }

    /// Columns per block up to which [`pack_avx512_narrow`] takes a block (its two row
    /// buffers live on the stack).
    const NARROW_MAX_NC: usize = 1024;

    /// [`pack_avx512`] for maps at most 16 wide with stride 1 or 2 (LeNet-5's conv2,
    /// the 14- and 7-wide layers of ResNet-18). Each output row's piece of a B row is
    /// one masked load (two and a lane compaction at stride 2) and one 16-lane store; the
    /// load mask holds the tap's valid columns, so the padding comes out as zeros and
    /// masked-off lanes read nothing (they never fault, wherever they point). Row `k+1`
    /// is built before row `k` is copied into the panels: the copy's 64-byte loads span
    /// the row's unaligned piece stores, which cannot be forwarded, so copying a row
    /// just built waits for its stores to reach the cache.
    ///
    /// Measured on LeNet-5's conv2 (AVX-512, 1 thread, perf): `row_avx2` spent several
    /// branches and partial vectors per 14-float piece, and packing took about a third
    /// of the layer's time. Not kept: building half-panels in registers from
    /// merge- or OR-combined masked loads (two to three loads per 16 columns instead of
    /// about one; the layer 0.113 → 0.131 ms).
    ///
    /// Safety: AVX-512 F/VL/BW with BMI2 present; `dst` holds `kc · ceil(nc/32) · 32`
    /// elements; the channels of rows `k0 .. k0+kc` inside `p.x`; `p.ow <= 16`,
    /// `p.sw <= 2`, `nc <= NARROW_MAX_NC`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,bmi2")]
    unsafe fn pack_avx512_narrow(
        p: &Im2col,
        k0: usize,
        kc: usize,
        n0: usize,
        nc: usize,
        dst: &mut [f32],
    ) {
        let mut rows = [[0f32; NARROW_MAX_NC + 16]; 2];
        for (kk, t) in (0..kc).zip(p.taps(k0)) {
            let [even, odd] = &mut rows;
            let (cur, prev) = if kk % 2 == 0 {
                (even, odd)
            } else {
                (odd, even)
            };
            narrow_row(p, &t, n0, nc, cur);
            if kk > 0 {
                scatter_row::<32>(&prev[..nc], dst, kk - 1, kc);
            }
        }
        if kc > 0 {
            scatter_row::<32>(&rows[(kc - 1) % 2][..nc], dst, kc - 1, kc);
        }
    }

    /// Row of tap `t`, columns `n0 .. n0+nc`, into `row` (see [`pack_avx512_narrow`]).
    /// Stores spill up to 16 lanes past a piece, as in `row_avx2`: each piece
    /// overwrites the previous one's spill and the last spills into the slack.
    ///
    /// Safety: as [`pack_avx512_narrow`]; `row.len() >= nc + 16`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,bmi2")]
    #[inline]
    unsafe fn narrow_row(p: &Im2col, t: &Tap, n0: usize, nc: usize, row: &mut [f32]) {
        debug_assert!(p.ow <= 16 && p.sw <= 2 && row.len() >= nc + 16);
        let (ow, sh, sw, w) = (p.ow, p.sh, p.sw, p.w as isize);
        let (mut oy, mut ox0) = (n0 / ow, n0 % ow);
        let h = p.h as isize;
        let plane = p.x.as_ptr().add(t.plane);
        // Bit j: output column j reads inside the image (ox_lo <= j < ox_hi <= ow <= 16).
        let valid: u32 = ((1u32 << t.ox_hi) - 1) & !((1u32 << t.ox_lo) - 1);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let out = row.as_mut_ptr();
        let mut pos = 0;
        while pos < nc {
            let len = (ow - ox0).min(nc - pos);
            let iy = (oy * sh) as isize + t.ky_off;
            // Lane j holds output column ox0 + j of this row, for j < len.
            let m = (valid >> ox0) & ((1u32 << len) - 1);
            let v = if iy < 0 || iy >= h || m == 0 {
                _mm512_setzero_ps()
            } else {
                // Input column of lane j: (ox0 + j)·sw + off; only valid lanes load.
                let base = plane.wrapping_offset(iy * w + (ox0 * sw) as isize + t.off);
                if sw == 1 {
                    _mm512_maskz_loadu_ps(m as u16, base)
                } else {
                    let m2 = _pdep_u32(m, 0x5555_5555);
                    let lo = _mm512_maskz_loadu_ps(m2 as u16, base);
                    let hi = _mm512_maskz_loadu_ps((m2 >> 16) as u16, base.wrapping_add(16));
                    _mm512_permutex2var_ps(lo, even, hi)
                }
            };
            // SAFETY (caller): pos + 16 <= nc + 16 <= row.len().
            _mm512_storeu_ps(out.add(pos), v);
            pos += len;
            oy += 1;
            ox0 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The panels every vector packer writes equal the portable rows scattered into the
    /// same panels, over maps from 1 to 20 wide (the AVX-512 narrow rows take those up
    /// to 16 at stride 1 and 2), strides 1–3, dilation, asymmetric padding wider than
    /// the kernel, and blocks starting mid-row.
    #[test]
    fn vector_packers_match_portable_rows() {
        let tiers: Vec<(Isa, usize)> = [(Isa::Avx2, 16), (Isa::Avx512, 32)]
            .into_iter()
            .filter(|(isa, _)| isa.is_supported())
            .collect();
        if tiers.is_empty() {
            return;
        }
        let mut seed = 1u32;
        let mut checked = 0;
        for (h, w) in [
            (1, 1),
            (3, 5),
            (7, 7),
            (14, 14),
            (9, 16),
            (5, 17),
            (6, 20),
            (4, 33),
            (3, 71),
        ] {
            for (kh, kw) in [(1, 1), (3, 3), (5, 5), (2, 4)] {
                for (sh, sw) in [(1, 1), (2, 2), (1, 2), (3, 3)] {
                    for (dh, dw) in [(1, 1), (2, 2)] {
                        for pads in [[0, 0, 0, 0], [1, 1, 1, 1], [2, 0, 1, 3], [0, 5, 4, 0]] {
                            let (ekh, ekw) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
                            let (ph, pw) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
                            if ph < ekh || pw < ekw {
                                continue;
                            }
                            let (oh, ow) = ((ph - ekh) / sh + 1, (pw - ekw) / sw + 1);
                            let cig = 2;
                            let x: Vec<f32> = (0..cig * h * w)
                                .map(|_| {
                                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                                    (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
                                })
                                .collect();
                            let k = cig * kh * kw;
                            let n = oh * ow;
                            for &(isa, nr) in &tiers {
                                let p = Im2col::new(
                                    isa,
                                    &x,
                                    [h, w],
                                    [kh, kw],
                                    [sh, sw],
                                    [dh, dw],
                                    [pads[0], pads[1]],
                                    ow,
                                );
                                // Whole matrix, and a block starting mid-row of K rows from 1.
                                for (k0, n0) in [(0, 0), (1.min(k - 1), n / 3)] {
                                    let (kc, nc) = (k - k0, n - n0);
                                    let len = kc * nc.div_ceil(nr) * nr;
                                    let mut got = vec![f32::NAN; len];
                                    let mut tmp = vec![0.0; nc + ROW_SLACK];
                                    assert!(
                                        p.pack_panels(isa, k0, kc, n0, nc, nr, &mut got, &mut tmp)
                                    );
                                    let mut want = got.clone();
                                    let mut row = vec![0.0; nc];
                                    for kk in 0..kc {
                                        p.row_portable(&p.tap(k0 + kk), n0, &mut row);
                                        for (j, v) in row.iter().enumerate() {
                                            want[(j / nr) * kc * nr + kk * nr + j % nr] = *v;
                                        }
                                    }
                                    let same = got
                                        .iter()
                                        .zip(&want)
                                        .all(|(a, b)| a.to_bits() == b.to_bits());
                                    assert!(
                                        same,
                                        "{isa}: {h}x{w} k{kh}x{kw} s{sh}x{sw} d{dh}x{dw} \
                                         pads {pads:?} block k0 {k0} n0 {n0}"
                                    );
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 100, "only {checked} geometries checked");
    }
}
