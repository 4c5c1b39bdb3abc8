//! The precompiled kernels the JIT backend calls beside its generated maps: GEMM through the
//! `gemm` crate (its micro-kernels picked for the host's ISA at run time), and window kernels
//! (im2col, col2im, pooling and its gradient) written for the NHWC layout, split over the
//! examples of the batch on the rayon pool.
//!
//! Work is split in fixed parts (an example, a block of rows) that never add into one another,
//! so a run gives the same bits whatever the number of threads. The interpreter's functions in
//! `kernels.rs` stay the oracle these are tested against.

use super::Mem;
use cnnc_compiler::ir::op::PoolKind;
use cnnc_compiler::lir::{Geom, Kernel, View};
use rayon::prelude::*;

/// Whether `k` has a tuned function here.
pub(super) fn covers(k: &Kernel) -> bool {
    match k {
        Kernel::Gemm { .. } | Kernel::Im2col { .. } | Kernel::Col2im { .. } => true,
        Kernel::Pool { geom, .. } | Kernel::PoolGrad { geom, .. } => geom.c0 == 0 && geom.cg == geom.channels,
        Kernel::BnStats { .. } | Kernel::BnApply { .. } | Kernel::BnGrad { .. } | Kernel::SumRows { .. } => true,
        Kernel::ConvGemm { .. } | Kernel::ConvWeightGrad { .. } => true,
        Kernel::PoolGemm { geom, .. } => geom.c0 == 0 && geom.cg == geom.channels,
        Kernel::Fill { .. } => true,
        _ => false,
    }
}

/// Who computes `k`, a kernel of `p`, on the JIT backend (`cnnc build --emit kernels`).
pub fn provider(p: &cnnc_compiler::lir::Program, k: &Kernel) -> String {
    let said = match k {
        Kernel::Map { .. } => "generated (cranelift)",
        Kernel::ConvGemm { epilogue, geom, winograd: Some(u), .. } => match (geom.winograd_tile(u), epilogue) {
            (Some(4), Some(_)) => "Winograd F(4×4, 3×3) + generated epilogue",
            (Some(4), None) => "Winograd F(4×4, 3×3)",
            (_, Some(_)) => "Winograd F(2×2, 3×3) + generated epilogue",
            (_, None) => "Winograd F(2×2, 3×3)",
        },
        Kernel::ConvGemm { c, geom, epilogue, x, tb: false, .. } if direct_suits(x, geom, c.cols()) => {
            if epilogue.is_some() {
                "direct convolution + generated epilogue"
            } else {
                "direct convolution"
            }
        }
        Kernel::ConvWeightGrad { x, geom, c, .. } if direct_suits(x, geom, c.cols()) => "direct convolution",
        Kernel::ConvGemm { c, geom, epilogue, .. } => {
            let micro = block_micro(c.rows(), geom.window() * geom.cg, c.cols());
            let how = match (micro, conv_rows(geom)) {
                (true, ConvRows::Taps) => "implicit GEMM, taps read in place, micro-kernel",
                (true, ConvRows::WindowRows) => "implicit GEMM, window rows read in place, micro-kernel",
                (true, ConvRows::Im2col) => "implicit GEMM, im2col rows, micro-kernel",
                (false, _) => "implicit GEMM, im2col rows, gemm crate",
            };
            let once = if conv_packed(p, &derived_constants(p), k) { ", filters packed once" } else { "" };
            let then = if epilogue.is_some() { " + generated epilogue" } else { "" };
            return format!("{how}{once}{then}");
        }
        Kernel::Gemm { a, c, ta, tb, epilogue, .. } => {
            let depth = if *ta { a.rows() } else { a.cols() };
            let micro = super::microkernel::suits(c.rows(), depth, c.cols(), *ta);
            if streams(c.rows(), c.cols(), *ta, *tb) && depth > 0 {
                let then = if epilogue.is_some() { " + generated epilogue" } else { "" };
                return format!("right-hand operand streamed once, parts of its rows over the threads{then}");
            }
            match (packed_split(p, &derived_constants(p), k), micro, epilogue.is_some()) {
                (Some(PackedSplit::Columns), _, true) => {
                    "micro-kernel over panels of columns, packed once + generated epilogue"
                }
                (Some(PackedSplit::Columns), _, false) => "micro-kernel over panels of columns, packed once",
                (Some(PackedSplit::Rows), _, true) => {
                    "micro-kernel over blocks of rows, packed once + generated epilogue"
                }
                (Some(PackedSplit::Rows), _, false) => "micro-kernel over blocks of rows, packed once",
                (None, true, true) => "micro-kernel over blocks of rows + generated epilogue",
                (None, true, false) => "micro-kernel over blocks of rows",
                (None, false, true) => "gemm crate + generated epilogue",
                (None, false, false) => "gemm crate",
            }
        }
        Kernel::ConvWeightGrad { .. } => "implicit GEMM over K blocks, gemm crate",
        Kernel::PoolGemm { geom, c, epilogue, .. } if covers(k) => {
            let micro = block_micro(c.rows(), geom.cg, c.cols());
            let packed = packed_operand(p, &derived_constants(p), k).is_some();
            let how = match (micro, packed && c.rows() <= FEW_ROWS) {
                (true, true) => "pooled rows, micro-kernel over panels of columns",
                (true, false) => "pooled rows made block by block, micro-kernel",
                (false, _) => "pooled rows made block by block, gemm crate",
            };
            let once = if packed { ", filters packed once" } else { "" };
            let then = if epilogue.is_some() { " + generated epilogue" } else { "" };
            return format!("{how}{once}{then}");
        }
        k if covers(k) => "tuned Rust",
        _ => "interpreter",
    };
    said.to_string()
}

/// Runs `k`, which [`covers`] accepts.
pub(super) fn run(k: &Kernel, m: &Mem) {
    match k {
        Kernel::Gemm { a, b, c, ta, tb, accumulate, bias, .. } => {
            gemm(m, a, b, c, *ta, *tb, *accumulate, bias.as_ref(), true)
        }
        Kernel::Im2col { x, col, geom } => {
            let xs = m.src(x);
            per_example(m.dst(col), col.pitch, geom, |n, rows, g| {
                super::kernels::im2col_slices(&xs[n * in_len(geom)..], rows, col.pitch, g)
            })
        }
        Kernel::Col2im { col, dx, geom } => {
            let cs = m.src(col);
            let rows = geom.positions() * col.pitch;
            per_example_in(m.dst(dx), geom, |n, dxs, g| {
                super::kernels::col2im_slices(&cs[n * rows..], col.pitch, dxs, g)
            })
        }
        Kernel::Pool { kind, x, y, geom } => pool_all(*kind, m.src(x), m.dst(y), geom),
        Kernel::PoolGrad { kind, x, dy, dx, geom } => {
            let dys = m.src(dy);
            let xs = x.as_ref().map(|x| m.src(x));
            let per_out = geom.positions() * geom.cg;
            per_example_in(m.dst(dx), geom, |n, dxs, g| {
                dxs.fill(0.0);
                pool_grad(*kind, xs.map(|xs| &xs[n * in_len(geom)..]), &dys[n * per_out..], dxs, g);
            })
        }
        Kernel::SumRows { x, y } => {
            let xs = m.src(x);
            let (rows, cols) = (x.rows(), x.cols());
            let total = if x.pitch == cols && cols > 0 && cols < 16 {
                dense_column_sums(xs, rows, cols)
            } else {
                column_sums(rows, cols, |r, acc| add(acc, &xs[r * x.pitch..r * x.pitch + cols]))
            };
            m.dst(y)[..cols].copy_from_slice(&total);
        }
        Kernel::Fill { dst, value } => {
            let cols = dst.cols();
            each_row(m.dst(dst), dst.pitch, cols, |_, row| row.fill(*value));
        }
        Kernel::BnStats { x, mean, var } => bn_stats(m, x, mean, var),
        Kernel::BnApply { x, mean, var, gamma, beta, y, eps } => {
            let c = x.cols();
            let (xs, ms, gs, bs) = (m.src(x), &m.src(mean)[..c], &m.src(gamma)[..c], &m.src(beta)[..c]);
            let scale: Vec<f32> =
                super::kernels::inv_std(&m.src(var)[..c], *eps).iter().zip(gs).map(|(i, g)| i * g).collect();
            each_row(m.dst(y), y.pitch, c, |r, out| {
                let xr = &xs[r * x.pitch..r * x.pitch + c];
                for ch in 0..c {
                    out[ch] = (xr[ch] - ms[ch]) * scale[ch] + bs[ch];
                }
            });
        }
        Kernel::BnGrad { .. } => bn_grad(m, k),
        Kernel::ConvWeightGrad { x, geom, dy, c } => conv_weight_grad(m, x, geom, dy, c),
        Kernel::ConvGemm { .. } => {
            // Without an epilogue nothing can fail.
            let _ = conv_gemm(m, k, None, crate::reference::Ctx::default());
        }
        Kernel::PoolGemm { .. } => {
            // Without an epilogue nothing can fail.
            let _ = pool_gemm(m, k, None, crate::reference::Ctx::default());
        }
        _ => super::kernels::run(k, m, crate::reference::Ctx::default()),
    }
}

