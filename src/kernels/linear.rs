//! Fully connected layers: `y[s, o] = act(Σ_i x[s, i]·W[o, i] + b[o] + residual[s, o])`.
//!
//! One GEMM `Y[n × out] = X[n × in] · Wᵀ[in × out]` with the roles of the convolution
//! swapped: the constant weights are the B side, pre-packed once, and the activations the
//! A side, packed per call (nothing to pack at batch 1). At batch 1 this is a GEMV that
//! streams each weight panel exactly once, so its speed is the memory bandwidth; at
//! batch > 1 every weight panel is read once for all rows of the batch.
//!
//! # Packed weight layout
//!
//! ISA independent: `Wᵀ` in the gemm module's constant-B layout — output features in
//! panels of [`NR_PACK`] = 32 (the last one short, unpadded), input-feature-major inside.
//! Weight `W[o, i]` with `q = o / 32`, `w = min(32, out − 32q)` is at
//! `q·32·in + i·w + (o − 32q)`. Length: exactly `out · in`.
//!
//! # Tiles
//!
//! [`LinearKernel::tiles`] blocks of output features, all batch rows each. Every output
//! element is one FMA chain over the input features in order, so the tiling and the
//! order of tiles never change a result.
//!
//! # Sweeps
//!
//! At batch 1 a run streams the weights once, and a session alternates the direction
//! ([`Sweep`]): forward on one run, from the last panel back to the first on the next.
//! Where one layer's weights dominate a model (LeNet-5's fc1: 4.9 MB of 5.0), the run
//! after starts on the panels the run before read last, which are still in L2, instead of
//! the ones it evicted first. Panel order never changes a result (each element is still
//! one FMA chain over the input features in order).

use crate::graph::{Activation, Linear};
use crate::kernels::gemm::{
    drive, pack_a, pack_b_transposed, row_pair_kernel, row_panel_kernel, ukr, BSrc, PrefetchTo,
    SharedOut, Store, Tile, NR_PACK,
};
use crate::simd::Isa;

/// Output features per tile (a multiple of NR_PACK).
const TILE_COLS: usize = 256;
/// How far ahead (in floats: 16 k steps of a 32-wide panel, 2 KiB) the batch-1 panel
/// kernel prefetches its weights. The weights stream from L3 or memory once per run;
/// the hardware prefetcher alone left LeNet-5's fc1 (4.9 MB) at 0.204 ms on one
/// AVX-512 core, a hint 2 KiB ahead 0.189 and 8 KiB ahead 0.191 (medians of 6
/// interleaved rounds, `cnnrt bench --profile`). One hint per k step covers one of
/// the step's two cache lines; the adjacent-line prefetcher fetches the other.
const PANEL_PREFETCH_AHEAD: usize = 512;

/// One call's operands, checked by `LinearKernel::check`; `a` is the batch packed as the
/// GEMM's A side (`x` itself at batch 1).
#[derive(Clone, Copy)]
struct Operands<'a> {
    packed: &'a [f32],
    bias: Option<&'a [f32]>,
    a: &'a [f32],
    n: usize,
    residual: Option<&'a [f32]>,
    out: SharedOut<'a>,
}

/// The order of a batch-1 run's weight panels (and of the tiles, on one thread); see the
/// module doc. Results are the same bits either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sweep {
    #[default]
    Forward,
    Backward,
}

impl Sweep {
    /// The sweep for a session's run number `run`: forward, then backward, and so on.
    pub fn alternate(run: u64) -> Sweep {
        if run.is_multiple_of(2) {
            Sweep::Forward
        } else {
            Sweep::Backward
        }
    }
}

/// A fully connected layer planned for one ISA tier and a maximum batch.
#[derive(Clone, Debug)]
pub struct LinearKernel {
    isa: Isa,
    in_features: usize,
    out_features: usize,
    max_batch: usize,
    tile_cols: usize,
    activation: Activation,
    prefetch: PrefetchTo,
}

