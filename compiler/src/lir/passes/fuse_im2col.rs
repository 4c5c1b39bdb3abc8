//! `fuse_im2col`: an im2col whose matrix only one product reads becomes part of that product
//! (an implicit-GEMM convolution, or a weight gradient `im2col(x)ᵀ·dy`): the rows are made block
//! by block where the product reads them, in cache, and the whole matrix is never written to
//! memory.

use super::{only_reader, same_matrix, Uses};
use crate::lir::{Kernel, Program};

/// Rows of im2col a block of an implicit-GEMM convolution makes at once (`k` columns each, `n`
/// output columns): about 64 KiB of rows for the narrow products of the micro-kernels, at least
/// 256 rows where the `gemm` crate packs the filters again for each block. A function of the
/// shape alone, so that the blocks do not depend on the threads.
pub fn block_rows(k: usize, n: usize) -> usize {
    if n <= 256 && k <= 1024 {
        (16384 / k.max(1)).clamp(48, 768) / 6 * 6
    } else {
        256
    }
}

/// Fuses every im2col it can into its product; returns how many.
pub fn run(p: &mut Program) -> usize {
    super::fuse_all(p, |p| find(p).map(|(i, j, fused)| (j, i, fused)))
}

/// The first (im2col, product, convolution).
fn find(p: &Program) -> Option<(usize, usize, Kernel)> {
    let uses = Uses::of(p);
    for (i, k) in p.kernels.iter().enumerate() {
        let Kernel::Im2col { x, col, geom } = k else { continue };
        let Some(j) = only_reader(p, &uses, i, col) else { continue };
        if let Kernel::Gemm { a, b, c, ta: true, tb: false, accumulate: false, bias: None, epilogue: None } =
            &p.kernels[j]
        {
            // A weight gradient: im2col(x)ᵀ·dy, where the partial products of its blocks are
            // not too small to pay, or the layer runs as a direct convolution (LeNet-5's first
            // layer, 25 × 6: too small for blocks, the runtime's direct loops instead).
            if (c.len() >= 1024 || geom.direct(c.cols()))
                && same_matrix(a, col)
                && col.pitch == col.cols()
                && !uses.written_from(x.buf, i + 1, j)
                && x.buf != c.buf
            {
                let kernel = Kernel::ConvWeightGrad { x: x.clone(), geom: geom.clone(), dy: b.clone(), c: c.clone() };
                return Some((i, j, kernel));
            }
            continue;
        }
        let Kernel::Gemm { a, b, c, ta: false, tb, accumulate: false, bias, epilogue } = &p.kernels[j] else {
            continue;
        };
        // At least four blocks of rows, so that both cores have work (else the product is
        // better split inside, on the whole matrix).
        // And products the blocks run well: the micro-kernels' shapes, or wide ones.
        let n = c.cols();
        let suits = (n <= 256 && col.cols() <= 1024) || n >= 64;
        let enough = (suits && col.rows() >= 4 * block_rows(col.cols(), n)) || geom.direct(n);
        if !enough
            || !same_matrix(a, col)
            || col.pitch != col.cols()
            || uses.written_from(x.buf, i + 1, j)
            || x.buf == c.buf
        {
            continue;
        }
        return Some((
            i,
            j,
            Kernel::ConvGemm {
                x: x.clone(),
                geom: geom.clone(),
                b: b.clone(),
                c: c.clone(),
                tb: *tb,
                bias: bias.clone(),
                epilogue: epilogue.clone(),
                winograd: None,
                stats: None,
            },
        ));
    }
    None
}
