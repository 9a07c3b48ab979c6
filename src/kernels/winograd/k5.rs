//! Winograd F(4x4,5x5) for 5×5 stride-1 layers on small maps (LeNet-5's conv2: 20 → 50
//! channels on 14×14), optionally with the 2×2 stride-2 max pool after it.
//!
//! Why: F(2x2,5x5) (the planar `WinogradKernel`) needs 36 products per 4 outputs; F(4x4,5x5)
//! 64 per 16, 2.25× fewer, and a 14×14 map is 4 × 4 = 16 tiles, one AVX-512 vector. Its 8
//! interpolation points are F(6x6,3x3)'s (0, ±1, ±2, ±1/2, ∞), so its input transform is
//! the same 8-point one, and its rounding error stays near F(2x2,5x5)'s (5.3e-6 against
//! 2.1e-6 relative in a numpy model of LeNet-5's conv2). A C model of this step took 32 µs
//! against cnnrt's 66 for F(2x2,5x5) + pool (docs/KERNELS.md, session 38).
//!
//! Layout: tiles in the lanes. Per sample and group of up to `nr` tiles (the GEMM tier's
//! panel width): each input channel is copied into a zero-bordered plane, the 16 tiles'
//! 8×8 windows gathered lane by lane, transformed (rows, then columns) into V (64
//! positions × channels × tiles); per position a GEMM `M_ξ = U_ξ · V_ξ` (U packed A,
//! 12-row panels of output channels, from [`WinogradF4x4K5::pack_weights`]); the output
//! transform (columns, then rows), bias, activation and the optional 2×2 max pool, then
//! each lane's outputs stored. Work items: samples × blocks of output channels (each block
//! transforms the input again).

use std::ptr::null;

use crate::graph::{Activation, Conv};
use crate::kernels::elementwise::{dispatch, ActV, Simd};
use crate::kernels::gemm::{self, PrefetchTo, SharedOut, Store, MR_PACK};
use crate::kernels::{parallel, whole_lines};
use crate::simd::Isa;

/// Positions of the transformed tile (8 × 8).
const POSITIONS: usize = 64;

/// Input channels at most (V of a group, 64 × cin × nr floats, stays in L2).
pub const MAX_CIN: usize = 64;

/// The weight transform `G` (8 × 5) for the points 0, 1, −1, 2, −2, 1/2, −1/2, ∞, scaled
/// to pair with [`bt8`]'s `Bᵀ` (derived by solving `Aᵀ diag(G e_j) Bᵀ = S_j` for each tap
/// `j`, `S_j` the shift by `j`; exact, see the unit test).
const G45: [[f64; 5]; 8] = [
    [1.0, 0.0, 0.0, 0.0, 0.0],
    [-2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0],
    [-2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0],
    [1.0 / 90.0, 1.0 / 45.0, 2.0 / 45.0, 4.0 / 45.0, 8.0 / 45.0],
    [1.0 / 90.0, -1.0 / 45.0, 2.0 / 45.0, -4.0 / 45.0, 8.0 / 45.0],
    [32.0 / 45.0, 16.0 / 45.0, 8.0 / 45.0, 4.0 / 45.0, 2.0 / 45.0],
    [
        32.0 / 45.0,
        -16.0 / 45.0,
        8.0 / 45.0,
        -4.0 / 45.0,
        2.0 / 45.0,
    ],
    [0.0, 0.0, 0.0, 0.0, 1.0],
];

