//! `merge_siblings`: in an inference program, products that multiply the same matrix by
//! parameters — the 1×1 convolutions that read one tensor, as an inception module's three
//! branches do — become one product over their filters side by side (joined once per change of
//! the parameters, in the prepare phase), writing one buffer whose column ranges are the old
//! outputs. The shared input is read once, and narrow products (16 filters) become one wide one.
//!
//! Every reader of an old output reads its column range instead: a view with the wider pitch,
//! or, for a convolution that runs by Winograd, the whole buffer with the geometry's channel
//! block (`c0`, `cg`) naming the range. An output read by another window kernel (an implicit
//! GEMM over a narrow block of a wide buffer touches a cache line per pixel for a few channels)
//! is copied out of the merged one, into its old buffer, right after the merged product. The
//! siblings must end alike: the same epilogue over their
//! own output only (`relu`, batchnorm's affine map with per-channel vectors), or none.

use super::{same_matrix, temporary, Uses};
use crate::lir::{BufId, Buffer, DType, Epilogue, Kernel, Program, Space, View};

/// Merges every group of siblings it can; returns how many products went.
pub fn run(p: &mut Program) -> usize {
    if p.buffers.iter().any(|b| matches!(b.space, Space::Grad(_))) {
        return 0;
    }
    let mut count = 0;
    while let Some(group) = find(p) {
        count += group.len() - 1;
        merge(p, &group);
    }
    count
}

/// A product's operands: `a`, `b`, `c`, bias and epilogue.
type Parts<'a> = (&'a View, &'a View, &'a View, &'a Option<View>, &'a Option<Box<Epilogue>>);

/// The same, owned.
type Owned = (View, View, View, Option<View>, Option<Box<Epilogue>>);

/// A product this pass can merge: its operands.
fn parts(k: &Kernel) -> Option<Parts<'_>> {
    match k {
        Kernel::Gemm { a, b, c, ta: false, tb: false, accumulate: false, bias, epilogue } => {
            Some((a, b, c, bias, epilogue))
        }
        _ => None,
    }
}

/// The first group of two or more mergeable siblings (kernel indices, in order).
fn find(p: &Program) -> Option<Vec<usize>> {
    let uses = Uses::of(p);
    let param = |v: &View| matches!(p.buffers[v.buf.0 as usize].space, Space::Param(_));
    let eligible = |i: usize| -> bool {
        let Some((a, b, c, bias, epilogue)) = parts(&p.kernels[i]) else { return false };
        let t = c.buf.0 as usize;
        param(b)
            && b.pitch == b.cols()
            && bias.as_ref().is_none_or(&param)
            && a.buf != c.buf
            && temporary(p, c.buf)
            && c.offset == 0
            && c.contiguous()
            && c.len() == p.buffers[t].len
            && !p.results.iter().any(|(_, v)| v.buf == c.buf)
            && uses.writers[t] == [i]
            && epilogue.as_ref().is_none_or(|e| e.inputs.len() == 1 && same_matrix(&e.inputs[0], c))
    };
    for i in 0..p.kernels.len() {
        if !eligible(i) || !(rewritable(p, &uses, i) || copyable(p, &uses, i)) {
            continue;
        }
        let (a, _, _, bias, epilogue) = parts(&p.kernels[i])?;
        let alike = |j: usize| {
            let Some((a2, _, _, bias2, epilogue2)) = parts(&p.kernels[j]) else { return false };
            same_matrix(a, a2)
                && bias.is_some() == bias2.is_some()
                && match (epilogue, epilogue2) {
                    (None, None) => true,
                    (Some(e), Some(f)) => e.expr == f.expr && e.channels.len() == f.channels.len(),
                    _ => false,
                }
        };
        let mut group = vec![i];
        for j in i + 1..p.kernels.len() {
            if uses.written_from(a.buf, i + 1, j + 1) {
                break;
            }
            if eligible(j) && alike(j) && (rewritable(p, &uses, j) || copyable(p, &uses, j)) {
                // Its output must not be read before the merged product (at `i`) would write it:
                // readers come after its old place, which is after `i`.
                group.push(j);
            }
        }
        if group.len() >= 2 {
            return Some(group);
        }
    }
    None
}

