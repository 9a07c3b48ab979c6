//! First-layer direct convolution (few input channels, e.g. an RGB stem): the GEMM
//! micro-kernels read the input in place instead of an im2col matrix.
//!
//! With `K = cig·kh·kw` taps of a few channels, im2col copies every input pixel `kh·kw`
//! times, a large share of such a layer's time. Here each band of output rows first
//! copies its input rows once into a zero-padded buffer split into `sw` column phases
//! (`buf[ci][phase][row][col]` holds padded input column `col·sw + phase`). Output column
//! `ox` of tap `(ci, ky, kx)` then reads buffer column `ox + (kx·dw) / sw` of phase
//! `(kx·dw) % sw`, so for `nr` consecutive output columns (16 on AVX2, 32 on AVX-512)
//! every tap is `nr` consecutive floats at a fixed offset from the output row's base: the
//! offset-addressed micro-kernel ([`OffsKernel`]) takes B row `k` at `base + offs[k]`.
//!
//! Same packed weights as im2col (K in `(ci, ky, kx)` order), and with `K` in one block
//! (`K <= 384`, see `choose_kc`) the same FMA chain per output element: bit-identical to
//! `im2col_gemm` on the same tier.

use super::ConvKernel;
use crate::kernels::gemm::{OffsKernels, SharedOut, Store, MR_PACK, OFFS_NR_MAX};

/// Output rows per band (work item) at most.
pub(super) const BAND: usize = 8;

/// The buffer geometry and tap offsets of a planned layer.
#[derive(Clone, Debug)]
pub(super) struct DirectPlan {
    /// Output rows per band.
    pub band: usize,
    /// Buffer rows per phase plane: `(band − 1)·sh + (kh − 1)·dh + 1`.
    rows: usize,
    /// Buffer row length: the phase's padded columns and a vector of slack.
    rs: usize,
    /// `offs[k]`: where tap `k`'s row of B starts, from the output row's base.
    offs: Vec<usize>,
}

impl DirectPlan {
    pub(super) fn new(k: &ConvKernel, band: usize) -> DirectPlan {
        let [kh, kw] = k.kernel;
        let [sh, sw] = k.stride;
        let [dh, dw] = k.dilation;
        let band = band.clamp(1, k.oh.max(1));
        let rows = (band - 1) * sh + (kh - 1) * dh + 1;
        let padded_w = k.w + k.pads[1] + k.pads[3];
        let rs = padded_w.div_ceil(sw) + OFFS_NR_MAX;
        let mut offs = Vec::with_capacity(k.cig * kh * kw);
        for ci in 0..k.cig {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (phase, col) = ((kx * dw) % sw, (kx * dw) / sw);
                    offs.push(((ci * sw + phase) * rows + ky * dh) * rs + col);
                }
            }
        }
        DirectPlan {
            band,
            rows,
            rs,
            offs,
        }
    }

    /// f32 elements of the band buffer.
    pub(super) fn buffer_len(&self, cig: usize, sw: usize) -> usize {
        cig * sw * self.rows * self.rs
    }
}

/// The output rows of band `b`.
fn band_rows(k: &ConvKernel, d: &DirectPlan, b: usize) -> (usize, usize) {
    let oy0 = b * d.band;
    (oy0, k.oh.min(oy0 + d.band))
}

/// Copies the input rows of output rows `oy0..` into `buf` (see the module doc), zero
/// outside the image.
fn fill(k: &ConvKernel, d: &DirectPlan, x: &[f32], oy0: usize, buf: &mut [f32]) {
    let sw = k.stride[1];
    if sw == 2 {
        fill_s2(k, d, x, oy0, buf);
        return;
    }
    let (h, w, pt, pl) = (k.h as isize, k.w, k.pads[0] as isize, k.pads[1]);
    for ci in 0..k.cig {
        let plane = &x[ci * k.h * w..(ci + 1) * k.h * w];
        for r in 0..d.rows {
            let iy = (oy0 * k.stride[0] + r) as isize - pt;
            for phase in 0..sw {
                let dst = &mut buf[((ci * sw + phase) * d.rows + r) * d.rs..][..d.rs];
                if iy < 0 || iy >= h {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                // Buffer column c holds input column c·sw + phase − pl.
                let lo = pl.saturating_sub(phase).div_ceil(sw).min(d.rs);
                let hi = (w + pl).saturating_sub(phase).div_ceil(sw).clamp(lo, d.rs);
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                let first = lo * sw + phase - pl;
                if sw == 1 {
                    dst[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                } else {
                    for (c, v) in dst[lo..hi].iter_mut().enumerate() {
                        *v = src[first + c * sw];
                    }
                }
            }
        }
    }
}

/// [`fill`] for stride 2 (the RGB stems): each input row split into its even and odd
/// columns in one pass with a constant stride, which the compiler vectorizes, instead of
/// one strided pass per phase (the ResNet-18 stem spent about a tenth of its time there).
fn fill_s2(k: &ConvKernel, d: &DirectPlan, x: &[f32], oy0: usize, buf: &mut [f32]) {
    let (h, w, pt, pl) = (k.h as isize, k.w, k.pads[0] as isize, k.pads[1]);
    // Input column i lands in phase (i + pl) % 2 at column (i + pl) / 2: the even
    // columns 2m in phase pl % 2 from column pl / 2, the odd ones in the other phase
    // from column (pl + 1) / 2.
    let (even_phase, even_col) = (pl % 2, pl / 2);
    let (odd_phase, odd_col) = ((pl + 1) % 2, pl.div_ceil(2));
    for ci in 0..k.cig {
        let plane = &x[ci * k.h * w..(ci + 1) * k.h * w];
        for r in 0..d.rows {
            let row = |phase: usize| ((ci * 2 + phase) * d.rows + r) * d.rs;
            let (e0, o0) = (row(even_phase), row(odd_phase));
            buf[e0..e0 + d.rs].fill(0.0);
            buf[o0..o0 + d.rs].fill(0.0);
            let iy = (oy0 * k.stride[0] + r) as isize - pt;
            if iy < 0 || iy >= h {
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            let (lo, hi) = (e0.min(o0), e0.max(o0));
            let (first, second) = buf.split_at_mut(hi);
            let (even, odd) = if e0 < o0 {
                (&mut first[lo + even_col..], &mut second[odd_col..])
            } else {
                (&mut second[even_col..], &mut first[lo + odd_col..])
            };
            let pairs = src.chunks_exact(2);
            if let [last] = pairs.remainder() {
                even[w / 2] = *last;
            }
            for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                *e = p[0];
                *o = p[1];
            }
        }
    }
}

/// Band `b` (all output channels of group 0) of `out = act(conv(x) + bias + residual)`.
///
/// Safety: `k` planned as direct with `d`; the arguments checked by `ConvKernel::check`;
/// `kernels` the tier's offset kernels (its CPU features present); no concurrent writer
/// of this band's outputs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn band(
    k: &ConvKernel,
    d: &DirectPlan,
    kernels: OffsKernels,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    out: SharedOut,
    scratch: &mut [f32],
    b: usize,
) {
    let (oy0, oy1) = band_rows(k, d, b);
    let dst = Rows {
        out,
        plane: k.oh * k.ow,
        row0: 0,
    };
    // SAFETY: forwarded; `dst` is the whole output, planes `oh·ow` apart.
    unsafe {
        rows(
            k, d, kernels, packed, bias, x, residual, dst, scratch, oy0, oy1,
        )
    }
}

/// Where [`rows`] writes: output row `oy` of channel `c` at `out[c·plane + (oy − row0)·ow]`
/// (the whole output, or a window of rows from `row0` in a worker's buffer).
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub out: SharedOut<'a>,
    pub plane: usize,
    pub row0: usize,
}