/// The 8-point input transform `Bᵀ d` (the factored form of the rows
/// `[1, 0, −21/4, 0, 21/4, 0, −1, 0]`, `[0, 1, 1, −17/4, −17/4, 1, 1, 0]`, …).
#[inline(always)]
fn bt8<S: Simd>(s: S, d: [S::V; 8]) -> [S::V; 8] {
    let o0 = s.fmadd(s.sub(d[4], d[2]), s.splat(5.25), s.sub(d[0], d[6]));
    let o7 = s.fmadd(s.sub(d[3], d[5]), s.splat(5.25), s.sub(d[7], d[1]));
    let t1 = s.fmadd(d[4], s.splat(-4.25), s.add(d[2], d[6]));
    let t2 = s.fmadd(d[3], s.splat(-4.25), s.add(d[1], d[5]));
    let t3 = s.fmadd(d[2], s.splat(0.25), s.fmadd(d[4], s.splat(-1.25), d[6]));
    let t4 = s.fmadd(
        d[1],
        s.splat(0.5),
        s.fmadd(d[3], s.splat(-2.5), s.mul(d[5], s.splat(2.0))),
    );
    let t5 = s.fmadd(s.fmadd(d[4], s.splat(-1.25), d[2]), s.splat(4.0), d[6]);
    let t6 = s.fmadd(
        d[1],
        s.splat(2.0),
        s.fmadd(d[3], s.splat(-2.5), s.mul(d[5], s.splat(0.5))),
    );
    [
        o0,
        s.add(t1, t2),
        s.sub(t1, t2),
        s.add(t3, t4),
        s.sub(t3, t4),
        s.add(t5, t6),
        s.sub(t5, t6),
        o7,
    ]
}

/// The output transform `Aᵀ m` (4 × 8: rows `p^i` at the points 0, 1, −1, 2, −2, 1/2,
/// −1/2, and the point at infinity in the last row).
#[inline(always)]
fn at8<S: Simd>(s: S, m: [S::V; 8]) -> [S::V; 4] {
    let (a1, b1) = (s.add(m[1], m[2]), s.sub(m[1], m[2]));
    let (a2, b2) = (s.add(m[3], m[4]), s.sub(m[3], m[4]));
    let (a3, b3) = (s.add(m[5], m[6]), s.sub(m[5], m[6]));
    [
        s.add(s.add(m[0], a1), s.add(a2, a3)),
        s.fmadd(b3, s.splat(0.5), s.fmadd(b2, s.splat(2.0), b1)),
        s.fmadd(a3, s.splat(0.25), s.fmadd(a2, s.splat(4.0), a1)),
        s.add(
            s.fmadd(b3, s.splat(0.125), s.fmadd(b2, s.splat(8.0), b1)),
            m[7],
        ),
    ]
}

/// A planned F(4x4,5x5) layer (see the module docs).
#[derive(Clone, Debug)]
pub struct WinogradF4x4K5 {
    isa: Isa,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    /// The convolution's output (before the pool).
    oh: usize,
    ow: usize,
    pt: usize,
    pl: usize,
    act: Activation,
    pool: bool,
    ntx: usize,
    nty: usize,
    /// The zero-bordered copy of one input channel: `ph` rows of `pw` floats.
    ph: usize,
    pw: usize,
    /// Tiles per group: the GEMM tier's panel width.
    nr: usize,
    /// Blocks of output channels (whole 12-row panels) per sample.
    mblocks: usize,
}

impl WinogradF4x4K5 {
    /// `None` unless `conv` is a 5×5 stride-1 dilation-1 one-group convolution with at
    /// most 64 (`MAX_CIN`) input channels, `ins` its input and `outs` its output, or with
    /// `pool` the output of a 2×2 stride-2 max pool (no padding) after it.
    pub fn new(
        isa: Isa,
        conv: &Conv,
        ins: [usize; 3],
        outs: [usize; 3],
        pool: bool,
        threads: usize,
    ) -> Option<Self> {
        let [pt, pl, pb, pr] = conv.pads;
        let (cin, cout) = (conv.in_channels, conv.out_channels);
        if conv.kernel != [5, 5]
            || conv.stride != [1, 1]
            || conv.dilation != [1, 1]
            || conv.groups != 1
            || cin == 0
            || cin > MAX_CIN
            || cout == 0
            || ins[0] != cin
            || outs[0] != cout
            || ins[1] + pt + pb < 5
            || ins[2] + pl + pr < 5
        {
            return None;
        }
        let (oh, ow) = (ins[1] + pt + pb - 4, ins[2] + pl + pr - 4);
        let want = if pool {
            [cout, oh / 2, ow / 2]
        } else {
            [cout, oh, ow]
        };
        if outs != want || want[1] == 0 || want[2] == 0 {
            return None;
        }
        let (ntx, nty) = (ow.div_ceil(4), oh.div_ceil(4));
        // The gathers index the bordered plane with i32 offsets.
        let plane = (4 * nty + 4).checked_mul(4 * ntx + 4)?;
        if plane > i32::MAX as usize {
            return None;
        }
        let u = gemm::ukr(isa);
        let panels = cout.div_ceil(MR_PACK);
        Some(WinogradF4x4K5 {
            isa: u.isa,
            cin,
            cout,
            h: ins[1],
            w: ins[2],
            oh,
            ow,
            pt,
            pl,
            act: conv.activation,
            pool,
            ntx,
            nty,
            ph: 4 * nty + 4,
            pw: 4 * ntx + 4,
            nr: u.nr,
            mblocks: threads.clamp(1, panels),
        })
    }