impl LinearKernel {
    /// Plans `linear` for `isa` (clamped to this CPU) and batches up to `max_batch`.
    pub fn new(isa: Isa, linear: &Linear, max_batch: usize) -> LinearKernel {
        let u = ukr(isa);
        const _: () = assert!(TILE_COLS.is_multiple_of(NR_PACK));
        LinearKernel {
            isa: u.isa,
            in_features: linear.in_features,
            out_features: linear.out_features,
            max_batch: max_batch.max(1),
            tile_cols: TILE_COLS,
            activation: linear.activation,
            prefetch: PrefetchTo::default(),
        }
    }

    /// The same layer in about one tile per worker for `threads` workers: output features
    /// in tiles of `⌈out / threads⌉` rounded up to whole panels, at most TILE_COLS wide.
    ///
    /// Why: at batch 1 a worker streams its tiles' weights at what one core can pull
    /// from L3 or memory, so the layer wants every worker streaming. With TILE_COLS alone
    /// LeNet-5's fc1 (500 outputs) has two tiles and ResNet-18's fully connected layer
    /// four, whatever the worker count. At one or two workers the tiles of the models
    /// here are unchanged (TILE_COLS); beyond two it is not measured on this project's
    /// 2-vCPU machines. Tiles never change a result.
    pub fn for_threads(mut self, threads: usize) -> Self {
        let per = self.out_features.div_ceil(threads.max(1)).max(1);
        self.tile_cols = per.next_multiple_of(NR_PACK).clamp(NR_PACK, TILE_COLS);
        self
    }

    /// Where the GEMM's prefetch hints put the weights they fetch ahead (the session
    /// chooses, see [`PrefetchTo`]); results do not change.
    pub fn set_prefetch(&mut self, to: PrefetchTo) {
        self.prefetch = to;
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn algorithm(&self) -> &'static str {
        "gemm_packed_b"
    }

    /// Multiply-adds times two for a batch of `n`.
    pub fn flops(&self, n: usize) -> u64 {
        2 * (n * self.in_features * self.out_features) as u64
    }

    pub fn packed_weight_len(&self) -> usize {
        self.in_features * self.out_features
    }

    /// Packs `[out, in]` row-major weights into the layout in the module doc.
    pub fn pack_weights(&self, plain: &[f32], packed: &mut [f32]) {
        assert_eq!(
            plain.len(),
            self.packed_weight_len(),
            "linear: weight length"
        );
        pack_b_transposed(
            self.out_features,
            self.in_features,
            plain,
            self.in_features,
            packed,
        );
    }

    /// f32 elements of scratch one `run` (or one concurrent `run_tile`) needs.
    pub fn scratch_len(&self) -> usize {
        if self.max_batch > 1 {
            crate::kernels::whole_lines(self.max_batch * self.in_features)
        } else {
            0
        }
    }

