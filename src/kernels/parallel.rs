//! Running a kernel's independent tiles on the current rayon pool.
//!
//! Tiles are dealt to `slots` workers round-robin; each worker owns one slice of the
//! scratch buffer. Every tile computes whole output elements in a fixed order, so the
//! result is bit-identical for any number of slots. Nothing here allocates.

use rayon::prelude::*;

use crate::kernels::conv::ConvKernel;
use crate::kernels::depthwise::DepthwiseKernel;
use crate::kernels::gemm::SharedOut;
use crate::kernels::winograd::WinogradKernel;

/// A convolution whose work splits into independent tiles (GEMM-based and Winograd).
pub trait TiledConv: Sync {
    fn tiles(&self) -> usize;
    fn scratch_len(&self) -> usize;
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

/// `out = act(conv(x) + bias + residual)` for one sample, tiles spread over `slots`
/// workers of the current pool. `scratch` holds `slots × kernel.scratch_len()` floats.
#[allow(clippy::too_many_arguments)]
pub fn run_tiles(
    kernel: &impl TiledConv,
    slots: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let tiles = kernel.tiles();
    let per = kernel.scratch_len().max(1);
    let slots = slots.min(tiles).max(1);
    if slots == 1 {
        kernel.run(
            packed,
            bias,
            x,
            residual,
            out,
            &mut scratch[..kernel.scratch_len()],
        );
        return;
    }
    assert!(
        scratch.len() >= slots * per,
        "conv: scratch for {slots} slots"
    );
    let shared = SharedOut::new(out);
    scratch[..slots * per]
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(slot, scr)| {
            crate::simd::set_flush_denormals();
            for tile in (slot..tiles).step_by(slots) {
                // SAFETY: each tile index runs exactly once (tiles are dealt round-robin to
                // distinct slots), tiles write disjoint parts of `out`, and `out` is read only
                // after for_each returns; each slot has its own scratch slice.
                unsafe { kernel.run_tile_shared(packed, bias, x, residual, shared, scr, tile) };
            }
        });
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
    let per = channels.div_ceil(slots.min(channels));
    out.par_chunks_mut(per * out_plane)
        .enumerate()
        .for_each(|(j, o)| {
            crate::simd::set_flush_denormals();
            let c0 = j * per;
            let c1 = (c0 + per).min(channels);
            let r = residual.map(|r| &r[c0 * out_plane..c1 * out_plane]);
            kernel.run_channels(c0..c1, weights, bias, x, r, o);
        });
}
