//! One plain function per kernel of the kernel IR. Views are read row by row (`pitch` apart);
//! the arithmetic follows the reference executor's, operation for operation where it can.

use super::Mem;
use crate::reference::{elementwise_keep, sigmoid, Ctx};
use cnnc_compiler::ir::op::{LossKind, PoolKind};
use cnnc_compiler::lir::{DType, Expr, Geom, Kernel, View};

/// The longest map expression a machine accepts.
pub(super) const MAX_EXPR: usize = 32;

/// Runs one kernel.
pub(super) fn run(k: &Kernel, m: &Mem, ctx: Ctx) {
    match k {
        Kernel::Gemm { a, b, c, ta, tb, accumulate, bias, epilogue } => {
            gemm(m, m.src(a), a, b, c, *ta, *tb, *accumulate, bias.as_ref());
            if let Some(e) = epilogue {
                epilogue_of(m, e, c, ctx);
            }
        }
        Kernel::ConvWeightGrad { x, geom, dy, c } => {
            let (col, shape) = whole_columns(m, x, geom);
            gemm(m, &col, &shape, dy, c, true, false, false, None);
        }
        // A Winograd form (`winograd`) is the runtime's: the oracle computes the convolution.
        Kernel::ConvGemm { x, geom, b, c, tb, bias, epilogue, stats, .. } => {
            let (col, shape) = whole_columns(m, x, geom);
            gemm(m, &col, &shape, b, c, false, *tb, false, bias.as_ref());
            if let Some(e) = epilogue {
                epilogue_of(m, e, c, ctx);
            }
            if let Some(s) = stats {
                bn_stats(m, c, &s.mean, &s.var);
            }
        }
        Kernel::PoolGemm { kind, x, geom, b, c, bias, epilogue } => {
            let (rows, k) = (geom.n * geom.positions(), geom.cg);
            let mut pooled = vec![0f32; rows * k];
            pool_slices(*kind, m.src(x), &mut pooled, geom);
            gemm(m, &pooled, &View::whole(x.buf, vec![rows, k]), b, c, false, false, false, bias.as_ref());
            if let Some(e) = epilogue {
                epilogue_of(m, e, c, ctx);
            }
        }
        Kernel::BnAffine { mean, var, gamma, beta, eps, scale, shift } => {
            let c = mean.cols();
            let (ms, vs, gs, bs) = (m.src(mean), m.src(var), m.src(gamma), m.src(beta));
            let sc = m.dst(scale);
            for i in 0..c {
                sc[i] = gs[i] / (vs[i] + eps).sqrt();
            }
            let sh = m.dst(shift);
            for i in 0..c {
                sh[i] = bs[i] - ms[i] * sc[i];
            }
        }
        Kernel::Im2col { x, col, geom } => im2col(m, x, col, geom),
        Kernel::Col2im { col, dx, geom } => col2im(m, col, dx, geom),
        Kernel::Pool { kind, x, y, geom } => pool(m, *kind, x, y, geom),
        Kernel::PoolGrad { kind, x, dy, dx, geom } => pool_grad(m, *kind, x.as_ref(), dy, dx, geom),
        Kernel::GlobalPool { kind, x, y } => global_pool(m, *kind, x, y),
        Kernel::GlobalPoolGrad { kind, x, y, dy, dx } => global_pool_grad(m, *kind, x.as_ref(), y.as_ref(), dy, dx),
        Kernel::SumRows { x, y } => sum_rows(m, x, y),
        Kernel::Map { expr, inputs, channels, out } => map(m, expr, inputs, channels, out, ctx),
        Kernel::Softmax { x, y } => softmax(m, x, y),
        Kernel::SoftmaxGrad { y, dy, dx } => softmax_grad(m, y, dy, dx),
        Kernel::L2Norm { x, y, eps } => l2norm(m, x, y, *eps),
        Kernel::L2NormGrad { x, dy, dx, eps } => l2norm_grad(m, x, dy, dx, *eps),
        Kernel::Pad { x, y, before } => pad(m, x, y, before),
        Kernel::Crop { dy, dx, before } => crop(m, dy, dx, before),
        Kernel::BnStats { x, mean, var } => bn_stats(m, x, mean, var),
        Kernel::BnApply { x, mean, var, gamma, beta, y, eps } => bn_apply(m, x, mean, var, gamma, beta, y, *eps),
        Kernel::BnGrad { .. } => bn_grad(m, k),
        Kernel::Loss { kind, pred, target, out } => loss(m, *kind, pred, target, out),
        Kernel::LossGrad { kind, scale, pred, target, dpred } => loss_grad(m, *kind, *scale, pred, target, dpred),
        Kernel::Copy { src, dst } => copy(m, src, dst),
        Kernel::RotateFilters { w, out, taps } => rotate_filters(m, w, out, *taps),
        Kernel::WinogradFilters { w, u } => {
            let (cin, cout) = (w.rows() / 9, w.cols());
            // `Machine::new` checked the form.
            let tile = cnnc_compiler::lir::winograd_tile(u.rows(), cin).unwrap_or(2);
            super::winograd::filters(m.src(w), w.pitch, cin, cout, tile, m.dst(u), u.pitch);
        }
        Kernel::Fill { dst, value } => fill(m, dst, *value),
    }
}

