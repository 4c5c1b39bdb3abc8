//! Winograd's F(2×2, 3×3) (Lavin and Gray, 2016) for the convolutions the `winograd` pass gives
//! a Winograd form: each 2×2 block of outputs (a *tile*) comes from the 4×4 block of input
//! around it as `Y = Aᵀ·[Σ_ci (G·g·Gᵀ) ⊙ (Bᵀ·d·B)]·A`, the sum over input channels being sixteen
//! products `[tiles, cin]·[cin, cout]`, one per position ξ of the 4×4 transformed block. That is
//! 16 multiplies per tile and channel pair where the direct convolution makes 36.
//!
//! The filters' transform `U = G·g·Gᵀ` is a prepare kernel ([`filter`]). Here: blocks of tile
//! rows (whole rows of the output, so that a block's outputs are contiguous rows for the
//! epilogue) of one example, split over the pool; per block the input transform into
//! `[16, tiles, cin]`, the sixteen products into `[16, tiles, cout]`, the output transform, the
//! bias and the epilogue.

//!
//! Behind a flag (`--winograd-tile 4`), F(4×4, 3×3): each 4×4 block of outputs from the 6×6
//! block of input around it, 36 products for 16 outputs (4× fewer multiplies than the direct
//! convolution, 1.78× fewer than F(2×2, 3×3)), with the transforms of Lavin and Gray's paper,
//! whose larger coefficients cost accuracy in f32 (measured in the tests and the README).

use cnnc_compiler::lir::Geom;
use rayon::prelude::*;

/// F(4×4, 3×3)'s `G` (6×3).
const G4: [[f32; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

// Its `Bᵀ` = [[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0], [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0],
// [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0, 1]] and `Aᵀ` = [[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0],
// [0, 1, 1, 4, 4, 0], [0, 1, −1, 8, −8, 1]] are written out in `bt6` and `at6`.

/// `G·g·Gᵀ` of F(4×4, 3×3) for one 3×3 filter `g`.
pub(super) fn filter4(g: &[[f32; 3]; 3]) -> [[f32; 6]; 6] {
    let gg: [[f32; 3]; 6] = std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| G4[i][k] * g[k][j]).sum()));
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| gg[i][k] * G4[j][k]).sum()))
}

/// The transformed filters `u` of 3×3 filters `w` (`[9·cin, cout]`, rows `w_pitch` apart) for
/// tiles of `m`×`m` outputs (2 or 4; α = m + 2): for each position ξ = α·i + j, the `cin × cout`
/// matrix `(G·g·Gᵀ)[i][j]` packed for the micro-kernels ([`super::microkernel::pack`]'s panels,
/// zeros past `cout`), `cin·pitch` values a position (`pitch` = `cout` rounded up to 8) — packed
/// here once per change of the parameters, not by every run of the convolution.
pub(super) fn filters(w: &[f32], w_pitch: usize, cin: usize, cout: usize, m: usize, u: &mut [f32], pitch: usize) {
    debug_assert!(pitch >= cout.next_multiple_of(8));
    let aa = (m + 2) * (m + 2);
    u[..aa * cin * pitch].fill(0.0);
    // Where column `co` of row `ci` of a position's matrix is: its panel (starting at column
    // `j0`, `width` wide) holds `cin` rows of `width` from `j0·cin` on.
    let mut panel = vec![(0, 0); cout];
    let mut j0 = 0;
    while j0 < cout {
        let width = super::microkernel::width(cout - j0);
        panel[j0..(j0 + width).min(cout)].iter_mut().for_each(|p| *p = (j0, width));
        j0 += width;
    }
    for ci in 0..cin {
        for co in 0..cout {
            let g: [[f32; 3]; 3] =
                std::array::from_fn(|kh| std::array::from_fn(|kw| w[((kh * 3 + kw) * cin + ci) * w_pitch + co]));
            let (j0, width) = panel[co];
            let at = j0 * cin + ci * width + co - j0;
            let mut put = |xi: usize, v: f32| u[xi * cin * pitch + at] = v;
            if m == 4 {
                filter4(&g).iter().flatten().enumerate().for_each(|(xi, &v)| put(xi, v));
            } else {
                filter(&g).iter().flatten().enumerate().for_each(|(xi, &v)| put(xi, v));
            }
        }
    }
}

/// `G·g·Gᵀ` for one 3×3 filter `g`, `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
pub(super) fn filter(g: &[[f32; 3]; 3]) -> [[f32; 4]; 4] {
    let apply = |r: [f32; 3]| [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
    // Columns of G·g, then G applied to each row of G·g.
    let gg: [[f32; 4]; 3] = std::array::from_fn(|j| apply([g[0][j], g[1][j], g[2][j]]));
    std::array::from_fn(|i| apply([gg[0][i], gg[1][i], gg[2][i]]))
}

/// The convolution's operands: input, transformed filters, output and bias.
pub(super) struct Conv<'a> {
    /// The batch, contiguous `[n, h, w, channels]` (the convolution reads the geometry's block
    /// of `cg` channels from `c0`).
    pub x: &'a [f32],
    /// Transformed filters ([`filters`]): position ξ's packed panels from `ξ·cin·u_pitch` on.
    pub u: &'a [f32],
    pub u_pitch: usize,
    /// Bias per output channel.
    pub bias: Option<&'a [f32]>,
    /// Output channels.
    pub cout: usize,
    /// Outputs per side of a tile: 2 (F(2×2, 3×3)) or 4 (F(4×4, 3×3)).
    pub m: usize,
}

