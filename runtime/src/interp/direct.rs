//! Direct convolution, forward and weight gradient, for the layers [`Geom::direct`] picks: few
//! filters over a short window of few channels (LeNet-5's first layer: 6 filters over 5×5×1).
//! There im2col makes rows of 25 values for a product 6 columns wide, which no GEMM runs well;
//! here each output row is a run of multiply-adds over contiguous memory instead.
//!
//! Each input row is first *expanded*: every value repeated once per filter, the row padded to
//! the positions the windows reach. Then output row `[ow · filters]` (position-major, filter
//! minor, as NHWC stores it) is, for each window tap, that expanded row shifted by the tap times
//! the filters tiled along the row: `out[j] += e[tap_w · f + j] · w_tiled[j]`. The weight
//! gradient runs the same loop with `dy`'s row in place of the filters, into per-tap sums folded
//! over positions at the end.
//!
//! With AVX2, and filters that tile a period of one to three registers (1, 2, 3, 4, 6, 8, 12 or
//! 16 filters), the tiled filters of a tap are the same registers all along the row: they are
//! loaded once per tap and each multiply needs one load, not two (`avx`). Elsewhere the loops
//! run a block of 32 values at a time in portable code the compiler vectorizes.
//!
//! Work is split over examples (forward) and fixed blocks of examples (weight gradient, partial
//! sums added in block order), so the bits do not depend on the number of threads.

use cnnc_compiler::lir::Geom;
use rayon::prelude::*;

/// Examples per block of the weight gradient's partial sums.
const EXAMPLES_PER_BLOCK: usize = 4;

/// Output values of a row accumulated at once by the portable loops.
const LANES: usize = 32;

/// Output values of a row the AVX2 loops accumulate at once (12, 6 or 4 groups of a period of
/// 8, 16 or 24 values: 12 registers), and so the multiple rows are padded to.
const CHUNK: usize = 96;

/// Values per input row once expanded: the positions the windows reach, `filters` each.
fn expanded_width(g: &Geom, filters: usize) -> usize {
    (g.output[2] + g.size[2] - 1) * filters
}

/// An output row's values, padded to whole chunks: the length of row buffers.
fn stride(owf: usize) -> usize {
    owf.div_ceil(CHUNK) * CHUNK
}

/// The registers of a period of the tiled filters, where the AVX2 loops take `filters`.
fn period(filters: usize) -> Option<usize> {
    match filters {
        1 | 2 | 4 | 8 => Some(1),
        16 => Some(2),
        3 | 6 | 12 => Some(3),
        _ => None,
    }
}

/// Expands example `x` (`[d, h, w, channels]`): for each input row `(d, h)` and channel, the row
/// padded on the left by the geometry's padding, each value repeated `filters` times; then a
/// chunk and more of zeros, so that a block read past a row's end stays inside the buffer.
fn expand(x: &[f32], g: &Geom, filters: usize, e: &mut Vec<f32>) {
    let [id, ih, iw] = g.input;
    let c = g.channels;
    let width = expanded_width(g, filters);
    e.clear();
    e.resize(id * ih * c * width + 2 * CHUNK, 0.0);
    for dh in 0..id * ih {
        for ch in 0..c {
            let row = &mut e[(dh * c + ch) * width..(dh * c + ch + 1) * width];
            let inside = iw.min((width / filters).saturating_sub(g.pad[2]));
            let dst = &mut row[g.pad[2] * filters..(g.pad[2] + inside) * filters];
            for (xw, out) in dst.chunks_exact_mut(filters).enumerate() {
                let v = x[(dh * iw + xw) * c + ch];
                for o in out {
                    *o = v;
                }
            }
        }
    }
}

/// For output row `(zd, zh)`: each window element `(kd, kh, kw)` and channel that falls inside
/// the input (along depth and height; along width the expanded rows hold the padding), as (its
/// row of the filters, `tap·channels + ch`, where its input starts in the expanded example).
fn taps(g: &Geom, filters: usize, zd: usize, zh: usize, out: &mut Vec<(usize, usize)>) {
    let [_, ih, _] = g.input;
    let [fd, fh, fw] = g.size;
    let (c, width) = (g.channels, expanded_width(g, filters));
    out.clear();
    for kd in 0..fd {
        let Some(d) = g.source(0, zd, kd) else { continue };
        for kh in 0..fh {
            let Some(h) = g.source(1, zh, kh) else { continue };
            for kw in 0..fw {
                for ch in 0..c {
                    let row = ((kd * fh + kh) * fw + kw) * c + ch;
                    out.push((row, ((d * ih + h) * c + ch) * width + kw * filters));
                }
            }
        }
    }
}