/// Row `r` of a view's span.
fn row<'s>(s: &'s [f32], v: &View, r: usize) -> &'s [f32] {
    &s[r * v.pitch..r * v.pitch + v.cols()]
}

fn row_mut<'s>(s: &'s mut [f32], v: &View, r: usize) -> &'s mut [f32] {
    &mut s[r * v.pitch..r * v.pitch + v.cols()]
}

/// The whole im2col matrix of `x` (the oracle of the implicit products, which never make it),
/// and a view describing its shape.
fn whole_columns(m: &Mem, x: &View, geom: &Geom) -> (Vec<f32>, View) {
    let (rows, k) = (geom.n * geom.positions(), geom.window() * geom.cg);
    let mut col = vec![0f32; rows * k];
    im2col_slices(m.src(x), &mut col, k, geom);
    (col, View::whole(x.buf, vec![rows, k]))
}

/// A product's epilogue over its output `c`.
fn epilogue_of(m: &Mem, e: &cnnc_compiler::lir::Epilogue, c: &View, ctx: Ctx) {
    // The epilogue reads the product it overwrites: from a copy. Each column range of its
    // result goes to `c` or to its route's view.
    let product = m.src(c).to_vec();
    for (inputs, channels, out) in e.parts(c) {
        let ins: Vec<&[f32]> =
            inputs.iter().map(|v| if within(v, c) { &product[v.offset - c.offset..] } else { m.src(v) }).collect();
        map_slices(m, &e.expr, &ins, &inputs, &channels, &out, ctx);
    }
}

/// Whether `v` lies within `c`'s span (the product's output, or a column range of it).
fn within(v: &View, c: &View) -> bool {
    v.buf == c.buf && v.offset >= c.offset && v.end() <= c.end()
}

/// `c = op(a)·op(b) (+ c) (+ bias)`, `a`'s elements `sa` laid out as the view `a` says.
#[allow(clippy::too_many_arguments)]
fn gemm(m: &Mem, sa: &[f32], a: &View, b: &View, c: &View, ta: bool, tb: bool, accumulate: bool, bias: Option<&View>) {
    let (rows, cols) = (c.rows(), c.cols());
    let k = if ta { a.rows() } else { a.cols() };
    let sb = m.src(b);
    let sc = m.dst(c);
    // (row stride, column stride) of op(A) and op(B).
    let (rsa, csa) = if ta { (1, a.pitch) } else { (a.pitch, 1) };
    let (rsb, csb) = if tb { (1, b.pitch) } else { (b.pitch, 1) };
    if rows > 0 && cols > 0 {
        // SAFETY: the machine checked every view inside its buffer, so every element the
        // strides reach is inside these slices, and `c` overlaps neither `a` nor `b`.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                1.0,
                sa.as_ptr(),
                rsa as isize,
                csa as isize,
                sb.as_ptr(),
                rsb as isize,
                csb as isize,
                if accumulate { 1.0 } else { 0.0 },
                sc.as_mut_ptr(),
                c.pitch as isize,
                1,
            );
        }
    }
    if let Some(bias) = bias {
        let sbias = m.src(bias);
        for r in 0..rows {
            for (y, &b) in row_mut(sc, c, r).iter_mut().zip(&sbias[..cols]) {
                *y += b;
            }
        }
    }
}

fn im2col(m: &Mem, x: &View, col: &View, g: &Geom) {
    im2col_slices(m.src(x), m.dst(col), col.pitch, g);
}

/// im2col of the `g.n` examples of `xs` into the rows of `cs`, `pitch` apart.
pub(super) fn im2col_slices(xs: &[f32], cs: &mut [f32], pitch: usize, g: &Geom) {
    im2col_rows(xs, cs, pitch, g, 0, g.n * g.positions());
}

/// Rows `first .. first + count` of the im2col matrix of `xs` into `cs` (row `first` first).
pub(super) fn im2col_rows(xs: &[f32], cs: &mut [f32], pitch: usize, g: &Geom, first: usize, count: usize) {
    let ([id, ih, iw], c, cg) = (g.input, g.channels, g.cg);
    let [fd, fh, fw] = g.size;
    // A window row (all of kw) is one run of the input when every channel is taken and the
    // width is not dilated.
    let whole = cg == c && g.dilation[2] == 1;
    for r in first..first + count {
        let (n, [zd, zh, zw]) = g.position(r);
        let row = r - first;
        let mut at = row * pitch;
        let end = at + fd * fh * fw * cg;
        let w0 = (zw * g.stride[2]) as isize - g.pad[2] as isize;
        for kd in 0..fd {
            let d = g.source(0, zd, kd);
            for kh in 0..fh {
                match (d, g.source(1, zh, kh)) {
                    (Some(d), Some(h)) if whole && w0 >= 0 && w0 as usize + fw <= iw => {
                        let base = (((n * id + d) * ih + h) * iw + w0 as usize) * c;
                        copy_run(cs, at, end, xs, base, fw * c);
                    }
                    // A block of the channels, the window row inside the input: runs of `cg`,
                    // `c` apart, with no bounds to test per tap.
                    (Some(d), Some(h)) if g.dilation[2] == 1 && w0 >= 0 && w0 as usize + fw <= iw => {
                        let base = (((n * id + d) * ih + h) * iw + w0 as usize) * c + g.c0;
                        for kw in 0..fw {
                            copy_run(cs, at + kw * cg, end, xs, base + kw * c, cg);
                        }
                    }
                    (Some(d), Some(h)) => {
                        for kw in 0..fw {
                            let part = at + kw * cg;
                            match g.source(2, zw, kw) {
                                Some(w) => {
                                    let base = (((n * id + d) * ih + h) * iw + w) * c + g.c0;
                                    copy_run(cs, part, end, xs, base, cg);
                                }
                                None => cs[part..part + cg].fill(0.0),
                            }
                        }
                    }
                    _ => cs[at..at + fw * cg].fill(0.0),
                }
                at += fw * cg;
            }
        }
    }
}