/// Runs the convolution over `g`: for each run of output rows, `out(first row, rows)` gives the
/// output rows (`[rows, cout]`, `pitch` apart) to write and `after(first row, rows)` runs the
/// epilogue on them.
///
/// Small filters (up to 4 MiB transformed: VGG-16's first six layers) go block by block, a block
/// of tiles at a time through both transforms and the sixteen products while it is in cache.
/// Larger ones would be read from memory again for every block, so they go phase by phase over
/// a whole example: every tile's input transform, then the sixteen products (one per task, each
/// position's filters read once), then the output transforms.
pub(super) fn conv<'o>(
    k: &Conv,
    g: &Geom,
    pitch: usize,
    out: impl Fn(usize, usize) -> &'o mut [f32] + Sync,
    after: impl Fn(usize, usize) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let [_, oh, ow] = g.output;
    let (m, aa) = (k.m, (k.m + 2) * (k.m + 2));
    let total = oh.div_ceil(m) * ow.div_ceil(m);
    let (cin, cout) = (g.cg, k.cout);
    let whole = aa * cin * cout > WHOLE_FILTERS;
    // Tiles of a block (in row-major order, across tile rows): the block's transformed input
    // and products fit in L2 cache.
    let span = if whole { total } else { (tiles_per_block(cin, cout) * 16 / aa).max(8).min(total) };
    // The micro-kernel over any number of filters, packed by the prepare phase.
    let micro = cout > 0 && super::microkernel::runs(span, cin);
    let emit = |n: usize, t0: usize, t1: usize, mm: &[f32], plane: usize, y: &mut Vec<f32>| {
        // In the whole-example phases `mm` holds every tile; in a block, the block's alone
        // (from `t0`).
        let first = if whole { 0 } else { t0 };
        write_rows(g, m, n, t0, t1, cout, pitch, &out, &after, y, |t, tiles, place| {
            transform_output(m, mm, plane, t - first, tiles, k.bias, cout, place)
        })
    };
    if whole {
        // The phases' buffers (6.4 MB each on VGG-16's 28×28 layers) kept by the thread from
        // call to call: fresh ones cost a page fault every 4 KiB on every run.
        let (mut v, mut mm) = SCRATCH.take();
        v.resize(aa * total * cin, 0.0);
        mm.resize(aa * total * cout, 0.0);
        for n in 0..g.n {
            // Input transforms, tile by tile: `v` is `[tiles, α², cin]`.
            v.par_chunks_mut(CHUNK * aa * cin).enumerate().for_each(|(i, part)| {
                let t0 = i * CHUNK;
                transform_input(m, k.x, g, n, t0, (t0 + CHUNK).min(total), part, cin, aa * cin);
            });
            // The α² products, one a task: `mm` is `[α², tiles, cout]`.
            mm.par_chunks_mut(total * cout)
                .enumerate()
                .for_each(|(xi, c)| product(&v[xi * cin..], aa * cin, total, cin, cout, k, xi, micro, c));
            (0..total.div_ceil(CHUNK)).into_par_iter().try_for_each_init(Vec::new, |y, i| {
                let t0 = i * CHUNK;
                emit(n, t0, (t0 + CHUNK).min(total), &mm, total, y)
            })?;
        }
        SCRATCH.set((v, mm));
        return Ok(());
    }
    let blocks = total.div_ceil(span);
    (0..g.n * blocks).into_par_iter().try_for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(v, mm, y): &mut (Vec<f32>, Vec<f32>, Vec<f32>), task| {
            let (n, b) = (task / blocks, task % blocks);
            let (t0, t1) = (b * span, ((b + 1) * span).min(total));
            let tiles = t1 - t0;
            v.resize(aa * tiles * cin, 0.0);
            mm.resize(aa * tiles * cout, 0.0);
            // `v` is `[α², tiles, cin]`, `mm` `[α², tiles, cout]`.
            transform_input(m, k.x, g, n, t0, t1, v, tiles * cin, cin);
            for (xi, c) in mm.chunks_mut(tiles * cout).enumerate() {
                product(&v[xi * tiles * cin..], cin, tiles, cin, cout, k, xi, micro, c);
            }
            emit(n, t0, t1, mm, tiles, y)
        },
    )
}