/// The pooling of every example of `xs` over `g` into `ys` (`[n·positions, cg]`, contiguous), on
/// the pool: by examples, or where there are fewer examples than threads (batch 1) each
/// example's output rows in as many parts as threads (each output is computed alone: the same
/// bits either way).
fn pool_all(kind: PoolKind, xs: &[f32], ys: &mut [f32], g: &Geom) {
    let per_out = g.positions() * g.cg;
    let threads = crate::bench::threads();
    let (rows, width) = (g.output[0] * g.output[1], g.output[2] * g.cg);
    if g.n < threads && rows >= 2 * threads {
        let part = rows.div_ceil(threads) * width;
        for (n, ys) in ys.chunks_mut(per_out.max(1)).enumerate() {
            let xs = &xs[n * in_len(g)..];
            ys.par_chunks_mut(part.max(1))
                .enumerate()
                .for_each(|(i, ys)| pool_rows(kind, xs, ys, g, i * (part / width.max(1))));
        }
    } else {
        ys.par_chunks_mut(per_out.max(1)).enumerate().for_each(|(n, ys)| pool(kind, &xs[n * in_len(g)..], ys, g));
    }
}

/// Rows per block of a reduction over rows: a fixed size, so that partial sums and the order
/// they are added in do not depend on the number of threads.
const ROW_BLOCK: usize = 512;

/// `Σ_r f(r)` per column (`f` adds row `r`'s terms into a row of `width` sums), in fixed blocks
/// of rows on the pool, the blocks' sums added in block order.
fn column_sums(rows: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    column_blocks(rows, width, |first, count, acc| (first..first + count).for_each(|r| f(r, acc)))
}

/// [`column_sums`] with `f(first row, rows, acc)` summing a whole block of rows into `acc`.
fn column_blocks(rows: usize, width: usize, f: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
    let blocks = rows.div_ceil(ROW_BLOCK).max(1);
    let mut partial = vec![0f32; blocks * width];
    partial.par_chunks_mut(width.max(1)).enumerate().for_each(|(b, acc)| {
        let first = b * ROW_BLOCK;
        f(first, ROW_BLOCK.min(rows.saturating_sub(first)), acc);
    });
    let mut total = vec![0f32; width];
    for p in partial.chunks(width.max(1)) {
        add(&mut total, p);
    }
    total
}

/// The column sums of `rows` contiguous rows of `cols` (fewer than 16: a bias gradient of few
/// channels, LeNet-5's 6 over 50,176 rows): in each block of [`ROW_BLOCK`] rows, groups of rows
/// that fill whole vectors (8 rows of 6 = 48 values) are added as one wide row, whose lanes are
/// then folded by column; the blocks added in order, whatever the threads.
fn dense_column_sums(xs: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    // The fewest rows whose values fill whole vectors of 16.
    let group = (1..=16).find(|g| (g * cols).is_multiple_of(16)).unwrap_or(16);
    let wide = group * cols;
    column_blocks(rows, cols, |first, count, acc| {
        let block = &xs[first * cols..(first + count) * cols];
        let mut lanes = vec![0f32; wide];
        let mut groups = block.chunks_exact(wide);
        for g in &mut groups {
            add(&mut lanes, g);
        }
        for row in lanes.chunks_exact(cols).chain(groups.remainder().chunks_exact(cols)) {
            add(acc, row);
        }
    })
}

fn add(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, &v)| *a += v);
}

/// Calls `f(r, row r)` for every row of a view's span `out` (`cols` wide, `pitch` apart), in
/// blocks of rows on the pool.
fn each_row(out: &mut [f32], pitch: usize, cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let pitch = pitch.max(cols).max(1);
    out.par_chunks_mut(ROW_BLOCK * pitch).enumerate().for_each(|(b, block)| {
        for (j, row) in block.chunks_mut(pitch).enumerate() {
            if row.len() >= cols {
                f(b * ROW_BLOCK + j, &mut row[..cols]);
            }
        }
    });
}

/// Batch mean and (biased) variance per channel, in two passes.
fn bn_stats(m: &Mem, x: &View, mean: &View, var: &View) {
    let xs = m.src(x);
    let (rows, c) = (x.rows(), x.cols());
    let row = |r: usize| &xs[r * x.pitch..r * x.pitch + c];
    let mut mu = column_sums(rows, c, |r, acc| add(acc, row(r)));
    mu.iter_mut().for_each(|v| *v /= rows.max(1) as f32);
    let mut v = column_sums(rows, c, |r, acc| {
        for ((a, &x), &m) in acc.iter_mut().zip(row(r)).zip(&mu) {
            *a += (x - m) * (x - m);
        }
    });
    v.iter_mut().for_each(|v| *v /= rows.max(1) as f32);
    crate::dist::batch_stats(&mut mu, &mut v, rows);
    m.dst(mean)[..c].copy_from_slice(&mu);
    m.dst(var)[..c].copy_from_slice(&v);
}

/// Batchnorm's backward: dβ = Σ dy and dγ = Σ dy·x̂ in one pass; then, in training mode,
/// dx = (γ/σ)·(dy − (dβ + x̂·dγ)/n), in inference mode dx = dy·γ/σ.
fn bn_grad(m: &Mem, k: &Kernel) {
    let Kernel::BnGrad { x, mean, var, gamma, dy, dx, dgamma, dbeta, eps, training } = k else { return };
    let (rows, c) = (dy.rows(), dy.cols());
    let dys = m.src(dy);
    let inv = var.as_ref().map(|v| super::kernels::inv_std(&m.src(v)[..c], *eps)).unwrap_or_else(|| vec![0.0; c]);
    let xs = x.as_ref().map(|v| (m.src(v), v.pitch));
    let ms: Vec<f32> = mean.as_ref().map(|v| m.src(v)[..c].to_vec()).unwrap_or_else(|| vec![0.0; c]);
    let zeros = vec![0f32; c];
    // Row r of x (zeros without x: x̂ is then 0, as the interpreter has it).
    let xrow = |r: usize| xs.map_or(&zeros[..], |(xs, pitch)| &xs[r * pitch..r * pitch + c]);
    let (ms, inv) = (&ms[..c], &inv[..c]);
    let g = |r: usize| &dys[r * dy.pitch..r * dy.pitch + c];
    let need = dgamma.is_some() || dbeta.is_some() || (*training && dx.is_some());
    let sums = if need {
        column_sums(rows, 2 * c, |r, acc| {
            let (sum, dot) = acc.split_at_mut(c);
            let (g, x) = (g(r), xrow(r));
            // Zipped slices of one length: no bounds checks, the channels in vectors.
            if xs.is_some() {
                let hat = x.iter().zip(ms).zip(inv).map(|((&x, &m), &i)| (x - m) * i);
                for (((s, d), &g), h) in sum.iter_mut().zip(dot.iter_mut()).zip(g).zip(hat) {
                    *s += g;
                    *d += g * h;
                }
            } else {
                add(sum, g);
            }
        })
    } else {
        vec![0.0; 2 * c]
    };
    let (sum, dot) = sums.split_at(c);
    if let Some(db) = dbeta {
        m.dst(db)[..c].copy_from_slice(sum);
    }
    if let Some(dg) = dgamma {
        m.dst(dg)[..c].copy_from_slice(dot);
    }
    let (Some(dx), Some(gamma)) = (dx, gamma) else { return };
    // dβ and dγ stay this process's (the gradients are summed later); dx reads the global batch's.
    let mut sums = sums;
    if *training && crate::dist::group().is_some() {
        crate::dist::batch_sums(&mut sums, rows);
    }
    let (sum, dot) = sums.split_at(c);
    let gs = &m.src(gamma)[..c];
    let scale: Vec<f32> = inv.iter().zip(gs).map(|(i, g)| i * g).collect();
    let n = rows.max(1) as f32;
    each_row(m.dst(dx), dx.pitch, c, |r, out| {
        let (g, x) = (g(r), xrow(r));
        if *training && xs.is_some() {
            let hat = x.iter().zip(ms).zip(inv).map(|((&x, &m), &i)| (x - m) * i);
            let coef = scale.iter().zip(sum).zip(dot);
            for (((o, &g), h), ((&sc, &s), &d)) in out.iter_mut().zip(g).zip(hat).zip(coef) {
                *o = sc * (g - (s + h * d) / n);
            }
        } else if *training {
            for (((o, &g), &sc), &s) in out.iter_mut().zip(g).zip(&scale).zip(sum) {
                *o = sc * (g - s / n);
            }
        } else {
            for ((o, &g), &sc) in out.iter_mut().zip(g).zip(&scale) {
                *o = g * sc;
            }
        }
    });
}

