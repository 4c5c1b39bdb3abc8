//! `fuse_epilogue`: a map that is the only reader of a product's output becomes the product's
//! epilogue, applied block by block while the output is in cache, written straight to the map's
//! output (bias, batchnorm's affine map, activation, residual add: one pass, no buffer between).

use super::{same_matrix, temporary, Uses};
use crate::lir::{Epilogue, Expr, Kernel, Program};

/// Fuses every product and map it can; returns how many.
pub fn run(p: &mut Program) -> usize {
    super::fuse_all(p, find)
}

/// The first (product, map, product with the map as its epilogue).
fn find(p: &Program) -> Option<(usize, usize, Kernel)> {
    let uses = Uses::of(p);
    for (i, k) in p.kernels.iter().enumerate() {
        let Kernel::Gemm { a, b, c, ta, tb, accumulate: false, bias, epilogue: None } = k else { continue };
        let t = c.buf;
        let (writers, readers) = (&uses.writers[t.0 as usize], &uses.readers[t.0 as usize]);
        if !temporary(p, t) || writers != &[i] {
            continue;
        }
        let Some(&j) = readers.first() else { continue };
        if readers.iter().any(|&r| r != j) || j <= i {
            continue;
        }
        let Kernel::Map { expr, inputs, channels, out } = &p.kernels[j] else { continue };
        let y = out.matrix();
        let fits = out.rows() == c.rows()
            && out.cols() == c.cols()
            && !expr.iter().any(|e| matches!(e, Expr::Keep { .. }))
            && inputs.iter().all(|v| v.buf != t || same_matrix(v, c))
            && !uses.touched_between(y.buf, i, j)
            && [a, b].into_iter().chain(bias).all(|v| v.buf != y.buf)
            && inputs
                .iter()
                .chain(channels)
                .filter(|v| v.buf != t)
                .all(|v| !uses.written_from(v.buf, i, j) && v.buf != y.buf);
        if !fits {
            continue;
        }
        let inputs = inputs.iter().map(|v| if v.buf == t { y.clone() } else { v.clone() }).collect();
        let epilogue = Epilogue { expr: expr.clone(), inputs, channels: channels.clone(), routes: Vec::new() };
        return Some((
            i,
            j,
            Kernel::Gemm {
                a: a.clone(),
                b: b.clone(),
                c: y,
                ta: *ta,
                tb: *tb,
                accumulate: false,
                bias: bias.clone(),
                epilogue: Some(Box::new(epilogue)),
            },
        ));
    }
    None
}