    /// The same layer with the 2×2 stride-2 max pool `p` after it folded into the store
    /// (`pooled` its output's shape); None for any other pool, or when pooled already.
    pub fn with_max_pool(&self, p: &crate::graph::Pool, pooled: [usize; 3]) -> Option<Self> {
        let want = [self.cout, self.oh / 2, self.ow / 2];
        (!self.pool && p.is_plain_max_2x2() && pooled == want).then(|| WinogradF4x4K5 {
            pool: true,
            ..self.clone()
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// FLOPs counted as the direct convolution's.
    pub fn flops(&self) -> u64 {
        2 * 25 * (self.cin * self.cout * self.oh * self.ow) as u64
    }

    /// Floats of the transformed weights: 64 positions of `cout × cin`.
    pub fn weights_len(&self) -> usize {
        POSITIONS * self.cin * self.cout
    }

    /// `U_ξ = (G g Gᵀ)_ξ` (computed in f64) of the plain weights `g` (`cout × cin × 5 ×
    /// 5`), each position's `cout × cin` matrix packed as GEMM A (12-row panels).
    pub fn pack_weights(&self, g: &[f32], out: &mut [f32]) {
        let (cin, cout) = (self.cin, self.cout);
        assert_eq!(g.len(), cout * cin * 25, "winograd f4x4 k5: weights");
        assert_eq!(
            out.len(),
            self.weights_len(),
            "winograd f4x4 k5: packed weights"
        );
        let per = cin * cout;
        let mut u = vec![0.0f32; POSITIONS * per];
        for o in 0..cout {
            for c in 0..cin {
                let k = &g[(o * cin + c) * 25..][..25];
                // t = G g (8 × 5), then U = t Gᵀ (8 × 8).
                let mut t = [[0.0f64; 5]; 8];
                for (a, ta) in t.iter_mut().enumerate() {
                    for (j, tj) in ta.iter_mut().enumerate() {
                        *tj = (0..5).map(|i| G45[a][i] * f64::from(k[i * 5 + j])).sum();
                    }
                }
                for (a, ta) in t.iter().enumerate() {
                    for b in 0..8 {
                        let v: f64 = (0..5).map(|j| ta[j] * G45[b][j]).sum();
                        u[(a * 8 + b) * per + o * cin + c] = v as f32;
                    }
                }
            }
        }
        for (src, dst) in u.chunks(per).zip(out.chunks_mut(per)) {
            gemm::pack_a(cout, cin, src, cin, dst);
        }
    }

    fn tiles(&self) -> usize {
        self.ntx * self.nty
    }

    /// Output channels of block `mb`: whole 12-row panels.
    fn block_rows(&self, mb: usize) -> (usize, usize) {
        super::panel_split(self.cout, MR_PACK, self.mblocks, mb)
    }

    /// Floats of scratch per worker: the bordered plane, V and M of a group.
    pub fn scratch_len(&self) -> usize {
        whole_lines(self.ph * self.pw)
            + whole_lines(POSITIONS * self.cin * self.nr)
            + whole_lines(
                POSITIONS * super::max_panel_split(self.cout, MR_PACK, self.mblocks) * self.nr,
            )
    }

    /// Independent work items for `n` samples.
    pub fn parts(&self, n: usize) -> usize {
        n * self.mblocks
    }

    /// `out = pool?(act(conv(x) + bias))` for `n` samples on `slots` workers: `wt` from
    /// [`Self::pack_weights`]; `x`: `n × cin × h × w`; `out`: `n` samples of the output
    /// shape given to `new`; `scratch`: `slots × scratch_len()` floats (one
    /// `scratch_len()` when the work stays on this thread).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        slots: usize,
        n: usize,
        wt: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let in_len = self.cin * self.h * self.w;
        assert_eq!(wt.len(), self.weights_len(), "winograd f4x4 k5: weights");
        assert!(
            bias.is_none_or(|b| b.len() == self.cout),
            "winograd f4x4 k5: bias"
        );
        assert!(x.len() >= n * in_len, "winograd f4x4 k5: input");
        assert!(out.len() >= n * self.out_len(), "winograd f4x4 k5: output");
        let per = self.scratch_len();
        assert!(scratch.len() >= per, "winograd f4x4 k5: scratch");
        let items = self.parts(n);
        let shared = SharedOut::new(out);
        let body = |scr: &mut [f32], item: usize| {
            let (sample, mb) = (item / self.mblocks, item % self.mblocks);
            // SAFETY: lengths checked above; item (sample, mb) writes only block mb's
            // output channels of that sample, which no other item writes.
            unsafe {
                self.block(
                    mb,
                    wt.as_ptr(),
                    bias.map_or(null(), |b| b.as_ptr()),
                    x.as_ptr().add(sample * in_len),
                    shared.ptr().add(sample * self.out_len()),
                    scr,
                )
            }
        };
        if slots <= 1 || items == 1 {
            let scr = &mut scratch[..per];
            (0..items).for_each(|i| body(scr, i));
        } else {
            parallel::for_tiles(slots, items, scratch, per, body);
        }
    }

    /// Floats of one sample's output.
    fn out_len(&self) -> usize {
        if self.pool {
            self.cout * (self.oh / 2) * (self.ow / 2)
        } else {
            self.cout * self.oh * self.ow
        }
    }

    /// One sample's output channels of block `mb`, group by group of tiles.
    ///
    /// # Safety
    /// `x` holds the sample's input, `out` room for its output (no other writer of block
    /// `mb`'s channels); `wt` the packed weights; `bias` null or `cout` floats; `scr` at
    /// least `scratch_len()` floats.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        mb: usize,
        wt: *const f32,
        bias: *const f32,
        x: *const f32,
        out: *mut f32,
        scr: &mut [f32],
    ) {
        let (plane, rest) = scr.split_at_mut(whole_lines(self.ph * self.pw));
        let (v, m) = rest.split_at_mut(whole_lines(POSITIONS * self.cin * self.nr));
        let rows = self.block_rows(mb);
        let tiles = self.tiles();
        for t0 in (0..tiles).step_by(self.nr) {
            let t1 = (t0 + self.nr).min(tiles);
            dispatch!(self.isa, |s| {
                // SAFETY: the caller's input; `plane` and `v` are this worker's.
                unsafe { self.input_group(s, x, t0, t1, plane, v.as_mut_ptr()) }
            });
            // SAFETY: `v` holds V of the group, `m` room for M of block `mb`'s rows.
            unsafe { self.gemms(t1 - t0, rows, wt, v.as_ptr(), m.as_mut_ptr()) };
            dispatch!(self.isa, |s| {
                // SAFETY: the caller's output and bias; `m` holds M.
                unsafe { self.output_group(s, m.as_ptr(), t0, t1, rows, bias, out) }
            });
        }
    }

    /// V of tiles `t0..t1`: position ξ of input channel `c`, tile `t0 + j` at
    /// `v[(ξ·cin + c)·nr + j]`.
    ///
    /// # Safety
    /// `x` holds one sample's input; `v` room for `64 × cin × nr` floats.
    #[inline(always)]
    unsafe fn input_group<S: Simd>(
        &self,
        s: S,
        x: *const f32,
        t0: usize,
        t1: usize,
        plane: &mut [f32],
        v: *mut f32,
    ) {
        let (cin, nr, pw) = (self.cin, self.nr, self.pw);
        let plane = &mut plane[..self.ph * pw];
        // Zero borders stay zero: only the interior is written per channel.
        plane.fill(0.0);
        for c in 0..cin {
            for y in 0..self.h {
                let at = (y + self.pt) * pw + self.pl;
                // SAFETY: row y of channel c of the sample's input (`h × w` per channel).
                let row =
                    unsafe { std::slice::from_raw_parts(x.add((c * self.h + y) * self.w), self.w) };
                plane[at..at + self.w].copy_from_slice(row);
            }
            for j0 in (0..t1 - t0).step_by(S::LANES) {
                // Lane l: tile t0 + j0 + l (the group's first tile past its end).
                let mut idx = [0i32; 16];
                for (l, ix) in idx.iter_mut().enumerate().take(S::LANES) {
                    let t = if t0 + j0 + l < t1 { t0 + j0 + l } else { t0 };
                    let (ty, tx) = (t / self.ntx, t % self.ntx);
                    *ix = (4 * ty * pw + 4 * tx) as i32;
                }
                // Plain loops, not `array::from_fn` / `map` closures: those are not
                // inlined into the tier's target-feature function.
                let mut rows = [[s.zero(); 8]; 8];
                for (r, row) in rows.iter_mut().enumerate() {
                    let mut d = [s.zero(); 8];
                    for (k, dk) in d.iter_mut().enumerate() {
                        // SAFETY: window row r, column k of every lane's tile lies in the
                        // bordered plane (its last tile's window ends at row 4·nty + 3 and
                        // column 4·ntx + 3 of `ph = 4·nty + 4` rows of `pw = 4·ntx + 4`).
                        *dk = unsafe { s.gather(plane.as_ptr().add(r * pw + k), &idx) };
                    }
                    *row = bt8(s, d);
                }
                for l in 0..8 {
                    let mut cv = [s.zero(); 8];
                    for (r, c) in cv.iter_mut().enumerate() {
                        *c = rows[r][l];
                    }
                    let col = bt8(s, cv);
                    for (k, &val) in col.iter().enumerate() {
                        // SAFETY: position k·8 + l < 64, channel c < cin, columns j0 ..
                        // j0 + LANES ≤ nr (nr a multiple of LANES).
                        unsafe { s.store(v.add(((k * 8 + l) * cin + c) * nr + j0), val) };
                    }
                }
            }
        }
    }

    /// `M_ξ = U_ξ · V_ξ` for the 64 positions, output channels `lo..hi` (M row `o − lo`
    /// of position ξ at `m + (ξ·(hi − lo) + o − lo)·nr`), `nt` tile columns.
    ///
    /// # Safety
    /// `v` holds V of the group; `m` room for `64 × (hi − lo) × nr` floats; `wt` the
    /// packed weights; `lo..hi` whole 12-row panels.
    unsafe fn gemms(
        &self,
        nt: usize,
        (lo, hi): (usize, usize),
        wt: *const f32,
        v: *const f32,
        m: *mut f32,
    ) {
        let u = gemm::ukr(self.isa);
        let (cin, cout, nr, rows) = (self.cin, self.cout, self.nr, hi - lo);
        let st = Store {
            load_c: false,
            finish: true,
            bias_row: null(),
            bias_col: null(),
            residual: null(),
            act: Activation::Identity,
            pf: null(),
            pf_stride: 0,
            pf_to: PrefetchTo::default(),
        };
        for xi in 0..POSITIONS {
            let a = wt.wrapping_add(xi * cout * cin);
            let b = v.wrapping_add(xi * cin * nr);
            let c = m.wrapping_add(xi * rows * nr);
            for p0 in (lo..hi).step_by(MR_PACK) {
                let h = MR_PACK.min(cout - p0);
                // The panel's rows in runs the tier's kernels take (its `mr`, or the
                // half-width kernels' `narrow_mr`).
                let narrow = nt < u.nr && nt <= u.narrow_max;
                let mr = if narrow { u.narrow_mr } else { u.mr };
                for i0 in (0..h).step_by(mr) {
                    let r = mr.min(h - i0);
                    let kernel = if nt == u.nr {
                        u.full[r]
                    } else if narrow {
                        u.narrow[r]
                    } else {
                        u.tail[r]
                    };
                    // SAFETY: rows i0 .. i0 + r of panel p0 of U_ξ (packed: row i of step
                    // k at `p0·cin + k·h + i`), V_ξ's cin rows of nr floats (nt ≤ nr
                    // valid), M's rows p0 − lo + i0 ...
                    unsafe {
                        kernel(
                            cin,
                            a.add(p0 * cin + i0),
                            h,
                            b,
                            nr,
                            c.add((p0 - lo + i0) * nr),
                            nr,
                            nt,
                            &st,
                        )
                    };
                }
            }
        }
    }

    /// Transforms M back (columns, then rows), adds the bias, applies the activation and
    /// the pool, and stores output channels `lo..hi` of tiles `t0..t1`.
    ///
    /// # Safety
    /// `m` holds M of the group for those channels; `out` one sample's output; `bias`
    /// null or `cout` floats.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn output_group<S: Simd>(
        &self,
        s: S,
        m: *const f32,
        t0: usize,
        t1: usize,
        (lo, hi): (usize, usize),
        bias: *const f32,
        out: *mut f32,
    ) {
        let (nr, rows) = (self.nr, hi - lo);
        let act = ActV::new(s, self.act);
        let (poh, pow) = (self.oh / 2, self.ow / 2);
        for o in lo..hi {
            // SAFETY: o < cout floats of bias.
            let b = if bias.is_null() {
                s.zero()
            } else {
                s.splat(unsafe { *bias.add(o) })
            };
            for j0 in (0..t1 - t0).step_by(S::LANES) {
                let at = |xi: usize| m.wrapping_add((xi * rows + o - lo) * nr + j0);
                let mut cols = [[s.zero(); 8]; 4];
                for l in 0..8 {
                    let mut mv = [s.zero(); 8];
                    for (k, mk) in mv.iter_mut().enumerate() {
                        // SAFETY: position k·8 + l of row o − lo, columns j0 .. j0 + LANES.
                        *mk = unsafe { s.load(at(k * 8 + l)) };
                    }
                    let col = at8(s, mv);
                    for (i, &val) in col.iter().enumerate() {
                        cols[i][l] = val;
                    }
                }
                let mut y = [[s.zero(); 4]; 4];
                for (yi, ci) in y.iter_mut().zip(&cols) {
                    let row = at8(s, *ci);
                    for (yij, &val) in yi.iter_mut().zip(&row) {
                        *yij = act.apply(s, s.add(val, b));
                    }
                }
                let lanes = (t1 - t0 - j0).min(S::LANES);
                if self.pool {
                    for pa in 0..2 {
                        for pb in 0..2 {
                            let q = s.max(
                                s.max(y[2 * pa][2 * pb], y[2 * pa][2 * pb + 1]),
                                s.max(y[2 * pa + 1][2 * pb], y[2 * pa + 1][2 * pb + 1]),
                            );
                            let q = s.to_array(q);
                            for (l, &val) in q.iter().enumerate().take(lanes) {
                                let t = t0 + j0 + l;
                                let (py, px) = (2 * (t / self.ntx) + pa, 2 * (t % self.ntx) + pb);
                                if py < poh && px < pow {
                                    // SAFETY: channel o, pooled pixel (py, px) of the sample.
                                    unsafe { *out.add((o * poh + py) * pow + px) = val };
                                }
                            }
                        }
                    }
                } else {
                    for (i, yi) in y.iter().enumerate() {
                        for (j, &yij) in yi.iter().enumerate() {
                            let vals = s.to_array(yij);
                            for (l, &val) in vals.iter().enumerate().take(lanes) {
                                let t = t0 + j0 + l;
                                let (oy, ox) = (4 * (t / self.ntx) + i, 4 * (t % self.ntx) + j);
                                if oy < self.oh && ox < self.ow {
                                    // SAFETY: channel o, pixel (oy, ox) of the sample.
                                    unsafe { *out.add((o * self.oh + oy) * self.ow + ox) = val };
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Largest `|F(4x4,5x5) − direct| / max |direct|` of `conv` (no activation) over the
/// samples of `input_sample`, on `isa` (the converter's check against its error budget,
/// as `super::measure_relative_error`); infinity where the kernel does not apply.
#[allow(clippy::too_many_arguments)]
pub fn measure_relative_error(
    isa: Isa,
    conv: &Conv,
    in_shape: [usize; 3],
    out_shape: [usize; 3],
    plain_weights: &[f32],
    bias: Option<&[f32]>,
    input_sample: &[f32],
) -> f64 {
    let lin = Conv {
        activation: Activation::Identity,
        ..conv.clone()
    };
    let Some(k) = WinogradF4x4K5::new(isa, &lin, in_shape, out_shape, false, 1) else {
        return f64::INFINITY;
    };
    let mut packed = vec![0f32; k.weights_len()];
    k.pack_weights(plain_weights, &mut packed);
    let mut scratch = vec![0f32; k.scratch_len()];
    super::relative_error_against_reference(
        &lin,
        in_shape,
        out_shape,
        plain_weights,
        bias,
        input_sample,
        |x, got| k.run(1, 1, &packed, bias, x, got, &mut scratch),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Aᵀ (G g ⊙ Bᵀ d)` is the correlation of `d` with `g` (1-D, f64): the matrices pair.
    #[test]
    fn transforms_compute_the_correlation() {
        let bt: [[f64; 8]; 8] = [
            [1.0, 0.0, -5.25, 0.0, 5.25, 0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0],
            [0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0],
            [0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0],
            [0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0],
            [0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0],
            [0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0],
            [0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0],
        ];
        let pts = [0.0f64, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5];
        let d: [f64; 8] = std::array::from_fn(|i| (i as f64 * 0.37).sin() + 0.1);
        let g: [f64; 5] = std::array::from_fn(|i| (i as f64 * 1.3).cos() - 0.2);
        let bd: [f64; 8] = std::array::from_fn(|r| (0..8).map(|k| bt[r][k] * d[k]).sum());
        let gg: [f64; 8] = std::array::from_fn(|r| (0..5).map(|k| G45[r][k] * g[k]).sum());
        for i in 0..4 {
            let mut y = 0.0;
            for (j, p) in pts.iter().enumerate() {
                y += p.powi(i as i32) * gg[j] * bd[j];
            }
            if i == 3 {
                y += gg[7] * bd[7];
            }
            let want: f64 = (0..5).map(|k| d[i + k] * g[k]).sum();
            assert!((y - want).abs() < 1e-12, "output {i}: {y} against {want}");
        }
        // The factored transforms compute the same as the matrices (portable tier).
        let s = crate::kernels::elementwise::Portable;
        let dv: [[f32; 4]; 8] = std::array::from_fn(|k| [d[k] as f32; 4]);
        let got = bt8(s, dv);
        for r in 0..8 {
            assert!((f64::from(got[r][0]) - bd[r]).abs() < 1e-5, "Bᵀ row {r}");
        }
        let mv: [[f32; 4]; 8] = std::array::from_fn(|k| [bd[k] as f32; 4]);
        let got = at8(s, mv);
        for (i, gi) in got.iter().enumerate() {
            let mut want: f64 = (0..7).map(|j| pts[j].powi(i as i32) * bd[j]).sum();
            if i == 3 {
                want += bd[7];
            }
            assert!((f64::from(gi[0]) - want).abs() < 1e-4, "Aᵀ row {i}");
        }
    }
}