/// Output rows `oy0..oy1` (at most the plan's band) of every output channel of group 0
/// into `dst`.
///
/// Safety: as [`band`]; `oy1 − oy0 <= d.band`, `oy1 <= oh`; `dst` holds rows `oy0..oy1`
/// of `cout` planes (checked here); no residual unless `dst` is the whole output.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows(
    k: &ConvKernel,
    d: &DirectPlan,
    kernels: OffsKernels,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    dst: Rows,
    scratch: &mut [f32],
    oy0: usize,
    oy1: usize,
) {
    if oy0 >= oy1 {
        return;
    }
    assert!(
        oy1 - oy0 <= d.band && oy1 <= k.oh && oy0 >= dst.row0,
        "direct conv: rows"
    );
    assert!(
        k.cog == 0 || (k.cog - 1) * dst.plane + (oy1 - dst.row0) * k.ow <= dst.out.len(),
        "direct conv: output rows"
    );
    assert!(
        residual.is_none() || (dst.row0 == 0 && dst.plane == k.oh * k.ow),
        "direct conv: residual with a row window"
    );
    let sw = k.stride[1];
    let len = d.buffer_len(k.cig, sw);
    let buf = &mut scratch[..len];
    fill(k, d, x, oy0, buf);
    let (kk, plane) = (k.k, dst.plane);
    assert_eq!(d.offs.len(), kk, "direct conv: taps");
    // Sliver-major: each sliver of A stays in L1 while it sweeps the output row, and
    // its rows of C are written left to right (a few sequential streams).
    for oy in oy0..oy1 {
        let base = (oy - oy0) * k.stride[0] * d.rs;
        for p0 in (0..k.cog).step_by(MR_PACK) {
            let h = MR_PACK.min(k.cog - p0);
            let mut s0 = 0;
            while s0 < h {
                let mr = kernels.mr().min(h - s0);
                for ox0 in (0..k.ow).step_by(kernels.nr) {
                    let nv = kernels.nr.min(k.ow - ox0);
                    // B row k at bp + offs[k]: columns ox0 .. ox0 + nr of tap k, inside
                    // the buffer (rows < d.rows by construction, columns < rs thanks to
                    // its slack).
                    let bp = buf[base + ox0..].as_ptr();
                    let row = p0 + s0;
                    let at = row * plane + (oy - dst.row0) * k.ow + ox0;
                    let st = Store {
                        load_c: false,
                        finish: true,
                        bias_row: bias.map_or(std::ptr::null(), |v| v[row..].as_ptr()),
                        bias_col: std::ptr::null(),
                        residual: residual.map_or(std::ptr::null(), |r| r[at..].as_ptr()),
                        act: k.activation,
                        pf: std::ptr::null(),
                        pf_stride: 0,
                        pf_to: k.prefetch,
                    };
                    let kern = kernels.pick(mr, nv);
                    // SAFETY: A rows p0+s0 .. +mr of the packed panel at p0·K (lda = h)
                    // for K steps; B as above; C rows `row..row+mr` at column
                    // (oy − row0)·ow + ox0 .. + nv of planes `plane` apart (asserted
                    // above); the caller guarantees the tier and exclusive access to
                    // these rows.
                    unsafe {
                        kern(
                            kk,
                            packed.as_ptr().add(p0 * kk + s0),
                            h,
                            bp,
                            d.offs.as_ptr(),
                            dst.out.ptr().add(at),
                            plane,
                            nv,
                            &st,
                        )
                    };
                }
                s0 += mr;
            }
        }
    }
}
