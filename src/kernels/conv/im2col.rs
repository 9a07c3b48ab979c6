//! im2col straight into the GEMM's packed-B panels: row `k = (ci·kh + ky)·kw + kx` of B,
//! column `j = oy·ow + ox`, holds `x[ci, oy·sh + ky·dh − pt, ox·sw + kx·dw − pl]` (zero in
//! the padding). The full im2col matrix is never materialized: each `kc × nc` block is
//! produced when the GEMM driver asks for it.

use crate::kernels::gemm::{PackB, PanelWriter};

/// The input of one group (`cig × h × w`) and the convolution geometry.
pub(crate) struct Im2col<'a> {
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

impl PackB for Im2col<'_> {
    fn pack(&self, k0: usize, kc: usize, n0: usize, nc: usize, nr: usize, dst: &mut [f32]) {
        let (h, w, ow, sw) = (self.h, self.w, self.ow, self.sw);
        let plane_len = h * w;
        let mut wr = PanelWriter::new(dst, kc, nr);
        let end = n0 + nc;
        for kk in 0..kc {
            let kidx = k0 + kk;
            let kx = kidx % self.kw;
            let ky = (kidx / self.kw) % self.kh;
            let ci = kidx / (self.kw * self.kh);
            let plane = &self.x[ci * plane_len..(ci + 1) * plane_len];
            // Input column of output column ox: ix = ox·sw + off.
            let off = (kx * self.dw) as isize - self.pl as isize;
            // Output columns whose ix falls inside 0..w: ox_lo .. ox_hi.
            let ox_lo = if off >= 0 { 0 } else { (-off) as usize }.div_ceil(sw);
            let ox_hi = if (w as isize) > off { (w as isize - off) as usize } else { 0 }.div_ceil(sw).min(ow);
            wr.start_row(kk);
            let mut j = n0;
            while j < end {
                let oy = j / ow;
                let ox0 = j % ow;
                let ox1 = ow.min(ox0 + (end - j));
                let iy = (oy * self.sh + ky * self.dh) as isize - self.pt as isize;
                if iy < 0 || iy >= h as isize {
                    wr.zeros(ox1 - ox0);
                } else {
                    let row = &plane[iy as usize * w..(iy as usize + 1) * w];
                    let a = ox_lo.clamp(ox0, ox1);
                    let b = ox_hi.clamp(a, ox1);
                    wr.zeros(a - ox0);
                    if b > a {
                        let ix0 = (a as isize * sw as isize + off) as usize;
                        if sw == 1 {
                            wr.copy(&row[ix0..ix0 + (b - a)]);
                        } else {
                            wr.copy_strided(&row[ix0..], sw, b - a);
                        }
                    }
                    wr.zeros(ox1 - b);
                }
                j += ox1 - ox0;
            }
        }
    }
}