thread_local! {
    /// The whole-example phases' transformed inputs and products, kept for the next call.
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Filters (transformed, values) above which [`conv`] goes phase by phase: 4 MiB.
const WHOLE_FILTERS: usize = 1 << 20;

/// Tiles per task of the whole-example phases.
const CHUNK: usize = 32;

/// Position ξ's product for `tiles` tiles: `c` (`[tiles, cout]`) = `a` (`tiles` rows of `cin`,
/// `lda` apart) · the filters of ξ (packed panels in `k.u`), by the micro-kernels where `micro`,
/// else panel by panel by the tuned product.
#[allow(clippy::too_many_arguments)]
fn product(
    a: &[f32],
    lda: usize,
    tiles: usize,
    cin: usize,
    cout: usize,
    k: &Conv,
    xi: usize,
    micro: bool,
    c: &mut [f32],
) {
    let packed = &k.u[xi * cin * k.u_pitch..(xi + 1) * cin * k.u_pitch];
    if micro {
        // SAFETY: `runs` checked the host's ISA; `a` holds `tiles` rows of `cin` at `lda`, `c`
        // `tiles` rows of `cout`, `packed` `cin` rows of `cout` rounded up to 8.
        return unsafe { super::microkernel::gemm(tiles, cin, cout, a, lda, packed, c, cout, false) };
    }
    let mut j0 = 0;
    while j0 < cout {
        let width = super::microkernel::width(cout - j0);
        let cols = width.min(cout - j0);
        // SAFETY: the panel is `cin` rows of `width` from `j0·cin`; `c`'s columns `j0..j0 + cols`
        // of `tiles` rows at pitch `cout`.
        unsafe {
            super::tuned::product(
                tiles,
                cols,
                cin,
                c[j0..].as_mut_ptr(),
                cout,
                false,
                (a.as_ptr(), lda, 1),
                (packed[j0 * cin..].as_ptr(), width, 1),
                None,
            )
        }
        j0 += width;
    }
}

/// Writes the outputs of tiles `t0..t1` of example `n` where they go: for each tile row they
/// touch, its `m` output rows (fewer at the map's last rows; columns trimmed at its edge) are
/// runs of rows of the output matrix, which `transform(first tile, tiles, place)` fills through
/// `place(tile, output)` (the address of output `a·m + b` of the `tile`-th tile of the call;
/// outputs beyond the map go to `spill`), then each run's epilogue runs.
#[allow(clippy::too_many_arguments)]
fn write_rows<'o>(
    g: &Geom,
    m: usize,
    n: usize,
    t0: usize,
    t1: usize,
    cout: usize,
    pitch: usize,
    out: &impl Fn(usize, usize) -> &'o mut [f32],
    after: &impl Fn(usize, usize) -> Result<(), String>,
    spill: &mut Vec<f32>,
    mut transform: impl FnMut(usize, usize, &dyn Fn(usize, usize) -> *mut f32),
) -> Result<(), String> {
    let [_, oh, ow] = g.output;
    let tw = ow.div_ceil(m);
    spill.resize(m * m * cout, 0.0);
    let spilled = spill.as_mut_ptr();
    for ty in t0 / tw..=(t1 - 1) / tw {
        let (txa, txb) = (t0.max(ty * tw) - ty * tw, t1.min((ty + 1) * tw) - ty * tw);
        let cols = (m * txb).min(ow) - m * txa;
        // The first output row of each of the tile row's output rows inside the map.
        let runs: Vec<(usize, *mut f32)> = (0..m)
            .take_while(|a| m * ty + a < oh)
            .map(|a| {
                let first = (n * oh + m * ty + a) * ow + m * txa;
                (first, out(first, cols).as_mut_ptr())
            })
            .collect();
        let place = |tile: usize, o: usize| -> *mut f32 {
            let (a, b) = (o / m, o % m);
            let w = m * tile + b;
            match runs.get(a) {
                // SAFETY: output row `a`'s run holds `cols` rows of `pitch` from its pointer.
                Some(&(_, row)) if w < cols => unsafe { row.add(w * pitch) },
                // SAFETY: `spill` holds `m·m·cout` values.
                _ => unsafe { spilled.add(o * cout) },
            }
        };
        transform(ty * tw + txa, txb - txa, &place);
        for &(first, _) in &runs {
            after(first, cols)?;
        }
    }
    Ok(())
}

/// Tiles per block: the block's transformed input and products (`16·tiles·(cin + cout)` values
/// for F(2×2, 3×3)) in about 256 KiB, at least 32 tiles for the products' sake, at most 128.
fn tiles_per_block(cin: usize, cout: usize) -> usize {
    (4096 / (cin + cout).max(1)).clamp(32, 128)
}

/// The input transform `Bᵀ·d·B` of tiles `t0..t1` (row-major) of example `n`, into `v`
/// (`[(m+2)², tiles, cin]`): for F(2×2, 3×3) `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0],
/// [0, 1, 0, −1]]`, sixteen loads and stores per tile and channel; for F(4×4, 3×3) the 6×6
/// `Bᵀ` of [`bt6`], a column then a row at a time. One loop over the channels per tile, which
/// the compiler vectorizes.
#[allow(clippy::too_many_arguments)]
fn transform_input(m: usize, x: &[f32], g: &Geom, n: usize, t0: usize, t1: usize, v: &mut [f32], xs: usize, ts: usize) {
    #[cfg(target_arch = "x86_64")]
    if m == 2 && super::microkernel::avx512() {
        // SAFETY: the host has AVX-512F.
        return unsafe { avx512::transform_input(x, g, n, t0, t1, v, xs, ts) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the host has AVX2.
        return unsafe { transform_input_avx2(m, x, g, n, t0, t1, v, xs, ts) };
    }
    transform_input_of(m, x, g, n, t0, t1, v, xs, ts)
}

/// [`transform_input_body`] for tiles of `m` outputs a side.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_input_of(
    m: usize,
    x: &[f32],
    g: &Geom,
    n: usize,
    t0: usize,
    t1: usize,
    v: &mut [f32],
    xs: usize,
    ts: usize,
) {
    if m == 4 {
        transform_input_body::<6, 36>(4, x, g, n, t0, t1, v, xs, ts, input_block4)
    } else {
        transform_input_body::<4, 16>(2, x, g, n, t0, t1, v, xs, ts, input_block)
    }
}