/// `acc += a · b` on a block of `LANES` (a multiply then an add).
#[inline(always)]
fn block(acc: &mut [f32; LANES], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in acc.iter_mut().zip(&a[..LANES]).zip(&b[..LANES]) {
        *o += x * y;
    }
}

/// The registers of a period of the tiled filters where the AVX2 loops run on this host, else
/// `None` (the portable loops): decided once per convolution, so that its loops and the weight
/// gradient's fold agree.
fn registers(filters: usize) -> Option<usize> {
    period(filters).filter(|_| avx2())
}

/// Output row `row` (`stride` values) from its taps `list`: the tiled `bias` plus each tap's
/// expanded input times its tiled filters (`tiled`, a row of `stride` per filter row).
fn forward_row(
    e: &[f32],
    tiled: &[f32],
    bias: &[f32],
    list: &[(usize, usize)],
    row: &mut [f32],
    periodic: Option<usize>,
) {
    let stride = row.len();
    #[cfg(not(target_arch = "x86_64"))]
    let _ = periodic;
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = periodic {
        // SAFETY: `registers` found AVX2; `expand` left two chunks of slack after the last row,
        // so every chunk read from `e` at a tap's start is inside it; `tiled` holds a row of
        // `stride` ≥ a period per filter row, `bias` `stride` values, `row` whole chunks.
        unsafe {
            match v {
                1 => avx::forward_row::<1, 12>(e.as_ptr(), tiled.as_ptr(), stride, bias.as_ptr(), list, row),
                2 => avx::forward_row::<2, 6>(e.as_ptr(), tiled.as_ptr(), stride, bias.as_ptr(), list, row),
                _ => avx::forward_row::<3, 4>(e.as_ptr(), tiled.as_ptr(), stride, bias.as_ptr(), list, row),
            }
        }
        return;
    }
    for j0 in (0..stride).step_by(LANES) {
        let mut acc = [0f32; LANES];
        acc.copy_from_slice(&bias[j0..j0 + LANES]);
        for &(w, x) in list {
            block(&mut acc, &e[x + j0..], &tiled[w * stride + j0..]);
        }
        row[j0..j0 + LANES].copy_from_slice(&acc);
    }
}

