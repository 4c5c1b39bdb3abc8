//! `fuse_pool`: a window pooling whose output only one product reads, as that product's
//! left-hand matrix (an inception module's pool branch: a 3×3 max pool, then a 1×1
//! convolution), becomes part of the product: each block of pooled rows is made where the
//! product reads it, in cache, and the pooled map is never written to memory.

use super::{only_reader, same_matrix, Uses};
use crate::lir::{Kernel, Program};

/// Fuses every pooling it can into its product; returns how many.
pub fn run(p: &mut Program) -> usize {
    super::fuse_all(p, |p| find(p).map(|(i, j, fused)| (j, i, fused)))
}

/// The first (pooling, product, fused product).
fn find(p: &Program) -> Option<(usize, usize, Kernel)> {
    let uses = Uses::of(p);
    for (i, k) in p.kernels.iter().enumerate() {
        let Kernel::Pool { kind, x, y, geom } = k else { continue };
        // Every channel of a contiguous input (pooled rows are whole rows of the product).
        let whole_rows = geom.c0 == 0 && geom.cg == geom.channels && x.pitch == x.cols() && x.cols() == geom.channels;
        if !whole_rows || y.pitch != y.cols() {
            continue;
        }
        let Some(j) = only_reader(p, &uses, i, y) else { continue };
        let Kernel::Gemm { a, b, c, ta: false, tb: false, accumulate: false, bias, epilogue } = &p.kernels[j] else {
            continue;
        };
        // The input unchanged until the product runs, and not among what the product writes.
        let writes_x = p.kernels[j].access().1.iter().any(|w| w.buf == x.buf);
        if !same_matrix(a, &y.matrix()) || uses.written_from(x.buf, i + 1, j) || writes_x {
            continue;
        }
        let fused = Kernel::PoolGemm {
            kind: *kind,
            x: x.clone(),
            geom: geom.clone(),
            b: b.clone(),
            c: c.clone(),
            bias: bias.clone(),
            epilogue: epilogue.clone(),
        };
        return Some((i, j, fused));
    }
    None
}
