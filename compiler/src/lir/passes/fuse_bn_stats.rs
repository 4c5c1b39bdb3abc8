//! `fuse_bn_stats`: training batchnorm's statistics over a convolution's output are taken by the
//! convolution itself, block by block while each block of its output is in cache, instead of by
//! a `bn_stats` kernel that reads the whole output back from memory (twice: the mean, then the
//! spread around it). The blocks' means and spreads are combined in block order, so a run gives
//! the same bits on any number of threads.

use super::Uses;
use crate::lir::{Kernel, Program, Stats, View};

/// Moves every batchnorm statistics kernel it can into the convolution before it; returns how
/// many.
pub fn run(p: &mut Program) -> usize {
    let mut count = 0;
    while let Some((conv, stats)) = find(p) {
        let Kernel::BnStats { mean, var, .. } = p.kernels.remove(stats) else {
            unreachable!("find returns a bn_stats")
        };
        if let Kernel::ConvGemm { stats, .. } = &mut p.kernels[conv] {
            *stats = Some(Box::new(Stats { mean, var }));
        }
        count += 1;
    }
    count
}

/// The first (convolution, statistics of its output) pair: the statistics read exactly the
/// convolution's output, which nothing else writes, and nothing between the two touches the
/// statistics' buffers (they are written earlier now).
fn find(p: &Program) -> Option<(usize, usize)> {
    let uses = Uses::of(p);
    for (j, k) in p.kernels.iter().enumerate() {
        let Kernel::BnStats { x, mean, var } = k else { continue };
        let &[i] = &uses.writers[x.buf.0 as usize][..] else { continue };
        let Kernel::ConvGemm { c, stats: None, epilogue, .. } = &p.kernels[i] else { continue };
        // Routed columns leave `c` holding the product, not the epilogue's result.
        if epilogue.as_ref().is_some_and(|e| !e.routes.is_empty()) {
            continue;
        }
        let alone =
            |v: &View| uses.writers[v.buf.0 as usize] == [j] && !uses.touched_between(v.buf, i, j) && v.buf != c.buf;
        if i < j && c == x && mean.buf != var.buf && alone(mean) && alone(var) {
            return Some((i, j));
        }
    }
    None
}