/// Adds into `acc` (`stride` values: the sums of one filter row) the products of the expanded
/// input at each `(x, dy row)` of `pairs` with that row of `dyc`.
fn weight_grad_row(e: &[f32], dyc: &[f32], pairs: &[(usize, usize)], acc: &mut [f32], periodic: Option<usize>) {
    let stride = acc.len();
    #[cfg(not(target_arch = "x86_64"))]
    let _ = periodic;
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = periodic {
        // SAFETY: as in `forward_row`; every pair's dy row holds `stride` values of `dyc`.
        unsafe {
            match v {
                1 => avx::weight_grad_row::<1, 12>(e.as_ptr(), dyc.as_ptr(), stride, pairs, acc),
                2 => avx::weight_grad_row::<2, 6>(e.as_ptr(), dyc.as_ptr(), stride, pairs, acc),
                _ => avx::weight_grad_row::<3, 4>(e.as_ptr(), dyc.as_ptr(), stride, pairs, acc),
            }
        }
        return;
    }
    for j0 in (0..stride).step_by(LANES) {
        let mut sum = [0f32; LANES];
        sum.copy_from_slice(&acc[j0..j0 + LANES]);
        for &(x, r) in pairs {
            block(&mut sum, &e[x + j0..], &dyc[r * stride + j0..]);
        }
        acc[j0..j0 + LANES].copy_from_slice(&sum);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    //! The AVX2 loops: a chunk of an output row in 12 registers, `R` groups of a period of `V`
    //! registers, over every tap.
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
    }

    /// `row = bias + Σ_taps e[x + j] · tiled[w][j mod period]`, chunk by chunk.
    ///
    /// # Safety
    /// AVX2 is available; `e` holds `x + row.len()` values past every tap's `x`; `tiled` a
    /// period (`8·V` values) at `w·stride` for every tap's `w`; `bias` a period; `row.len()` is
    /// a multiple of `8·V·R`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn forward_row<const V: usize, const R: usize>(
        e: *const f32,
        tiled: *const f32,
        stride: usize,
        bias: *const f32,
        list: &[(usize, usize)],
        row: &mut [f32],
    ) {
        let period = 8 * V;
        let out = row.as_mut_ptr();
        for c0 in (0..row.len()).step_by(period * R) {
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            for group in acc.iter_mut() {
                for (v, a) in group.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(bias.add(8 * v));
                }
            }
            for &(w, x) in list {
                let mut wv = [_mm256_setzero_ps(); V];
                for (v, r) in wv.iter_mut().enumerate() {
                    *r = _mm256_loadu_ps(tiled.add(w * stride + 8 * v));
                }
                let src = e.add(x + c0);
                for (g, group) in acc.iter_mut().enumerate() {
                    for (v, a) in group.iter_mut().enumerate() {
                        let input = _mm256_loadu_ps(src.add(g * period + 8 * v));
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(input, wv[v]));
                    }
                }
            }
            for (g, group) in acc.iter().enumerate() {
                for (v, a) in group.iter().enumerate() {
                    _mm256_storeu_ps(out.add(c0 + g * period + 8 * v), *a);
                }
            }
        }
    }

    /// `acc[j mod period] += Σ_pairs Σ_j e[x + j] · dyc[r·stride + j]` over the row, summed by
    /// period into the first `8·V` values of `acc`.
    ///
    /// # Safety
    /// As [`forward_row`]; every pair's `dyc` row holds `stride` values, a multiple of `8·V·R`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn weight_grad_row<const V: usize, const R: usize>(
        e: *const f32,
        dyc: *const f32,
        stride: usize,
        pairs: &[(usize, usize)],
        acc: &mut [f32],
    ) {
        let period = 8 * V;
        let mut sums = [[_mm256_setzero_ps(); V]; R];
        for &(x, r) in pairs {
            let (src, dy) = (e.add(x), dyc.add(r * stride));
            for c0 in (0..stride).step_by(period * R) {
                for (g, group) in sums.iter_mut().enumerate() {
                    for (v, s) in group.iter_mut().enumerate() {
                        let at = c0 + g * period + 8 * v;
                        *s =
                            _mm256_add_ps(*s, _mm256_mul_ps(_mm256_loadu_ps(src.add(at)), _mm256_loadu_ps(dy.add(at))));
                    }
                }
            }
        }
        let out = acc.as_mut_ptr();
        for v in 0..V {
            let mut total = _mm256_loadu_ps(out.add(8 * v));
            for group in &sums {
                total = _mm256_add_ps(total, group[v]);
            }
            _mm256_storeu_ps(out.add(8 * v), total);
        }
    }
}

/// Copies rows of `filters` values from `src` (rows `src_pitch` apart) to `dst` (rows `dst_pitch`
/// apart), `filters` the lesser pitch: one copy where both are contiguous.
fn copy_rows(src: &[f32], src_pitch: usize, dst: &mut [f32], dst_pitch: usize) {
    let filters = src_pitch.min(dst_pitch);
    let rows = (src.len() + src_pitch - filters) / src_pitch;
    if src_pitch == dst_pitch {
        let len = (rows - 1) * src_pitch + filters;
        dst[..len].copy_from_slice(&src[..len]);
        return;
    }
    for r in 0..rows {
        let (s, d) = (&src[r * src_pitch..r * src_pitch + filters], &mut dst[r * dst_pitch..r * dst_pitch + filters]);
        for (o, &v) in d.iter_mut().zip(s) {
            *o = v;
        }
    }
}

/// `values` (one per filter) tiled along a row.
fn tile_row(values: &[f32], out: &mut [f32]) {
    for chunk in out.chunks_mut(values.len().max(1)) {
        chunk.copy_from_slice(&values[..chunk.len()]);
    }
}