/// [`transform_input_body`] compiled for AVX2: the transform's eight channels one register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_input_avx2(
    m: usize,
    x: &[f32],
    g: &Geom,
    n: usize,
    t0: usize,
    t1: usize,
    v: &mut [f32],
    xs: usize,
    ts: usize,
) {
    transform_input_of(m, x, g, n, t0, t1, v, xs, ts)
}

/// The input transform over blocks of `A`×`A` pixels (`AA` of them), `block` transforming `W`
/// channels of one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_input_body<const A: usize, const AA: usize>(
    m: usize,
    x: &[f32],
    g: &Geom,
    n: usize,
    t0: usize,
    t1: usize,
    v: &mut [f32],
    xs: usize,
    ts: usize,
    block: fn(&[[f32; W]; AA]) -> [[f32; W]; AA],
) {
    let [_, ih, iw] = g.input;
    // The input's pixels are `channels` apart; the convolution reads `cg` of them from `c0`.
    let (channels, cin) = (g.channels, g.cg);
    let tiles = t1 - t0;
    let zeros = vec![0f32; cin];
    let example = &x[n * ih * iw * channels..(n + 1) * ih * iw * channels];
    // The A×A block of a tile's input pixels (channels contiguous), zeros outside the image.
    let gather = |tile: usize| -> [&[f32]; AA] {
        std::array::from_fn(|ij| match pixel(g, m, A, tile, ij) {
            Some(at) => &example[at..at + cin],
            None => &zeros[..],
        })
    };
    // (The layout is told by the tile stride: with one tile, `xs` is `cin` in both.)
    if ts != cin {
        // Tile-major `[tiles, AA, cin]`: a tile's vectors are contiguous.
        for (t, region) in v.chunks_exact_mut(ts).take(tiles).enumerate() {
            let mut it = region.chunks_exact_mut(cin);
            let mut out: [&mut [f32]; AA] = std::array::from_fn(|_| it.next().unwrap_or(&mut []));
            input_tile(&gather(t0 + t), &mut out, cin, block);
        }
    } else {
        // Position-major `[AA, tiles, cin]`.
        let mut planes: Vec<&mut [f32]> = v.chunks_exact_mut(xs).collect();
        for t in 0..tiles {
            let mut it = planes.iter_mut().map(|p| &mut p[t * ts..t * ts + cin]);
            let mut out: [&mut [f32]; AA] = std::array::from_fn(|_| it.next().unwrap_or(&mut []));
            input_tile(&gather(t0 + t), &mut out, cin, block);
        }
    }
}

/// Where pixel `ij` (row-major) of the `a`×`a` input block of tile `tile` (row-major, tiles of
/// `m`×`m` outputs) starts in its example (`[h, w, channels]`, the geometry's `cg` channels from
/// `c0`), or `None` in the padding.
#[inline(always)]
fn pixel(g: &Geom, m: usize, a: usize, tile: usize, ij: usize) -> Option<usize> {
    let [_, ih, iw] = g.input;
    let tw = g.output[2].div_ceil(m);
    let h = (m * (tile / tw) + ij / a) as isize - g.pad[1] as isize;
    let w = (m * (tile % tw) + ij % a) as isize - g.pad[2] as isize;
    let inside = h >= 0 && w >= 0 && (h as usize) < ih && (w as usize) < iw;
    inside.then(|| (h as usize * iw + w as usize) * g.channels + g.c0)
}

/// Channels transformed at once, in local arrays the compiler keeps in vector registers.
const W: usize = 8;

/// An output transform on `W` channels: `AA` products and the bias to `MM` outputs.
type OutputBlock<const AA: usize, const MM: usize> = fn(&[[f32; W]; AA], &[f32; W]) -> [[f32; W]; MM];

/// `Bᵀ·d·B` for one tile, `W` channels at a time (the last few one by one).
#[inline(always)]
fn input_tile<const AA: usize>(
    d: &[&[f32]; AA],
    out: &mut [&mut [f32]; AA],
    cin: usize,
    input_block: fn(&[[f32; W]; AA]) -> [[f32; W]; AA],
) {
    let mut ci = 0;
    while ci < cin {
        let w = W.min(cin - ci);
        let mut e = [[0f32; W]; AA];
        if w == W {
            // Whole blocks: copies of a constant length, kept in registers.
            for (k, src) in d.iter().enumerate() {
                e[k] = src[ci..ci + W].try_into().unwrap_or([0.0; W]);
            }
            let o = input_block(&e);
            for (k, dst) in out.iter_mut().enumerate() {
                if let Ok(dst) = <&mut [f32; W]>::try_from(&mut dst[ci..ci + W]) {
                    *dst = o[k];
                }
            }
        } else {
            for (k, src) in d.iter().enumerate() {
                e[k][..w].copy_from_slice(&src[ci..ci + w]);
            }
            let o = input_block(&e);
            for (k, dst) in out.iter_mut().enumerate() {
                dst[ci..ci + w].copy_from_slice(&o[k][..w]);
            }
        }
        ci += w;
    }
}

