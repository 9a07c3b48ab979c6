//! Inverted-residual blocks (MobileNetV2 and its kin) as one step: a 1×1 expansion, a
//! depthwise convolution and a 1×1 projection, run band by band of output rows.
//!
//! Why: the expanded tensor has about six times the block's channels. Run layer by
//! layer, it is written to the arena by the expansion, read back by the depthwise layer,
//! whose output (as large again at stride 1) is written and read back by the projection;
//! on the 112×112 and 56×56 layers that traffic costs more than the arithmetic. Here each
//! worker holds one band of it in a buffer sized for its L2 cache and the arena sees only
//! the block's input and output.
//!
//! The expansion may also be any one-group convolution that the tier runs as
//! `im2col_gemm`, such as MobileNetV2's stem (3×3 stride 2, 3 → 32 channels) before its
//! first depthwise layer: its 112×112 output (1.6 MB) is the same kind of traffic. Its
//! band rows are then made by im2col of the input rows they need.
//!
//! Per band of output rows `o0..o1`, a worker
//! 1. expands the input rows the band's depthwise windows cover (rows it already holds
//!    from the band it ran just before, the one above or below, are moved into place,
//!    not recomputed),
//! 2. runs the depthwise kernel on them (a kernel planned for that band's rows and its
//!    share of the top / bottom padding),
//! 3. projects the band into the output rows, adding bias and the residual in the store.
//!
//! Bands are the parallel parts: each worker starts on its own run of consecutive bands
//! (an equal share of the rows) and, once done, takes bands from the far end of a slower
//! worker's run, going upwards so that it keeps reusing rows. Measured on MobileNetV2
//! (2 threads, AVX2 VM, 600 runs): with one part per worker the later worker finished a
//! fused block on average 0.083 ms after the other (17% of the block's 0.49 ms); with
//! bands as parts, 0.03–0.07 of 0.32–0.44 ms (the band each is in when the other runs
//! out). Whole-model latency moved within this VM's noise.
//!
//! Results are bit-identical to running the three layers one by one: each element comes
//! from the same micro-kernel with the same K blocks (1×1 layers) or the same taps in the
//! same order (depthwise); only which rows are computed together changes.

mod channels_last;

use std::ops::Range;

use crate::graph::{Activation, Conv};
use crate::kernels::conv::im2col::Im2col;
use crate::kernels::conv::ConvKernel;
use crate::kernels::depthwise::DepthwiseKernel;
use crate::kernels::elementwise::{clamp_bounds, vector_lanes};
use crate::kernels::gemm::{
    self, BMode, BSrc, PackB, PlainB, PrefetchTo, SharedOut, Tile, ROW_SLACK,
};
use crate::kernels::parallel;
use crate::simd::Isa;
use channels_last::DwOut;

/// Default bytes of one worker's band buffers (expanded rows and depthwise output): half
/// of this machine's 1 MiB L2, the rest left to the weights and the packed B blocks.
pub const DEFAULT_BAND_BYTES: usize = 512 << 10;

/// Bytes of a sample's expanded tensor from which fusing pays on one thread, on the
/// planar band path: below about the L2 size the unfused layers find it in cache
/// anyway, and the per-band overheads (smaller GEMM calls, halo rows through the
/// depthwise padded copies) win. Measured on MobileNetV2 (AVX2, 1 thread, per-block
/// profile): the 112×112 and 56×56 blocks 5–19% faster fused, the 14×14 and 7×7 blocks
/// 0–10% slower. On the channels-last path a block fuses from
/// [`MIN_EXPANDED_BYTES_THREADS`] on one thread too (MobileNetV2, AVX2, 1 thread,
/// 4 interleaved rounds: 8.57–8.64 ms with 1 MiB, 8.50–8.60 with 500 KiB, 8.36–8.44
/// with 256 KiB, the same fusing every block).
pub const MIN_EXPANDED_BYTES: usize = 1 << 20;
/// The same with several workers. Unfused, the depthwise layer splits by channels and
/// the 1×1 layers around it by pixels, so each core reads about half of every expanded
/// tensor from the other core's cache; fused, a worker keeps its bands. Measured on
/// MobileNetV2 (AVX-512, 2 threads, whole model, 2 rounds): 4.36–4.41 ms with the 1 MiB
/// threshold, 4.13–4.18 fusing from 400 KB (the 28×28 blocks too), 3.91–3.93 from
/// 256 KiB (the 14×14 ones too), 4.02–4.04 fusing every block (the 7×7 ones too).
pub const MIN_EXPANDED_BYTES_THREADS: usize = 256 << 10;
/// The narrowest expanded map whose block takes the channels-last path on AVX-512 (see
/// `BlockKernel::new`).
const AVX512_CHANNELS_LAST_MIN_WIDTH: usize = 56;