/// A forward convolution ready to run example by example: the filters and the bias tiled along
/// an output row.
pub(super) struct Forward {
    tiled: Vec<f32>,
    bias: Vec<f32>,
    /// [`registers`] for these filters.
    periodic: Option<usize>,
}

impl Forward {
    /// For the filters `w` (`[taps·channels, filters]` rows `w_pitch` apart) and `bias`.
    pub(super) fn new(g: &Geom, w: &[f32], w_pitch: usize, bias: Option<&[f32]>, filters: usize) -> Forward {
        let stride = stride(g.output[2] * filters);
        let rows = g.window() * g.channels;
        let mut tiled = vec![0f32; rows * stride];
        for (r, t) in tiled.chunks_mut(stride.max(1)).enumerate() {
            tile_row(&w[r * w_pitch..r * w_pitch + filters], t);
        }
        let mut tiled_bias = vec![0f32; stride];
        if let Some(b) = bias {
            tile_row(&b[..filters], &mut tiled_bias);
        }
        Forward { tiled, bias: tiled_bias, periodic: registers(filters) }
    }

    /// Example `n` of the batch `x` (contiguous `[n, d, h, w, channels]`) into `out` (its
    /// `[positions, filters]` rows, `pitch` apart); `e` a buffer to reuse.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn example(
        &self,
        x: &[f32],
        n: usize,
        g: &Geom,
        filters: usize,
        out: &mut [f32],
        pitch: usize,
        e: &mut Vec<f32>,
    ) {
        let per_in: usize = g.input.iter().product::<usize>() * g.channels;
        expand(&x[n * per_in..(n + 1) * per_in], g, filters, e);
        let [od, oh, ow] = g.output;
        let mut row = vec![0f32; stride(ow * filters)];
        let mut list = Vec::new();
        for zd in 0..od {
            for zh in 0..oh {
                taps(g, filters, zd, zh, &mut list);
                forward_row(e, &self.tiled, &self.bias, &list, &mut row, self.periodic);
                copy_rows(&row[..ow * filters], filters, &mut out[(zd * oh + zh) * ow * pitch..], pitch);
            }
        }
    }
}

