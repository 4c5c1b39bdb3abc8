//! `winograd`: in an inference program, a 3×3 stride-1 convolution that [`Geom::winograd`]
//! accepts, whose filters are parameters, runs by Winograd's F(2×2, 3×3): its filters are
//! transformed once per change of the parameters in the prepare phase, and the runtime computes
//! each 2×2 block of outputs from a 4×4 block of input with 16 products over the channels where
//! the direct convolution needs 36 (2.25× fewer multiplies, paid for by the transforms). Asked
//! for (`--winograd-tile 4`, the opt-in `winograd_f4`), layers over large maps run by F(4×4, 3×3)
//! instead: 4×4 blocks of outputs from 6×6 blocks of input, filters transformed into 36 values.
//!
//! Training programs keep the direct products: their filters change every step.
//!
//! [`Geom::winograd`]: crate::lir::Geom::winograd

use super::{only_reader, same_matrix, Uses};
use crate::lir::{Buffer, DType, Kernel, Program, Space, View};

/// Gives every convolution it can a Winograd form, F(2×2, 3×3); returns how many.
pub fn run(p: &mut Program) -> usize {
    with_tile(p, 2)
}

/// The same by F(4×4, 3×3) (the opt-in `winograd_f4`): 36 products for 16 outputs, less
/// accurate in f32 (the runtime's tests measure it).
pub(super) fn run_f4(p: &mut Program) -> usize {
    with_tile(p, 4)
}

/// F(4×4, 3×3), when asked for, replaces F(2×2, 3×3) on output maps of at least this side squared
/// positions (56×56, or as many in another shape).
const LARGE_F4: usize = 56;

/// Gives every convolution it can a Winograd form for tiles of `m`×`m` outputs: filters
/// transformed into `(m + 2)²` values each.
fn with_tile(p: &mut Program, m: usize) -> usize {
    if p.buffers.iter().any(|b| matches!(b.space, Space::Grad(_))) {
        return 0;
    }
    // Convolutions `fuse_im2col` left as an im2col and its product (too few rows for blocks of
    // rows: VGG-16's 28×28 and 14×14 layers) become implicit ones first.
    while let Some((i, j, conv)) = unfused(p) {
        p.kernels[j] = conv;
        p.kernels.remove(i);
    }
    let mut count = 0;
    for i in 0..p.kernels.len() {
        let Kernel::ConvGemm { geom, b, c, tb: false, winograd: None, .. } = &p.kernels[i] else { continue };
        let filters = c.cols();
        if !geom.winograd(filters)
            || !matches!(p.buffers[b.buf.0 as usize].space, Space::Param(_))
            || b.rows() != 9 * geom.cg
        {
            continue;
        }
        let w = b.clone();
        let name = p.buffers[w.buf.0 as usize].name.rsplit_once('/').map_or("conv", |(l, _)| l).to_string();
        let id = crate::lir::BufId(p.buffers.len() as u32);
        // F(4×4, 3×3) transforms each filter into 36 values, which the products read for every
        // block of tiles: it pays only over large maps (VGG-16 at batch 1 was slower with it on
        // every layer, 181 against 165–170 ms), so smaller ones keep F(2×2, 3×3).
        let m = if m == 4 && geom.output[1] * geom.output[2] < LARGE_F4.pow(2) { 2 } else { m };
        let positions = (m + 2) * (m + 2);
        // Each position's `cg × filters` matrix packed in panels for the micro-kernels: columns
        // rounded up to 8, the padding zeros.
        let len = positions * geom.cg * filters.next_multiple_of(8);
        p.buffers.push(Buffer {
            name: format!("{name}/winograd"),
            space: Space::Arena,
            len,
            dtype: DType::F32,
            kept: true,
        });
        let u = View::whole(id, vec![positions * geom.cg, filters.next_multiple_of(8)]);
        p.prepare.push(Kernel::WinogradFilters { w, u: u.clone() });
        if let Kernel::ConvGemm { winograd, .. } = &mut p.kernels[i] {
            *winograd = Some(u);
        }
        count += 1;
    }
    count
}

/// The first (im2col, its only product, the convolution as one kernel) whose convolution could
/// run by Winograd.
fn unfused(p: &Program) -> Option<(usize, usize, Kernel)> {
    let uses = Uses::of(p);
    for (i, k) in p.kernels.iter().enumerate() {
        let Kernel::Im2col { x, col, geom } = k else { continue };
        let Some(j) = only_reader(p, &uses, i, col) else { continue };
        let Kernel::Gemm { a, b, c, ta: false, tb: false, accumulate: false, bias, epilogue } = &p.kernels[j] else {
            continue;
        };
        if !geom.winograd(c.cols())
            || !same_matrix(a, col)
            || col.pitch != col.cols()
            || uses.written_from(x.buf, i + 1, j)
            || x.buf == c.buf
            || !matches!(p.buffers[b.buf.0 as usize].space, Space::Param(_))
        {
            continue;
        }
        let conv = Kernel::ConvGemm {
            x: x.clone(),
            geom: geom.clone(),
            b: b.clone(),
            c: c.clone(),
            tb: false,
            bias: bias.clone(),
            epilogue: epilogue.clone(),
            winograd: None,
            stats: None,
        };
        return Some((i, j, conv));
    }
    None
}