/// The indirection table of rows `first..first + count` of a convolution's im2col matrix
/// ([`super::microkernel::gemm_indirect`]): for each row and tap in im2col's order, where the
/// tap's `cg` input channels start in `xs`, or `zeros` (`cg` zeros) where the tap lies outside
/// the input. `table` is overwritten with `count × taps` pointers.
pub(super) fn conv_table(xs: &[f32], zeros: &[f32], table: &mut Vec<*const f32>, g: &Geom, first: usize, count: usize) {
    let ([id, ih, iw], c) = (g.input, g.channels);
    let [fd, fh, fw] = g.size;
    table.clear();
    for r in first..first + count {
        let (n, [zd, zh, zw]) = g.position(r);
        for kd in 0..fd {
            let d = g.source(0, zd, kd);
            for kh in 0..fh {
                let h = g.source(1, zh, kh);
                for kw in 0..fw {
                    table.push(match (d, h, g.source(2, zw, kw)) {
                        (Some(d), Some(h), Some(w)) => xs[(((n * id + d) * ih + h) * iw + w) * c + g.c0..].as_ptr(),
                        _ => zeros.as_ptr(),
                    });
                }
            }
        }
    }
}

/// The indirection table of rows `first..first + count` of a convolution over every channel
/// (`c0` 0, `cg` all) with an undilated width: for each row and window row (`kd`, `kh`), where
/// its `fw·c` values start — in `xs`, where the window row lies inside the input (channels-last,
/// a window row is one run), else in `zeros` (`fw·c` zeros: the row is padding), else in
/// `scratch`, where the run is copied with zeros for its taps in the padding. `table` is
/// overwritten with `count × fd·fh` pointers, `scratch` with the copied runs.
pub(super) fn conv_row_table(
    xs: &[f32],
    zeros: &[f32],
    scratch: &mut Vec<f32>,
    table: &mut Vec<*const f32>,
    g: &Geom,
    first: usize,
    count: usize,
) {
    let ([id, ih, iw], c) = (g.input, g.channels);
    let [fd, fh, fw] = g.size;
    table.clear();
    scratch.clear();
    for r in first..first + count {
        let (n, [zd, zh, zw]) = g.position(r);
        let w0 = (zw * g.stride[2]) as isize - g.pad[2] as isize;
        for kd in 0..fd {
            let d = g.source(0, zd, kd);
            for kh in 0..fh {
                table.push(match (d, g.source(1, zh, kh)) {
                    (Some(d), Some(h)) => {
                        let row = ((n * id + d) * ih + h) * iw;
                        if w0 >= 0 && w0 as usize + fw <= iw {
                            xs[(row + w0 as usize) * c..].as_ptr()
                        } else {
                            for kw in 0..fw {
                                match g.source(2, zw, kw) {
                                    Some(w) => scratch.extend_from_slice(&xs[(row + w) * c..(row + w + 1) * c]),
                                    None => scratch.extend(std::iter::repeat_n(0.0, c)),
                                }
                            }
                            // Filled in below, once `scratch` has stopped growing.
                            std::ptr::null()
                        }
                    }
                    _ => zeros.as_ptr(),
                });
            }
        }
    }
    // The copied runs in table order.
    let mut next = scratch.as_ptr();
    for p in table.iter_mut().filter(|p| p.is_null()) {
        *p = next;
        next = next.wrapping_add(fw * c);
    }
}

/// Copies `len` elements from `xs[base..]` to `cs[at..]`. A short run is copied as a block of 8
/// or 16 (moves of a fixed size, not a call to `memcpy`) when the block stays inside the row
/// (`end`) and the input: the runs of a row are written in order and tile it, so what a block
/// writes past its run is written again by a later run of the same row.
#[inline(always)]
fn copy_run(cs: &mut [f32], at: usize, end: usize, xs: &[f32], base: usize, len: usize) {
    if len <= 8 && at + 8 <= end && base + 8 <= xs.len() {
        cs[at..at + 8].copy_from_slice(&xs[base..base + 8]);
    } else if len <= 16 && at + 16 <= end && base + 16 <= xs.len() {
        cs[at..at + 16].copy_from_slice(&xs[base..base + 16]);
    } else {
        cs[at..at + len].copy_from_slice(&xs[base..base + len]);
    }
}

