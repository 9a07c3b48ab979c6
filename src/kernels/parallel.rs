//! Running a kernel's independent tiles on the current rayon pool.
//!
//! Workers claim tiles from a shared counter; each worker owns one slice of the scratch
//! buffer. Every tile computes whole output elements in a fixed order, so the
//! result is bit-identical for any number of slots. Nothing here allocates.

use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::kernels::conv::ConvKernel;
use crate::kernels::depthwise::DepthwiseKernel;
use crate::kernels::gemm::SharedOut;
use crate::kernels::linear::{LinearKernel, Sweep};
use crate::kernels::pool::PoolKernel;
use crate::kernels::team;
use crate::kernels::winograd::WinogradKernel;

/// A convolution whose work splits into independent tiles (GEMM-based and Winograd).
pub trait TiledConv: Sync {
    fn tiles(&self) -> usize;
    fn scratch_len(&self) -> usize;
    fn flops(&self) -> u64;
    fn run(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    );
    /// # Safety
    /// As the kernels' `run_tile_shared`: no two concurrent calls run the same tile on
    /// the same output, and nothing reads `out` until all calls are done.
    unsafe fn run_tile_shared(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        tile: usize,
    );
}

macro_rules! tiled_conv {
    ($t:ty) => {
        impl TiledConv for $t {
            fn tiles(&self) -> usize {
                <$t>::tiles(self)
            }
            fn scratch_len(&self) -> usize {
                <$t>::scratch_len(self)
            }
            fn flops(&self) -> u64 {
                <$t>::flops(self)
            }
            fn run(
                &self,
                packed: &[f32],
                bias: Option<&[f32]>,
                x: &[f32],
                residual: Option<&[f32]>,
                out: &mut [f32],
                scratch: &mut [f32],
            ) {
                <$t>::run(self, packed, bias, x, residual, out, scratch)
            }
            // Safety: the same contract as the kernel's own run_tile_shared.
            unsafe fn run_tile_shared(
                &self,
                packed: &[f32],
                bias: Option<&[f32]>,
                x: &[f32],
                residual: Option<&[f32]>,
                out: SharedOut,
                scratch: &mut [f32],
                tile: usize,
            ) {
                // SAFETY: the caller upholds the same contract the kernel states.
                unsafe {
                    <$t>::run_tile_shared(self, packed, bias, x, residual, out, scratch, tile)
                }
            }
        }
    };
}
tiled_conv!(ConvKernel);
tiled_conv!(WinogradKernel);

/// `out = act(conv(x) + bias + residual)` for a batch of `n` samples (`x`: `n` samples of
/// `x.len() / n`, `out` and `residual`: `n` of `out.len() / n`), the tiles of every sample
/// shared out over `slots` workers of the current pool in one parallel region (small
/// layers still fill the workers, one hand-off per layer instead of one per sample).
/// `scratch` holds `slots × kernel.scratch_len()` floats.
#[allow(clippy::too_many_arguments)]
pub fn run_tiles(
    kernel: &impl TiledConv,
    slots: usize,
    n: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let n = n.max(1);
    let (sin, sout) = sample_lens(x, out, n);
    let per_sample = kernel.tiles();
    let tiles = n * per_sample;
    let per = kernel.scratch_len();
    let slots = slots.min(tiles).max(1);
    if slots == 1 || kernel.flops() < min_parallel_flops() {
        for s in 0..n {
            kernel.run(
                packed,
                bias,
                &x[s * sin..(s + 1) * sin],
                residual.map(|r| &r[s * sout..(s + 1) * sout]),
                &mut out[s * sout..(s + 1) * sout],
                &mut scratch[..per],
            );
        }
        return;
    }
    assert!(
        scratch.len() >= slots * per,
        "conv: scratch for {slots} slots"
    );
    let shared = SharedOut::new(out);
    for_tiles(slots, tiles, scratch, per, |scr, t| {
        let (s, tile) = (t / per_sample, t % per_sample);
        let xs = &x[s * sin..(s + 1) * sin];
        let rs = residual.map(|r| &r[s * sout..(s + 1) * sout]);
        // SAFETY: `for_tiles` runs each (sample, tile) exactly once; tiles of one sample
        // write disjoint parts of that sample's output, samples disjoint slices; `out` is
        // read only after it returns; each slot has its own scratch.
        unsafe {
            kernel.run_tile_shared(
                packed,
                bias,
                xs,
                rs,
                shared.slice(s * sout, sout),
                scr,
                tile,
            )
        };
    });
}