/// Elements of one example's input.
fn in_len(g: &Geom) -> usize {
    g.input.iter().product::<usize>() * g.channels
}

/// The geometry of one example of `g`.
fn one(g: &Geom) -> Geom {
    Geom { n: 1, ..g.clone() }
}

/// Calls `f(example, its rows of out, geometry of one example)` for each example, in parallel;
/// `out` holds `positions` rows `pitch` apart per example.
fn per_example(out: &mut [f32], pitch: usize, g: &Geom, f: impl Fn(usize, &mut [f32], &Geom) + Sync) {
    let g1 = one(g);
    let chunk = (g.positions() * pitch).max(1);
    out.par_chunks_mut(chunk).enumerate().for_each(|(n, rows)| f(n, rows, &g1));
}

/// Calls `f(example, its part of the input-shaped `out`, geometry of one example)` in parallel.
fn per_example_in(out: &mut [f32], g: &Geom, f: impl Fn(usize, &mut [f32], &Geom) + Sync) {
    let g1 = one(g);
    out.par_chunks_mut(in_len(g).max(1)).enumerate().for_each(|(n, part)| f(n, part, &g1));
}

/// Products smaller than this (m·k·n) run on one thread: splitting costs more than it saves.
const PARALLEL_GEMM: usize = 1 << 17;

/// Rows of a block of a product with an epilogue: about 128 KiB of output, and at least 256
/// rows, since each block packs the right-hand matrix again (a function of the width alone, so
/// the blocks do not depend on the threads).
fn epilogue_rows(cols: usize) -> usize {
    (32768 / cols.max(1)).clamp(256, 1024)
}

/// Rows of a block of a product with an epilogue over an operand packed once: about 128 KiB of
/// output, a multiple of the micro-kernels' tiles (6 rows on AVX2, 12 on AVX-512).
fn packed_epilogue_rows(cols: usize) -> usize {
    (32768 / cols.max(1)).clamp(48, 1024) / 12 * 12
}

/// A product and its epilogue (`f`, the epilogue's compiled map). Tall products run in blocks of
/// rows over the pool, each block's epilogue right after its product, while the block is in
/// cache; short ones as a whole product (split inside) and then the map.
pub(super) fn gemm_then(m: &Mem, k: &Kernel, f: cnnc_codegen::MapFn, ctx: crate::reference::Ctx) -> Result<(), String> {
    match k {
        Kernel::ConvGemm { .. } => return conv_gemm(m, k, Some(f), ctx),
        Kernel::PoolGemm { .. } => return pool_gemm(m, k, Some(f), ctx),
        _ => {}
    }
    let Kernel::Gemm { a, b, c, ta, tb, accumulate, bias, epilogue: Some(e) } = k else {
        run(k, m);
        return Ok(());
    };
    let (rows, cols) = (c.rows(), c.cols());
    // An operand the prepare phase packed is not packed again by each block: smaller blocks,
    // whose output stays in L2 for the epilogue (ResNet-50's 28×28 products of 512 columns at
    // batch 1: 784 rows, one product then one epilogue over 1.6 MB before).
    let (rsb, csb) = if *tb { (1, b.pitch) } else { (b.pitch, 1) };
    let packed = !*ta && m.packed(b, [a.cols(), cols, rsb, csb]).is_some();
    let block = if packed { packed_epilogue_rows(cols) } else { epilogue_rows(cols) };
    if *ta || (packed && rows <= FEW_ROWS) || rows < 4 * block {
        gemm(m, a, b, c, *ta, *tb, *accumulate, bias.as_ref(), true);
        return epilogue_rows_of(m, f, e, 0, &c.matrix(), ctx);
    }
    (0..rows.div_ceil(block)).into_par_iter().try_for_each(|i| {
        let (first, n) = (i * block, block.min(rows - i * block));
        let (a, c) = (a.row_block(first, n), c.row_block(first, n));
        gemm(m, &a, b, &c, false, *tb, *accumulate, bias.as_ref(), false);
        epilogue_rows_of(m, f, e, first, &c, ctx)
    })
}

/// Runs the compiled epilogue `f` of `e` on rows `first ..` of the product, `c` those rows (of
/// the product's whole output `c`'s columns): each column range to `c` or to its route's view.
fn epilogue_rows_of(
    m: &Mem,
    f: cnnc_codegen::MapFn,
    e: &cnnc_compiler::lir::Epilogue,
    first: usize,
    c: &View,
    ctx: crate::reference::Ctx,
) -> Result<(), String> {
    let rows = c.rows();
    if e.routes.is_empty() {
        let inputs: Vec<View> = e.inputs.iter().map(|v| v.row_block(first, rows)).collect();
        return super::native_map(m, f, &e.expr, &inputs, &e.channels, c, ctx);
    }
    // The parts of the whole output, then their rows of this block.
    let whole = View { offset: c.offset - first * c.pitch, shape: vec![first + rows, c.cols()], ..c.clone() };
    for (inputs, channels, out) in e.parts(&whole) {
        let inputs: Vec<View> = inputs.iter().map(|v| v.row_block(first, rows)).collect();
        super::native_map(m, f, &e.expr, &inputs, &channels, &out.row_block(first, rows), ctx)?;
    }
    Ok(())
}

/// Adds the products `partial` (`rows × cols` each, in order) into `sc` (rows `pitch` apart),
/// over what it holds when `accumulate`, else over zeros.
fn add_partials(sc: &mut [f32], pitch: usize, rows: usize, cols: usize, partial: &[f32], accumulate: bool) {
    for r in 0..rows {
        let out = &mut sc[r * pitch..r * pitch + cols];
        if !accumulate {
            out.fill(0.0);
        }
        for part in partial.chunks((rows * cols).max(1)) {
            add(out, &part[r * cols..(r + 1) * cols]);
        }
    }
}

/// Adds `bias` to the first `bias.len()` columns of every row (`pitch` apart) of `block`.
fn add_bias(block: &mut [f32], pitch: usize, bias: &[f32]) {
    for row in block.chunks_mut(pitch.max(1)) {
        add(row, bias);
    }
}

/// Whether a convolution of `x` over `geom` with `filters` filters runs as a direct convolution
/// (`direct.rs`): the geometry's rule, and `x` contiguous.
fn direct_suits(x: &View, geom: &Geom, filters: usize) -> bool {
    geom.direct(filters) && x.pitch == geom.channels && x.cols() == geom.channels
}

/// `c = im2col(x)ᵀ·dy` in fixed blocks of im2col rows (K of the product), each made in a buffer
/// of its own and multiplied into a partial product; the partials added in block order.
fn conv_weight_grad(m: &Mem, x: &View, geom: &Geom, dy: &View, c: &View) {
    if direct_suits(x, geom, c.cols()) {
        return super::direct::weight_grad(m.src(x), geom, m.src(dy), dy.pitch, c.cols(), m.dst(c), c.pitch);
    }
    let kk = geom.window() * geom.cg;
    let (rows, n) = (dy.rows(), dy.cols());
    let (xs, sd) = (m.src(x), m.src(dy));
    let sc = m.dst(c);
    let block = (rows / 256).max(512);
    let blocks = rows.div_ceil(block).max(1);
    let mut partial = vec![0f32; blocks * kk * n];
    let pd = Shared(sd.as_ptr());
    partial.par_chunks_mut((kk * n).max(1)).enumerate().for_each_init(Vec::new, |col: &mut Vec<f32>, (i, part)| {
        let (first, count) = (i * block, block.min(rows.saturating_sub(i * block)));
        if count == 0 {
            return;
        }
        col.resize(count * kk, 0.0);
        super::kernels::im2col_rows(xs, col, kk, geom, first, count);
        let rhs = pd.get().wrapping_add(first * dy.pitch);
        // SAFETY: `col` holds `count` rows of `kk`; `dy` rows `first..first + count` lie inside
        // its view; `part` holds `kk × n`.
        unsafe { product(kk, n, count, part.as_mut_ptr(), n, false, (col.as_ptr(), 1, kk), (rhs, dy.pitch, 1), None) };
    });
    add_partials(sc, c.pitch, kk, n, &partial, false);
}