fn rotate_filters(m: &Mem, w: &View, out: &View, taps: usize) {
    let (ws, os) = (m.src(w), m.dst(out));
    let (cout, cin) = (w.cols(), out.cols());
    for t in 0..taps {
        for ci in 0..cin {
            let from = row(ws, w, t * cin + ci);
            for (co, &v) in from.iter().enumerate() {
                os[((taps - 1 - t) * cout + co) * out.pitch + ci] = v;
            }
        }
    }
}

fn col2im(m: &Mem, col: &View, dx: &View, g: &Geom) {
    col2im_slices(m.src(col), col.pitch, m.dst(dx), g);
}

/// col2im of the rows of `cs` (`pitch` apart) added into the `g.n` examples of `ds`.
pub(super) fn col2im_slices(cs: &[f32], pitch: usize, ds: &mut [f32], g: &Geom) {
    let cg = g.cg;
    if g.dilation[2] == 1 && cg == g.channels {
        return col2im_window_rows(cs, pitch, ds, g);
    }
    g.for_each_run(|r, k, i| {
        let at = r * pitch + k;
        ds[i..i + cg].iter_mut().zip(&cs[at..at + cg]).for_each(|(d, &v)| *d += v);
    });
}

/// [`col2im_slices`] where a window row's taps inside the input are one run in both the row of
/// `cs` and the input (all channels in one group, undilated width): one slice added a window
/// row, not one a tap (LeNet-5's second layer: runs of 30 values, not 6). Each input element
/// gets the same sums in the same order.
fn col2im_window_rows(cs: &[f32], pitch: usize, ds: &mut [f32], g: &Geom) {
    let [id, ih, iw] = g.input;
    let c = g.channels;
    let [od, oh, ow] = g.output;
    let [fd, fh, fw] = g.size;
    // For each output column, the window's columns inside the input, the same for every row:
    // its first tap inside, that tap's input column, and the run's length.
    let runs: Vec<Option<(usize, usize, usize)>> = (0..ow)
        .map(|zw| {
            let (lo, w) = (0..fw).find_map(|kw| g.source(2, zw, kw).map(|w| (kw, w)))?;
            let last = (0..fw).rev().find(|&kw| g.source(2, zw, kw).is_some())?;
            Some((lo, w, (last + 1 - lo) * c))
        })
        .collect();
    for (row, cs) in cs.chunks(pitch.max(1)).take(g.n * od * oh * ow).enumerate() {
        let (n, [zd, zh, zw]) = g.position(row);
        let Some((lo, w, len)) = runs[zw] else { continue };
        for kd in 0..fd {
            let Some(d) = g.source(0, zd, kd) else { continue };
            for kh in 0..fh {
                let Some(h) = g.source(1, zh, kh) else { continue };
                let col = ((kd * fh + kh) * fw + lo) * c;
                let at = (((n * id + d) * ih + h) * iw + w) * c;
                ds[at..at + len].iter_mut().zip(&cs[col..col + len]).for_each(|(d, &v)| *d += v);
            }
        }
    }
}

/// `f(output offset, input offset)` for every window element of every output, in window order.
fn pairs(g: &Geom, mut f: impl FnMut(usize, usize)) {
    let c = g.cg;
    g.for_each(|row, k, i| f(row * c + k % c, i));
}

fn pool(m: &Mem, kind: PoolKind, x: &View, y: &View, g: &Geom) {
    pool_slices(kind, m.src(x), m.dst(y), g);
}

/// The pooling of `xs` (the input viewed as `[n, d, h, w, channels]`) over `g` into `ys`
/// (`[n·positions, cg]`, contiguous).
fn pool_slices(kind: PoolKind, xs: &[f32], ys: &mut [f32], g: &Geom) {
    match kind {
        PoolKind::Max => {
            ys.fill(f32::NEG_INFINITY);
            pairs(g, |o, i| ys[o] = ys[o].max(xs[i]));
        }
        PoolKind::Avg => {
            ys.fill(0.0);
            let mut count = vec![0u32; ys.len()];
            pairs(g, |o, i| {
                ys[o] += xs[i];
                count[o] += 1;
            });
            ys.iter_mut().zip(count).for_each(|(v, n)| *v /= n.max(1) as f32);
        }
    }
}

fn pool_grad(m: &Mem, kind: PoolKind, x: Option<&View>, dy: &View, dx: &View, g: &Geom) {
    let dys = m.src(dy);
    let dxs = m.dst(dx);
    dxs.fill(0.0);
    match (kind, x) {
        (PoolKind::Max, Some(x)) => {
            let xs = m.src(x);
            let mut best: Vec<Option<usize>> = vec![None; dys.len()];
            pairs(g, |o, i| {
                if best[o].is_none_or(|b| xs[i] > xs[b]) {
                    best[o] = Some(i);
                }
            });
            for (o, b) in best.into_iter().enumerate() {
                if let Some(b) = b {
                    dxs[b] += dys[o];
                }
            }
        }
        _ => {
            let mut count = vec![0u32; dys.len()];
            pairs(g, |o, _| count[o] += 1);
            pairs(g, |o, i| dxs[i] += dys[o] / count[o].max(1) as f32);
        }
    }
}