/// The expanded-tensor size from which a block is fused for `threads` workers, on the
/// channels-last band path or the planar one.
pub fn min_expanded_bytes(threads: usize, channels_last: bool) -> usize {
    if threads > 1 || channels_last {
        MIN_EXPANDED_BYTES_THREADS
    } else {
        MIN_EXPANDED_BYTES
    }
}

/// Floats at the start of each worker's scratch that record which band's input rows its
/// buffer holds (two used; a whole 64-byte line, so the buffers after it stay aligned).
const HELD_HEADER: usize = 16;

/// The (sample, band) whose input rows `slot`'s buffer holds, if any.
fn held_get(slot: &[f32]) -> Option<(usize, usize)> {
    let (s, b) = (slot[0].to_bits(), slot[1].to_bits());
    (s != u32::MAX).then_some((s as usize, b as usize))
}

/// Records which (sample, band) `slot`'s buffer holds (`None`: nothing usable).
fn held_set(slot: &mut [f32], held: Option<(usize, usize)>) {
    let ids = held.and_then(|(s, b)| Some((u32::try_from(s).ok()?, u32::try_from(b).ok()?)));
    let (s, b) = ids.filter(|&(s, _)| s != u32::MAX).unwrap_or((u32::MAX, 0));
    slot[0] = f32::from_bits(s);
    slot[1] = f32::from_bits(b);
}

/// Bytes of the packed B panels per GEMM call of an im2col expansion (its K is the
/// input channels times the taps, 27 for a 3-channel 3×3 stem).
const IM2COL_PANEL_BYTES: usize = 64 << 10;

/// A 1×1 stride-1 convolution over a run of pixels: `C[m × n] = act(A·B + bias +
/// residual)`, A the conv-gemm packed weights, B `k` rows of stride `ldb`.
#[derive(Clone, Debug)]
struct Pointwise {
    m: usize,
    k: usize,
    kc: usize,
    nc: usize,
    mode: BMode,
    activation: Activation,
    prefetch: PrefetchTo,
}

impl Pointwise {
    /// The GEMM of `conv` (any kernel size, one group: K = input channels × taps) over
    /// runs of at most `n_max` pixels.
    fn new(isa: Isa, conv: &Conv, n_max: usize, mode: BMode) -> Pointwise {
        let k = conv.in_channels * conv.kernel[0] * conv.kernel[1];
        let kc = gemm::choose_kc(k);
        Pointwise {
            m: conv.out_channels,
            k,
            kc,
            nc: gemm::choose_nc(n_max, kc, gemm::ukr(isa).nr, 256 << 10),
            mode,
            activation: conv.activation,
            prefetch: PrefetchTo::default(),
        }
    }

    /// The same GEMM with packed B blocks of about `bytes` (`nc` a multiple of the
    /// tier's `nr`; the K blocks, hence the results, are unchanged).
    fn with_panel_bytes(mut self, isa: Isa, n_max: usize, bytes: usize) -> Pointwise {
        self.nc = gemm::choose_nc(n_max, self.kc, gemm::ukr(isa).nr, bytes);
        self
    }

    fn scratch_len(&self, isa: Isa) -> usize {
        match self.mode {
            BMode::Direct => 0,
            BMode::Packed => gemm::pack_scratch_len(self.kc, self.nc, gemm::ukr(isa).nr),
        }
    }

    /// Safety: `c` (and `residual` unless null) hold `m` rows of stride `ldc` with `n`
    /// valid columns each, written by no one else meanwhile; `b` has `k` rows of `n`
    /// columns (a packer: it can pack them); `a` is `m·k` packed, `bias` `m` long;
    /// `scratch` at least `scratch_len`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        isa: Isa,
        a: &[f32],
        bias: Option<&[f32]>,
        b: PointwiseB,
        n: usize,
        c: *mut f32,
        ldc: usize,
        residual: *const f32,
        scratch: &mut [f32],
    ) {
        debug_assert!(a.len() == self.m * self.k);
        let u = gemm::ukr(isa);
        let plain = match b {
            PointwiseB::Rows { b, ldb } => {
                debug_assert!(b.len() >= (self.k - 1) * ldb + n);
                Some(PlainB { b, ldb })
            }
            PointwiseB::Packer { .. } | PointwiseB::Panels { .. } => None,
        };
        for n0 in (0..n).step_by(self.nc) {
            let t = Tile {
                m: self.m,
                n: self.nc.min(n - n0),
                k: self.k,
                kc: self.kc,
                nc: self.nc,
                a: a.as_ptr(),
                c: c.add(n0),
                ldc,
                bias_row: bias.map_or(std::ptr::null(), |v| v.as_ptr()),
                bias_col: std::ptr::null(),
                residual: if residual.is_null() {
                    residual
                } else {
                    residual.add(n0)
                },
                act: self.activation,
                accumulate: false,
                prefetch: self.prefetch,
            };
            let src = match (&plain, b, self.mode) {
                (Some(p), _, BMode::Direct) => BSrc::Direct {
                    ptr: p.b.as_ptr().add(n0),
                    ldb: p.ldb,
                },
                (Some(p), _, BMode::Packed) => BSrc::Pack { packer: p, n0 },
                (None, PointwiseB::Packer { packer, n0: first }, _) => BSrc::Pack {
                    packer,
                    n0: first + n0,
                },
                (None, PointwiseB::Panels { b, npad }, _) => {
                    debug_assert!(n0.is_multiple_of(u.nr) && b.len() >= self.k * npad);
                    BSrc::Panels {
                        base: b.as_ptr(),
                        npad,
                        n0,
                    }
                }
                (None, PointwiseB::Rows { .. }, _) => unreachable!("rows have a PlainB"),
            };
            gemm::drive(u, &t, &src, scratch);
        }
    }
}

