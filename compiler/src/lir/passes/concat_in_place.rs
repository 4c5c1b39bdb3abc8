//! `concat_in_place`: a product (a GEMM or an implicit-GEMM convolution, with its epilogue)
//! whose output only a concatenation's copy reads writes straight into its channels of the
//! concatenated buffer — a column slice, rows a whole concatenated row apart — and the copy
//! goes. An inception module's concat then copies nothing: each branch's last convolution writes
//! its channels in place.
//!
//! A copy of a column range of a product's output, which nothing else reads (a range of an
//! inception module's merged 1×1 product: the branch that goes to the concatenation, and the
//! one copied out for the 5×5 convolution) becomes a route of the product's epilogue: the
//! epilogue writes that range straight to the copy's destination, and the copy goes.
//!
//! Training programs keep their copies where the backward pass reads the branch's output (the
//! product's output then has more readers than the copy).

use super::{fuse_all, same_matrix, temporary, whole, Uses};
use crate::lir::{Expr, Kernel, Program, View};

/// Writes every product it can into its concatenation; returns how many copies went.
pub fn run(p: &mut Program) -> usize {
    fuse_all(p, find)
}

/// The first (product, copy, product writing the copy's destination).
fn find(p: &Program) -> Option<(usize, usize, Kernel)> {
    let uses = Uses::of(p);
    for (j, k) in p.kernels.iter().enumerate() {
        let Kernel::Copy { src, dst } = k else { continue };
        let t = src.buf.0 as usize;
        if p.results.iter().any(|(_, v)| v.buf == src.buf) {
            continue;
        }
        let [i] = uses.writers[t][..] else { continue };
        if i >= j {
            continue;
        }
        // Nothing between them reads the destination's buffer or writes over its columns.
        let d = dst.buf.0 as usize;
        let between = |list: &[usize]| list.iter().filter(|&&k| k > i && k < j).copied().collect::<Vec<_>>();
        if !between(&uses.readers[d]).is_empty()
            || between(&uses.writers[d]).iter().any(|&k| p.kernels[k].access().1.iter().any(|w| !disjoint(w, dst)))
        {
            continue;
        }
        let alone = uses.readers[t].iter().all(|&r| r == i || r == j);
        if whole(p, src) && temporary(p, src.buf) && alone {
            if let Some(kernel) = retarget(&p.kernels[i], src, dst) {
                return Some((i, j, kernel));
            }
        }
        if uses.readers[t].iter().filter(|&&r| r != i && r != j).all(|&r| reads_apart(&p.kernels[r], src)) {
            if let Some(kernel) = route(&p.kernels[i], src, dst) {
                return Some((i, j, kernel));
            }
        }
    }
    None
}

/// Whether kernel `k` reads none of the columns of `cols` (a column range of a matrix): each of
/// its views of that buffer covers other columns, or, for a convolution reading it as its input,
/// its channel block does.
fn reads_apart(k: &Kernel, cols: &View) -> bool {
    let (reads, _) = k.access();
    let range = |v: &View| (v.offset % cols.pitch, v.offset % cols.pitch + v.cols());
    let (lo, hi) = range(cols);
    let apart = |(a, b): (usize, usize)| b <= lo || hi <= a;
    reads.iter().filter(|v| v.buf == cols.buf).all(|v| match k {
        Kernel::ConvGemm { x, geom, .. } if x == *v => {
            x.pitch == cols.pitch && x.offset < x.pitch && apart((x.offset + geom.c0, x.offset + geom.c0 + geom.cg))
        }
        _ => v.pitch == cols.pitch && v.offset / v.pitch == cols.offset / cols.pitch && apart(range(v)),
    })
}

/// Product `k` with an epilogue writing `src`, columns of its output, to `dst` instead (a route);
/// `None` where `src` is not whole rows' columns of the output, the range is routed already, or
/// the epilogue draws dropout's mask (which counts elements of the whole output).
fn route(k: &Kernel, src: &View, dst: &View) -> Option<Kernel> {
    let mut k = k.clone();
    let (reads, _) = k.access();
    if reads.iter().any(|v| v.buf == dst.buf) {
        return None;
    }
    let (c, epilogue) = match &mut k {
        Kernel::Gemm { c, epilogue: Some(e), .. } | Kernel::ConvGemm { c, epilogue: Some(e), stats: None, .. } => {
            (c, e)
        }
        _ => return None,
    };
    let start = src.offset.checked_sub(c.offset)?;
    let fits = c.buf == src.buf
        && src.pitch == c.pitch
        && src.rows() == c.rows()
        && dst.rows() == c.rows()
        && dst.cols() == src.cols()
        && start + src.cols() <= c.cols()
        && !epilogue.expr.iter().any(|e| matches!(e, Expr::Keep { .. }))
        && epilogue.routes.iter().all(|(s, v)| s + v.cols() <= start || start + src.cols() <= *s);
    if !fits {
        return None;
    }
    epilogue.routes.push((start, dst.matrix()));
    Some(k)
}

/// Whether two views of one buffer, as matrices of the same pitch and rows, cover disjoint
/// columns (or are of different buffers).
fn disjoint(a: &View, b: &View) -> bool {
    if a.buf != b.buf {
        return true;
    }
    if a.pitch != b.pitch || a.rows() != b.rows() || a.offset / a.pitch.max(1) != b.offset / b.pitch.max(1) {
        return false;
    }
    let (ca, cb) = (a.offset % a.pitch.max(1), b.offset % b.pitch.max(1));
    ca + a.cols() <= cb || cb + b.cols() <= ca
}

/// The product `k` writing `dst` where it wrote `src`: every view of `src`'s buffer in it must be
/// `src` itself (its output, an epilogue input that is its output). Other kernels: `None`.
fn retarget(k: &Kernel, src: &View, dst: &View) -> Option<Kernel> {
    let mut k = k.clone();
    let to = View { buf: dst.buf, offset: dst.offset, shape: vec![dst.rows(), dst.cols()], pitch: dst.pitch };
    let swap = |v: &mut View| -> bool {
        if v.buf != src.buf {
            return true;
        }
        if !same_matrix(v, src) {
            return false;
        }
        *v = to.clone();
        true
    };
    // Batch statistics stay where they are: the values they summarize do not change.
    let stats_read = match &k {
        Kernel::ConvGemm { stats: Some(s), .. } => [s.mean.buf, s.var.buf].contains(&src.buf),
        _ => false,
    };
    let ok = match &mut k {
        Kernel::Gemm { a, b, c, bias, epilogue, .. } | Kernel::ConvGemm { x: a, b, c, bias, epilogue, .. } => {
            !stats_read
                && a.buf != src.buf
                && b.buf != src.buf
                && bias.as_ref().is_none_or(|v| v.buf != src.buf)
                && swap(c)
                && epilogue.as_mut().is_none_or(|e| {
                    e.inputs.iter_mut().all(swap)
                        && e.channels.iter().all(|v| v.buf != src.buf)
                        && e.routes.iter().all(|(_, v)| v.buf != src.buf)
                })
        }
        _ => false,
    };
    ok.then_some(k)
}