/// `[n, positions, c]` of a contiguous `[n, .., c]` view.
fn npc(x: &View) -> (usize, usize, usize) {
    let (n, c) = (x.shape[0], x.cols());
    (n, x.len() / (n * c).max(1), c)
}

fn global_pool(m: &Mem, kind: PoolKind, x: &View, y: &View) {
    let xs = m.src(x);
    let ys = m.dst(y);
    let (n, p, c) = npc(x);
    for b in 0..n {
        for ch in 0..c {
            let values = (0..p).map(|i| xs[(b * p + i) * c + ch]);
            ys[b * y.pitch + ch] = match kind {
                PoolKind::Avg => values.sum::<f32>() / p as f32,
                PoolKind::Max => values.fold(f32::NEG_INFINITY, f32::max),
            };
        }
    }
}

fn global_pool_grad(m: &Mem, kind: PoolKind, x: Option<&View>, y: Option<&View>, dy: &View, dx: &View) {
    let dys = m.src(dy);
    let dxs = m.dst(dx);
    dxs.fill(0.0);
    let (n, p, c) = npc(dx);
    for b in 0..n {
        for ch in 0..c {
            let g = dys[b * dy.pitch + ch];
            match (kind, x, y) {
                (PoolKind::Max, Some(x), Some(y)) => {
                    let (xs, ys) = (m.src(x), m.src(y));
                    if let Some(i) = (0..p).find(|&i| xs[(b * p + i) * c + ch] == ys[b * y.pitch + ch]) {
                        dxs[(b * p + i) * c + ch] = g;
                    }
                }
                _ => (0..p).for_each(|i| dxs[(b * p + i) * c + ch] = g / p as f32),
            }
        }
    }
}

fn sum_rows(m: &Mem, x: &View, y: &View) {
    let xs = m.src(x);
    let ys = m.dst(y);
    let cols = x.cols();
    ys[..cols].fill(0.0);
    for r in 0..x.rows() {
        for (acc, &v) in ys[..cols].iter_mut().zip(row(xs, x, r)) {
            *acc += v;
        }
    }
}

/// Elements a map evaluates at a time: each step of its expression runs over this many
/// elements of a row, so the steps are tight loops.
const CHUNK: usize = 64;

fn map(m: &Mem, expr: &[Expr], inputs: &[View], channels: &[View], out: &View, ctx: Ctx) {
    // An input the map writes over (the `in_place` pass) is read from a copy: the output's slice
    // is then the only one of its buffer.
    let copies: Vec<Option<Vec<f32>>> = inputs.iter().map(|v| (v.buf == out.buf).then(|| m.src(v).to_vec())).collect();
    let ins: Vec<&[f32]> = inputs.iter().zip(&copies).map(|(v, c)| c.as_deref().unwrap_or_else(|| m.src(v))).collect();
    map_slices(m, expr, &ins, inputs, channels, out, ctx);
}

/// A map whose inputs are given as slices (each spanning its view).
fn map_slices(m: &Mem, expr: &[Expr], ins: &[&[f32]], inputs: &[View], channels: &[View], out: &View, ctx: Ctx) {
    let chs: Vec<&[f32]> = channels.iter().map(|v| m.src(v)).collect();
    let os = m.dst(out);
    let cols = out.cols();
    let mut stack = vec![[0f32; CHUNK]; expr.len()];
    let first = ctx.offset(out.rows() * cols) as usize;
    for r in 0..out.rows() {
        let mut c0 = 0;
        while c0 < cols {
            let len = CHUNK.min(cols - c0);
            for (s, step) in expr.iter().enumerate() {
                let (done, rest) = stack.split_at_mut(s);
                let dst = &mut rest[0][..len];
                let arg = |i: usize| &done[i][..len];
                match *step {
                    Expr::Input(i) => {
                        let at = r * inputs[i].pitch + c0;
                        dst.copy_from_slice(&ins[i][at..at + len]);
                    }
                    Expr::Channel(i) => dst.copy_from_slice(&chs[i][c0..c0 + len]),
                    Expr::Const(v) => dst.fill(v),
                    Expr::Add(a, b) => dst.iter_mut().zip(arg(a).iter().zip(arg(b))).for_each(|(d, (x, y))| *d = x + y),
                    Expr::Mul(a, b) => dst.iter_mut().zip(arg(a).iter().zip(arg(b))).for_each(|(d, (x, y))| *d = x * y),
                    Expr::Relu(a) => dst.iter_mut().zip(arg(a)).for_each(|(d, x)| *d = x.max(0.0)),
                    Expr::Tanh(a) => dst.iter_mut().zip(arg(a)).for_each(|(d, x)| *d = x.tanh()),
                    Expr::Sigmoid(a) => dst.iter_mut().zip(arg(a)).for_each(|(d, &x)| *d = sigmoid(x)),
                    Expr::Positive { c, a, b } => {
                        for (k, d) in dst.iter_mut().enumerate() {
                            *d = if done[c][k] > 0.0 { done[a][k] } else { done[b][k] };
                        }
                    }
                    Expr::Keep { rate, salt } => {
                        for (k, d) in dst.iter_mut().enumerate() {
                            let index = first + r * cols + c0 + k;
                            let kept = rate == 0.0 || elementwise_keep(ctx.seed, ctx.step, salt, index, rate);
                            *d = if kept { 1.0 / (1.0 - rate) } else { 0.0 };
                        }
                    }
                }
            }
            let at = r * out.pitch + c0;
            os[at..at + len].copy_from_slice(&stack[expr.len() - 1][..len]);
            c0 += len;
        }
    }
}