/// Whether every reader of product `g`'s output can read a column range of a wider buffer.
fn rewritable(p: &Program, uses: &Uses, g: usize) -> bool {
    let Some((_, _, c, _, _)) = parts(&p.kernels[g]) else { return false };
    let t = c.buf.0 as usize;
    uses.readers[t].iter().filter(|&&r| r != g).all(|&r| {
        let (reads, writes) = p.kernels[r].access();
        writes.iter().all(|w| w.buf != c.buf)
            && reads.iter().filter(|v| v.buf == c.buf).all(|v| v.pitch == c.cols() && v.offset % c.cols() == 0)
            && match &p.kernels[r] {
                // A convolution reads the output as its input `x` only, all of its channels, and
                // runs by Winograd, whose transforms read many channels of a pixel at once. An
                // implicit GEMM reading a narrow block of a wide buffer touches a cache line per
                // pixel for a few channels: the inception module's 5×5 convolution over 16 of
                // 176 channels took 11.5 ms against 5.2 ms over its own 16-channel input.
                Kernel::ConvGemm { x, geom, c: out, .. } => {
                    geom.c0 == 0
                        && geom.cg == geom.channels
                        && geom.channels == c.cols()
                        && geom.winograd(out.cols())
                        && x.buf == c.buf
                        && x.offset == 0
                        && reads.iter().filter(|v| v.buf == c.buf).count() == 1
                }
                Kernel::Gemm { .. } | Kernel::Copy { .. } | Kernel::Map { .. } | Kernel::GlobalPool { .. } => true,
                _ => false,
            }
    })
}

/// Whether product `g`'s readers only read its output: then, when they cannot read a column
/// range of the merged buffer (an implicit GEMM over a narrow block of a wide buffer is slow),
/// the merged product's columns are copied into the old output right after it, and its readers
/// stay as they are. A narrow copy costs less than the separate narrow product it replaces.
fn copyable(p: &Program, uses: &Uses, g: usize) -> bool {
    let Some((_, _, c, _, _)) = parts(&p.kernels[g]) else { return false };
    let t = c.buf.0 as usize;
    uses.readers[t]
        .iter()
        .filter(|&&r| r != g)
        .all(|&r| r > g && p.kernels[r].access().1.iter().all(|w| w.buf != c.buf))
}

/// A new buffer of `len` values: kept across runs (written in prepare) or not.
fn buffer(p: &mut Program, name: String, len: usize, kept: bool) -> BufId {
    let id = BufId(p.buffers.len() as u32);
    p.buffers.push(Buffer { name, space: Space::Arena, len, dtype: DType::F32, kept });
    id
}