/// An implicit-GEMM convolution: blocks of rows on the pool, each making its im2col rows in a
/// buffer of its own, multiplying them (the micro-kernels where the shape suits them, over the
/// filters packed once; else the `gemm` crate on one thread), adding the bias and running the
/// epilogue (`f`, compiled) on the block; and taking the batch statistics of each block
/// (`stats`), combined in block order.
fn conv_gemm(m: &Mem, k: &Kernel, f: Option<cnnc_codegen::MapFn>, ctx: crate::reference::Ctx) -> Result<(), String> {
    let Kernel::ConvGemm { stats: Some(s), .. } = k else { return conv_gemm_blocks(m, k, f, ctx, &|_, _| ()) };
    let Kernel::ConvGemm { c, .. } = k else { return Ok(()) };
    // Each block's rows, mean and spread per column (`combine_stats`' parts), kept by first row.
    let parts = std::sync::Mutex::new(Vec::new());
    conv_gemm_blocks(m, k, f, ctx, &|first, rows| {
        // A direct convolution's block is a whole example (up to 65,536 rows): its f32 sums
        // are taken over parts of at most `STATS_ROWS`.
        let mut found = Vec::new();
        for at in (first..first + rows).step_by(STATS_ROWS) {
            let n = STATS_ROWS.min(first + rows - at);
            found.push((at, block_stats(m.src(&c.row_block(at, n)), c.pitch, n, c.cols())));
        }
        parts.lock().unwrap_or_else(|e| e.into_inner()).extend(found);
    })?;
    let mut parts = parts.into_inner().unwrap_or_else(|e| e.into_inner());
    parts.sort_by_key(|&(first, _)| first);
    let all: Vec<f64> = parts.into_iter().flat_map(|(_, p)| p).collect();
    let (mu, spread) = crate::dist::combine_stats(&all, c.cols());
    let mut mean: Vec<f32> = mu.iter().map(|&v| v as f32).collect();
    let mut var: Vec<f32> = spread.iter().map(|&v| v as f32).collect();
    crate::dist::batch_stats(&mut mean, &mut var, c.rows());
    m.dst(&s.mean)[..mean.len()].copy_from_slice(&mean);
    m.dst(&s.var)[..var.len()].copy_from_slice(&var);
    Ok(())
}

/// Rows of a convolution's output over which [`block_stats`] sums in f32.
const STATS_ROWS: usize = 1024;

/// `[rows, mean × cols, biased variance × cols]` of `rows` rows of `cols` values (`pitch` apart),
/// in two passes over the block while it is in cache: sums in f32 over a block (at most
/// [`STATS_ROWS`]), the blocks combined in f64.
fn block_stats(xs: &[f32], pitch: usize, rows: usize, cols: usize) -> Vec<f64> {
    let n = rows.max(1) as f32;
    let (mut mean, mut spread) = (vec![0f32; cols], vec![0f32; cols]);
    // Eight columns at a time down the rows, their sums in registers (a narrower tail last).
    let mut c0 = 0;
    while c0 + 8 <= cols {
        let lanes = |r: usize| -> [f32; 8] {
            let at = r * pitch + c0;
            xs[at..at + 8].try_into().unwrap_or([0.0; 8])
        };
        let mut sum = [0f32; 8];
        for r in 0..rows {
            let v = lanes(r);
            (0..8).for_each(|l| sum[l] += v[l]);
        }
        let mu = sum.map(|v| v / n);
        let mut sq = [0f32; 8];
        for r in 0..rows {
            let v = lanes(r);
            (0..8).for_each(|l| sq[l] += (v[l] - mu[l]) * (v[l] - mu[l]));
        }
        mean[c0..c0 + 8].copy_from_slice(&mu);
        spread[c0..c0 + 8].copy_from_slice(&sq);
        c0 += 8;
    }
    for c in c0..cols {
        let mu = (0..rows).map(|r| xs[r * pitch + c]).sum::<f32>() / n;
        mean[c] = mu;
        spread[c] = (0..rows).map(|r| (xs[r * pitch + c] - mu) * (xs[r * pitch + c] - mu)).sum();
    }
    let part = std::iter::once(rows as f64).chain(mean.iter().map(|&v| f64::from(v)));
    part.chain(spread.iter().map(|&v| f64::from(v / n))).collect()
}

/// The convolution of [`conv_gemm`] by blocks of output rows, `done(first, rows)` called on each
/// block after its epilogue.
fn conv_gemm_blocks(
    m: &Mem,
    k: &Kernel,
    f: Option<cnnc_codegen::MapFn>,
    ctx: crate::reference::Ctx,
    done: &(dyn Fn(usize, usize) + Sync),
) -> Result<(), String> {
    let Kernel::ConvGemm { x, geom, b, c, tb, bias, epilogue, winograd, stats, .. } = k else { return Ok(()) };
    let kk = geom.window() * geom.cg;
    let (rows, cols) = (c.rows(), c.cols());
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (xs, sb) = (m.src(x), m.src(b));
    let sbias = bias.as_ref().map(|v| &m.src(v)[..cols]);
    let epilogue_of = |first: usize, rows: usize| {
        match (epilogue, f) {
            (Some(e), Some(f)) => epilogue_rows_of(m, f, e, first, &c.row_block(first, rows), ctx)?,
            (Some(_), None) => return Err("a convolution's epilogue was not compiled".to_string()),
            _ => {}
        }
        done(first, rows);
        Ok(())
    };
    if let Some(u) = winograd.as_ref().filter(|_| x.pitch == geom.channels && !*tb) {
        // `Machine::new` checked the form.
        let tile = geom.winograd_tile(u).unwrap_or(2);
        let conv = super::winograd::Conv { x: xs, u: m.src(u), u_pitch: u.pitch, bias: sbias, cout: cols, m: tile };
        return super::winograd::conv(
            &conv,
            geom,
            c.pitch,
            |first, rows| m.dst(&c.row_block(first, rows)),
            epilogue_of,
        );
    }
    if !*tb && direct_suits(x, geom, cols) {
        let plan = super::direct::Forward::new(geom, sb, b.pitch, sbias, cols);
        let positions = geom.positions();
        return (0..geom.n).into_par_iter().try_for_each_init(Vec::new, |e: &mut Vec<f32>, n| {
            let cv = c.row_block(n * positions, positions);
            plan.example(xs, n, geom, cols, m.dst(&cv), c.pitch, e);
            epilogue_of(n * positions, positions)
        });
    }
    let (rsb, csb) = if *tb { (1, b.pitch) } else { (b.pitch, 1) };
    let micro = block_micro(rows, kk, cols);
    // Blocks balanced over the threads, but for batch statistics, summed by blocks: theirs stay
    // fixed, the same bits on any number of threads.
    let block = cnnc_compiler::lir::passes::fuse_im2col::block_rows(kk, cols);
    let block = if stats.is_none() { balanced_block(rows, block) } else { block };
    // Filters the prepare phase packed (`pack_constants`: an inference program's), else packed
    // here, once a call.
    let pre = if micro { m.packed(b, [kk, cols, rsb, csb]) } else { None };
    let owned = if micro && pre.is_none() { super::microkernel::pack(sb, kk, cols, rsb, csb) } else { Vec::new() };
    let packed = pre.unwrap_or(&owned);
    let pb = Shared(sb.as_ptr());
    // The micro-kernels read the input where it lies through a table of taps or of window rows
    // (`conv_rows`), else from im2col rows copied block by block; a table's entry points at a
    // run of `len` values, `runs` entries a row (`zeros`: a run in the padding).
    let source = if micro { conv_rows(geom) } else { ConvRows::Im2col };
    let (runs, len) = match source {
        ConvRows::Taps => (geom.window(), geom.cg),
        ConvRows::WindowRows => (geom.size[0] * geom.size[1], geom.size[2] * geom.channels),
        ConvRows::Im2col => (1, kk),
    };
    let zeros = vec![0f32; if source == ConvRows::Im2col { 0 } else { len }];
    let init = || (Vec::new(), Vec::new(), Vec::new());
    (0..rows.div_ceil(block)).into_par_iter().try_for_each_init(
        init,
        |(col, table, scratch): &mut (Vec<f32>, _, _), i| {
            let (first, n) = (i * block, block.min(rows - i * block));
            let cv = c.row_block(first, n);
            match source {
                ConvRows::Taps => super::kernels::conv_table(xs, &zeros, table, geom, first, n),
                ConvRows::WindowRows => super::kernels::conv_row_table(xs, &zeros, scratch, table, geom, first, n),
                ConvRows::Im2col => {
                    col.resize(n * kk, 0.0);
                    super::kernels::im2col_rows(xs, col, kk, geom, first, n);
                }
            }
            let sc = m.dst(&cv);
            if source != ConvRows::Im2col {
                // SAFETY: `suits` checked the host's ISA; the table holds `n` rows of `runs`
                // pointers, each at `len` values of `xs`, `zeros` or `scratch`; `sc` holds `n`
                // rows of `cols` at the view's pitch, `packed` `kk·cols` values.
                unsafe { super::microkernel::gemm_indirect(n, runs, len, table, cols, packed, sc, c.pitch) };
            } else {
                block_product(n, kk, cols, col, micro.then_some(packed), (pb, rsb, csb), sc, c.pitch);
            }
            if let Some(bias) = sbias {
                add_bias(sc, c.pitch, bias);
            }
            epilogue_of(first, n)
        },
    )
}