/// [`run_tiles`] for a Winograd layer: a batch the kernel blocks across samples
/// ([`WinogradKernel::batches`]) runs as those blocks (each streaming the transformed
/// weights once for several samples), shared out over `slots` workers; any other batch
/// sample by sample. Bit-identical either way.
#[allow(clippy::too_many_arguments)]
pub fn run_winograd(
    kernel: &WinogradKernel,
    slots: usize,
    n: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    if !kernel.batches(n) {
        run_tiles(kernel, slots, n, packed, bias, x, residual, out, scratch);
        return;
    }
    let items = kernel.batch_items(n);
    let per = kernel.scratch_len();
    let slots = slots.min(items).max(1);
    if slots == 1 || kernel.flops() < min_parallel_flops() {
        kernel.run_batch(packed, bias, x, residual, out, &mut scratch[..per], n);
        return;
    }
    assert!(
        scratch.len() >= slots * per,
        "winograd: scratch for {slots} slots"
    );
    let shared = SharedOut::new(out);
    for_tiles(slots, items, scratch, per, |scr, item| {
        // SAFETY: `for_tiles` runs each item exactly once; items write disjoint outputs
        // (their tiles × output channels); `out` is read only after it returns; each slot
        // has its own scratch.
        unsafe { kernel.run_batch_item(packed, bias, x, residual, shared, scr, n, item) };
    });
}

/// Elements of one sample of the input `x` and of the output `out` of a batch of `n`.
fn sample_lens(x: &[f32], out: &[f32], n: usize) -> (usize, usize) {
    let (sin, sout) = (x.len() / n, out.len() / n);
    assert!(
        x.len() == n * sin && out.len() == n * sout,
        "conv: batch lengths"
    );
    (sin, sout)
}

/// [`run_tiles`] for a convolution, through its shared-B plan (when
/// `ConvKernel::shared_b_len` is not 0) if the batch is smaller than the workers: per
/// sample, all workers pack the im2col matrix once into shared panels, then multiply
/// tiles of it. `scratch` holds `shared_b_len()` floats for the panels, then
/// `slots × scratch_len()` for the workers. Bit-identical to one thread (see the
/// `shared_b` module).
#[allow(clippy::too_many_arguments)]
pub fn run_conv(
    kernel: &ConvKernel,
    slots: usize,
    n: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let shared_len = kernel.shared_b_len();
    let n = n.max(1);
    if shared_len == 0 || slots <= 1 || n >= slots || kernel.flops() < min_parallel_flops() {
        let skip = shared_len.min(scratch.len());
        run_tiles(
            kernel,
            slots,
            n,
            packed,
            bias,
            x,
            residual,
            out,
            &mut scratch[skip..],
        );
        return;
    }
    let (sin, sout) = sample_lens(x, out, n);
    let (panels, rest) = scratch.split_at_mut(shared_len);
    let al = panels.as_ptr().align_offset(64).min(16);
    let panels = SharedOut::new(&mut panels[al..]);
    let per = kernel.scratch_len();
    for s in 0..n {
        let xs = &x[s * sin..(s + 1) * sin];
        // SAFETY: every pack part runs exactly once and writes its own rows of the
        // panels; they are read only after `for_tiles` returns.
        for_tiles(slots, kernel.pack_parts(), rest, per, |tmp, p| unsafe {
            kernel.pack_part(xs, panels, tmp, p)
        });
        // SAFETY: the panels are complete and no longer written.
        let b = unsafe { out_range(&panels, 0, panels.len()) as &[f32] };
        let outs = SharedOut::new(&mut out[s * sout..(s + 1) * sout]);
        let rs = residual.map(|r| &r[s * sout..(s + 1) * sout]);
        // SAFETY: every tile runs exactly once and writes its own block of the sample's
        // output, which is read only after `for_tiles` returns.
        for_tiles(slots, kernel.multiply_tiles(), rest, 0, |_, t| unsafe {
            kernel.multiply_tile(packed, bias, rs, b, outs, t)
        });
    }
}