/// Merges the products `group` into one at the first's place.
fn merge(p: &mut Program, group: &[usize]) {
    // Which outputs are copied out of the merged one rather than read in place.
    let copied: Vec<bool> = {
        let uses = Uses::of(p);
        group.iter().map(|&g| !rewritable(p, &uses, g)).collect()
    };
    let products: Vec<Owned> = group
        .iter()
        .filter_map(|&g| {
            parts(&p.kernels[g]).map(|(a, b, c, bias, e)| (a.clone(), b.clone(), c.clone(), bias.clone(), e.clone()))
        })
        .collect();
    let a = products[0].0.clone();
    let (cin, rows) = (a.cols(), a.rows());
    let widths: Vec<usize> = products.iter().map(|(_, _, c, _, _)| c.cols()).collect();
    let total: usize = widths.iter().sum();
    let starts: Vec<usize> = widths.iter().scan(0, |s, &w| Some(std::mem::replace(s, *s + w))).collect();
    let name = |v: &View| p.buffers[v.buf.0 as usize].name.rsplit_once('/').map_or("merged", |(l, _)| l).to_string();
    let first = name(&products[0].1);
    // The filters (and biases, and the epilogue's per-channel vectors) side by side, joined in
    // the prepare phase.
    let join = |p: &mut Program, what: &str, parts: Vec<View>, rows: usize| -> View {
        let id = buffer(p, format!("{first}/merged_{what}"), rows * total, true);
        let whole = View::whole(id, vec![rows, total]);
        for (v, (&s, &w)) in parts.into_iter().zip(starts.iter().zip(&widths)) {
            let src = View { shape: vec![rows, w], ..v };
            p.prepare.push(Kernel::Copy { src, dst: whole.columns(s, w) });
        }
        if rows == 1 {
            View::whole(id, vec![total])
        } else {
            whole
        }
    };
    let b = join(p, "weight", products.iter().map(|x| x.1.clone()).collect(), cin);
    let bias =
        products[0].3.as_ref().map(|_| join(p, "bias", products.iter().filter_map(|x| x.3.clone()).collect(), 1));
    let out = buffer(p, format!("{first}/merged"), rows * total, false);
    let c = View::whole(out, vec![rows, total]);
    let epilogue = products[0].4.as_ref().map(|e| {
        let channels = (0..e.channels.len())
            .map(|k| {
                let parts = products.iter().filter_map(|x| x.4.as_ref().map(|e| e.channels[k].clone())).collect();
                join(p, &format!("channel{k}"), parts, 1)
            })
            .collect();
        Box::new(Epilogue { expr: e.expr.clone(), inputs: vec![c.clone()], channels, routes: Vec::new() })
    });
    // Readers of each old output read its columns of the merged one, or the old output, filled
    // from them right after the merged product.
    let mut copies = Vec::new();
    for (k, (_, _, old, _, _)) in products.iter().enumerate() {
        if copied[k] {
            copies.push(Kernel::Copy { src: c.columns(starts[k], widths[k]), dst: old.clone() });
            continue;
        }
        for kernel in p.kernels.iter_mut() {
            redirect(kernel, old, &c, starts[k], widths[k]);
        }
    }
    p.kernels[group[0]] = Kernel::Gemm { a, b, c, ta: false, tb: false, accumulate: false, bias, epilogue };
    for &g in group[1..].iter().rev() {
        p.kernels.remove(g);
    }
    for (n, copy) in copies.into_iter().enumerate() {
        p.kernels.insert(group[0] + 1 + n, copy);
    }
}

/// Points every view of `old`'s buffer in `k` at columns `start..start + width` of `merged`.
fn redirect(k: &mut Kernel, old: &View, merged: &View, start: usize, width: usize) {
    let total = merged.cols();
    let map = |v: &mut View| {
        if v.buf == old.buf {
            let (row, col) = (v.offset / width, v.offset % width);
            *v = View { buf: merged.buf, offset: row * total + start + col, shape: v.shape.clone(), pitch: total };
        }
    };
    match k {
        Kernel::ConvGemm { x, geom, .. } if x.buf == old.buf => {
            // A window kernel reads the whole merged buffer, its channel block the old columns.
            *x = View {
                buf: merged.buf,
                offset: 0,
                shape: x.shape[..x.shape.len() - 1].iter().copied().chain([total]).collect(),
                pitch: total,
            };
            geom.channels = total;
            geom.c0 = start;
            geom.cg = width;
        }
        Kernel::Gemm { a, b, bias, epilogue, .. } => {
            map(a);
            map(b);
            bias.iter_mut().for_each(map);
            if let Some(e) = epilogue {
                e.inputs.iter_mut().for_each(map);
            }
        }
        Kernel::Copy { src, .. } => map(src),
        Kernel::Map { inputs, .. } => inputs.iter_mut().for_each(map),
        Kernel::GlobalPool { x, .. } => map(x),
        _ => {}
    }
}