/// A product over pooled rows ([`Kernel::PoolGemm`]), then its bias and epilogue (`f`,
/// compiled). Few rows (a map at batch 1) whose filters the prepare phase packed are pooled
/// whole, in parts over the threads, and multiplied by panels of columns split over the threads
/// ([`packed_product`]); more, in blocks of whole output rows of one example over the pool,
/// each pooled into a buffer of its own and multiplied while it is in cache (the micro-kernels
/// where the shape suits them, else the `gemm` crate on one thread). Each output is computed
/// alone, in the same order whatever the blocks: the same bits on any number of threads.
fn pool_gemm(m: &Mem, k: &Kernel, f: Option<cnnc_codegen::MapFn>, ctx: crate::reference::Ctx) -> Result<(), String> {
    let Kernel::PoolGemm { kind, x, geom, b, c, bias, epilogue } = k else { return Ok(()) };
    let (rows, depth, cols) = (c.rows(), geom.cg, c.cols());
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (xs, sb) = (m.src(x), m.src(b));
    let sbias = bias.as_ref().map(|v| &m.src(v)[..cols]);
    let finish = |first: usize, n: usize, sc: &mut [f32]| {
        if let Some(bias) = sbias {
            add_bias(sc, c.pitch, bias);
        }
        match (epilogue, f) {
            (Some(e), Some(f)) => epilogue_rows_of(m, f, e, first, &c.row_block(first, n), ctx),
            (Some(_), None) => Err("a product's epilogue was not compiled".to_string()),
            _ => Ok(()),
        }
    };
    let g1 = one(geom);
    let (ow, image_rows, positions) = (geom.output[2].max(1), geom.output[0] * geom.output[1], geom.positions());
    let micro = block_micro(rows, depth, cols);
    let pre = if micro { m.packed(b, [depth, cols, b.pitch, 1]) } else { None };
    if let Some(packed) = pre.filter(|_| rows <= FEW_ROWS) {
        let mut pooled = vec![0f32; rows * depth];
        pool_all(*kind, xs, &mut pooled, geom);
        let sc = m.dst(c);
        // SAFETY: `suits` checked the host's ISA (`pack_constants` packed the filters only
        // where it did); `pooled` holds `rows` rows of `depth`, `sc` `rows` rows of `cols` at
        // the view's pitch.
        unsafe { packed_product(rows, depth, cols, &pooled, depth, packed, sc.as_mut_ptr(), c.pitch, false) };
        return finish(0, rows, sc);
    }
    let owned = if micro && pre.is_none() { super::microkernel::pack(sb, depth, cols, b.pitch, 1) } else { Vec::new() };
    let packed = pre.unwrap_or(&owned);
    // Blocks of whole output rows of one example, about as many rows as an implicit
    // convolution's block of this shape.
    let per_block = (cnnc_compiler::lir::passes::fuse_im2col::block_rows(depth, cols) / ow).max(1);
    let blocks = image_rows.div_ceil(per_block);
    let pb = Shared(sb.as_ptr());
    (0..geom.n * blocks).into_par_iter().try_for_each_init(Vec::new, |pooled: &mut Vec<f32>, t| {
        let (n, r0) = (t / blocks, (t % blocks) * per_block);
        let count = per_block.min(image_rows - r0);
        let (first, nrows) = (n * positions + r0 * ow, count * ow);
        pooled.resize(nrows * depth, 0.0);
        pool_rows(*kind, &xs[n * in_len(geom)..], pooled, &g1, r0);
        let sc = m.dst(&c.row_block(first, nrows));
        let micro = micro && block_micro(nrows, depth, cols);
        block_product(nrows, depth, cols, pooled, micro.then_some(packed), (pb, b.pitch, 1), sc, c.pitch);
        finish(first, nrows, sc)
    })
}

/// Whether the micro-kernels run a product whose blocks of rows an implicit convolution or a
/// pooling makes, `rows` rows over `k` into `cols` columns: up to 256 columns, of any depth (a
/// 3×3 window over 256 channels is 2,304: ResNet-50's 14×14 layers went to the gemm crate at
/// 96 GFLOP/s; a tile's 16-column panel, 147 KB there, is read from L2).
fn block_micro(rows: usize, k: usize, cols: usize) -> bool {
    (1..=256).contains(&cols) && super::microkernel::runs_packed(rows, k)
}

/// `sc` (`n` rows of `cols`, `pitch` apart) `= rows·B`, `rows` the `n` rows of `k` a block made
/// in a buffer of its own: by the micro-kernels over `packed` (B's panels) where given, else by
/// the `gemm` crate on this thread over `b` (pointer, row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn block_product(
    n: usize,
    k: usize,
    cols: usize,
    rows: &[f32],
    packed: Option<&[f32]>,
    (b, rsb, csb): (Shared, usize, usize),
    sc: &mut [f32],
    pitch: usize,
) {
    match packed {
        // SAFETY: the caller checked the micro-kernels suit the shape and host (`suits`); `rows`
        // holds `n` rows of `k`, `sc` `n` rows of `cols` at `pitch`, `packed` `k·cols` values.
        Some(packed) => unsafe { super::microkernel::gemm(n, k, cols, rows, k, packed, sc, pitch, false) },
        // SAFETY: as in `gemm`: the view checks put every element the strides reach inside.
        None => unsafe {
            product(n, cols, k, sc.as_mut_ptr(), pitch, false, (rows.as_ptr(), k, 1), (b.get(), rsb, csb), None)
        },
    }
}

/// Rows a block of an implicit convolution's rows (at most `block`), so that the blocks fall
/// evenly on the threads where there are few of them (GoogLeNet's 14×14 maps at batch 1: 196
/// rows in 5 blocks of 48, 3 on one thread and 2 on the other, became 6 of 36).
fn balanced_block(rows: usize, block: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let blocks = rows.div_ceil(block.max(1));
    if blocks >= 4 * threads || blocks.is_multiple_of(threads) {
        return block;
    }
    let even = blocks.next_multiple_of(threads);
    rows.div_ceil(even).next_multiple_of(6).min(block)
}

/// How the micro-kernels read an implicit-GEMM convolution's rows of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConvRows {
    /// Through a table of taps: [`INDIRECT_CHANNELS`] channels a group and more.
    Taps,
    /// Through a table of window rows (`fw·c` values each): fewer channels, all of them in the
    /// group, and an undilated width.
    WindowRows,
    /// From im2col rows copied block by block.
    Im2col,
}

fn conv_rows(geom: &Geom) -> ConvRows {
    if geom.cg >= INDIRECT_CHANNELS {
        ConvRows::Taps
    } else if geom.c0 == 0 && geom.cg == geom.channels && geom.dilation[2] == 1 {
        ConvRows::WindowRows
    } else {
        ConvRows::Im2col
    }
}

/// Channels a tap from which an implicit-GEMM convolution reads its input through an indirection
/// table (ResNet-20's training step 1.2–1.4× faster in its convolutions, GoogLeNet and ResNet-50
/// within their noise); with fewer, window rows or im2col rows ([`conv_rows`]; LeNet-5's 6
/// channels measured the same by taps as by im2col rows).
const INDIRECT_CHANNELS: usize = 8;

/// A product's constant right-hand operand packed for the micro-kernels ([`pack_constants`]).
#[derive(Clone, Debug)]
pub(crate) struct Packed {
    /// `[k, n, rsb, csb]` of the operand it was packed from.
    pub shape: [usize; 4],
    /// [`super::microkernel::pack`]'s panels.
    pub values: Vec<f32>,
}

/// Rows up to which a product with a packed constant operand splits its column panels over the
/// threads (fewer rows than blocks of rows for every thread: 7×7 and 14×14 maps at batch 1).
const FEW_ROWS: usize = 256;

/// Steps of K a micro-kernel call sums before the next block (the panel's block stays in L1).
const PACKED_K: usize = 512;