/// `Bᵀ·d·B` on `W` channels: `e[4i + j]` is the block's element (i, j).
#[inline(always)]
fn input_block(e: &[[f32; W]; 16]) -> [[f32; W]; 16] {
    let mut bd = [[0f32; W]; 16];
    for j in 0..4 {
        for l in 0..W {
            let (d0, d1, d2, d3) = (e[j][l], e[4 + j][l], e[8 + j][l], e[12 + j][l]);
            bd[j][l] = d0 - d2;
            bd[4 + j][l] = d1 + d2;
            bd[8 + j][l] = d2 - d1;
            bd[12 + j][l] = d1 - d3;
        }
    }
    let mut o = [[0f32; W]; 16];
    for i in 0..4 {
        for l in 0..W {
            let (r0, r1, r2, r3) = (bd[4 * i][l], bd[4 * i + 1][l], bd[4 * i + 2][l], bd[4 * i + 3][l]);
            o[4 * i][l] = r0 - r2;
            o[4 * i + 1][l] = r1 + r2;
            o[4 * i + 2][l] = r2 - r1;
            o[4 * i + 3][l] = r1 - r3;
        }
    }
    o
}

/// `Bᵀ·v` of F(4×4, 3×3) on six vectors of `W` channels.
#[inline(always)]
fn bt6(d: [[f32; W]; 6]) -> [[f32; W]; 6] {
    let mut o = [[0f32; W]; 6];
    for l in 0..W {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][l] = d3 + d4 - 4.0 * (d1 + d2);
        o[2][l] = d4 - d3 + 4.0 * (d1 - d2);
        o[3][l] = d4 - d2 + 2.0 * (d3 - d1);
        o[4][l] = d4 - d2 + 2.0 * (d1 - d3);
        o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// `Bᵀ·d·B` of F(4×4, 3×3) on `W` channels: `e[6i + j]` is the block's element (i, j); a
/// column at a time, then a row at a time (six vectors in registers each).
#[inline(always)]
fn input_block4(e: &[[f32; W]; 36]) -> [[f32; W]; 36] {
    let mut bd = [[0f32; W]; 36];
    for j in 0..6 {
        let col = bt6(std::array::from_fn(|k| e[6 * k + j]));
        (0..6).for_each(|i| bd[6 * i + j] = col[i]);
    }
    let mut o = [[0f32; W]; 36];
    for i in 0..6 {
        let row = bt6(std::array::from_fn(|k| bd[6 * i + k]));
        o[6 * i..6 * i + 6].copy_from_slice(&row);
    }
    o
}

/// The output transform `Aᵀ·m·A` of `tiles` tiles from tile `first` of the products `mm`
/// (`[(m+2)², plane, cout]`), for F(2×2, 3×3) `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`, for
/// F(4×4, 3×3) the 4×6 `Aᵀ` of [`at6`], plus the bias: output `o` (`a·m + b`) of the tile `t`
/// of the call, `cout` values, to `place(t, o)`.
#[allow(clippy::too_many_arguments)]
fn transform_output(
    m: usize,
    mm: &[f32],
    plane: usize,
    first: usize,
    tiles: usize,
    bias: Option<&[f32]>,
    cout: usize,
    place: &dyn Fn(usize, usize) -> *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    if m == 2 && super::microkernel::avx512() {
        // SAFETY: the host has AVX-512F.
        return unsafe { avx512::transform_output(mm, plane, first, tiles, bias, cout, place) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the host has AVX2.
        return unsafe { transform_output_avx2(m, mm, plane, first, tiles, bias, cout, place) };
    }
    transform_output_of(m, mm, plane, first, tiles, bias, cout, place)
}

/// [`transform_output_body`] for tiles of `m` outputs a side.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_output_of(
    m: usize,
    mm: &[f32],
    plane: usize,
    first: usize,
    tiles: usize,
    bias: Option<&[f32]>,
    cout: usize,
    place: &dyn Fn(usize, usize) -> *mut f32,
) {
    if m == 4 {
        transform_output_body::<36, 16>(mm, plane, first, tiles, bias, cout, place, output_block4)
    } else {
        transform_output_body::<16, 4>(mm, plane, first, tiles, bias, cout, place, output_block)
    }
}

/// [`transform_output_body`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output_avx2(
    m: usize,
    mm: &[f32],
    plane: usize,
    first: usize,
    tiles: usize,
    bias: Option<&[f32]>,
    cout: usize,
    place: &dyn Fn(usize, usize) -> *mut f32,
) {
    transform_output_of(m, mm, plane, first, tiles, bias, cout, place)
}

/// The output transform over blocks of `AA` products to `MM` outputs, `block` transforming `W`
/// channels of one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_output_body<const AA: usize, const MM: usize>(
    mm: &[f32],
    plane: usize,
    first: usize,
    tiles: usize,
    bias: Option<&[f32]>,
    cout: usize,
    place: &dyn Fn(usize, usize) -> *mut f32,
    block: OutputBlock<AA, MM>,
) {
    let zeros = vec![0f32; cout];
    let bias = bias.map_or(&zeros[..], |b| &b[..cout]);
    for t in 0..tiles {
        let m: [&[f32]; AA] =
            std::array::from_fn(|ij| &mm[(ij * plane + first + t) * cout..(ij * plane + first + t + 1) * cout]);
        // SAFETY: `place` gives each output `cout` values of its own (`write_rows`).
        let y: [&mut [f32]; MM] = std::array::from_fn(|o| unsafe { std::slice::from_raw_parts_mut(place(t, o), cout) });
        output_tile(&m, bias, y, cout, block);
    }
}

