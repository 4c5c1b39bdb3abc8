//! `concat_in_place`: a product (a GEMM or an implicit-GEMM convolution, with its epilogue)
//! whose output only a concatenation's copy reads writes straight into its channels of the
//! concatenated buffer — a column slice, rows a whole concatenated row apart — and the copy
//! goes. An inception module's concat then copies nothing: each branch's last convolution writes
//! its channels in place.
//!
//! Training programs keep their copies where the backward pass reads the branch's output (the
//! product's output then has more readers than the copy).

use super::{fuse_all, same_matrix, temporary, whole, Uses};
use crate::lir::{Kernel, Program, View};

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
        if !whole(p, src) || !temporary(p, src.buf) || p.results.iter().any(|(_, v)| v.buf == src.buf) {
            continue;
        }
        let [i] = uses.writers[t][..] else { continue };
        if i >= j || uses.readers[t].iter().any(|&r| r != i && r != j) {
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
        if let Some(kernel) = retarget(&p.kernels[i], src, dst) {
            return Some((i, j, kernel));
        }
    }
    None
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
    let ok = match &mut k {
        Kernel::Gemm { a, b, c, bias, epilogue, .. } | Kernel::ConvGemm { x: a, b, c, bias, epilogue, .. } => {
            a.buf != src.buf
                && b.buf != src.buf
                && bias.as_ref().is_none_or(|v| v.buf != src.buf)
                && swap(c)
                && epilogue
                    .as_mut()
                    .is_none_or(|e| e.inputs.iter_mut().all(swap) && e.channels.iter().all(|v| v.buf != src.buf))
        }
        _ => false,
    };
    ok.then_some(k)
}