fn softmax(m: &Mem, x: &View, y: &View) {
    let xs = m.src(x);
    let ys = m.dst(y);
    for r in 0..x.rows() {
        let (xr, yr) = (row(xs, x, r), row_mut(ys, y, r));
        let max = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        yr.iter_mut().zip(xr).for_each(|(o, &v)| *o = (v - max).exp());
        let sum: f32 = yr.iter().sum();
        yr.iter_mut().for_each(|o| *o /= sum);
    }
}

fn softmax_grad(m: &Mem, y: &View, dy: &View, dx: &View) {
    let (ys, dys) = (m.src(y), m.src(dy));
    let dxs = m.dst(dx);
    for r in 0..y.rows() {
        let (yr, gr, dr) = (row(ys, y, r), row(dys, dy, r), row_mut(dxs, dx, r));
        dr.iter_mut().zip(gr.iter().zip(yr)).for_each(|(d, (&g, &y))| *d = g * y);
        let s: f32 = dr.iter().sum();
        dr.iter_mut().zip(yr).for_each(|(d, &y)| *d -= y * s);
    }
}

/// A row's `‖x‖₂`, summed in f64.
fn norm(x: &[f32]) -> f32 {
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32
}

fn l2norm(m: &Mem, x: &View, y: &View, eps: f32) {
    let (xs, ys) = (m.src(x), m.dst(y));
    for r in 0..x.rows() {
        let xr = row(xs, x, r);
        let n = norm(xr).max(eps);
        row_mut(ys, y, r).iter_mut().zip(xr).for_each(|(o, &v)| *o = v / n);
    }
}

/// `dx = (dy − y·Σ(y·dy)) / ‖x‖` where `‖x‖ > eps`, else `dy / eps`.
fn l2norm_grad(m: &Mem, x: &View, dy: &View, dx: &View, eps: f32) {
    let (xs, dys, dxs) = (m.src(x), m.src(dy), m.dst(dx));
    for r in 0..x.rows() {
        let (xr, gr, dr) = (row(xs, x, r), row(dys, dy, r), row_mut(dxs, dx, r));
        let n = norm(xr);
        if n > eps {
            let dot: f32 = xr.iter().zip(gr).map(|(&x, &g)| (x / n) * g).sum();
            dr.iter_mut().zip(xr.iter().zip(gr)).for_each(|(d, (&x, &g))| *d = (g - (x / n) * dot) / n);
        } else {
            dr.iter_mut().zip(gr).for_each(|(d, &g)| *d = g / eps);
        }
    }
}

/// The row of the larger view `big` (`[batch, axes.., c]`) that row `r` of `small` falls on when
/// `small` sits `before[k]` elements into each axis of an example (its channels first).
fn placed_row(small: &View, big: &View, before: &[usize], r: usize) -> usize {
    let lead = &small.shape[..small.shape.len() - 1];
    let big_lead = &big.shape[..big.shape.len() - 1];
    // r as an index over small's leading axes, last axis fastest, moved by `before` (none on
    // the batch axis) and flattened over big's.
    let (mut rest, mut out, mut scale) = (r, 0, 1);
    for k in (0..lead.len()).rev() {
        let i = rest % lead[k].max(1);
        rest /= lead[k].max(1);
        let shift = if k == 0 { 0 } else { before.get(k - 1).copied().unwrap_or(0) };
        out += (i + shift) * scale;
        scale *= big_lead[k];
    }
    out
}

/// Zero padding: `y` is zeros with `x` placed `before` into each axis of an example.
fn pad(m: &Mem, x: &View, y: &View, before: &[usize]) {
    let (xs, ys) = (m.src(x), m.dst(y));
    for r in 0..y.rows() {
        row_mut(ys, y, r).fill(0.0);
    }
    for r in 0..x.rows() {
        let to = placed_row(x, y, before, r);
        row_mut(ys, y, to)[..x.cols()].copy_from_slice(row(xs, x, r));
    }
}

/// The gradient of [`pad`]: `dx` is the part of `dy` that `x` filled.
fn crop(m: &Mem, dy: &View, dx: &View, before: &[usize]) {
    let (dys, dxs) = (m.src(dy), m.dst(dx));
    for r in 0..dx.rows() {
        let from = placed_row(dx, dy, before, r);
        row_mut(dxs, dx, r).copy_from_slice(&row(dys, dy, from)[..dx.cols()]);
    }
}