/// `Aᵀ·m·A + bias` for one tile, `W` channels at a time, output `o` into `y[o]`.
#[inline(always)]
fn output_tile<const AA: usize, const MM: usize>(
    m: &[&[f32]; AA],
    bias: &[f32],
    mut y: [&mut [f32]; MM],
    cout: usize,
    output_block: OutputBlock<AA, MM>,
) {
    let mut co = 0;
    while co < cout {
        let w = W.min(cout - co);
        let mut e = [[0f32; W]; AA];
        let mut b = [0f32; W];
        if w == W {
            // Whole blocks: copies of a constant length, kept in registers.
            for (k, src) in m.iter().enumerate() {
                e[k] = src[co..co + W].try_into().unwrap_or([0.0; W]);
            }
            b = bias[co..co + W].try_into().unwrap_or([0.0; W]);
            let o = output_block(&e, &b);
            for (y, o) in y.iter_mut().zip(&o) {
                if let Ok(dst) = <&mut [f32; W]>::try_from(&mut y[co..co + W]) {
                    *dst = *o;
                }
            }
        } else {
            for (k, src) in m.iter().enumerate() {
                e[k][..w].copy_from_slice(&src[co..co + w]);
            }
            b[..w].copy_from_slice(&bias[co..co + w]);
            let o = output_block(&e, &b);
            for (y, o) in y.iter_mut().zip(&o) {
                y[co..co + w].copy_from_slice(&o[..w]);
            }
        }
        co += w;
    }
}

/// `Aᵀ·m·A + bias` on `W` channels: outputs (0, 0), (0, 1), (1, 0), (1, 1).
#[inline(always)]
fn output_block(e: &[[f32; W]; 16], bias: &[f32; W]) -> [[f32; W]; 4] {
    // ·A on each row i: [a + b + c, b − c − d].
    let mut r = [[0f32; W]; 8];
    for i in 0..4 {
        for l in 0..W {
            let (a, b, c, d) = (e[4 * i][l], e[4 * i + 1][l], e[4 * i + 2][l], e[4 * i + 3][l]);
            r[2 * i][l] = a + b + c;
            r[2 * i + 1][l] = b - c - d;
        }
    }
    let mut o = [[0f32; W]; 4];
    for l in 0..W {
        o[0][l] = r[0][l] + r[2][l] + r[4][l] + bias[l];
        o[1][l] = r[1][l] + r[3][l] + r[5][l] + bias[l];
        o[2][l] = r[2][l] - r[4][l] - r[6][l] + bias[l];
        o[3][l] = r[3][l] - r[5][l] - r[7][l] + bias[l];
    }
    o
}

/// `Aᵀ·v` of F(4×4, 3×3) on six vectors of `W` channels.
#[inline(always)]
fn at6(m: [[f32; W]; 6]) -> [[f32; W]; 4] {
    let mut o = [[0f32; W]; 4];
    for l in 0..W {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        o[0][l] = m0 + s12 + s34;
        o[1][l] = d12 + 2.0 * d34;
        o[2][l] = s12 + 4.0 * s34;
        o[3][l] = d12 + 8.0 * d34 + m5;
    }
    o
}

/// `Aᵀ·m·A + bias` of F(4×4, 3×3) on `W` channels: output (i, j) at `4i + j`; a column at a
/// time, then a row at a time.
#[inline(always)]
fn output_block4(e: &[[f32; W]; 36], bias: &[f32; W]) -> [[f32; W]; 16] {
    let mut r = [[0f32; W]; 24];
    for j in 0..6 {
        let col = at6(std::array::from_fn(|k| e[6 * k + j]));
        (0..4).for_each(|i| r[6 * i + j] = col[i]);
    }
    let mut o = [[0f32; W]; 16];
    for i in 0..4 {
        let row = at6(std::array::from_fn(|k| r[6 * i + k]));
        for (j, v) in row.iter().enumerate() {
            (0..W).for_each(|l| o[4 * i + j][l] = v[l] + bias[l]);
        }
    }
    o
}

