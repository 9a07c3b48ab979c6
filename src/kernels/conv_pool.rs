//! A `direct` convolution whose only reader is a pooling layer, run as one step: each
//! worker computes a band of the convolution's output rows into a window in its own
//! buffer and pools the rows that band completes right away.
//!
//! Why: ResNet's stem writes 64 × 112 × 112 floats (3.2 MB, more than the L2) that its
//! 3×3 stride-2 max pool reads back once, from L3 or memory; the pool took about 0.4 ms
//! of a 21 ms run on one thread, most of it waiting for those reads. Here the
//! convolution's rows stay in the worker's window (about 300 KiB for that stem), and
//! the arena holds only the pool's output.
//!
//! Work: the pool's output rows are cut into one contiguous run per part (as many parts
//! per sample as workers). A part computes the convolution rows its pool rows read, band
//! by band; a convolution row that two parts read (one row for a 3×3 stride-2 pool) is
//! computed by both. Results are bit-identical to the two layers one by one: each
//! convolution row comes from the same micro-kernel calls (`ConvKernel::direct_rows`),
//! and the pool does the same arithmetic on the same values.

use std::ops::Range;

use crate::kernels::conv::direct::Rows;
use crate::kernels::conv::ConvKernel;
use crate::kernels::gemm::SharedOut;
use crate::kernels::parallel;
use crate::kernels::pool::PoolKernel;

/// A planned convolution + pooling pair; see the module docs.
#[derive(Clone, Debug)]
pub struct ConvPoolKernel {
    conv: ConvKernel,
    pool: PoolKernel,
    /// Convolution rows per `direct_rows` call.
    band: usize,
    /// Convolution rows the window holds: a band plus a pool window's rows.
    window: usize,
}

impl ConvPoolKernel {
    /// The pair as one step, if `conv` runs `direct` and `pool` reads its whole output
    /// (`pool` planned for `conv`'s output shape); `None` otherwise.
    pub fn new(conv: ConvKernel, pool: PoolKernel) -> Option<ConvPoolKernel> {
        let band = conv.direct_band()?;
        let [c, oh, ow] = conv.out_shape();
        let (plane_in, _) = pool.plane_sizes();
        if plane_in != oh * ow || pool.input_width() != ow || pool.channels() != c || c == 0 {
            return None;
        }
        let window = band + pool.window_rows();
        Some(ConvPoolKernel {
            conv,
            pool,
            band,
            window,
        })
    }

    /// The convolution (its weights and FLOPs are the pair's).
    pub fn conv(&self) -> &ConvKernel {
        &self.conv
    }

    /// The pooling layer.
    pub fn pool(&self) -> &PoolKernel {
        &self.pool
    }

    /// Floats of scratch per worker.
    pub fn scratch_len(&self) -> usize {
        let [c, _, ow] = self.conv.out_shape();
        // The convolution's scratch is whole lines, so the window after it starts on one.
        crate::kernels::whole_lines(self.conv.scratch_len() + c * self.window * ow)
    }

    /// `out = pool(act(conv(x) + bias))` for a batch of `n` samples (`x`: `n × cin × h × w`,
    /// `out`: the pool's `n × c × oh × ow`), on `slots` workers of the team this thread
    /// leads or of the current rayon pool. `scratch`: `slots × scratch_len()` floats (one
    /// `scratch_len()` when the work stays on this thread).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        slots: usize,
        n: usize,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let n = n.max(1);
        let (sin, sout) = (x.len() / n, out.len() / n);
        assert!(
            x.len() == n * sin && out.len() == n * sout,
            "conv_pool: batch lengths"
        );
        let rows = self.pool.out_rows();
        let per = self.scratch_len();
        let parallel = slots > 1 && self.conv.flops() >= parallel::min_parallel_flops();
        let per_sample = if parallel && n < slots {
            slots.div_ceil(n).min(rows).max(1)
        } else {
            1
        };
        let parts = n * per_sample;
        let shared = SharedOut::new(out);
        let part = |scr: &mut [f32], p: usize| {
            let (s, j) = (p / per_sample, p % per_sample);
            let oys = rows * j / per_sample..rows * (j + 1) / per_sample;
            // SAFETY: part `p` is the only writer of rows `oys` of sample `s`'s output,
            // which nothing reads before `run` returns.
            unsafe {
                self.part(
                    packed,
                    bias,
                    &x[s * sin..(s + 1) * sin],
                    shared.slice(s * sout, sout),
                    scr,
                    oys,
                )
            }
        };
        if parts == 1 || !parallel {
            for p in 0..parts {
                part(&mut scratch[..per], p);
            }
        } else {
            parallel::for_tiles(slots, parts, scratch, per, part);
        }
    }

    /// Pool rows `oys` of one sample: convolution rows band by band into the window
    /// (`win`, rows `w0 .. filled` of every channel), each pool row as soon as the
    /// window holds the rows it reads.
    ///
    /// # Safety
    /// No concurrent writer or reader of rows `oys` of `out` (one sample's output).
    unsafe fn part(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        out: SharedOut,
        scratch: &mut [f32],
        oys: Range<usize>,
    ) {
        let [c, oh, ow] = self.conv.out_shape();
        let plane = self.window * ow;
        let (conv_scr, win) = scratch.split_at_mut(self.conv.scratch_len());
        let win = &mut win[..c * plane];
        let (mut w0, mut filled) = (0, 0);
        let mut r = oys.start;
        while r < oys.end {
            let need = self.pool.input_rows(r);
            if !need.is_empty() {
                // No pool row from r on reads a row before `lo` (<= need.start).
                let lo = self.pool.first_row_from(r);
                if lo >= filled {
                    (w0, filled) = (lo, lo);
                } else if lo > w0 {
                    // Keep the rows from lo: move them to the window's top.
                    let (from, len) = ((lo - w0) * ow, (filled - lo) * ow);
                    for ch in 0..c {
                        win.copy_within(ch * plane + from..ch * plane + from + len, ch * plane);
                    }
                    w0 = lo;
                }
                while filled < need.end {
                    // need.end <= lo + a pool window's rows, so filled − w0 is below
                    // that and a band still fits.
                    let end = (filled + self.band).min(oh);
                    let dst = Rows {
                        out: SharedOut::new(win),
                        plane,
                        row0: w0,
                    };
                    // SAFETY: this part owns its window; the rows are read below, after
                    // the call.
                    unsafe {
                        self.conv
                            .direct_rows(packed, bias, x, dst, conv_scr, filled, end)
                    };
                    filled = end;
                }
            }
            let mut r1 = r + 1;
            while r1 < oys.end {
                let nd = self.pool.input_rows(r1);
                if !(nd.is_empty() || (nd.start >= w0 && nd.end <= filled)) {
                    break;
                }
                r1 += 1;
            }
            // SAFETY: the window holds rows w0..filled, every row r..r1 reads (or none);
            // rows r..r1 of `out` are this part's (caller).
            unsafe { self.pool.run_rows(win, w0, self.window, c, out, r..r1) };
            r = r1;
        }
    }
}
