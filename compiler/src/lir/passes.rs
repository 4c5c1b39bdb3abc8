//! Passes over a lowered kernel program. Each is one file with a one-line contract and a `run`
//! that rewrites the program in place and says how many rewrites it made; [`optimize`] runs them
//! in order, skipping the ones disabled by name (`cnnc build --disable-pass NAME`).
//!
//! - `fold_batchnorm`: batchnorm's apply becomes a per-channel affine map whose scale and shift
//!   the prepare phase derives (running statistics) or the step right after the batch's;
//! - `fuse_maps`: a map whose only reader is another map is computed inside it;
//! - `fuse_epilogue`: a map whose only input from a product is that product's output becomes the
//!   product's epilogue, applied while the output is in cache;
//! - `fuse_im2col`: an im2col read only by one product becomes part of it (implicit GEMM);
//! - `fuse_bn_stats`: training batchnorm's batch statistics are taken by the convolution before
//!   it, while each block of its output is in cache;
//! - `merge_siblings`: in inference, products of one input by parameters (an inception module's
//!   three 1×1 convolutions) become one product over their filters side by side;
//! - `winograd`: in inference, a 3×3 stride-1 convolution with enough channels runs by
//!   Winograd's F(2×2, 3×3), its filters transformed in the prepare phase;
//! - `concat_in_place`: a product whose output only a concatenation's copy reads writes into its
//!   channels of the concatenated buffer, and the copy goes; a copy of a column range of a
//!   product's output becomes a route of its epilogue, which writes the range there itself;
//! - `fuse_pool`: a pooling read only by one product, as its left-hand matrix (an inception
//!   module's pool branch), is made block by block inside it;
//! - `in_place`: a map writes over an input of its shape that no later kernel reads.

pub mod concat_in_place;
pub mod fold_batchnorm;
pub mod fuse_bn_stats;
pub mod fuse_epilogue;
pub mod fuse_im2col;
pub mod fuse_maps;
pub mod fuse_pool;
pub mod in_place;
pub mod merge_siblings;
pub mod winograd;

use super::{BufId, Expr, Program, Space, View};

/// The kernel-IR passes, in the order they run: name and contract.
pub const PASSES: &[(&str, &str)] = &[
    (
        "fold_batchnorm",
        "batchnorm as a per-channel affine map, scale and shift derived in prepare (running statistics) or in the step (optional)",
    ),
    ("fuse_maps", "a map read only by another map is computed inside it (optional)"),
    ("fuse_epilogue", "a map over a product's output becomes the product's epilogue (optional)"),
    ("fuse_im2col", "an im2col read by one product only is made block by block inside it (optional)"),
    (
        "fuse_bn_stats",
        "training batchnorm's statistics over a convolution's output are taken by the convolution, block by block in cache (optional)",
    ),
    (
        "merge_siblings",
        "inference products of one input by parameters (sibling 1×1 convolutions) become one product, readers reading its column ranges (optional)",
    ),
    (
        "winograd",
        "an inference 3×3 stride-1 convolution runs by Winograd F(2×2, 3×3), filters transformed in prepare (optional)",
    ),
    (
        "concat_in_place",
        "a product read only by a concatenation's copy writes into its channels of the concatenation; a copied column range of a product's output is written there by its epilogue (optional)",
    ),
    (
        "fuse_pool",
        "a pooling read only by one product, as its left-hand matrix (an inception module's pool branch), is made block by block inside it (optional)",
    ),
    ("in_place", "a map writes over an input of its shape that no later kernel reads (optional)"),
];

/// Variants that run only when named (`cnnc build/bench --winograd-tile 4` names the first):
/// name and contract.
pub const OPT_IN: &[(&str, &str)] = &[(
    "winograd_f4",
    "`winograd` by F(4×4, 3×3): 36 products for 16 outputs, its error 6–16 times F(2×2, 3×3)'s (opt-in)",
)];

/// The longest fused map expression (the interpreter's limit).
pub const MAX_EXPR: usize = 32;

/// A pass: rewrites a program, says how many rewrites it made.
type Pass = fn(&mut Program) -> usize;