fn bn_stats(m: &Mem, x: &View, mean: &View, var: &View) {
    let xs = m.src(x);
    let (ms, vs) = (m.dst(mean), m.dst(var));
    let (rows, c) = (x.rows(), x.cols());
    // Sums in f64: over a batch's every position (tens of thousands of rows) an f32 sum drifts.
    let mut sum = vec![0f64; c];
    for r in 0..rows {
        row(xs, x, r).iter().zip(sum.iter_mut()).for_each(|(&v, acc)| *acc += f64::from(v));
    }
    let mu: Vec<f32> = sum.iter().map(|&s| (s / rows as f64) as f32).collect();
    let mut spread = vec![0f64; c];
    for r in 0..rows {
        for ((&v, acc), &mu) in row(xs, x, r).iter().zip(spread.iter_mut()).zip(mu.iter()) {
            *acc += f64::from((v - mu) * (v - mu));
        }
    }
    ms[..c].copy_from_slice(&mu);
    vs[..c].iter_mut().zip(&spread).for_each(|(v, &s)| *v = (s / rows as f64) as f32);
    crate::dist::batch_stats(&mut ms[..c], &mut vs[..c], rows);
}

/// `1/√(var + eps)` per channel.
pub(super) fn inv_std(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect()
}

#[allow(clippy::too_many_arguments)]
fn bn_apply(m: &Mem, x: &View, mean: &View, var: &View, gamma: &View, beta: &View, y: &View, eps: f32) {
    let c = x.cols();
    let (xs, ms, vs, gs, bs) = (m.src(x), m.src(mean), m.src(var), m.src(gamma), m.src(beta));
    let scale: Vec<f32> = inv_std(&vs[..c], eps).iter().zip(&gs[..c]).map(|(i, g)| i * g).collect();
    let ys = m.dst(y);
    for r in 0..x.rows() {
        for (ch, (o, &v)) in row_mut(ys, y, r).iter_mut().zip(row(xs, x, r)).enumerate() {
            *o = (v - ms[ch]) * scale[ch] + bs[ch];
        }
    }
}

fn bn_grad(m: &Mem, k: &Kernel) {
    let Kernel::BnGrad { x, mean, var, gamma, dy, dx, dgamma, dbeta, eps, training } = k else { return };
    let (rows, c) = (dy.rows(), dy.cols());
    let dys = m.src(dy);
    let inv = var.as_ref().map(|v| inv_std(&m.src(v)[..c], *eps)).unwrap_or_else(|| vec![0.0; c]);
    let xs = x.as_ref().map(|v| (m.src(v), v));
    let ms: Vec<f32> = mean.as_ref().map(|v| m.src(v)[..c].to_vec()).unwrap_or_else(|| vec![0.0; c]);
    // x̂ of row r, into `out`.
    let xhat = |r: usize, out: &mut [f32]| {
        if let Some((xs, xv)) = xs {
            for (ch, o) in out.iter_mut().enumerate() {
                *o = (xs[r * xv.pitch + ch] - ms[ch]) * inv[ch];
            }
        }
    };
    let mut xh = vec![0f32; c];
    if let Some(db) = dbeta {
        let out = m.dst(db);
        out[..c].fill(0.0);
        (0..rows).for_each(|r| row(dys, dy, r).iter().zip(out.iter_mut()).for_each(|(&g, acc)| *acc += g));
    }
    if let Some(dg) = dgamma {
        let out = m.dst(dg);
        out[..c].fill(0.0);
        for r in 0..rows {
            xhat(r, &mut xh);
            row(dys, dy, r).iter().zip(&xh).zip(out.iter_mut()).for_each(|((&g, &h), acc)| *acc += g * h);
        }
    }
    let (Some(dx), Some(gamma)) = (dx, gamma) else { return };
    let gs = &m.src(gamma)[..c];
    let out = m.dst(dx);
    if !training {
        let scale: Vec<f32> = inv.iter().zip(gs).map(|(i, g)| i * g).collect();
        for r in 0..rows {
            for ((o, &g), s) in row_mut(out, dx, r).iter_mut().zip(row(dys, dy, r)).zip(&scale) {
                *o = g * s;
            }
        }
        return;
    }
    let n = rows as f32;
    let (mut sum64, mut dot64) = (vec![0f64; c], vec![0f64; c]);
    for r in 0..rows {
        xhat(r, &mut xh);
        for ch in 0..c {
            let dxhat = dys[r * dy.pitch + ch] * gs[ch];
            sum64[ch] += f64::from(dxhat);
            dot64[ch] += f64::from(dxhat * xh[ch]);
        }
    }
    let mut sum: Vec<f32> = sum64.iter().map(|&v| v as f32).collect();
    let mut dot: Vec<f32> = dot64.iter().map(|&v| v as f32).collect();
    crate::dist::batch_sums_pair(&mut sum, &mut dot, rows);
    let factor: Vec<f32> = inv.iter().map(|i| i / n).collect();
    for r in 0..rows {
        xhat(r, &mut xh);
        let (g, o) = (row(dys, dy, r), row_mut(out, dx, r));
        for ch in 0..c {
            o[ch] = (g[ch] * gs[ch] * n - sum[ch] - xh[ch] * dot[ch]) * factor[ch];
        }
    }
}

