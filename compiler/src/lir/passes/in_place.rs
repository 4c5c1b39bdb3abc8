//! `in_place`: a map (an activation, a residual sum, batchnorm's affine) writes over an input of
//! its shape that no later kernel reads, instead of into a buffer of its own. Every element is
//! read before it is written, at the same place, so the result is the same; the program then
//! holds one buffer less at that point, and the memory plan one buffer less overall. The
//! rewrites are kept only if the planned arena is no larger with them.
//!
//! In training the backward pass reads most forward values (a ReLU's gradient reads its
//! output, a tanh's too), so fewer maps qualify there than in inference.

use super::{temporary, whole, Uses};
use crate::lir::{BufId, DType, Kernel, Program};

/// Rewrites every map it can, unless the memory plan's arena then comes out larger (a merged
/// buffer lives longer, and best-fit placement is a heuristic); returns how many write in place.
pub fn run(p: &mut Program) -> usize {
    let mut q = p.clone();
    let mut count = 0;
    // Each rewrite changes what later candidates see (a buffer's life grows), so one at a time.
    while let Some((from, to)) = find(&q) {
        rename(&mut q, from, to);
        count += 1;
    }
    if count == 0 || crate::lir::plan::plan(&q).size > crate::lir::plan::plan(p).size {
        return 0;
    }
    *p = q;
    count
}

/// The first map whose output buffer can be one of its inputs': (output buffer, input buffer).
fn find(p: &Program) -> Option<(BufId, BufId)> {
    // (Results are kept buffers, so `temporary` rules them out.)
    let uses = Uses::of(p);
    for (i, k) in p.kernels.iter().enumerate() {
        let Kernel::Map { inputs, channels, out, .. } = k else { continue };
        let o = out.buf;
        if !whole(p, out) || !temporary(p, o) || uses.writers[o.0 as usize] != [i] {
            continue;
        }
        for x in inputs {
            let b = x.buf;
            let bi = b.0 as usize;
            let fits = b != o
                && whole(p, x)
                && x.shape == out.shape
                && temporary(p, b)
                && p.buffers[bi].dtype == DType::F32
                // Its last use is this map: nothing after it reads or writes it.
                && uses.readers[bi].iter().all(|&r| r <= i)
                && uses.writers[bi].iter().all(|&w| w < i)
                // The map reads it only as this one view (element k where it writes element k).
                && inputs.iter().chain(channels).all(|v| v.buf != b || v == x);
            if fits {
                return Some((o, b));
            }
        }
    }
    None
}

/// Every view of buffer `from` (whole, as `find` checked) names buffer `to` instead. (Only step
/// kernels name a temporary buffer: results and prepare's outputs are kept.)
fn rename(p: &mut Program, from: BufId, to: BufId) {
    for v in p.kernels.iter_mut().flat_map(|k| k.views_mut()) {
        if v.buf == from {
            v.buf = to;
        }
    }
}
