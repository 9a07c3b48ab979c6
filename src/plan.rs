//! Workspace planning: one arena for every activation, offsets chosen once from tensor
//! lifetimes (greedy best-fit, largest first), so runs never allocate.

use std::ops::Range;

use crate::graph::Graph;

/// Floats per alignment unit: 64 bytes.
pub const ALIGN_FLOATS: usize = 16;

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN_FLOATS) * ALIGN_FLOATS
}

/// Where each value lives in the arena, in f32 elements, for a batch of `max_batch`.
#[derive(Clone, Debug)]
pub struct ArenaPlan {
    /// Start of each value (usize::MAX for values nothing produces or reads).
    pub offsets: Vec<usize>,
    /// Elements reserved for each value (batch included, aligned up).
    pub sizes: Vec<usize>,
    /// Start of each extra buffer (see [`ArenaPlan::with_extras`]).
    pub extras: Vec<usize>,
    /// Total arena length in f32 elements.
    pub len: usize,
}

/// A buffer besides the graph's values: live from node step `first` to `last`
/// (inclusive), `numel` elements per sample.
#[derive(Clone, Copy, Debug)]
pub struct Extra {
    pub first: usize,
    pub last: usize,
    pub numel: usize,
}

impl ArenaPlan {
    /// Plans offsets for every value read or written by the graph. Values whose lifetimes
    /// overlap never share memory; a node's output never overlaps its inputs.
    pub fn new(graph: &Graph, max_batch: usize) -> Option<ArenaPlan> {
        Self::with_blocks(graph, max_batch, &[])
    }

    /// Like [`ArenaPlan::new`] with each range of `blocks` run as one step at its last
    /// node (`kernels::fused`): the values its other nodes produce get no memory, and
    /// every value the block reads lives until that last node.
    pub fn with_blocks(
        graph: &Graph,
        max_batch: usize,
        blocks: &[Range<usize>],
    ) -> Option<ArenaPlan> {
        Self::with_extras(graph, max_batch, blocks, &[])
    }

    /// Like [`ArenaPlan::with_blocks`], plus `extras` (copies of values in another
    /// layout, `region::Shadow`), placed like values with their own lifetimes.
    pub fn with_extras(
        graph: &Graph,
        max_batch: usize,
        blocks: &[Range<usize>],
        extras: &[Extra],
    ) -> Option<ArenaPlan> {
        let nv = graph.values.len() + extras.len();
        let nvals = graph.values.len();
        let nn = graph.nodes.len();
        // Lifetime as node-step interval [first, last]; graph inputs are written at step 0.
        let mut first = vec![usize::MAX; nv];
        let mut last = vec![0usize; nv];
        for (j, e) in extras.iter().enumerate() {
            first[nvals + j] = e.first;
            last[nvals + j] = e.last.max(e.first);
        }
        for &v in &graph.inputs {
            first[v] = 0;
        }
        for (i, n) in graph.nodes.iter().enumerate() {
            let step = blocks
                .iter()
                .find(|b| b.contains(&i))
                .map_or(i, |b| b.end - 1);
            if step == i {
                first[n.output] = first[n.output].min(i);
                last[n.output] = last[n.output].max(i);
            }
            for &v in &n.inputs {
                last[v] = last[v].max(step);
            }
        }
        for &v in &graph.outputs {
            last[v] = nn;
        }
        let mut sizes = vec![0usize; nv];
        let mut order = Vec::new();
        for v in 0..nv {
            if first[v] == usize::MAX {
                continue;
            }
            let numel: usize = match v.checked_sub(nvals) {
                Some(j) => extras[j].numel,
                None => graph.values[v]
                    .shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))?,
            };
            sizes[v] = align_up(numel.checked_mul(max_batch)?);
            order.push(v);
        }
        order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
        let mut offsets = vec![usize::MAX; nv];
        let mut placed: Vec<(usize, usize, usize)> = Vec::new(); // (offset, size, value)
        let mut len = 0usize;
        for &v in &order {
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&(_, _, u)| first[u] <= last[v] && first[v] <= last[u])
                .map(|&(o, s, _)| (o, o + s))
                .collect();
            busy.sort_unstable();
            // Best fit: the smallest gap between busy blocks that holds the value.
            let mut best: Option<(usize, usize)> = None; // (gap size, offset)
            let mut cursor = 0usize;
            for &(s, e) in &busy {
                if s > cursor && s - cursor >= sizes[v] && best.is_none_or(|(g, _)| s - cursor < g)
                {
                    best = Some((s - cursor, cursor));
                }
                cursor = cursor.max(e);
            }
            let off = best.map_or(cursor, |(_, o)| o);
            offsets[v] = off;
            placed.push((off, sizes[v], v));
            len = len.max(off.checked_add(sizes[v])?);
        }
        let extras = offsets.split_off(nvals);
        sizes.truncate(nvals);
        Some(ArenaPlan {
            extras,
            offsets,
            sizes,
            len,
        })
    }
}