/// The class index of example `b` of a label view (integers, or floats for other losses).
fn label(m: &Mem, target: &View, b: usize) -> usize {
    match m.dtype(target) {
        DType::I32 => m.src_i32(target)[b].max(0) as usize,
        DType::F32 => m.src(target)[b] as usize,
    }
}

/// Example `b` of a contiguous view.
fn example<'s>(s: &'s [f32], v: &View, b: usize) -> &'s [f32] {
    let per = v.len() / v.shape[0].max(1);
    &s[b * per..(b + 1) * per]
}

/// A batch's embeddings, row after row, and its identities.
fn identities(m: &Mem, pred: &View, target: &View) -> (Vec<f32>, Vec<usize>) {
    let ps = m.src(pred);
    let emb = (0..pred.shape[0]).flat_map(|b| example(ps, pred, b).iter().copied()).collect();
    (emb, (0..pred.shape[0]).map(|b| label(m, target, b)).collect())
}

fn loss(m: &Mem, kind: LossKind, pred: &View, target: &View, out: &View) {
    let os = m.dst(out);
    if let LossKind::Triplet(t) = kind {
        let (emb, labels) = identities(m, pred, target);
        let d = emb.len() / labels.len().max(1);
        os[..labels.len()].copy_from_slice(&crate::metric::triplet_losses(&t, &emb, d, &labels));
        return;
    }
    let ps = m.src(pred);
    for b in 0..pred.shape[0] {
        let p = example(ps, pred, b);
        os[b] = match kind {
            LossKind::SoftmaxCrossEntropy => {
                let max = p.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let lse = p.iter().map(|&v| (v - max).exp()).sum::<f32>().ln() + max;
                lse - p[label(m, target, b).min(p.len().saturating_sub(1))]
            }
            LossKind::SigmoidCrossEntropy => {
                let t = example(m.src(target), target, b);
                p.iter()
                    .zip(t)
                    .fold(0.0f32, |acc, (&z, &y)| acc + z.max(0.0) - z * y + (1.0f32 + (-z.abs()).exp()).ln())
            }
            LossKind::L2 => {
                let t = example(m.src(target), target, b);
                p.iter().zip(t).fold(0.0, |acc, (&a, &b)| acc + 0.5 * (a - b) * (a - b))
            }
            LossKind::Detect(d) => {
                let per = crate::detect::slot_len(&d, *pred.shape.last().unwrap_or(&1));
                crate::detect::loss(&d, per, p, example(m.src(target), target, b))
            }
            LossKind::GivenTriplet { margin } => crate::metric::given_triplet_loss(p, margin),
            // Over the whole batch, above.
            LossKind::Triplet(_) => 0.0,
        };
    }
}

fn loss_grad(m: &Mem, kind: LossKind, scale: f32, pred: &View, target: &View, dpred: &View) {
    let ps = m.src(pred);
    let ds = m.dst(dpred);
    let per = dpred.len() / dpred.shape[0].max(1);
    if let LossKind::Triplet(t) = kind {
        let (emb, labels) = identities(m, pred, target);
        crate::metric::triplet_grad(&t, &emb, per, &labels, scale, &mut ds[..labels.len() * per]);
        return;
    }
    for b in 0..pred.shape[0] {
        let (p, d) = (example(ps, pred, b), &mut ds[b * per..(b + 1) * per]);
        match kind {
            LossKind::SoftmaxCrossEntropy => {
                let max = p.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                d.iter_mut().zip(p).for_each(|(o, &v)| *o = (v - max).exp());
                let sum: f32 = d.iter().sum();
                d.iter_mut().for_each(|o| *o /= sum);
                let l = label(m, target, b).min(d.len().saturating_sub(1));
                d[l] -= 1.0;
                d.iter_mut().for_each(|o| *o *= scale);
            }
            LossKind::SigmoidCrossEntropy => {
                let t = example(m.src(target), target, b);
                d.iter_mut().zip(p.iter().zip(t)).for_each(|(o, (&z, &y))| *o = (sigmoid(z) - y) * scale);
            }
            LossKind::L2 => {
                let t = example(m.src(target), target, b);
                d.iter_mut().zip(p.iter().zip(t)).for_each(|(o, (&a, &y))| *o = (a - y) * scale);
            }
            LossKind::Detect(k) => {
                let per = crate::detect::slot_len(&k, *pred.shape.last().unwrap_or(&1));
                crate::detect::loss_grad(&k, per, p, example(m.src(target), target, b), scale, d);
            }
            LossKind::GivenTriplet { margin } => crate::metric::given_triplet_grad(p, margin, scale, d),
            // Over the whole batch, above.
            LossKind::Triplet(_) => {}
        }
    }
}

fn copy(m: &Mem, src: &View, dst: &View) {
    let ss = m.src(src);
    let ds = m.dst(dst);
    for r in 0..src.rows() {
        row_mut(ds, dst, r).copy_from_slice(row(ss, src, r));
    }
}

fn fill(m: &Mem, dst: &View, value: f32) {
    let ds = m.dst(dst);
    for r in 0..dst.rows() {
        row_mut(ds, dst, r).fill(value);
    }
}