    /// Number of independent tiles (blocks of output features).
    pub fn tiles(&self) -> usize {
        self.out_features.div_ceil(self.tile_cols).max(1)
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        n: usize,
        residual: Option<&[f32]>,
        out_len: usize,
        scratch: &[f32],
    ) {
        assert!(
            n <= self.max_batch,
            "linear: batch {n} above the planned {}",
            self.max_batch
        );
        assert_eq!(
            packed.len(),
            self.packed_weight_len(),
            "linear: packed weight length"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.out_features, "linear: bias length");
        }
        assert_eq!(x.len(), n * self.in_features, "linear: input length");
        assert_eq!(out_len, n * self.out_features, "linear: output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), n * self.out_features, "linear: residual length");
        }
        assert!(
            scratch.len() >= self.scratch_len(),
            "linear: scratch too short"
        );
    }

    /// Packs the batch rows as the A side; returns it (x itself at batch 1).
    fn pack_x<'a>(&self, x: &'a [f32], n: usize, scratch: &'a mut [f32]) -> &'a [f32] {
        if n <= 1 {
            x
        } else {
            let len = n * self.in_features;
            pack_a(
                n,
                self.in_features,
                x,
                self.in_features,
                &mut scratch[..len],
            );
            &scratch[..len]
        }
    }

    /// `out[n × out] = act(x[n × in] · Wᵀ + bias + residual)`, all tiles on this thread
    /// (in `sweep`'s order).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        n: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        sweep: Sweep,
    ) {
        let ops = self.operands(packed, bias, x, n, residual, SharedOut::new(out), scratch);
        let tiles = self.tiles();
        for i in 0..tiles {
            let t = match sweep {
                Sweep::Forward => i,
                Sweep::Backward => tiles - 1 - i,
            };
            // SAFETY: checked by `operands`; one thread, disjoint tiles.
            unsafe { self.tile(ops, t, sweep) };
        }
    }

    /// Runs tile `tile` (`< tiles()`).
    #[allow(clippy::too_many_arguments)]
    pub fn run_tile(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        n: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        tile: usize,
        sweep: Sweep,
    ) {
        // SAFETY: `out` is borrowed mutably, so nothing else writes or reads it.
        unsafe {
            self.run_tile_shared(
                packed,
                bias,
                x,
                n,
                residual,
                SharedOut::new(out),
                scratch,
                tile,
                sweep,
            )
        }
    }

    /// [`LinearKernel::run_tile`] through a [`SharedOut`], for threads running different
    /// tiles at once (each with its own scratch).
    ///
    /// # Safety
    /// No concurrent call may run the same tile index on the same output, and nothing
    /// may read `out` until all calls are done.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_tile_shared(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        n: usize,
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        tile: usize,
        sweep: Sweep,
    ) {
        let ops = self.operands(packed, bias, x, n, residual, out, scratch);
        assert!(tile < self.tiles(), "linear: tile index");
        self.tile(ops, tile, sweep);
    }

    /// A call's operands: its arguments `check`ed and the batch packed as the A side.
    #[allow(clippy::too_many_arguments)]
    fn operands<'a>(
        &self,
        packed: &'a [f32],
        bias: Option<&'a [f32]>,
        x: &'a [f32],
        n: usize,
        residual: Option<&'a [f32]>,
        out: SharedOut<'a>,
        scratch: &'a mut [f32],
    ) -> Operands<'a> {
        self.check(packed, bias, x, n, residual, out.len(), scratch);
        let a = self.pack_x(x, n, scratch);
        Operands {
            packed,
            bias,
            a,
            n,
            residual,
            out,
        }
    }

    /// Safety: `ops` checked by `check`, `ops.a` the packed batch; no concurrent writer
    /// of the same tile.
    unsafe fn tile(&self, ops: Operands<'_>, tile: usize, sweep: Sweep) {
        let Operands {
            packed,
            bias,
            a,
            n,
            residual,
            out,
        } = ops;
        let (fi, fo) = (self.in_features, self.out_features);
        let o0 = tile * self.tile_cols;
        if n == 0 || o0 >= fo {
            return;
        }
        let cols = self.tile_cols.min(fo - o0);
        if n == 1 {
            if let Some(kern) = row_panel_kernel(self.isa) {
                // Whole panels one call each (o0 is a multiple of NR_PACK), the short
                // last panel (if this tile has it) by `drive`: after the whole ones going
                // forward, before them going backward.
                let whole = cols / NR_PACK;
                let (rest, rest_cols) = (o0 + whole * NR_PACK, cols % NR_PACK);
                if sweep == Sweep::Backward && rest_cols > 0 {
                    self.drive_cols(ops, rest, rest_cols);
                }
                // Panels two at a time where the tier has the two-panel kernel (the last
                // one alone when their number is odd): twice the FMA chains and two
                // weight streams. AVX-512, whole models, paired against one panel at a time
                // (`scripts/paired_ab.py`, AMD EPYC Zen 4): LeNet-5 (fc1 2450 → 500,
                // 4.9 MB) 0.947 [0.892, 0.953] at 1 thread and 0.972 [0.970, 1.010] at 2
                // (16 rounds), MobileNetV2 0.977 [0.971, 0.998] (12), ResNet-18 0.992
                // [0.978, 1.026] (10); AVX2 (eight chains), LeNet-5 0.974 / 0.978.
                let pair = row_pair_kernel(self.isa);
                let per = if pair.is_some() { 2 } else { 1 };
                let units = whole.div_ceil(per);
                for i in 0..units {
                    let unit = match sweep {
                        Sweep::Forward => i,
                        Sweep::Backward => units - 1 - i,
                    };
                    let p = o0 + unit * per * NR_PACK;
                    // ROW64 where both panels of the unit are whole, else ROW32.
                    let kern = match pair {
                        Some(two) if (unit + 1) * per <= whole => two,
                        _ => kern,
                    };
                    let st = Store {
                        load_c: false,
                        finish: true,
                        bias_row: std::ptr::null(),
                        bias_col: bias.map_or(std::ptr::null(), |b| b.as_ptr().add(p)),
                        residual: residual.map_or(std::ptr::null(), |r| r.as_ptr().add(p)),
                        act: self.activation,
                        // A hint per k step, PANEL_PREFETCH_AHEAD floats ahead in the
                        // panel (past its end: the next panel, or nothing; never faults).
                        // With two panels, the kernel hints the second one's stream too.
                        pf: packed
                            .as_ptr()
                            .add(p * fi)
                            .wrapping_add(PANEL_PREFETCH_AHEAD),
                        pf_stride: NR_PACK,
                        pf_to: self.prefetch,
                    };
                    // SAFETY: `check` verified the lengths: x holds `fi` floats (lda 1);
                    // the unit's full panels (one, or two for ROW64: columns p..p + 32·n)
                    // hold fi·32·n weights from p·fi, 32 apart per k within a panel, the
                    // second panel 32·fi after the first; output, bias and residual cover
                    // the unit's columns.
                    kern(
                        fi,
                        a.as_ptr(),
                        1,
                        packed.as_ptr().add(p * fi),
                        NR_PACK,
                        out.ptr().add(p),
                        fo,
                        NR_PACK,
                        &st,
                    );
                }
                if sweep == Sweep::Forward && rest_cols > 0 {
                    self.drive_cols(ops, rest, rest_cols);
                }
                return;
            }
        }
        self.drive_cols(ops, o0, cols);
    }

    /// Output features `o0..o0 + cols` (`o0` a multiple of NR_PACK) through `drive`.
    ///
    /// Safety: as [`LinearKernel::tile`], the columns inside the output features.
    unsafe fn drive_cols(&self, ops: Operands<'_>, o0: usize, cols: usize) {
        let n = ops.n;
        let (fi, fo) = (self.in_features, self.out_features);
        let u = ukr(self.isa);
        // One row sliver: stream each weight panel once over the whole K. Several: block
        // K so that the weight sliver stays in L1 while the slivers of x pass over it.
        let kc = if n <= u.mr {
            fi.max(1)
        } else {
            fi.div_ceil(fi.div_ceil(128).max(1)).max(1)
        };
        let t = Tile {
            m: n,
            n: cols,
            k: fi,
            kc,
            nc: cols,
            a: ops.a.as_ptr(),
            c: ops.out.ptr().add(o0),
            ldc: fo,
            bias_row: std::ptr::null(),
            bias_col: ops.bias.map_or(std::ptr::null(), |b| b.as_ptr().add(o0)),
            residual: ops
                .residual
                .map_or(std::ptr::null(), |r| r.as_ptr().add(o0)),
            act: self.activation,
            accumulate: false,
            prefetch: self.prefetch,
        };
        let src = BSrc::Prepacked {
            ptr: ops.packed.as_ptr().add(o0 * fi),
            n_rest: fo - o0,
        };
        // SAFETY: `check` verified the lengths: packed A holds n·in elements; the packed
        // weights from the panel of column o0 (a multiple of NR_PACK) to the end hold
        // (out−o0)·in elements; output and residual rows of stride `out` cover columns
        // o0..o0+cols; the column bias covers them too. No scratch is used.
        drive(u, &t, &src, &mut []);
    }
}