/// Runs `f(scratch_of_slot, tile)` for every `tile < tiles`: on the team this thread leads
/// (`kernels::team`, inside a session's run), else on `slots` workers of the current rayon
/// pool. Workers claim tiles one at a time, so unequal tiles or a late worker do not leave
/// the others idle; which worker runs a tile never changes its result (the kernels compute
/// each output element the same way in any tile order). `scratch` holds `per` floats for
/// each worker slot (`per` may be 0): at least `slots`, and the team's size for the team to
/// be used. Sets FTZ/DAZ on every rayon worker (team members set it when they start).
/// No allocation.
pub fn for_tiles(
    slots: usize,
    tiles: usize,
    scratch: &mut [f32],
    per: usize,
    f: impl Fn(&mut [f32], usize) + Sync,
) {
    debug_assert!(
        per == crate::kernels::whole_lines(per),
        "parallel: scratch per slot ({per} floats) is not whole 64-byte lines"
    );
    let avail = scratch.len().checked_div(per).unwrap_or(usize::MAX);
    let scratch = SharedOut::new(scratch);
    let run = |slot: usize, tile: usize| {
        assert!(slot < avail, "parallel: no scratch for worker slot {slot}");
        // SAFETY: each slot is used by one worker at a time (team slots and rayon slots
        // are unique), so its `per` floats have no other user.
        let scr = unsafe { out_range(&scratch, slot * per, per) };
        f(scr, tile)
    };
    if team::share_current(tiles, avail, &run) {
        return;
    }
    let slots = slots.min(avail).max(1);
    let next = AtomicUsize::new(0);
    (0..slots).into_par_iter().for_each(|slot| {
        crate::simd::set_flush_denormals();
        loop {
            let tile = next.fetch_add(1, Ordering::Relaxed);
            if tile >= tiles {
                break;
            }
            run(slot, tile);
        }
    });
}

/// `f(part)` for every `part < parts`, on the team this thread leads or else the current
/// rayon pool (parts without scratch).
fn for_parts(parts: usize, f: impl Fn(usize) + Sync) {
    let run = |_slot: usize, part: usize| f(part);
    if team::share_current(parts, usize::MAX, &run) {
        return;
    }
    (0..parts).into_par_iter().for_each(|part| {
        crate::simd::set_flush_denormals();
        f(part)
    });
}

/// The elements `start .. start + len` of `out` (an output or a scratch buffer that
/// workers share) as a slice of their own.
///
/// # Safety
/// No other live slice or writer overlaps that range.
unsafe fn out_range<'a>(out: &SharedOut<'a>, start: usize, len: usize) -> &'a mut [f32] {
    let s = out.slice(start, len);
    // SAFETY: `slice` checked the range inside the borrowed output; the caller
    // guarantees exclusivity.
    unsafe { std::slice::from_raw_parts_mut(s.ptr(), s.len()) }
}

/// Depthwise convolution of one sample, channels split into contiguous blocks over
/// `slots` workers (each output channel is computed by exactly one worker).
#[allow(clippy::too_many_arguments)]
pub fn depthwise_channels(
    kernel: &DepthwiseKernel,
    slots: usize,
    channels: usize,
    out_plane: usize,
    weights: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    if slots <= 1 || channels < 2 {
        kernel.run(weights, bias, x, residual, out);
        return;
    }
    assert_eq!(out.len(), channels * out_plane, "depthwise: output length");
    let per = channels.div_ceil(slots.min(channels));
    let parts = channels.div_ceil(per);
    let shared = SharedOut::new(out);
    for_parts(parts, |j| {
        let c0 = j * per;
        let c1 = (c0 + per).min(channels);
        let r = residual.map(|r| &r[c0 * out_plane..c1 * out_plane]);
        // SAFETY: part j is the only writer of channels c0..c1.
        let o = unsafe { out_range(&shared, c0 * out_plane, (c1 - c0) * out_plane) };
        kernel.run_channels(c0..c1, weights, bias, x, r, o);
    });
}