/// The constant right-hand operands of an inference program's products, packed once (each run
/// of such a product packed them again, a pass over the whole operand: ResNet-50's 2048-column
/// filters at batch 1 ran at 50 GFLOP/s), where the micro-kernels run and the program's kernels
/// are native (`natives`).
pub(crate) fn pack_constants(
    p: &cnnc_compiler::lir::Program,
    natives: &[Option<super::Native>],
    m: &Mem,
) -> std::collections::HashMap<(cnnc_compiler::lir::BufId, usize), Packed> {
    let derived = derived_constants(p);
    let mut out = std::collections::HashMap::new();
    for (k, native) in p.kernels.iter().zip(natives) {
        let Some((b, shape)) = native.as_ref().and_then(|_| packed_operand(p, &derived, k)) else { continue };
        let [depth, cols, rsb, csb] = shape;
        let values = super::microkernel::pack(m.src(b), depth, cols, rsb, csb);
        out.insert((b.buf, b.offset), Packed { shape, values });
    }
    out
}

/// The operand of `k` the prepare phase packs and its `[k, n, rsb, csb]`: a product's right-hand
/// operand ([`packed_split`]) or an implicit convolution's filters ([`conv_packed`]).
fn packed_operand<'k>(
    p: &cnnc_compiler::lir::Program,
    derived: &std::collections::HashSet<cnnc_compiler::lir::BufId>,
    k: &'k Kernel,
) -> Option<(&'k View, [usize; 4])> {
    match k {
        Kernel::Gemm { a, b, c, tb, .. } if packed_split(p, derived, k).is_some() => {
            let (rsb, csb) = if *tb { (1, b.pitch) } else { (b.pitch, 1) };
            Some((b, [a.cols(), c.cols(), rsb, csb]))
        }
        Kernel::ConvGemm { geom, b, c, .. } if conv_packed(p, derived, k) => {
            Some((b, [geom.window() * geom.cg, c.cols(), b.pitch, 1]))
        }
        Kernel::PoolGemm { geom, b, c, .. }
            if prepared_constant(p, derived, b) && block_micro(c.rows(), geom.cg, c.cols()) =>
        {
            Some((b, [geom.cg, c.cols(), b.pitch, 1]))
        }
        _ => None,
    }
}

/// Whether `b` is an operand the prepare phase may pack: constant in an inference program (a
/// parameter, or a buffer the prepare phase derives: `derived`), where the micro-kernels run.
fn prepared_constant(
    p: &cnnc_compiler::lir::Program,
    derived: &std::collections::HashSet<cnnc_compiler::lir::BufId>,
    b: &View,
) -> bool {
    use cnnc_compiler::lir::Space;
    let training = p.buffers.iter().any(|b| matches!(b.space, Space::Grad(_)));
    let constant = matches!(p.buffers[b.buf.0 as usize].space, Space::Param(_)) || derived.contains(&b.buf);
    !training && constant && super::microkernel::available()
}

/// How a product whose constant operand the prepare phase packs runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PackedSplit {
    /// Few rows: its panels of columns split over the threads ([`packed_product`]).
    Columns,
    /// Blocks of rows, which packed the operand once a block before (Inception 3a's 1×1
    /// products at batch 32: 98 blocks of 256 rows), or which wider or deeper products left to
    /// the `gemm` crate (ResNet-50's 28×28 1×1 products of 512 columns at batch 1).
    Rows,
}

/// Whether the prepare phase packs `k`'s right-hand operand, and how the product then runs: an
/// inference program's product over a constant operand (`derived`: [`derived_constants`]) where
/// the micro-kernels run, with few rows (6 to [`FEW_ROWS`], 16 columns or more) or more rows, of
/// any width and depth. (Implicit convolutions keep their blocks of rows, their filters packed
/// once by [`conv_packed`].)
fn packed_split(
    p: &cnnc_compiler::lir::Program,
    derived: &std::collections::HashSet<cnnc_compiler::lir::BufId>,
    k: &Kernel,
) -> Option<PackedSplit> {
    let Kernel::Gemm { a, b, c, ta: false, .. } = k else { return None };
    if !prepared_constant(p, derived, b) {
        return None;
    }
    let (rows, depth, cols) = (c.rows(), a.cols(), c.cols());
    if (6..=FEW_ROWS).contains(&rows) && cols >= 16 {
        Some(PackedSplit::Columns)
    } else if rows > FEW_ROWS && super::microkernel::runs_packed(rows, depth) {
        Some(PackedSplit::Rows)
    } else {
        None
    }
}

/// Whether the prepare phase packs the filters of `k`, an implicit convolution of an inference
/// program over constant filters (`derived`: [`derived_constants`]) that the micro-kernels run
/// (packing them on each call took a quarter of GoogLeNet's 14×14 3×3 layers at batch 1, on one
/// thread while the other waited).
fn conv_packed(
    p: &cnnc_compiler::lir::Program,
    derived: &std::collections::HashSet<cnnc_compiler::lir::BufId>,
    k: &Kernel,
) -> bool {
    let Kernel::ConvGemm { x, geom, b, c, tb: false, winograd: None, .. } = k else { return false };
    prepared_constant(p, derived, b)
        && !direct_suits(x, geom, c.cols())
        && block_micro(c.rows(), geom.window() * geom.cg, c.cols())
}

/// The buffers the prepare phase derives from the parameters (written by its kernels and by no
/// kernel of the program: merged and folded filters), constant while the program runs.
fn derived_constants(p: &cnnc_compiler::lir::Program) -> std::collections::HashSet<cnnc_compiler::lir::BufId> {
    let written = |ks: &[Kernel]| -> std::collections::HashSet<_> {
        ks.iter().flat_map(|k| k.access().1).map(|v| v.buf).collect()
    };
    let run = written(&p.kernels);
    written(&p.prepare).into_iter().filter(|b| !run.contains(b)).collect()
}

/// `C[rows × n] = A·B (+ C)` over `packed` ([`super::microkernel::pack`]): the column panels
/// split over the pool (in pairs on AVX-512 hosts where there are enough), each summed over K in
/// blocks of [`PACKED_K`] (in order: the same bits on any number of threads).
///
/// # Safety
/// AVX2 and FMA; `a` holds `rows` rows of `k` at pitch `lda`, `c` `rows` rows of `n` at pitch
/// `ldc`, `packed` the panels of a `k × n` operand.
#[allow(clippy::too_many_arguments)]
unsafe fn packed_product(
    rows: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    packed: &[f32],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // Tasks of two 16-column panels where there are enough for two a thread (the AVX-512 tiles
    // then hold 12 rows × 32 columns: half the loads an FMA of one panel's), else of one; their
    // bounds fall on `pack`'s panels. The sums do not depend on the tasks.
    let threads = rayon::current_num_threads();
    let step = if super::microkernel::avx512() && n.div_ceil(32) >= 2 * threads { 32 } else { 16 };
    let tasks: Vec<(usize, usize)> = (0..n).step_by(step).map(|j0| (j0, step.min(n - j0))).collect();
    let c = Shared(c);
    tasks.par_iter().for_each(|&(j0, valid)| {
        let panels = &packed[j0 * k..];
        let mut k0 = 0;
        while k0 < k {
            let kn = PACKED_K.min(k - k0);
            // SAFETY: the caller's promise; this task's columns `j0 .. j0 + valid` of every row
            // are written by it alone, and `panels` holds theirs from `pack`.
            unsafe {
                let cs = std::slice::from_raw_parts_mut(c.get().cast_mut().add(j0), (rows - 1) * ldc + valid);
                super::microkernel::gemm_block(
                    rows,
                    kn,
                    valid,
                    &a[k0..],
                    lda,
                    panels,
                    k,
                    k0,
                    cs,
                    ldc,
                    accumulate || k0 > 0,
                );
            }
            k0 += kn;
        }
    });
}