/// Runs every pass not in `disabled` (which also names the [`OPT_IN`] variants to take);
/// returns (pass, rewrites) for each that ran.
pub fn optimize(p: &mut Program, disabled: &[String]) -> Vec<(&'static str, usize)> {
    let f4 = disabled.iter().any(|d| d == OPT_IN[0].0);
    let passes: [(&str, Pass); 10] = [
        ("fold_batchnorm", fold_batchnorm::run),
        ("fuse_maps", fuse_maps::run),
        ("fuse_epilogue", fuse_epilogue::run),
        ("fuse_im2col", fuse_im2col::run),
        ("fuse_bn_stats", fuse_bn_stats::run),
        ("merge_siblings", merge_siblings::run),
        ("winograd", if f4 { winograd::run_f4 } else { winograd::run }),
        ("concat_in_place", concat_in_place::run),
        ("fuse_pool", fuse_pool::run),
        ("in_place", in_place::run),
    ];
    passes
        .into_iter()
        .filter(|(name, _)| !disabled.iter().any(|d| d == name))
        .map(|(name, pass)| (name, pass(p)))
        .collect()
}

/// Applies the rewrites `find` returns until it finds none: `(keep, drop, fused)` puts `fused`
/// at index `keep` and removes the kernel at `drop`. Returns how many.
pub(crate) fn fuse_all(p: &mut Program, find: fn(&Program) -> Option<(usize, usize, super::Kernel)>) -> usize {
    let mut count = 0;
    while let Some((keep, drop, fused)) = find(p) {
        p.kernels[keep] = fused;
        p.kernels.remove(drop);
        count += 1;
    }
    count
}

/// Who touches each buffer in the step: the kernels that write it and those that read it.
pub(crate) struct Uses {
    pub writers: Vec<Vec<usize>>,
    pub readers: Vec<Vec<usize>>,
}

impl Uses {
    pub fn of(p: &Program) -> Uses {
        let n = p.buffers.len();
        let (mut writers, mut readers) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for (i, k) in p.kernels.iter().enumerate() {
            let (r, w) = k.access();
            for v in r {
                readers[v.buf.0 as usize].push(i);
            }
            for v in w {
                writers[v.buf.0 as usize].push(i);
            }
        }
        for (_, v) in &p.results {
            readers[v.buf.0 as usize].push(usize::MAX);
        }
        Uses { writers, readers }
    }

    /// Whether any kernel strictly between `i` and `j` reads or writes `buf`.
    pub fn touched_between(&self, buf: BufId, i: usize, j: usize) -> bool {
        let b = buf.0 as usize;
        self.writers[b].iter().chain(&self.readers[b]).any(|&k| k > i && k < j)
    }

    /// Whether any kernel at `i` or strictly before `j` (and after `i`) writes `buf`.
    pub fn written_from(&self, buf: BufId, i: usize, j: usize) -> bool {
        self.writers[buf.0 as usize].iter().any(|&k| k >= i && k < j)
    }
}

/// Whether `v` is all of its buffer, contiguous.
pub(crate) fn whole(p: &Program, v: &View) -> bool {
    v.offset == 0 && v.contiguous() && v.len() == p.buffers[v.buf.0 as usize].len
}

/// A buffer a pass may remove: an arena buffer the program does not keep across runs.
pub(crate) fn temporary(p: &Program, buf: BufId) -> bool {
    let b = &p.buffers[buf.0 as usize];
    b.space == Space::Arena && !b.kept
}

/// The kernel that alone reads `col`, the matrix the kernel at `i` writes, if `col` is a temporary
/// only that kernel writes and one later kernel reads (an im2col matrix a pass may fold away).
pub(crate) fn only_reader(p: &Program, uses: &Uses, i: usize, col: &View) -> Option<usize> {
    let t = col.buf.0 as usize;
    let (writers, readers) = (&uses.writers[t], &uses.readers[t]);
    (temporary(p, col.buf) && writers == &[i] && readers.len() == 1 && readers[0] > i).then(|| readers[0])
}

/// Whether two views name the same elements as matrices.
pub(crate) fn same_matrix(a: &View, b: &View) -> bool {
    a.buf == b.buf && a.offset == b.offset && a.pitch == b.pitch && a.rows() == b.rows() && a.cols() == b.cols()
}

/// The steps of `expr` with every reference to an earlier step moved through `at`.
pub(crate) fn renumber(e: Expr, at: &[usize]) -> Expr {
    match e {
        Expr::Add(a, b) => Expr::Add(at[a], at[b]),
        Expr::Mul(a, b) => Expr::Mul(at[a], at[b]),
        Expr::Relu(a) => Expr::Relu(at[a]),
        Expr::Tanh(a) => Expr::Tanh(at[a]),
        Expr::Sigmoid(a) => Expr::Sigmoid(at[a]),
        Expr::Positive { c, a, b } => Expr::Positive { c: at[c], a: at[a], b: at[b] },
        e @ (Expr::Input(_) | Expr::Channel(_) | Expr::Const(_) | Expr::Keep { .. }) => e,
    }
}