/// A fully connected layer (all `n` batch rows), blocks of output features over `slots`
/// workers, each block's weight panels in `sweep`'s order. `scratch` holds
/// `slots × kernel.scratch_len()` floats.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    kernel: &LinearKernel,
    slots: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    n: usize,
    residual: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
    sweep: Sweep,
) {
    let tiles = kernel.tiles();
    let per = kernel.scratch_len();
    let slots = slots.min(tiles).max(1);
    // At batch 1 a fully connected layer streams its weights (about 1 FLOP per 2 bytes):
    // worth splitting by bytes as well as by FLOPs (ResNet-18's 512 → 1000 layer is
    // 2 MB and 1.02 MFLOP, which was under an earlier, higher FLOP threshold).
    let streamed = std::mem::size_of_val(packed) >= MIN_PARALLEL_WEIGHT_BYTES;
    if slots == 1 || (kernel.flops(n) < min_parallel_flops() && !streamed) {
        kernel.run(
            packed,
            bias,
            x,
            n,
            residual,
            out,
            &mut scratch[..per],
            sweep,
        );
        return;
    }
    let shared = SharedOut::new(out);
    for_tiles(slots, tiles, scratch, per, |scr, tile| {
        // SAFETY: `for_tiles` runs each tile index exactly once, tiles write disjoint
        // output features, `out` is read only after it returns; scratch is per slot.
        unsafe { kernel.run_tile_shared(packed, bias, x, n, residual, shared, scr, tile, sweep) };
    });
}

/// Weight bytes from which a fully connected layer is split over workers whatever its
/// FLOPs (memory-bound at small batches: two cores read about twice as fast as one).
const MIN_PARALLEL_WEIGHT_BYTES: usize = 512 << 10;

/// Pooling of whole planes (`x`: `p` input planes, `out`: `p` output planes), contiguous
/// blocks of planes over `slots` workers when there is enough of it.
pub fn pool(kernel: &PoolKernel, slots: usize, x: &[f32], out: &mut [f32]) {
    let (isz, osz) = kernel.plane_sizes();
    let planes = out.len() / osz.max(1);
    if slots <= 1 || planes < 2 || x.len() < min_parallel_elems() {
        kernel.run_planes(x, out);
        return;
    }
    let per = planes.div_ceil(slots.min(planes));
    let parts = planes.div_ceil(per);
    let shared = SharedOut::new(out);
    for_parts(parts, |j| {
        let p0 = j * per;
        let p1 = (p0 + per).min(planes);
        // SAFETY: part j is the only writer of planes p0..p1.
        let o = unsafe { out_range(&shared, p0 * osz, (p1 - p0) * osz) };
        kernel.run_planes(&x[p0 * isz..p1 * isz], o)
    });
}

/// Below this many FLOPs (256 Ki) a layer runs on the calling thread: handing out its
/// parts costs more than it saves. The session's team hands a layer to spinning helpers
/// in well under a microsecond; when helpers were rayon workers that had to be woken,
/// the bound was 1 Mi and LeNet-5's first convolution (0.78 MFLOP) ran faster alone.
/// With the team (LeNet-5, 2 threads, `scripts/paired_ab.py`, 16–20 rounds): 250 K
/// 0.924 [0.874, 0.982], 320 K 0.93, 600 K 0.94 of the time with 1 Mi (its conv1 + pool
/// at 0.009 ms instead of 0.013, pool2 0.005 instead of 0.007); MobileNetV2 1.008
/// [0.987, 1.036] and ResNet-18 0.987 [0.964, 1.055] at 300 K, unchanged. The
/// environment variable `CNNRT_PARALLEL_MIN_FLOPS` overrides it (read once per process;
/// `0` sends every layer to the pool, which the tests use to cover the parallel paths).
pub fn min_parallel_flops() -> u64 {
    static MIN: OnceLock<u64> = OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("CNNRT_PARALLEL_MIN_FLOPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 18)
    })
}

/// The same for memory-bound layers, in input elements (1/32 of the FLOP threshold).
fn min_parallel_elems() -> usize {
    (min_parallel_flops() / 32) as usize
}