/// Where a [`Pointwise`] GEMM's B comes from.
#[derive(Clone, Copy)]
enum PointwiseB<'a> {
    /// `k` rows of stride `ldb`, read in place or packed as the plan says.
    Rows { b: &'a [f32], ldb: usize },
    /// Columns `n0..` of a packer's matrix, always packed.
    Packer { packer: &'a dyn PackB, n0: usize },
    /// Already in the GEMM's packed panels (`gemm::BSrc::Panels`, `npad` columns wide, K
    /// blocks of the GEMM's `kc`): read as they are.
    Panels { b: &'a [f32], npad: usize },
}

/// `len` split into `parts` consecutive pieces `(start, len)` whose lengths differ by at
/// most one.
fn even_parts(len: usize, parts: usize) -> impl Iterator<Item = (usize, usize)> {
    let parts = parts.max(1);
    let (base, extra) = (len / parts, len % parts);
    (0..parts).map(move |i| (i * base + i.min(extra), base + usize::from(i < extra)))
}

/// One band of output rows and the input rows its depthwise windows cover.
#[derive(Clone, Debug)]
struct Band {
    out_rows: Range<usize>,
    in_rows: Range<usize>,
    /// Index of the depthwise kernel planned for this band's geometry.
    kernel: usize,
}

/// The weights of one block, in node order.
#[derive(Clone, Copy, Debug)]
pub struct BlockWeights<'a> {
    /// Conv-gemm packed (`ConvKernel::pack_weights`), `cexp × cin`.
    pub expand: &'a [f32],
    pub expand_bias: Option<&'a [f32]>,
    /// `[cexp, 1, kh, kw]`.
    pub depthwise: &'a [f32],
    pub depthwise_bias: Option<&'a [f32]>,
    /// Conv-gemm packed, `cout × cexp`.
    pub project: &'a [f32],
    pub project_bias: Option<&'a [f32]>,
    /// [`BlockKernel::channels_last_weights`] of the weights above, for a kernel on
    /// the channels-last path (`None` otherwise).
    pub channels_last: Option<&'a [f32]>,
}

/// A planned expansion → depthwise → projection block for one input shape.
#[derive(Clone, Debug)]
pub struct BlockKernel {
    isa: Isa,
    cin: usize,
    cexp: usize,
    cout: usize,
    /// The block's input plane.
    h: usize,
    w: usize,
    /// The expanded tensor's plane (the input's, for a 1×1 expansion).
    eh: usize,
    ew: usize,
    oh: usize,
    ow: usize,
    expand: Pointwise,
    /// The expansion when it is not 1×1 stride 1 (a network's stem): run as im2col of
    /// each band's rows into the same GEMM as the unfused `im2col_gemm` layer.
    expand_im2col: Option<Conv>,
    project: Pointwise,
    depthwise: Vec<DepthwiseKernel>,
    /// In row order; each worker's share of the rows is a run of consecutive bands.
    bands: Vec<Band>,
    /// Floats per channel of the expanded-rows buffer (the tallest band's input rows).
    exp_stride: usize,
    /// Output rows per band (the last may have fewer).
    band_rows: usize,
    /// The channels-last band path ([`channels_last`]) and its depthwise geometry, where
    /// the block can take it and it is chosen.
    channels_last: Option<channels_last::Dw3>,
    /// Whether the block can take the channels-last path: 3×3 depthwise with dilation 1
    /// and stride ≤ 2, a clamp activation, channels a multiple of the vector.
    channels_last_geometry: Option<channels_last::Dw3>,
}

impl BlockKernel {
    /// Where the GEMM's prefetch hints put the weights they fetch ahead (the session
    /// chooses, see [`PrefetchTo`]); results do not change.
    pub fn set_prefetch(&mut self, to: PrefetchTo) {
        self.expand.prefetch = to;
        self.project.prefetch = to;
    }

    /// Plans the block, or `None` if the three convolutions are not an expansion (1×1
    /// stride 1, or any one-group convolution that this tier runs as `im2col_gemm`), a
    /// depthwise convolution with multiplier 1 and a 1×1 stride-1 projection chained on
    /// these shapes. `band_bytes` bounds a worker's buffers;
    /// `threads` workers split every sample's bands.
    pub fn new(
        isa: Isa,
        expand: &Conv,
        depthwise: &Conv,
        project: &Conv,
        in_shape: [usize; 3],
        out_shape: [usize; 3],
        threads: usize,
        band_bytes: usize,
    ) -> Option<BlockKernel> {
        let pointwise = |c: &Conv| {
            c.kernel == [1, 1] && c.stride == [1, 1] && c.pads == [0; 4] && c.groups == 1
        };
        let [cin, h, w] = in_shape;
        let [cout, oh, ow] = out_shape;
        let cexp = expand.out_channels;
        let expand_1x1 = pointwise(expand);
        if expand.groups != 1
            || !pointwise(project)
            || expand.in_channels != cin
            || depthwise.in_channels != cexp
            || project.in_channels != cexp
            || project.out_channels != cout
            || cin == 0
            || cexp == 0
            || cout == 0
            || oh == 0
            || ow == 0
        {
            return None;
        }
        let (eh, ew) = if expand_1x1 {
            (h, w)
        } else {
            let side = |n: usize, i: usize| -> Option<usize> {
                let span = expand.dilation[i] * (expand.kernel[i].checked_sub(1)?) + 1;
                let padded = n + expand.pads[i] + expand.pads[i + 2];
                (expand.stride[i] > 0 && padded >= span)
                    .then(|| (padded - span) / expand.stride[i] + 1)
            };
            let (eh, ew) = (side(h, 0)?, side(w, 1)?);
            // Same packed weights and the same GEMM as the layer run alone.
            if ConvKernel::new(isa, expand, in_shape, [cexp, eh, ew]).algorithm() != "im2col_gemm" {
                return None;
            }
            (eh, ew)
        };
        // Validates the depthwise geometry on the whole plane.
        let layer_depthwise = DepthwiseKernel::new(isa, depthwise, [cexp, eh, ew], [cexp, oh, ow])?;
        let [kh, _] = depthwise.kernel;
        let (sh, dh, pt) = (
            depthwise.stride[0],
            depthwise.dilation[0],
            depthwise.pads[0],
        );
        let span = dh * (kh - 1) + 1;
        let in_rows_for = |b: usize| (b - 1) * sh + span;
        // An im2col expansion packs up to IM2COL_PANEL_BYTES of panels per GEMM call
        // next to the band buffers and reads its input rows in place; half the budget
        // for its buffers measured best (MobileNetV2's stem block, 1 thread, 512 KiB
        // L2: 16% faster than with the whole budget, while the 1×1 blocks were 5% slower
        // with half).
        let budget = if expand_1x1 {
            band_bytes
        } else {
            band_bytes / 2
        };
        let fit = (1..=oh)
            .take_while(|&b| 4 * cexp * (in_rows_for(b) * ew + b * ow) <= budget)
            .last()
            .unwrap_or(1);
        // Each worker gets an equal share of the output rows (to a row), cut into bands
        // of at most `fit` rows, as equal as possible: cutting the plane into `fit`-row
        // bands first and handing them out in runs left one worker up to a band more
        // than the other (MobileNetV2's 28-row block at 2 threads: 18 rows against 10).
        let workers = threads.clamp(1, oh);
        let mut bounds = Vec::new();
        for (s0, len) in even_parts(oh, workers) {
            let parts = len.div_ceil(fit);
            bounds.extend(even_parts(len, parts).map(|(b0, l)| (s0 + b0, s0 + b0 + l)));
        }
        let band_rows = bounds.iter().map(|&(o0, o1)| o1 - o0).max()?;
        let mut kinds: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut depthwise_kernels = Vec::new();
        let mut bands = Vec::new();
        for &(o0, o1) in &bounds {
            // Input rows of the windows, padding included: start .. end.
            let start = (o0 * sh) as isize - pt as isize;
            let end = ((o1 - 1) * sh + span) as isize - pt as isize;
            let lo = start.max(0) as usize;
            let hi = (end.min(eh as isize)).max(0) as usize;
            if lo >= hi {
                return None;
            }
            let pad_top = (-start).max(0) as usize;
            let pad_bottom = (end - eh as isize).max(0) as usize;
            let key = (pad_top, pad_bottom, hi - lo, o1 - o0);
            let kernel = match kinds.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    let mut conv = depthwise.clone();
                    conv.pads[0] = pad_top;
                    conv.pads[2] = pad_bottom;
                    depthwise_kernels.push(DepthwiseKernel::new(
                        isa,
                        &conv,
                        [cexp, hi - lo, ew],
                        [cexp, o1 - o0, ow],
                    )?);
                    kinds.push(key);
                    kinds.len() - 1
                }
            };
            bands.push(Band {
                out_rows: o0..o1,
                in_rows: lo..hi,
                kernel,
            });
        }
        let exp_stride = bands.iter().map(|b| b.in_rows.len()).max()? * ew;
        let isa = gemm::ukr(isa).isa;
        // The channels-last depthwise runs every output as the bias then the nine taps
        // (padding adding 0·w): the same bits as the layer only where the layer's own
        // body does the same (left and right padding ≤ 1, rows up to its padded width).
        let geometry = (depthwise.kernel == [3, 3]
            && depthwise.dilation == [1, 1]
            && matches!(depthwise.stride, [1 | 2, 1 | 2])
            && layer_depthwise.uniform_chain()
            && cexp.is_multiple_of(vector_lanes(isa)))
        .then(|| clamp_bounds(depthwise.activation))
        .flatten()
        .map(|(lo, hi)| channels_last::Dw3 {
            eh,
            ew,
            ow,
            cexp,
            sh: depthwise.stride[0],
            sw: depthwise.stride[1],
            pt,
            pl: depthwise.pads[1],
            pr: depthwise.pads[3],
            lo,
            hi,
        });
        Some(BlockKernel {
            isa,
            cin,
            cexp,
            cout,
            h,
            w,
            eh,
            ew,
            oh,
            ow,
            expand: if expand_1x1 {
                Pointwise::new(isa, expand, exp_stride, BMode::Packed)
            } else {
                Pointwise::new(isa, expand, exp_stride, BMode::Packed).with_panel_bytes(
                    isa,
                    exp_stride,
                    IM2COL_PANEL_BYTES,
                )
            },
            expand_im2col: (!expand_1x1).then(|| expand.clone()),
            // Like the unfused choice (`conv::choose_1x1`): B in place when the weights'
            // rows for one K block fit in L2 next to it.
            project: Pointwise::new(
                isa,
                project,
                band_rows * ow,
                if gemm::prefer_direct_b(cout, cexp, band_rows * ow) {
                    BMode::Direct
                } else {
                    BMode::Packed
                },
            ),
            depthwise: depthwise_kernels,
            bands,
            exp_stride,
            band_rows,
            // Measured faster on AVX2 for MobileNetV2's blocks on maps 14 to 112 wide
            // (0.86–0.92× the planar path's time), slower on the 7×7 ones (1.05×,
            // whose rows are narrower than two tiles). On AVX-512 (Xeon, 2026-12-04) only
            // on the 112-wide maps (0.80–0.85×; 0.97–1.13× on maps 7 to 56 wide, likely
            // because the 16 × 16 transposes of the depthwise stores share port 5 with
            // half of the 512-bit FMAs there). With the session's buffers 64-byte
            // aligned (2026-12-05) the 56-wide ones too: MobileNetV2's features.3 and .4
            // 0.57–0.62 → 0.47 and 0.36 → 0.30 ms in the model's profile; narrower maps
            // not re-measured. The scalar tier's was not measured.
            channels_last: geometry.filter(|_| match isa {
                Isa::Avx2 => ew >= 2 * gemm::ukr(isa).mr,
                Isa::Avx512 => ew >= AVX512_CHANNELS_LAST_MIN_WIDTH,
                Isa::Scalar => false,
            }),
            channels_last_geometry: geometry,
        })
    }

    /// The same plan on the channels-last band path (`on`) or the planar one; `None` if
    /// the block cannot take the channels-last path. The two give the same bits.
    pub fn with_channels_last(mut self, on: bool) -> Option<Self> {
        if on {
            self.channels_last = Some(self.channels_last_geometry?);
        } else {
            self.channels_last = None;
        }
        Some(self)
    }

    /// Whether the block runs on the channels-last band path.
    pub fn is_channels_last(&self) -> bool {
        self.channels_last.is_some()
    }

    /// The weights the channels-last path reads besides `weights` (the expansion and
    /// the depthwise taps transposed, channels fastest), made once per session; `None`
    /// on the planar path.
    pub fn channels_last_weights(&self, weights: &BlockWeights) -> Option<Vec<f32>> {
        self.channels_last?;
        Some(channels_last::channels_last_weights(
            self.isa,
            self.expand.k,
            self.cexp,
            self.depthwise_taps(),
            weights.expand,
            weights.depthwise,
        ))
    }

    /// Bytes of one sample's expanded tensor (what fusing keeps out of the arena).
    pub fn expanded_bytes(&self) -> usize {
        4 * self.cexp * self.eh * self.ew
    }

    /// Output rows per band.
    pub fn band_rows(&self) -> usize {
        self.band_rows
    }

    /// Multiply-adds times two for one sample.
    pub fn flops(&self) -> u64 {
        let taps = self.depthwise_taps();
        let (ehw, ohw) = ((self.eh * self.ew) as u64, (self.oh * self.ow) as u64);
        2 * (self.cexp * self.expand.k) as u64 * ehw
            + 2 * (self.cexp * taps) as u64 * ohw
            + 2 * (self.cout * self.cexp) as u64 * ohw
    }

    fn depthwise_taps(&self) -> usize {
        self.depthwise.first().map_or(0, |k| k.taps())
    }

    /// Where a band's depthwise outputs go: on the channels-last path, straight into the
    /// projection's packed B panels where its K blocks hold whole vectors of channels
    /// (always, unless `CNNRT_KC` says otherwise); else planar rows.
    fn dw_out(&self, n_out: usize) -> DwOut {
        let kc = self.project.kc;
        let whole = kc >= self.cexp || kc.is_multiple_of(vector_lanes(self.isa));
        if self.channels_last.is_some() && whole {
            DwOut::panels(n_out, gemm::ukr(self.isa).nr, kc)
        } else {
            DwOut::rows(n_out, self.cexp)
        }
    }

    /// f32 elements of scratch one worker needs.
    pub fn scratch_len(&self) -> usize {
        crate::kernels::whole_lines(
            HELD_HEADER
                + self.expanded_len()
                + self.dw_out(self.band_rows * self.ow).len(self.cexp)
                + self
                    .expand
                    .scratch_len(self.isa)
                    .max(self.project.scratch_len(self.isa))
                    .max(self.im2col_rows_len()),
        )
    }

    /// Floats of the expanded rows' buffer: planar, `cexp` planes of `exp_stride`;
    /// channels-last, the rows with their zero columns and the slack after them.
    fn expanded_len(&self) -> usize {
        match &self.channels_last {
            None => self.cexp * self.exp_stride,
            Some(g) => {
                let rows = self.exp_stride / self.ew;
                let slack = channels_last::Dw3::slack_pixels(vector_lanes(self.isa));
                (rows * g.row_pixels() + slack) * self.cexp
            }
        }
    }

    /// Floats of the im2col rows of a channels-last stem expansion (its GEMM's A).
    fn im2col_rows_len(&self) -> usize {
        if self.channels_last.is_some() && self.expand_im2col.is_some() {
            self.expand.k * (self.exp_stride + ROW_SLACK)
        } else {
            0
        }
    }

    /// Runs `n` samples (`x`: `n × [cin, h, w]`; `residual`, `out`: `n × [cout, oh, ow]`)
    /// on `slots` workers of the current pool, each with `scratch_len` floats of
    /// `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        slots: usize,
        n: usize,
        weights: &BlockWeights,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        self.run_parts(slots, n, weights, x, residual, out, scratch, None);
    }

    /// [`Self::run`], or on one worker in `order` (see [`Self::run_in_order`]).
    #[allow(clippy::too_many_arguments)]
    fn run_parts(
        &self,
        slots: usize,
        n: usize,
        weights: &BlockWeights,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        order: Option<&[usize]>,
    ) {
        let (sin, sout) = (self.cin * self.h * self.w, self.cout * self.oh * self.ow);
        let taps = self.depthwise_taps();
        assert_eq!(x.len(), n * sin, "block: input length");
        assert_eq!(out.len(), n * sout, "block: output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), n * sout, "block: residual length");
        }
        assert_eq!(
            weights.expand.len(),
            self.cexp * self.expand.k,
            "block: expand weights"
        );
        assert_eq!(
            weights.project.len(),
            self.cout * self.cexp,
            "block: project weights"
        );
        assert_eq!(
            weights.depthwise.len(),
            self.cexp * taps,
            "block: depthwise weights"
        );
        if self.channels_last.is_some() {
            assert_eq!(
                weights.channels_last.map(<[f32]>::len),
                Some(
                    channels_last::expand_weights_len(self.isa, self.expand.k, self.cexp)
                        + taps * self.cexp
                ),
                "block: channels-last weights"
            );
        }
        for (b, len) in [
            (weights.expand_bias, self.cexp),
            (weights.depthwise_bias, self.cexp),
            (weights.project_bias, self.cout),
        ] {
            if let Some(b) = b {
                assert_eq!(b.len(), len, "block: bias length");
            }
        }
        let per = self.scratch_len();
        let bands = self.bands.len();
        let parts = n * bands;
        let slots = slots.clamp(1, parts);
        assert!(scratch.len() >= slots * per, "block: scratch");
        // No slot holds rows yet: whatever its buffer has is from another call.
        for slot in scratch.chunks_exact_mut(per) {
            held_set(slot, None);
        }
        let shared = SharedOut::new(out);
        let work = |scr: &mut [f32], t: usize| {
            let (s, band) = (t / bands, t % bands);
            let xs = &x[s * sin..(s + 1) * sin];
            let rs = residual.map(|r| &r[s * sout..(s + 1) * sout]);
            // Rows this slot expanded for its previous band, if of the same sample.
            let held = match held_get(scr) {
                Some((hs, hb)) if hs == s => self.bands[hb].in_rows.clone(),
                _ => 0..0,
            };
            // SAFETY: each (sample, band) pair is claimed once and writes only its own
            // output rows of its own sample.
            unsafe {
                self.run_band(
                    weights,
                    xs,
                    rs,
                    shared.slice(s * sout, sout),
                    &mut scr[HELD_HEADER..],
                    band,
                    held,
                )
            };
            held_set(scr, Some((s, band)));
        };
        match order {
            Some(order) => {
                let mut seen = vec![false; parts];
                for &t in order {
                    assert!(
                        !std::mem::replace(&mut seen[t], true),
                        "block: part {t} twice"
                    );
                    work(&mut scratch[..per], t);
                }
                assert!(
                    seen.iter().all(|&s| s),
                    "block: parts missing from the order"
                );
            }
            None if slots == 1 => {
                for t in 0..parts {
                    work(&mut scratch[..per], t);
                }
            }
            None => parallel::for_tiles(slots, parts, scratch, per, work),
        }
    }

    /// Bands per sample: [`Self::run`]'s parallel parts are `sample · bands + band`.
    #[doc(hidden)]
    pub fn band_count(&self) -> usize {
        self.bands.len()
    }

    /// [`Self::run`] on one worker that runs the parts in `order` (a permutation of
    /// `0 .. n · band_count()`): how tests reach every order in which a worker may
    /// meet bands (its own run front to back, another's from the back).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn run_in_order(
        &self,
        n: usize,
        weights: &BlockWeights,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        order: &[usize],
    ) {
        self.run_parts(1, n, weights, x, residual, out, scratch, Some(order));
    }

    /// Band `band` of one sample, with the buffer holding map rows `held` (from the
    /// slot's previous band of this sample; empty if none).
    ///
    /// Safety: no concurrent call writes the same band's rows of `out`; lengths checked
    /// by `run`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_band(
        &self,
        weights: &BlockWeights,
        x: &[f32],
        residual: Option<&[f32]>,
        out: SharedOut,
        scratch: &mut [f32],
        band: usize,
        held: Range<usize>,
    ) {
        let (w, ow, cexp) = (self.ew, self.ow, self.cexp);
        let stride = self.exp_stride;
        let (expanded, rest) = scratch.split_at_mut(self.expanded_len());
        let (dw_out, pack) = rest.split_at_mut(self.dw_out(self.band_rows * ow).len(cexp));
        let band = &self.bands[band];
        let rows = band.in_rows.clone();
        // Rows held that this band needs too: at its top (the previous band was above)
        // or at its bottom (below, for a worker helping from the far end of a run).
        let kept = held.start.max(rows.start)..held.end.min(rows.end);
        let kept = if kept.is_empty() {
            rows.start..rows.start
        } else {
            kept
        };
        let (from, to) = (
            kept.start - held.start.min(kept.start),
            kept.start - rows.start,
        );
        if !kept.is_empty() && from != to {
            if let Some(g) = &self.channels_last {
                let row = g.row_pixels() * cexp;
                expanded.copy_within(from * row..(from + kept.len()) * row, to * row);
            } else {
                for c in 0..cexp {
                    let base = c * stride;
                    expanded.copy_within(
                        base + from * w..base + (from + kept.len()) * w,
                        base + to * w,
                    );
                }
            }
        }
        // The rows not kept: above the kept ones, or below them.
        for (at, new) in [
            (0, rows.start..kept.start),
            (to + kept.len(), kept.end..rows.end),
        ] {
            if !new.is_empty() {
                // SAFETY: the new rows go at their place in the band's rows, inside the
                // buffer (sized for the tallest band); `x` is the whole input (checked
                // by `run`).
                unsafe { self.expand_rows(weights, x, expanded, at, new, pack) };
            }
        }
        let held = rows;
        let n_out = band.out_rows.len() * ow;
        let mut lay = DwOut::rows(n_out, cexp);
        match (&self.channels_last, weights.channels_last) {
            (Some(g), Some(clw)) => {
                let taps = &clw[channels_last::expand_weights_len(self.isa, self.expand.k, cexp)..];
                lay = self.dw_out(n_out);
                let dw = &mut dw_out[..lay.len(cexp)];
                // SAFETY: `held` holds every map row the band's windows reach inside
                // the map (`Band::in_rows`), channels-last from the buffer's start;
                // `taps` has 9·cexp weights (checked by `run`), the bias cexp; `dw`
                // spans `lay` (`dw_out` checks its K blocks); cexp is a multiple of
                // the vector (`new`).
                unsafe {
                    channels_last::depthwise3x3(
                        self.isa,
                        g,
                        expanded.as_ptr(),
                        held.clone(),
                        taps.as_ptr(),
                        weights
                            .depthwise_bias
                            .map_or(std::ptr::null(), |b| b.as_ptr()),
                        band.out_rows.clone(),
                        dw.as_mut_ptr(),
                        lay,
                    )
                }
            }
            _ => self.depthwise[band.kernel].run_strided(
                0..cexp,
                weights.depthwise,
                weights.depthwise_bias,
                expanded,
                stride,
                None,
                &mut dw_out[..cexp * n_out],
            ),
        }
        let dw = &dw_out[..lay.len(cexp)];
        // (One panel as wide as the band is the same layout as planar rows.)
        let b = if lay.npad == n_out && lay.nr == n_out.max(1) {
            PointwiseB::Rows { b: dw, ldb: n_out }
        } else {
            PointwiseB::Panels {
                b: dw,
                npad: lay.npad,
            }
        };
        let o0 = band.out_rows.start * ow;
        let plane = self.oh * ow;
        // SAFETY: B is the band's depthwise output (`cexp` rows of `n_out`); C and
        // the residual are the output's channels (stride `plane`) from pixel `o0`,
        // `n_out` columns inside each plane; these rows belong to this call alone.
        self.project.run(
            self.isa,
            weights.project,
            weights.project_bias,
            b,
            n_out,
            out.ptr().add(o0),
            plane,
            residual.map_or(std::ptr::null(), |r| r.as_ptr().add(o0)),
            pack,
        );
    }

    /// Expands map rows `rows` into the band buffer from its row `keep` on: planar
    /// (channel `c`'s row `i` at `c·exp_stride + i·ew`) or channels-last (pixel `p` of
    /// the buffer at `p·cexp`).
    ///
    /// Safety: `rows.end <= eh`, `keep + rows.len()` rows fit the buffer; `x` is the
    /// sample's whole input; `pack` holds the larger of the GEMMs' scratch and
    /// [`Self::im2col_rows_len`].
    unsafe fn expand_rows(
        &self,
        weights: &BlockWeights,
        x: &[f32],
        expanded: &mut [f32],
        keep: usize,
        rows: Range<usize>,
        pack: &mut [f32],
    ) {
        let (w, cexp) = (self.ew, self.cexp);
        let (p0, n) = (rows.start * w, rows.len() * w);
        let bias = weights.expand_bias;
        let packer = self.expand_im2col.as_ref().map(|e| {
            Im2col::new(
                self.isa,
                x,
                [self.h, self.w],
                e.kernel,
                e.stride,
                e.dilation,
                [e.pads[0], e.pads[1]],
                w,
            )
        });
        match (&self.channels_last, weights.channels_last, &packer) {
            (Some(g), Some(clw), packer) => {
                let k = self.expand.k;
                let bias = bias.map_or(std::ptr::null(), |b| b.as_ptr());
                // A: the input's planes in place (a 1×1 expansion's pixels are the
                // map's), or the im2col rows of these map rows.
                let (a, lda) = match packer {
                    None => (x[p0..].as_ptr(), self.h * self.w),
                    Some(packer) => {
                        let lda = n + ROW_SLACK;
                        assert!(pack.len() >= k * lda, "block: im2col rows");
                        for (kk, row) in pack.chunks_exact_mut(lda).take(k).enumerate() {
                            packer.row(kk, p0, n, row);
                        }
                        (pack.as_ptr(), lda)
                    }
                };
                // Row by row (tiles of whole rows: the buffer's rows have zero columns
                // between them), each written in place.
                let row = g.row_pixels() * cexp;
                for i in 0..rows.len() {
                    let r0 = (keep + i) * row;
                    let (lead, rest) = expanded[r0..r0 + row].split_at_mut(g.pl * cexp);
                    let (data, trail) = rest.split_at_mut(w * cexp);
                    lead.fill(0.0);
                    trail.fill(0.0);
                    // SAFETY: A has k rows of n pixels at stride lda (the input's planes
                    // from pixel p0 < h·w, or the rows just made), this row's from pixel
                    // i·w; Wᵀ holds `expand_weights_len` (checked by `run`); C is the
                    // row's w pixels between its zero columns.
                    unsafe {
                        channels_last::expand(
                            self.isa,
                            k,
                            w,
                            a.add(i * w),
                            lda,
                            clw.as_ptr(),
                            bias,
                            self.expand.activation,
                            data.as_mut_ptr(),
                            cexp,
                        )
                    };
                }
            }
            (_, _, None) => {
                // SAFETY: B is the input's channels (stride h·w, the expanded plane's
                // for a 1×1 expansion) from pixel p0, `n` columns inside each plane; C
                // is the buffer's channels (stride `exp_stride` ≥ (keep + rows)·w) from
                // row `keep`, `n` columns inside each.
                unsafe {
                    self.expand.run(
                        self.isa,
                        weights.expand,
                        bias,
                        PointwiseB::Rows {
                            b: &x[p0..],
                            ldb: self.h * self.w,
                        },
                        n,
                        expanded.as_mut_ptr().add(keep * w),
                        self.exp_stride,
                        std::ptr::null(),
                        pack,
                    )
                }
            }
            (_, _, Some(packer)) => {
                // SAFETY: the packer's columns p0 .. p0 + n are expanded pixels (rows
                // < eh); C as above.
                unsafe {
                    self.expand.run(
                        self.isa,
                        weights.expand,
                        bias,
                        PointwiseB::Packer { packer, n0: p0 },
                        n,
                        expanded.as_mut_ptr().add(keep * w),
                        self.exp_stride,
                        std::ptr::null(),
                        pack,
                    )
                }
            }
        }
    }
}