/// F(2×2, 3×3)'s transforms on AVX-512: 16 channels a register, the tile's 16 values held in
/// registers (the generic bodies, over arrays of 8 lanes, went through the stack), addresses
/// computed rather than sliced; the same sums in the same order as [`input_block`] and
/// [`output_block`], so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::microkernel::first_lanes as mask;
    use super::Geom;
    use std::arch::x86_64::*;

    /// [`super::transform_input`] for m = 2.
    ///
    /// # Safety
    /// AVX-512F; `v` holds the tiles' transformed inputs in the layout `xs` and `ts` say.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn transform_input(
        x: &[f32],
        g: &Geom,
        n: usize,
        t0: usize,
        t1: usize,
        v: &mut [f32],
        xs: usize,
        ts: usize,
    ) {
        let [_, ih, iw] = g.input;
        let (channels, cin) = (g.channels, g.cg);
        let zeros = vec![0f32; cin];
        let example = &x[n * ih * iw * channels..(n + 1) * ih * iw * channels];
        assert!(v.len() >= if ts != cin { (t1 - t0) * ts } else { 15 * xs + (t1 - t0) * ts });
        let vp = v.as_mut_ptr();
        for t in 0..t1 - t0 {
            let mut d = [zeros.as_ptr(); 16];
            let mut o = [vp; 16];
            for ij in 0..16 {
                if let Some(at) = super::pixel(g, 2, 4, t0 + t, ij) {
                    d[ij] = example[at..][..cin].as_ptr();
                }
                // SAFETY: inside `v` (asserted above).
                o[ij] = unsafe { vp.add(if ts != cin { t * ts + ij * cin } else { ij * xs + t * ts }) };
            }
            let mut ci = 0;
            while ci < cin {
                let k = mask(cin - ci);
                // SAFETY: each pointer has `cin` values; the mask keeps to them.
                unsafe {
                    let mut e = [_mm512_setzero_ps(); 16];
                    for ij in 0..16 {
                        e[ij] = _mm512_maskz_loadu_ps(k, d[ij].add(ci));
                    }
                    let mut bd = [_mm512_setzero_ps(); 16];
                    for j in 0..4 {
                        let (d0, d1, d2, d3) = (e[j], e[4 + j], e[8 + j], e[12 + j]);
                        bd[j] = _mm512_sub_ps(d0, d2);
                        bd[4 + j] = _mm512_add_ps(d1, d2);
                        bd[8 + j] = _mm512_sub_ps(d2, d1);
                        bd[12 + j] = _mm512_sub_ps(d1, d3);
                    }
                    for i in 0..4 {
                        let (r0, r1, r2, r3) = (bd[4 * i], bd[4 * i + 1], bd[4 * i + 2], bd[4 * i + 3]);
                        _mm512_mask_storeu_ps(o[4 * i].add(ci), k, _mm512_sub_ps(r0, r2));
                        _mm512_mask_storeu_ps(o[4 * i + 1].add(ci), k, _mm512_add_ps(r1, r2));
                        _mm512_mask_storeu_ps(o[4 * i + 2].add(ci), k, _mm512_sub_ps(r2, r1));
                        _mm512_mask_storeu_ps(o[4 * i + 3].add(ci), k, _mm512_sub_ps(r1, r3));
                    }
                }
                ci += 16;
            }
        }
    }

    /// [`super::transform_output`] for m = 2.
    ///
    /// # Safety
    /// AVX-512F; `mm` holds the products of the tiles from `first`, `place` `cout` values for
    /// each output.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_output(
        mm: &[f32],
        plane: usize,
        first: usize,
        tiles: usize,
        bias: Option<&[f32]>,
        cout: usize,
        place: &dyn Fn(usize, usize) -> *mut f32,
    ) {
        let zeros = vec![0f32; cout];
        let bias = bias.map_or(&zeros[..], |b| &b[..cout]);
        assert!(tiles == 0 || mm.len() >= (15 * plane + first + tiles) * cout);
        for t in 0..tiles {
            // SAFETY: inside `mm` (asserted above).
            let src: [*const f32; 16] =
                std::array::from_fn(|ij| unsafe { mm.as_ptr().add((ij * plane + first + t) * cout) });
            let dst: [*mut f32; 4] = [place(t, 0), place(t, 1), place(t, 2), place(t, 3)];
            let mut co = 0;
            while co < cout {
                let k = mask(cout - co);
                // SAFETY: each source and destination has `cout` values; the mask keeps to them.
                unsafe {
                    let mut e = [_mm512_setzero_ps(); 16];
                    for ij in 0..16 {
                        e[ij] = _mm512_maskz_loadu_ps(k, src[ij].add(co));
                    }
                    let b = _mm512_maskz_loadu_ps(k, bias.as_ptr().add(co));
                    let mut r = [_mm512_setzero_ps(); 8];
                    for i in 0..4 {
                        let (a, bb, c, d) = (e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]);
                        r[2 * i] = _mm512_add_ps(_mm512_add_ps(a, bb), c);
                        r[2 * i + 1] = _mm512_sub_ps(_mm512_sub_ps(bb, c), d);
                    }
                    let sum = |p: __m512, q: __m512, s: __m512| _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(p, q), s), b);
                    let diff =
                        |p: __m512, q: __m512, s: __m512| _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(p, q), s), b);
                    _mm512_mask_storeu_ps(dst[0].add(co), k, sum(r[0], r[2], r[4]));
                    _mm512_mask_storeu_ps(dst[1].add(co), k, sum(r[1], r[3], r[5]));
                    _mm512_mask_storeu_ps(dst[2].add(co), k, diff(r[2], r[4], r[6]));
                    _mm512_mask_storeu_ps(dst[3].add(co), k, diff(r[3], r[5], r[7]));
                }
                co += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution of `x` by `wt` plus `bias` over `g`, by tiles of `m` (Winograd) and
    /// directly (in f64); the largest difference against the largest output.
    fn error(g: &Geom, x: &[f32], wt: &[f32], bias: &[f32], cout: usize, m: usize) -> (f64, f64) {
        let (n, [_, oh, ow], cin) = (g.n, g.output, g.cg);
        let aa = (m + 2) * (m + 2);
        let pitch = cout.next_multiple_of(8);
        let mut u = vec![f32::NAN; aa * cin * pitch];
        filters(wt, cout, cin, cout, m, &mut u, pitch);
        let mut expected = vec![0f64; n * oh * ow * cout];
        g.for_each(|r, k, at| {
            for co in 0..cout {
                expected[r * cout + co] += f64::from(x[at]) * f64::from(wt[k * cout + co]);
            }
        });
        expected.chunks_mut(cout).for_each(|r| r.iter_mut().zip(bias).for_each(|(o, &b)| *o += f64::from(b)));
        let got = std::sync::Mutex::new(vec![f32::NAN; n * oh * ow * cout]);
        let k = Conv { x, u: &u, u_pitch: pitch, bias: Some(bias), cout, m };
        // Each block's rows are written through a buffer of its own, then copied in.
        let blocks = std::sync::Mutex::new(Vec::new());
        conv(
            &k,
            g,
            cout,
            |first, rows| {
                let mut b = blocks.lock().unwrap();
                b.push((first, vec![f32::NAN; rows * cout]));
                let last = b.last_mut().unwrap();
                // SAFETY (test): the buffer lives in `blocks` until the end of the test.
                unsafe { std::slice::from_raw_parts_mut(last.1.as_mut_ptr(), last.1.len()) }
            },
            |_, _| Ok(()),
        )
        .unwrap();
        for (first, rows) in blocks.into_inner().unwrap() {
            got.lock().unwrap()[first * cout..first * cout + rows.len()].copy_from_slice(&rows);
        }
        let got = got.into_inner().unwrap();
        let scale = expected.iter().fold(1f64, |s, v| s.max(v.abs()));
        let worst = got.iter().zip(&expected).fold(0f64, |w, (&a, b)| w.max((f64::from(a) - b).abs()));
        (worst, scale)
    }

    /// F(2×2, 3×3)'s AVX-512 transforms give the generic bodies' bits: inputs at the image's
    /// edges (padding), channels ending in a part register (20 of 16 + 4; a slice of the pixel's
    /// 24 from channel 2), both layouts of the transformed input.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_transforms_give_the_generic_bits() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let (h, w, channels, cin) = (7, 9, 24, 20);
        let g = Geom {
            n: 2,
            input: [1, h, w],
            channels,
            c0: 2,
            cg: cin,
            size: [1, 3, 3],
            stride: [1, 1, 1],
            pad: [0, 1, 1],
            dilation: [1, 1, 1],
            output: [1, h, w],
        };
        let x: Vec<f32> = (0..2 * h * w * channels).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
        let total = h.div_ceil(2) * w.div_ceil(2);
        let (t0, t1) = (3, total - 2);
        let tiles = t1 - t0;
        for (xs, ts) in [(cin, 16 * cin), (tiles * cin, cin)] {
            let mut generic = vec![f32::NAN; 16 * tiles * cin];
            let mut wide = generic.clone();
            transform_input_of(2, &x, &g, 1, t0, t1, &mut generic, xs, ts);
            // SAFETY: the host has AVX-512F; `wide` holds the tiles.
            unsafe { avx512::transform_input(&x, &g, 1, t0, t1, &mut wide, xs, ts) };
            assert!(generic.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()), "layout ({xs}, {ts})");
        }
        let cout = 20;
        let mm: Vec<f32> = (0..16 * tiles * cout).map(|i| ((i * 104729 % 1009) as f32 - 504.0) / 101.0).collect();
        let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.25 - 2.0).collect();
        let outputs = |wide: bool| {
            let mut y = vec![f32::NAN; (tiles - 1) * 4 * cout];
            let base = y.as_mut_ptr() as usize;
            // SAFETY (test): each output `cout` values of its own in `y`.
            let place = |t: usize, o: usize| unsafe { (base as *mut f32).add((t * 4 + o) * cout) };
            if wide {
                // SAFETY: the host has AVX-512F.
                unsafe { avx512::transform_output(&mm, tiles, 1, tiles - 1, Some(&bias), cout, &place) };
            } else {
                transform_output_of(2, &mm, tiles, 1, tiles - 1, Some(&bias), cout, &place);
            }
            y
        };
        let (generic, wide) = (outputs(false), outputs(true));
        assert!(generic.iter().all(|v| v.is_finite()));
        assert!(generic.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Both tiles against the direct convolution (in f64), on odd sizes, padding or none, and
    /// blocks that end in a partial one, within the project's bound 1e-4 of the largest output.
    /// Measured on these: F(2×2, 3×3) 1.2–2.9·10⁻⁷ of it, F(4×4, 3×3) 0.85–4.4·10⁻⁶ (its
    /// transforms' larger coefficients: 6–16 times the error).
    #[test]
    fn winograd_equals_the_direct_convolution() {
        // The fourth case's 256 tiles go in blocks of 85: the last block holds one tile. The
        // fifth's filters end in a panel of 16 columns, 12 of them filters; the last case's 4
        // tiles are too few for the micro-kernels (the tuned product reads the panels).
        for (n, h, w, cin, cout, pad) in [
            (2, 14, 14, 16, 16, 1),
            (1, 15, 17, 20, 24, 1),
            (1, 16, 14, 16, 32, 0),
            (1, 32, 32, 16, 32, 1),
            (1, 15, 17, 20, 12, 1),
            (1, 4, 4, 16, 20, 1),
        ] {
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let g = Geom {
                n,
                input: [1, h, w],
                channels: cin,
                c0: 0,
                cg: cin,
                size: [1, 3, 3],
                stride: [1, 1, 1],
                pad: [0, pad, pad],
                dilation: [1, 1, 1],
                output: [1, oh, ow],
            };
            let value = |i: usize, s: usize| ((i * 7919 + s * 104729) % 1013) as f32 / 506.5 - 1.0;
            let x: Vec<f32> = (0..n * h * w * cin).map(|i| value(i, 1)).collect();
            let wt: Vec<f32> = (0..9 * cin * cout).map(|i| value(i, 2) * 0.1).collect();
            let bias: Vec<f32> = (0..cout).map(|i| value(i, 3)).collect();
            for m in [2, 4] {
                let (worst, scale) = error(&g, &x, &wt, &bias, cout, m);
                assert!(
                    worst <= 1e-4 * scale,
                    "F({m}×{m}) ({n}, {h}, {w}, {cin}, {cout}, pad {pad}): largest difference {worst} of {scale}"
                );
            }
        }
    }
}