/// `c = op(a)·op(b)` (`+ c`), `+ bias`; `split`: on the pool, and over K where M·N is small.
#[allow(clippy::too_many_arguments)]
fn gemm(m: &Mem, a: &View, b: &View, c: &View, ta: bool, tb: bool, accumulate: bool, bias: Option<&View>, split: bool) {
    let (rows, cols) = (c.rows(), c.cols());
    let k = if ta { a.rows() } else { a.cols() };
    let (sa, sb) = (m.src(a), m.src(b));
    let sc = m.dst(c);
    let (rsa, csa) = if ta { (1, a.pitch) } else { (a.pitch, 1) };
    let (rsb, csb) = if tb { (1, b.pitch) } else { (b.pitch, 1) };
    if rows > 0 && cols > 0 {
        // A constant operand the prepare phase packed (`pack_constants`), for the whole product
        // or for a block of its rows (`gemm_then`).
        let pre = if !ta && csa == 1 { m.packed(b, [k, cols, rsb, csb]) } else { None };
        if k == 0 {
            if !accumulate {
                (0..rows).for_each(|r| sc[r * c.pitch..r * c.pitch + cols].fill(0.0));
            }
        } else if let Some(packed) = pre.filter(|_| split && rows <= FEW_ROWS) {
            // SAFETY: `pack_constants` packed it only where the micro-kernels run; the view
            // checks put `rows` rows of `k` at pitch `a.pitch` in `sa` and of `cols` in `sc`.
            unsafe { packed_product(rows, k, cols, sa, a.pitch, packed, sc.as_mut_ptr(), c.pitch, accumulate) };
        } else if csa == 1 && (pre.is_some() || super::microkernel::suits(rows, k, cols, ta)) {
            let owned;
            let packed = match pre {
                Some(p) => p,
                None => {
                    owned = super::microkernel::pack(sb, k, cols, rsb, csb);
                    &owned[..]
                }
            };
            let (lda, ldc) = (a.pitch, c.pitch);
            // A K longer than the micro-kernels take at once (an operand packed once: any depth)
            // summed in blocks of `PACKED_K`, in order.
            let kb = if k > 1024 { PACKED_K } else { k };
            let block = |(i, cs): (usize, &mut [f32])| {
                let first = i * super::microkernel::BLOCK_ROWS;
                let n = super::microkernel::BLOCK_ROWS.min(rows - first);
                for k0 in (0..k).step_by(kb) {
                    let a = &sa[first * lda + k0..];
                    // SAFETY: `suits` or `pack_constants` (`runs_packed`) checked the host's
                    // ISA; the view checks put `n` rows of `k` at pitch `lda` from row `first`
                    // in `sa`, `n` rows of `cols` in this block of `sc`, and `pack` made `k·cols`
                    // values.
                    unsafe {
                        super::microkernel::gemm_block(
                            n,
                            kb.min(k - k0),
                            cols,
                            a,
                            lda,
                            packed,
                            k,
                            k0,
                            cs,
                            ldc,
                            accumulate || k0 > 0,
                        )
                    };
                }
            };
            let chunk = super::microkernel::BLOCK_ROWS * ldc;
            if split && rows > super::microkernel::BLOCK_ROWS {
                sc.par_chunks_mut(chunk).enumerate().for_each(block);
            } else {
                sc.chunks_mut(chunk).enumerate().for_each(block);
            }
        } else if streams(rows, cols, ta, tb) {
            few_rows(rows, k, cols, (sa, a.pitch), (sb, b.pitch), sc, c.pitch, accumulate, split);
        } else if split && rows * cols <= SPLIT_K_OUTPUT && k >= 2 * K_BLOCK {
            // A small product over a long sum (a weight gradient: K = every output position of
            // the batch) leaves nothing to split but K: fixed blocks of K into partial products,
            // in parallel, then added in block order — the same bits on any number of threads.
            let blocks = k.div_ceil(K_BLOCK);
            let mut partial = vec![0f32; blocks * rows * cols];
            let (pa, pb) = (Shared(sa.as_ptr()), Shared(sb.as_ptr()));
            partial.par_chunks_mut(rows * cols).enumerate().for_each(|(i, part)| {
                let (k0, kn) = (i * K_BLOCK, K_BLOCK.min(k - i * K_BLOCK));
                let lhs = pa.get().wrapping_add(k0 * csa);
                let rhs = pb.get().wrapping_add(k0 * rsb);
                // SAFETY: as below; block `i` reads columns k0..k0+kn of op(A) and rows of op(B).
                unsafe {
                    product(rows, cols, kn, part.as_mut_ptr(), cols, false, (lhs, rsa, csa), (rhs, rsb, csb), None)
                };
            });
            add_partials(sc, c.pitch, rows, cols, &partial, accumulate);
        } else {
            let threads = crate::bench::threads();
            let parallelism = (split && threads > 1 && rows * cols * k >= PARALLEL_GEMM).then_some(threads);
            // SAFETY: the machine checked every view inside its buffer, so every element the
            // strides reach is inside these slices, and `c` overlaps neither `a` nor `b`.
            unsafe {
                product(
                    rows,
                    cols,
                    k,
                    sc.as_mut_ptr(),
                    c.pitch,
                    accumulate,
                    (sa.as_ptr(), rsa, csa),
                    (sb.as_ptr(), rsb, csb),
                    parallelism,
                )
            };
        }
    }
    if let Some(bias) = bias {
        let sbias = &m.src(bias)[..cols];
        if split {
            sc.par_chunks_mut(c.pitch.max(1) * 64).for_each(|block| add_bias(block, c.pitch, sbias));
        } else {
            add_bias(sc, c.pitch, sbias);
        }
    }
}

/// Rows below which a product over a row-major operand streams that operand once
/// ([`few_rows`]): fewer than the micro-kernels' tile (a dense layer at batch 1).
const FEW_ROWS_STREAM: usize = 6;

/// Whether a product of `rows × cols` (`ta`, `tb`: its operands transposed) streams its
/// right-hand operand once ([`few_rows`]): fewer rows than a tile, 16 columns or more, neither
/// operand transposed.
fn streams(rows: usize, cols: usize, ta: bool, tb: bool) -> bool {
    !ta && !tb && rows < FEW_ROWS_STREAM && cols >= 16
}

/// Rows of B (steps of K) a part of [`few_rows`] streams: a fixed number, so that the parts and
/// the order their sums are added in do not depend on the threads.
const STREAM_K: usize = 256;

/// `C[rows × n] = A·B (+ C)` for fewer rows than a tile (a dense layer at batch 1: ResNet-50's
/// 2048 × 1000 classifier is 8 MB of weights for 4 MFLOP): B (`k × n`, rows `ldb` apart) read
/// once, front to back, in parts of [`STREAM_K`] of its rows over the pool (where `split` and the
/// product is large enough), each part's sums over every column held in cache while its rows
/// stream past, then the parts added in order: the same bits on any number of threads.
#[allow(clippy::too_many_arguments)]
fn few_rows(
    rows: usize,
    k: usize,
    n: usize,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    split: bool,
) {
    let mut partial = vec![0f32; k.div_ceil(STREAM_K) * rows * n];
    let part = |(p, acc): (usize, &mut [f32])| {
        let (k0, kn) = (p * STREAM_K, STREAM_K.min(k - p * STREAM_K));
        stream(rows, kn, (&a[k0..], lda), &b[k0 * ldb..], ldb, n, acc);
    };
    if split && rows * k * n >= PARALLEL_GEMM {
        partial.par_chunks_mut(rows * n).enumerate().for_each(part);
    } else {
        partial.chunks_mut(rows * n).enumerate().for_each(part);
    }
    add_partials(c, ldc, rows, n, &partial, accumulate);
}

/// `acc[r] += Σ_k a[r, k]·b[k, ..w]` for each of `rows` rows, K in order; compiled for AVX2
/// where the host has it.
fn stream(rows: usize, k: usize, a: (&[f32], usize), b: &[f32], ldb: usize, w: usize, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the host has AVX2.
            return unsafe { stream_avx2(rows, k, a, b, ldb, w, acc) };
        }
    }
    stream_of(rows, k, a, b, ldb, w, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_avx2(rows: usize, k: usize, a: (&[f32], usize), b: &[f32], ldb: usize, w: usize, acc: &mut [f32]) {
    stream_of(rows, k, a, b, ldb, w, acc)
}

#[inline(always)]
fn stream_of(rows: usize, k: usize, (a, lda): (&[f32], usize), b: &[f32], ldb: usize, w: usize, acc: &mut [f32]) {
    for kk in 0..k {
        let row = &b[kk * ldb..kk * ldb + w];
        for (r, acc) in acc.chunks_exact_mut(w).enumerate().take(rows) {
            let x = a[r * lda + kk];
            acc.iter_mut().zip(row).for_each(|(s, &v)| *s += x * v);
        }
    }
}

/// Outputs (m·n) small enough that a long K is split instead.
const SPLIT_K_OUTPUT: usize = 128 * 128;

/// Elements of K per partial product when K is split.
const K_BLOCK: usize = 2048;

/// A pointer shared by the parallel parts of a product, which only read through it.
#[derive(Clone, Copy)]
struct Shared(*const f32);
// SAFETY: only read, by parts that each write their own output.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the wrapper and not its field).
    fn get(self) -> *const f32 {
        self.0
    }
}