/// The weight gradient `dw = im2col(x)ᵀ·dy` (`[taps·channels, filters]` rows `dw_pitch` apart)
/// of the batch `x` and `dy` (`[n·positions, filters]` rows `dy_pitch` apart), in fixed blocks
/// of examples added in order.
pub(super) fn weight_grad(
    x: &[f32],
    g: &Geom,
    dy: &[f32],
    dy_pitch: usize,
    filters: usize,
    dw: &mut [f32],
    dw_pitch: usize,
) {
    let per_in: usize = g.input.iter().product::<usize>() * g.channels;
    let [od, oh, ow] = g.output;
    let positions = g.positions();
    let rows = g.window() * g.channels;
    let owf = ow * filters;
    let stride = stride(owf);
    // For each filter row, its (input start, output row) pairs over the output rows.
    let mut pairs: Vec<Vec<(usize, usize)>> = vec![Vec::new(); rows];
    let mut list = Vec::new();
    for zd in 0..od {
        for zh in 0..oh {
            taps(g, filters, zd, zh, &mut list);
            for &(w, x) in &list {
                pairs[w].push((x, zd * oh + zh));
            }
        }
    }
    let periodic = registers(filters);
    let blocks = g.n.div_ceil(EXAMPLES_PER_BLOCK).max(1);
    let mut partial = vec![0f32; blocks * rows * stride];
    partial.par_chunks_mut((rows * stride).max(1)).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(e, dyc): &mut (Vec<f32>, Vec<f32>), (b, acc)| {
            for n in b * EXAMPLES_PER_BLOCK..((b + 1) * EXAMPLES_PER_BLOCK).min(g.n) {
                expand(&x[n * per_in..(n + 1) * per_in], g, filters, e);
                // This example's dy, one zero-padded row of `stride` per output row.
                dyc.clear();
                dyc.resize(od * oh * stride, 0.0);
                for (r, out) in dyc.chunks_mut(stride).enumerate() {
                    let at = (n * positions + r * ow) * dy_pitch;
                    copy_rows(&dy[at..at + (ow - 1) * dy_pitch + filters], dy_pitch, &mut out[..owf], filters);
                }
                for (w, acc) in acc.chunks_mut(stride).enumerate() {
                    weight_grad_row(e, dyc, &pairs[w], acc, periodic);
                }
            }
        },
    );
    // Fold each filter row's sums over positions (or over the period) and the blocks, in order.
    let span = periodic.map_or(owf, |v| 8 * v);
    for r in 0..rows {
        let out = &mut dw[r * dw_pitch..r * dw_pitch + filters];
        out.fill(0.0);
        for block in partial.chunks((rows * stride).max(1)) {
            for position in block[r * stride..r * stride + span].chunks(filters) {
                out.iter_mut().zip(position).for_each(|(o, &v)| *o += v);
            }
        }
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The geometry of a convolution over `[n, d, h, w, c]` (axes of size 1 where lower-rank).
    fn geom(n: usize, input: [usize; 3], c: usize, size: [usize; 3], stride: [usize; 3], pad: [usize; 3]) -> Geom {
        let output = std::array::from_fn(|a| (input[a] + 2 * pad[a] - size[a]) / stride[a] + 1);
        Geom { n, input, channels: c, c0: 0, cg: c, size, stride, pad, dilation: [1, 1, 1], output }
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104729) % 1009) as f32 / 504.5 - 1.0).collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= 1e-4 * scale, "largest difference {worst} (scale {scale})");
    }

    #[test]
    fn direct_convolution_and_its_weight_gradient_equal_im2col_products() {
        // 2D like LeNet-5's first layer, padded, strided over rows, several channels, 1D, 3D.
        let cases = [
            geom(3, [1, 32, 32], 1, [1, 5, 5], [1, 1, 1], [0, 0, 0]),
            geom(2, [1, 9, 11], 3, [1, 3, 3], [1, 2, 1], [0, 1, 1]),
            geom(5, [1, 1, 40], 2, [1, 1, 7], [1, 1, 1], [0, 0, 3]),
            geom(2, [4, 6, 5], 2, [3, 3, 3], [2, 1, 1], [1, 1, 1]),
        ];
        for (i, g) in cases.iter().enumerate() {
            for filters in [1, 5, 6, 16] {
                assert!(g.direct(filters), "case {i} runs directly");
                let taps = g.window() * g.channels;
                let rows = g.n * g.positions();
                let x = values(g.n * g.input.iter().product::<usize>() * g.channels, i);
                // Filters with a pitch wider than the filters, as a column slice would have.
                let w_pitch = filters + 3;
                let w = values(taps * w_pitch, i + 10);
                let bias = values(filters, i + 20);
                // The oracle: im2col rows times the filters.
                let mut col = vec![0f32; rows * taps];
                g.for_each(|r, k, at| col[r * taps + k] = x[at]);
                let mut expected = vec![0f32; rows * filters];
                for r in 0..rows {
                    for f in 0..filters {
                        expected[r * filters + f] =
                            bias[f] + (0..taps).map(|k| col[r * taps + k] * w[k * w_pitch + f]).sum::<f32>();
                    }
                }
                let mut out = vec![0f32; rows * filters];
                let plan = Forward::new(g, &w, w_pitch, Some(&bias), filters);
                let mut e = Vec::new();
                for (n, out) in out.chunks_mut(g.positions() * filters).enumerate() {
                    plan.example(&x, n, g, filters, out, filters, &mut e);
                }
                close(&out, &expected);
                // The weight gradient, `dy` with a pitch wider than the filters.
                let dy_pitch = filters + 1;
                let dy = values(rows * dy_pitch, i + 30);
                let mut expected = vec![0f32; taps * filters];
                for k in 0..taps {
                    for f in 0..filters {
                        expected[k * filters + f] = (0..rows).map(|r| col[r * taps + k] * dy[r * dy_pitch + f]).sum();
                    }
                }
                let mut dw = vec![0f32; taps * filters];
                weight_grad(&x, g, &dy, dy_pitch, filters, &mut dw, filters);
                close(&dw, &expected);
            }
        }
    }
}