/// `C = op(A)·op(B)` (`+ C` when `accumulate`), `m × n`, over `k`; each operand as (pointer,
/// row stride, column stride); `C`'s rows `pitch` apart; on `threads` threads, or one.
///
/// # Safety
/// Every element the strides reach must be inside its allocation, and `C` must overlap neither
/// operand.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    pitch: usize,
    accumulate: bool,
    (a, rsa, csa): (*const f32, usize, usize),
    (b, rsb, csb): (*const f32, usize, usize),
    threads: Option<usize>,
) {
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            pitch as isize,
            accumulate,
            a,
            csa as isize,
            rsa as isize,
            b,
            csb as isize,
            rsb as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads.map_or(gemm::Parallelism::None, gemm::Parallelism::Rayon),
        )
    }
}

/// The input coordinates a window covers on `axis` for output `o`: `(first k, last k + 1)` of
/// the window offsets that fall inside the input.
fn window(g: &Geom, axis: usize, o: usize) -> std::ops::Range<usize> {
    let ks = 0..g.size[axis];
    let first = ks.clone().find(|&k| g.source(axis, o, k).is_some());
    match first {
        Some(f) => f..ks.rev().find(|&k| g.source(axis, o, k).is_some()).map_or(f, |l| l + 1),
        None => 0..0,
    }
}

/// Calls `f(output row, input rows, positions)` for every output row `(zd, zh)` of one example:
/// the input rows `(d, h)` its windows cover (as `d·ih + h`, in window order), and for each
/// window column `kw` inside the input for some position, `(kw, first zw, last zw + 1, input
/// column of the first)`. Pooling runs along these rows, so that no window is listed tap by tap.
fn each_output_row(g: &Geom, mut f: impl FnMut(usize, &[usize], &[(usize, usize, usize, usize)])) {
    let [od, oh, ow] = g.output;
    let ih = g.input[1];
    // Along the width, the same for every row: for each kw, the outputs whose window column kw
    // is inside the input.
    let mut columns = Vec::new();
    for kw in 0..g.size[2] {
        let inside: Vec<usize> = (0..ow).filter(|&zw| g.source(2, zw, kw).is_some()).collect();
        if let (Some(&lo), Some(&hi)) = (inside.first(), inside.last()) {
            columns.push((kw, lo, hi + 1, g.source(2, lo, kw).unwrap_or(0)));
        }
    }
    let mut rows = Vec::with_capacity(g.size[0] * g.size[1]);
    for zd in 0..od {
        for zh in 0..oh {
            rows.clear();
            for kd in window(g, 0, zd) {
                let d = g.source(0, zd, kd).unwrap_or(0);
                for kh in window(g, 1, zh) {
                    rows.push(d * ih + g.source(1, zh, kh).unwrap_or(0));
                }
            }
            f(zd * oh + zh, &rows, &columns);
        }
    }
}

/// How many window columns of each output position `zw` fall inside the input.
fn columns_inside(g: &Geom) -> Vec<f32> {
    (0..g.output[2]).map(|zw| window(g, 2, zw).len() as f32).collect()
}

/// Pooling of one example, row by row: channels innermost; an average over the elements inside
/// the input.
fn pool(kind: PoolKind, xs: &[f32], ys: &mut [f32], g: &Geom) {
    pool_rows(kind, xs, ys, g, 0);
}

/// [`pool`] of the output rows (all of the width) that `ys` holds, from row `first`: compiled
/// for AVX-512 or AVX2 where the host has them (the same bits: each output one fold, in order).
fn pool_rows(kind: PoolKind, xs: &[f32], ys: &mut [f32], g: &Geom, first: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::microkernel::avx512() {
            // SAFETY: the host has AVX-512F.
            return unsafe { pool_rows_avx512(kind, xs, ys, g, first) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the host has AVX2.
            return unsafe { pool_rows_avx2(kind, xs, ys, g, first) };
        }
    }
    pool_rows_of(kind, xs, ys, g, first)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_rows_avx512(kind: PoolKind, xs: &[f32], ys: &mut [f32], g: &Geom, first: usize) {
    pool_rows_of(kind, xs, ys, g, first)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_rows_avx2(kind: PoolKind, xs: &[f32], ys: &mut [f32], g: &Geom, first: usize) {
    pool_rows_of(kind, xs, ys, g, first)
}

/// `y ← max(y, x)` (a NaN in `x` never wins: `y` starts at −∞ and never holds one) or
/// `y ← y + x`, element by element.
#[inline(always)]
fn fold(kind: PoolKind, y: &mut [f32], x: &[f32]) {
    match kind {
        PoolKind::Max => y.iter_mut().zip(x).for_each(|(y, &x)| *y = if x > *y { x } else { *y }),
        PoolKind::Avg => y.iter_mut().zip(x).for_each(|(y, &x)| *y += x),
    }
}

/// [`pool_rows`]' body. Where it takes fewer steps, an output row is separable: the window's
/// input rows folded into one row first (`rows·iw` channels' worth), then its columns
/// (`kw·ow`), against `rows·kw·ow` tap by tap (3×3 windows of stride 1: 6 against 9).
#[inline(always)]
fn pool_rows_of(kind: PoolKind, xs: &[f32], ys: &mut [f32], g: &Geom, first: usize) {
    let c = g.cg;
    let (iw, ow, step) = (g.input[2], g.output[2], g.stride[2] * c);
    let start = if kind == PoolKind::Max { f32::NEG_INFINITY } else { 0.0 };
    let inside = columns_inside(g);
    let count = ys.len() / (ow * c).max(1);
    let mut folded = Vec::new();
    each_output_row(g, |r, rows, columns| {
        if r < first || r >= first + count {
            return;
        }
        let r = r - first;
        let y = &mut ys[r * ow * c..(r + 1) * ow * c];
        y.fill(start);
        let taps: usize = columns.iter().map(|&(_, lo, hi, _)| hi - lo).sum();
        if rows.len() > 1 && rows.len() * iw + taps < rows.len() * taps {
            folded.clear();
            folded.resize(iw * c, start);
            for &row in rows {
                fold(kind, &mut folded, &xs[row * iw * c..(row + 1) * iw * c]);
            }
            for &(_, lo, hi, first) in columns {
                let mut at = first * c;
                for y in y[lo * c..hi * c].chunks_exact_mut(c) {
                    fold(kind, y, &folded[at..at + c]);
                    at += step;
                }
            }
        } else {
            for &row in rows {
                for &(_, lo, hi, first) in columns {
                    let mut at = (row * iw + first) * c;
                    for y in y[lo * c..hi * c].chunks_exact_mut(c) {
                        fold(kind, y, &xs[at..at + c]);
                        at += step;
                    }
                }
            }
        }
        if kind == PoolKind::Avg {
            for (y, &cols) in y.chunks_exact_mut(c).zip(&inside) {
                let count = (cols * rows.len() as f32).max(1.0);
                y.iter_mut().for_each(|v| *v /= count);
            }
        }
    });
}

/// The gradient of one example's pooling, row by row: to the first largest element of each
/// window in window order (max), or shared equally over the elements inside the input (average).
fn pool_grad(kind: PoolKind, xs: Option<&[f32]>, dys: &[f32], dxs: &mut [f32], g: &Geom) {
    let c = g.cg;
    let (iw, ow, step) = (g.input[2], g.output[2], g.stride[2] * c);
    let inside = columns_inside(g);
    let mut best = vec![(f32::NEG_INFINITY, usize::MAX); ow * c];
    each_output_row(g, |r, rows, columns| {
        let dy = &dys[r * ow * c..(r + 1) * ow * c];
        match (kind, xs) {
            (PoolKind::Max, Some(xs)) => {
                best.fill((f32::NEG_INFINITY, usize::MAX));
                // Window order: input rows, then window columns; a later element wins only if
                // larger, so the first maximum is kept.
                for &row in rows {
                    for &(_, lo, hi, first) in columns {
                        let mut at = (row * iw + first) * c;
                        for b in best[lo * c..hi * c].chunks_exact_mut(c) {
                            for (ch, b) in b.iter_mut().enumerate() {
                                let x = xs[at + ch];
                                if b.1 == usize::MAX || x > b.0 {
                                    *b = (x, at + ch);
                                }
                            }
                            at += step;
                        }
                    }
                }
                for (&(_, at), &d) in best.iter().zip(dy) {
                    if at != usize::MAX {
                        dxs[at] += d;
                    }
                }
            }
            _ => {
                for &row in rows {
                    for &(_, lo, hi, first) in columns {
                        let mut at = (row * iw + first) * c;
                        for (zw, dy) in dy[lo * c..hi * c].chunks_exact(c).enumerate() {
                            let count = (inside[lo + zw] * rows.len() as f32).max(1.0);
                            dxs[at..at + c].iter_mut().zip(dy).for_each(|(d, &v)| *d += v / count);
                            at += step;
                        }
                    }
                }
            }
        }
    });
}
