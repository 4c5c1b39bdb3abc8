//! The kernel IR: the level that code is generated from, below the layers. A [`Program`] is a
//! list of kernels in execution order over concrete, batch-inclusive views of buffers. A buffer
//! lives in the arena (planned by [`plan`]), in the flat parameter or gradient store, or is a fed
//! input. A view is a buffer, an offset, a shape whose last axis is contiguous, and a row pitch
//! (elements between consecutive rows), so a channel slice of an NHWC tensor is a view, and
//! reshapes and slices move no data. The closed set of kernels: GEMM with transposes, bias and
//! accumulation; implicit products over im2col rows and over pooled rows; im2col and col2im;
//! window pooling and its backward; global pooling; row reductions; a fused element-wise map
//! with per-channel broadcast; softmax; batchnorm statistics, apply and backward; losses and
//! their backward; copy and fill.
//!
//! Each layer op lowers in one function of its family ([`crate::ops::OpRule::lower`]), each
//! `(op, wrt)` in one more ([`crate::ops::OpRule::lower_grad`]); [`lower`] drives them.

pub mod lower;
pub mod passes;
pub mod plan;
mod print;

pub use lower::{lower, LowerError, Lowered, Purpose};
pub use plan::{plan, MemoryPlan};

use crate::ir::op::{LossKind, PoolKind};
use std::fmt;

/// A buffer's index in its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// Element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float: activations, parameters, gradients.
    F32,
    /// 32-bit integer: class labels.
    I32,
}

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// The arena, at an offset the memory plan gives.
    Arena,
    /// The flat parameter store, at this offset.
    Param(usize),
    /// The flat gradient store (the parameters' layout), at this offset.
    Grad(usize),
    /// Fed input number `i` (the model inputs in order, then the labels).
    Input(usize),
}

/// A buffer of a program.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// The value it holds, for people (`conv1`, `conv1.d1`, `conv1/col`).
    pub name: String,
    /// Where it lives.
    pub space: Space,
    /// Elements.
    pub len: usize,
    /// Element type.
    pub dtype: DType,
    /// Read after the program ends (losses, predictions, batch statistics): never reused.
    pub kept: bool,
}

/// A view of a buffer: `shape` (batch axis first) with the last axis contiguous and consecutive
/// rows (all other axes flattened) `pitch` elements apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The buffer.
    pub buf: BufId,
    /// First element.
    pub offset: usize,
    /// Shape, batch axis first.
    pub shape: Vec<usize>,
    /// Elements from one row to the next; the last axis's length when the view is contiguous.
    pub pitch: usize,
}

impl View {
    /// A contiguous view of a whole buffer of `shape`.
    pub fn whole(buf: BufId, shape: Vec<usize>) -> View {
        let pitch = shape.last().copied().unwrap_or(1);
        View { buf, offset: 0, shape, pitch }
    }

    /// Length of the last axis.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Rows: the product of all axes but the last.
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len().saturating_sub(1)].iter().product()
    }

    /// Elements in the view.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the view has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether its rows follow each other without gaps.
    pub fn contiguous(&self) -> bool {
        self.pitch == self.cols() || self.rows() <= 1
    }

    /// The last element's index in its buffer, plus one.
    pub fn end(&self) -> usize {
        if self.is_empty() {
            self.offset
        } else {
            self.offset + (self.rows() - 1) * self.pitch + self.cols()
        }
    }

    /// The same elements in another shape (a contiguous view only).
    pub fn reshaped(&self, shape: Vec<usize>) -> View {
        let pitch = shape.last().copied().unwrap_or(1);
        View { buf: self.buf, offset: self.offset, shape, pitch }
    }

    /// Columns `start .. start + len` of every row.
    pub fn columns(&self, start: usize, len: usize) -> View {
        let mut shape = self.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = len;
        }
        View { buf: self.buf, offset: self.offset + start, shape, pitch: self.pitch }
    }

    /// Rows `first .. first + rows` of the view as a matrix `[rows, cols]`.
    pub fn row_block(&self, first: usize, rows: usize) -> View {
        View {
            buf: self.buf,
            offset: self.offset + first * self.pitch,
            shape: vec![rows, self.cols()],
            pitch: self.pitch,
        }
    }

    /// The view as a matrix `[rows, cols]`.
    pub fn matrix(&self) -> View {
        View { buf: self.buf, offset: self.offset, shape: vec![self.rows(), self.cols()], pitch: self.pitch }
    }
}

/// The geometry of a window op over three spatial axes (depth, height, width; unit axes in
/// front for 1D and 2D), on channels `c0 .. c0 + cg` of `channels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geom {
    /// Batch.
    pub n: usize,
    /// Input size per axis.
    pub input: [usize; 3],
    /// Channels of the input.
    pub channels: usize,
    /// First channel of the block a kernel works on.
    pub c0: usize,
    /// Channels in that block.
    pub cg: usize,
    /// Window size per axis.
    pub size: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Padding before, per axis.
    pub pad: [usize; 3],
    /// Dilation per axis.
    pub dilation: [usize; 3],
    /// Output size per axis.
    pub output: [usize; 3],
}

impl Geom {
    /// Whether a convolution over this geometry with `filters` filters runs as a direct
    /// convolution rather than as a product (the runtime's choice, which the lowering and the
    /// passes follow): few filters over a short window of few channels, where im2col's rows are
    /// short and the product narrow (LeNet-5's first layer, 6 filters over 5×5×1), the whole
    /// group of channels, and the width axis unit-strided and undilated, so that each output row
    /// is a run of multiply-adds over a contiguous row.
    pub fn direct(&self, filters: usize) -> bool {
        self.c0 == 0
            && self.cg == self.channels
            && self.stride[2] == 1
            && self.dilation[2] == 1
            && (1..=16).contains(&filters)
            && self.window() * self.cg <= 64
            && self.output[2] * filters <= 4096
    }

    /// Whether a convolution over this geometry with `filters` filters runs by Winograd's
    /// F(2×2, 3×3) in an inference program (the `winograd` pass): 2D 3×3 windows, stride and
    /// dilation 1, one group of channels (possibly a block of a wider input), channels and filters enough for its sixteen
    /// products to be worth their transforms (16 and more each), and maps of 28×28 and more
    /// (a 14×14 map has 49 tiles, products too short to pay: VGG-16's 14×14 layers at batch 1
    /// took 9 ms by Winograd against 6–7 ms by implicit GEMM).
    pub fn winograd(&self, filters: usize) -> bool {
        self.input[0] == 1
            && self.size == [1, 3, 3]
            && self.stride == [1, 1, 1]
            && self.dilation == [1, 1, 1]
            && self.cg >= 16
            && filters >= 16
            && self.output[1] >= 28
            && self.output[2] >= 28
    }

    /// The output tile of a Winograd form `u` of this convolution's filters
    /// ([`Kernel::WinogradFilters`]): 2 for F(2×2, 3×3), whose filters are 16 values per input
    /// channel, 4 for F(4×4, 3×3), 36 values; `None` for any other form.
    pub fn winograd_tile(&self, u: &View) -> Option<usize> {
        winograd_tile(u.rows(), self.cg)
    }

    /// Output positions per example.
    pub fn positions(&self) -> usize {
        self.output.iter().product()
    }

    /// Row `r` of the im2col matrix as (example, output position per axis).
    #[inline]
    pub fn position(&self, r: usize) -> (usize, [usize; 3]) {
        let [_, oh, ow] = self.output;
        let positions = self.positions().max(1);
        let (n, p) = (r / positions, r % positions);
        (n, [p / (oh * ow).max(1), (p / ow.max(1)) % oh.max(1), p % ow.max(1)])
    }

    /// Elements per window (one channel).
    pub fn window(&self) -> usize {
        self.size.iter().product()
    }

    /// The input coordinate read on `axis` by output `o` and window offset `k`, if inside.
    pub fn source(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let i = (o * self.stride[axis] + k * self.dilation[axis]) as isize - self.pad[axis] as isize;
        (i >= 0 && (i as usize) < self.input[axis]).then_some(i as usize)
    }

    /// Calls `f(row, column, input offset)` for every in-bounds (output position, window
    /// element): the `cg` channels of the block are the run of columns and input elements that
    /// start there.
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        self.for_each_window(|row, col, at| {
            if let Some(at) = at {
                f(row, col, at)
            }
        });
    }

    /// Calls `f(row, column, input offset)` for every (output position, window element); the
    /// offset is `None` where the window element falls in the padding.
    pub fn for_each_window(&self, mut f: impl FnMut(usize, usize, Option<usize>)) {
        let [id, ih, iw] = self.input;
        let c = self.channels;
        let [od, oh, ow] = self.output;
        let [fd, fh, fw] = self.size;
        let mut row = 0;
        for n in 0..self.n {
            for zd in 0..od {
                for zh in 0..oh {
                    for zw in 0..ow {
                        let mut col = 0;
                        for kd in 0..fd {
                            let d = self.source(0, zd, kd);
                            for kh in 0..fh {
                                let h = self.source(1, zh, kh);
                                for kw in 0..fw {
                                    let at = match (d, h, self.source(2, zw, kw)) {
                                        (Some(d), Some(h), Some(w)) => {
                                            Some((((n * id + d) * ih + h) * iw + w) * c + self.c0)
                                        }
                                        _ => None,
                                    };
                                    f(row, col, at);
                                    col += self.cg;
                                }
                            }
                        }
                        row += 1;
                    }
                }
            }
        }
    }

    /// Calls `f(row, column, input offset)` for every in-bounds (output position, window
    /// element, channel of the block): row = output position over the batch, column = window
    /// element · cg + channel, offset into the input viewed as `[n, d, h, w, channels]`.
    pub fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let cg = self.cg;
        self.for_each_run(|row, col, at| (0..cg).for_each(|ci| f(row, col + ci, at + ci)));
    }
}

/// One step of a [`Map`](Kernel::Map) expression, evaluated per element; it refers to earlier
/// steps by index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expr {
    /// Input `i`'s element.
    Input(usize),
    /// Per-channel input `i`'s element for this element's channel.
    Channel(usize),
    /// A constant.
    Const(f32),
    /// `a + b`.
    Add(usize, usize),
    /// `a · b`.
    Mul(usize, usize),
    /// `max(a, 0)`.
    Relu(usize),
    /// `tanh(a)`.
    Tanh(usize),
    /// The logistic function of `a`.
    Sigmoid(usize),
    /// `c > 0 ? a : b`.
    Positive { c: usize, a: usize, b: usize },
    /// `1/(1 − rate)` where dropout keeps this element at this step, else 0: the hash of (seed,
    /// step, salt, element index) against the rate.
    Keep { rate: f32, salt: u64 },
}

/// What a product does to its output while it is still in cache: `c = expr(inputs, channels)`
/// element by element, as a [`Kernel::Map`] over `c` would (an input may be `c` itself).
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    /// The steps.
    pub expr: Vec<Expr>,
    /// Inputs of the shape of `c`.
    pub inputs: Vec<View>,
    /// Per-column inputs.
    pub channels: Vec<View>,
    /// Column ranges of the result written to views of their own instead of to `c`: the first
    /// column and the view (`[rows of c, width]`). An inception module's merged 1×1 product
    /// writes one branch's columns straight into the concatenation this way, and another's into
    /// the buffer the 5×5 convolution reads.
    pub routes: Vec<(usize, View)>,
}

impl Epilogue {
    /// The epilogue as element-wise maps over column ranges of `c`, each `(inputs, per-column
    /// inputs, output)` as matrices: one for each route, writing to its view, and one for each
    /// run of columns between routes, writing to `c`.
    pub fn parts(&self, c: &View) -> Vec<(Vec<View>, Vec<View>, View)> {
        let mut routes: Vec<&(usize, View)> = self.routes.iter().collect();
        routes.sort_by_key(|r| r.0);
        let part = |start: usize, width: usize, out: View| {
            let inputs = self.inputs.iter().map(|v| v.columns(start, width).matrix()).collect();
            let channels = self.channels.iter().map(|v| v.columns(start, width)).collect();
            (inputs, channels, out.matrix())
        };
        let mut parts = Vec::new();
        let mut at = 0;
        for (start, view) in routes {
            if *start > at {
                parts.push(part(at, start - at, c.columns(at, start - at)));
            }
            parts.push(part(*start, view.cols(), view.clone()));
            at = start + view.cols();
        }
        if at < c.cols() || parts.is_empty() {
            parts.push(part(at, c.cols() - at, c.columns(at, c.cols() - at)));
        }
        parts
    }
}

/// The output tile of Winograd-transformed filters of `rows` rows over `cin` input channels: 2
/// (F(2×2, 3×3): 16 values per filter and channel) or 4 (F(4×4, 3×3): 36); `None` otherwise.
pub fn winograd_tile(rows: usize, cin: usize) -> Option<usize> {
    [2, 4].into_iter().find(|m| rows == (m + 2) * (m + 2) * cin)
}

/// Batchnorm's batch statistics taken by a convolution while its output is in cache: the mean
/// and biased variance per column of `c` over all rows, as [`Kernel::BnStats`] over `c` would
/// give them after the epilogue.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// `[1, c.cols()]`: each column's mean.
    pub mean: View,
    /// `[1, c.cols()]`: each column's biased variance.
    pub var: View,
}

/// A kernel: one step of a program, over views.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// `c = op(a)·op(b) (+ c when accumulating) (+ bias per column)`, `op` transposing when
    /// asked, then the epilogue (if any) over `c`. `a`, `b`, `c` are matrices.
    Gemm {
        a: View,
        b: View,
        c: View,
        ta: bool,
        tb: bool,
        accumulate: bool,
        bias: Option<View>,
        epilogue: Option<Box<Epilogue>>,
    },
    /// A convolution as an implicit product: `c = im2col(x)·op(b) (+ bias)`, then the epilogue,
    /// the im2col rows made block by block where the product reads them and never stored whole.
    /// With `winograd` (the filters `b` transformed by [`Kernel::WinogradFilters`]), the runtime
    /// computes it by Winograd's F(2×2, 3×3) or F(4×4, 3×3) instead (the form's rows say which:
    /// [`Geom::winograd_tile`]); the interpreter computes it from `b`.
    /// With `stats`, it also writes the batch statistics of `c` (after the epilogue).
    ConvGemm {
        x: View,
        geom: Geom,
        b: View,
        c: View,
        tb: bool,
        bias: Option<View>,
        epilogue: Option<Box<Epilogue>>,
        winograd: Option<View>,
        stats: Option<Box<Stats>>,
    },
    /// A product over pooled rows: `c = pool(x)·b (+ bias)`, then the epilogue, each row of
    /// `pool(x)` (the `kind` pooling of `x` over `geom`, as [`Kernel::Pool`] computes it) made
    /// where the product reads it, block by block, and never stored whole: an inception module's
    /// pool branch, its 3×3 max pool and the 1×1 convolution after it.
    PoolGemm {
        kind: PoolKind,
        x: View,
        geom: Geom,
        b: View,
        c: View,
        bias: Option<View>,
        epilogue: Option<Box<Epilogue>>,
    },
    /// 3×3 filters `w` (`[9·cin, cout]`) transformed for Winograd's F(m×m, 3×3) (a prepare
    /// kernel), m = 2 or 4 as `u`'s rows say ([`winograd_tile`]): `u` `[(m+2)²·cin, cout']`
    /// (`cout'` = `cout` rounded up to 8), for each position ξ = (m+2)i + j its `cin × cout`
    /// matrix `(G·g·Gᵀ)[i][j]`, `g[kh][kw] = w[(3kh + kw)·cin + ci, co]`, in the runtime's packed
    /// layout for its products: panels of 16 columns (the last of 8 or 16, zeros past `cout`),
    /// each `cin` rows of its width, the panels one after the other.
    WinogradFilters { w: View, u: View },
    /// A convolution's weight gradient as an implicit product: `c = im2col(x)ᵀ·dy`, over blocks of
    /// im2col rows made where they are multiplied.
    ConvWeightGrad { x: View, geom: Geom, dy: View, c: View },
    /// Every output position's receptive field, as a row of `col` `[n·positions, window·cg]`.
    Im2col { x: View, col: View, geom: Geom },
    /// The reverse of im2col: each column entry added back to its input element.
    Col2im { col: View, dx: View, geom: Geom },
    /// Filters `w` `[taps·cin, cout]` turned for the backward pass of a stride-1 convolution:
    /// `out` `[taps·cout, cin]`, taps in reverse order, `out[(T−1−t)·cout + co, ci] =
    /// w[t·cin + ci, co]`.
    RotateFilters { w: View, out: View, taps: usize },
    /// Max or average over each window (average counts no padding).
    Pool { kind: PoolKind, x: View, y: View, geom: Geom },
    /// The gradient of pooling: max routes `dy` to the window's first maximum of `x`, average
    /// spreads it. `dx` is overwritten.
    PoolGrad { kind: PoolKind, x: Option<View>, dy: View, dx: View, geom: Geom },
    /// Max or average over all positions: `[n, .., c]` to `[n, c]`.
    GlobalPool { kind: PoolKind, x: View, y: View },
    /// Its gradient (max: to the first position equal to the maximum).
    GlobalPoolGrad { kind: PoolKind, x: Option<View>, y: Option<View>, dy: View, dx: View },
    /// The sum of all rows: `[rows, c]` to `[c]`.
    SumRows { x: View, y: View },
    /// `out = expr(inputs)` element-wise; `Channel` inputs are `[c]` vectors broadcast over rows.
    Map { expr: Vec<Expr>, inputs: Vec<View>, channels: Vec<View>, out: View },
    /// Softmax over the last axis.
    Softmax { x: View, y: View },
    /// Its gradient from its output: `dx = y·(dy − Σ dy·y)` per row.
    SoftmaxGrad { y: View, dy: View, dx: View },
    /// `y = x / max(‖x‖₂, eps)` per row.
    L2Norm { x: View, y: View, eps: f32 },
    /// Its gradient: `dx = (dy − y·(y·dy)) / ‖x‖` per row where `‖x‖ > eps`, else `dy / eps`.
    L2NormGrad { x: View, dy: View, dx: View, eps: f32 },
    /// `y` is zeros with `x` placed `before[k]` elements into each axis of an example (the batch
    /// axis aside): zero padding.
    Pad { x: View, y: View, before: Vec<usize> },
    /// `dx` is the part of `dy` that starts `before[k]` elements into each axis of an example:
    /// the gradient of [`Kernel::Pad`].
    Crop { dy: View, dx: View, before: Vec<usize> },
    /// Batchnorm on running statistics as a per-channel affine map (a prepare kernel):
    /// `scale = γ/√(var + eps)`, `shift = β − mean·scale`.
    BnAffine { mean: View, var: View, gamma: View, beta: View, eps: f32, scale: View, shift: View },
    /// The mean and biased variance per channel over all rows.
    BnStats { x: View, mean: View, var: View },
    /// `y = (x − mean)/sqrt(var + eps)·γ + β`.
    BnApply { x: View, mean: View, var: View, gamma: View, beta: View, y: View, eps: f32 },
    /// Batchnorm's gradients (those asked for), in training mode (statistics of the batch) or
    /// not (running statistics, constants).
    BnGrad {
        x: Option<View>,
        mean: Option<View>,
        var: Option<View>,
        gamma: Option<View>,
        dy: View,
        dx: Option<View>,
        dgamma: Option<View>,
        dbeta: Option<View>,
        eps: f32,
        training: bool,
    },
    /// Per-example losses `[n]`.
    Loss { kind: LossKind, pred: View, target: View, out: View },
    /// The gradient of `scale · Σ loss` with respect to the prediction (`scale` = weight/batch).
    LossGrad { kind: LossKind, scale: f32, pred: View, target: View, dpred: View },
    /// `dst = src`, row by row.
    Copy { src: View, dst: View },
    /// Every element of `dst` set to `value`.
    Fill { dst: View, value: f32 },
}

impl Kernel {
    /// The kernel's name in `--emit lir`.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Gemm { .. } => "gemm",
            Kernel::Im2col { .. } => "im2col",
            Kernel::ConvGemm { .. } => "conv_gemm",
            Kernel::PoolGemm { .. } => "pool_gemm",
            Kernel::WinogradFilters { .. } => "winograd_filters",
            Kernel::ConvWeightGrad { .. } => "conv_weight_grad",
            Kernel::Col2im { .. } => "col2im",
            Kernel::Pool { .. } => "pool",
            Kernel::PoolGrad { .. } => "pool_grad",
            Kernel::GlobalPool { .. } => "global_pool",
            Kernel::GlobalPoolGrad { .. } => "global_pool_grad",
            Kernel::SumRows { .. } => "sum_rows",
            Kernel::Map { .. } => "map",
            Kernel::Softmax { .. } => "softmax",
            Kernel::SoftmaxGrad { .. } => "softmax_grad",
            Kernel::L2Norm { .. } => "l2norm",
            Kernel::L2NormGrad { .. } => "l2norm_grad",
            Kernel::Pad { .. } => "pad",
            Kernel::Crop { .. } => "crop",
            Kernel::BnStats { .. } => "bn_stats",
            Kernel::BnApply { .. } => "bn_apply",
            Kernel::BnGrad { .. } => "bn_grad",
            Kernel::Loss { .. } => "loss",
            Kernel::LossGrad { .. } => "loss_grad",
            Kernel::Copy { .. } => "copy",
            Kernel::RotateFilters { .. } => "rotate_filters",
            Kernel::BnAffine { .. } => "bn_affine",
            Kernel::Fill { .. } => "fill",
        }
    }

    /// Every view the kernel names, to change (a pass that renames a buffer).
    pub fn views_mut(&mut self) -> Vec<&mut View> {
        fn epi(e: &mut Option<Box<Epilogue>>) -> Vec<&mut View> {
            e.iter_mut()
                .flat_map(|e| {
                    e.inputs.iter_mut().chain(e.channels.iter_mut()).chain(e.routes.iter_mut().map(|r| &mut r.1))
                })
                .collect()
        }
        let mut v: Vec<&mut View> = Vec::new();
        match self {
            Kernel::Gemm { a, b, c, bias, epilogue, .. } => {
                v.extend([a, b, c]);
                v.extend(bias.as_mut());
                v.extend(epi(epilogue));
            }
            Kernel::ConvGemm { x, b, c, bias, epilogue, winograd, stats, .. } => {
                v.extend([x, b, c]);
                v.extend(bias.as_mut());
                v.extend(winograd.as_mut());
                v.extend(epi(epilogue));
                v.extend(stats.iter_mut().flat_map(|s| [&mut s.mean, &mut s.var]));
            }
            Kernel::PoolGemm { x, b, c, bias, epilogue, .. } => {
                v.extend([x, b, c]);
                v.extend(bias.as_mut());
                v.extend(epi(epilogue));
            }
            Kernel::WinogradFilters { w: a, u: b }
            | Kernel::Im2col { x: a, col: b, .. }
            | Kernel::Col2im { col: a, dx: b, .. }
            | Kernel::RotateFilters { w: a, out: b, .. }
            | Kernel::Pool { x: a, y: b, .. }
            | Kernel::GlobalPool { x: a, y: b, .. }
            | Kernel::SumRows { x: a, y: b }
            | Kernel::Softmax { x: a, y: b }
            | Kernel::L2Norm { x: a, y: b, .. }
            | Kernel::Pad { x: a, y: b, .. }
            | Kernel::Crop { dy: a, dx: b, .. }
            | Kernel::Copy { src: a, dst: b } => v.extend([a, b]),
            Kernel::ConvWeightGrad { x: a, dy: b, c, .. }
            | Kernel::SoftmaxGrad { y: a, dy: b, dx: c }
            | Kernel::L2NormGrad { x: a, dy: b, dx: c, .. }
            | Kernel::BnStats { x: a, mean: b, var: c }
            | Kernel::Loss { pred: a, target: b, out: c, .. }
            | Kernel::LossGrad { pred: a, target: b, dpred: c, .. } => v.extend([a, b, c]),
            Kernel::PoolGrad { x, dy, dx, .. } => {
                v.extend(x.as_mut());
                v.extend([dy, dx]);
            }
            Kernel::GlobalPoolGrad { x, y, dy, dx, .. } => {
                v.extend(x.as_mut());
                v.extend(y.as_mut());
                v.extend([dy, dx]);
            }
            Kernel::Map { inputs, channels, out, .. } => {
                v.extend(inputs.iter_mut().chain(channels.iter_mut()));
                v.push(out);
            }
            Kernel::BnApply { x, mean, var, gamma, beta, y, .. } => v.extend([x, mean, var, gamma, beta, y]),
            Kernel::BnGrad { x, mean, var, gamma, dy, dx, dgamma, dbeta, .. } => {
                v.extend([x, mean, var, gamma, dx, dgamma, dbeta].into_iter().flat_map(|o| o.as_mut()));
                v.push(dy);
            }
            Kernel::BnAffine { mean, var, gamma, beta, scale, shift, .. } => {
                v.extend([mean, var, gamma, beta, scale, shift])
            }
            Kernel::Fill { dst, .. } => v.push(dst),
        }
        v
    }

    /// `(views read, views written)`. A written view that is also accumulated into is read too.
    pub fn access(&self) -> (Vec<&View>, Vec<&View>) {
        fn opt(v: &Option<View>) -> Vec<&View> {
            v.iter().collect()
        }
        // An epilogue reads its inputs and writes its routes.
        fn epilogue_access<'v>(e: &'v Option<Box<Epilogue>>, r: &mut Vec<&'v View>, w: &mut Vec<&'v View>) {
            if let Some(e) = e {
                r.extend(e.inputs.iter().chain(&e.channels));
                w.extend(e.routes.iter().map(|r| &r.1));
            }
        }
        match self {
            Kernel::Gemm { a, b, c, accumulate, bias, epilogue, .. } => {
                let mut r = vec![a, b];
                r.extend(bias);
                if *accumulate {
                    r.push(c);
                }
                let mut w = vec![c];
                epilogue_access(epilogue, &mut r, &mut w);
                (r, w)
            }
            Kernel::Im2col { x, col, .. } => (vec![x], vec![col]),
            Kernel::ConvWeightGrad { x, dy, c, .. } => (vec![x, dy], vec![c]),
            Kernel::ConvGemm { x, b, c, bias, epilogue, winograd, stats, .. } => {
                let mut r = vec![x, b];
                r.extend(bias);
                r.extend(winograd);
                let mut w = vec![c];
                epilogue_access(epilogue, &mut r, &mut w);
                w.extend(stats.iter().flat_map(|s| [&s.mean, &s.var]));
                (r, w)
            }
            Kernel::PoolGemm { x, b, c, bias, epilogue, .. } => {
                let mut r = vec![x, b];
                r.extend(bias);
                let mut w = vec![c];
                epilogue_access(epilogue, &mut r, &mut w);
                (r, w)
            }
            Kernel::Col2im { col, dx, .. } => (vec![col, dx], vec![dx]),
            Kernel::Pool { x, y, .. } => (vec![x], vec![y]),
            Kernel::PoolGrad { x, dy, dx, .. } => {
                let mut r = opt(x);
                r.push(dy);
                (r, vec![dx])
            }
            Kernel::GlobalPool { x, y, .. } => (vec![x], vec![y]),
            Kernel::GlobalPoolGrad { x, y, dy, dx, .. } => {
                let mut r = opt(x);
                r.extend(y);
                r.push(dy);
                (r, vec![dx])
            }
            Kernel::SumRows { x, y } => (vec![x], vec![y]),
            Kernel::Map { inputs, channels, out, .. } => (inputs.iter().chain(channels).collect(), vec![out]),
            Kernel::Softmax { x, y } => (vec![x], vec![y]),
            Kernel::SoftmaxGrad { y, dy, dx } => (vec![y, dy], vec![dx]),
            Kernel::L2Norm { x, y, .. } => (vec![x], vec![y]),
            Kernel::L2NormGrad { x, dy, dx, .. } => (vec![x, dy], vec![dx]),
            Kernel::Pad { x, y, .. } => (vec![x], vec![y]),
            Kernel::Crop { dy, dx, .. } => (vec![dy], vec![dx]),
            Kernel::BnStats { x, mean, var } => (vec![x], vec![mean, var]),
            Kernel::BnApply { x, mean, var, gamma, beta, y, .. } => (vec![x, mean, var, gamma, beta], vec![y]),
            Kernel::BnGrad { x, mean, var, gamma, dy, dx, dgamma, dbeta, .. } => {
                let mut r = opt(x);
                r.extend(mean);
                r.extend(var);
                r.extend(gamma);
                r.push(dy);
                let mut w = opt(dx);
                w.extend(dgamma);
                w.extend(dbeta);
                (r, w)
            }
            Kernel::Loss { pred, target, out, .. } => (vec![pred, target], vec![out]),
            Kernel::LossGrad { pred, target, dpred, .. } => (vec![pred, target], vec![dpred]),
            Kernel::Copy { src, dst } => (vec![src], vec![dst]),
            Kernel::RotateFilters { w, out, .. } => (vec![w], vec![out]),
            Kernel::WinogradFilters { w, u } => (vec![w], vec![u]),
            Kernel::BnAffine { mean, var, gamma, beta, scale, shift, .. } => {
                (vec![mean, var, gamma, beta], vec![scale, shift])
            }
            Kernel::Fill { dst, .. } => (vec![], vec![dst]),
        }
    }

    /// Floating-point operations, counting a multiply-add as two.
    pub fn flops(&self) -> u64 {
        match self {
            Kernel::Gemm { a, c, ta, epilogue, .. } => {
                let k = if *ta { a.rows() } else { a.cols() };
                let tail = epilogue.as_ref().map_or(0, |e| e.expr.len() * c.len());
                2 * (c.rows() * c.cols() * k) as u64 + tail as u64
            }
            Kernel::BnAffine { mean, .. } => 4 * mean.len() as u64,
            Kernel::ConvWeightGrad { dy, c, .. } => 2 * (dy.rows() * c.rows() * c.cols()) as u64,
            Kernel::ConvGemm { geom, c, epilogue, stats, .. } => {
                // The convolution's operations, whatever the algorithm (Winograd's fewer
                // multiplies show as a higher rate), and the statistics' as `BnStats` counts them.
                let k = geom.window() * geom.cg;
                let tail = epilogue.as_ref().map_or(0, |e| e.expr.len() * c.len());
                let stats = stats.as_ref().map_or(0, |_| 3 * c.len());
                2 * (c.rows() * c.cols() * k) as u64 + tail as u64 + stats as u64
            }
            Kernel::PoolGemm { geom, c, epilogue, .. } => {
                // The pooling's operations (as `Pool` counts them), then the product's.
                let pooled = geom.n * geom.positions() * geom.cg;
                let tail = epilogue.as_ref().map_or(0, |e| e.expr.len() * c.len());
                (pooled * geom.window() + 2 * c.rows() * c.cols() * geom.cg + tail) as u64
            }
            Kernel::WinogradFilters { u, .. } => 4 * u.len() as u64,
            Kernel::Im2col { .. }
            | Kernel::Col2im { .. }
            | Kernel::Copy { .. }
            | Kernel::Fill { .. }
            | Kernel::Pad { .. }
            | Kernel::Crop { .. }
            | Kernel::RotateFilters { .. } => 0,
            Kernel::Pool { y, geom, .. } => (y.len() * geom.window()) as u64,
            Kernel::PoolGrad { dy, geom, .. } => (dy.len() * geom.window()) as u64,
            Kernel::GlobalPool { x, .. } | Kernel::GlobalPoolGrad { dx: x, .. } | Kernel::SumRows { x, .. } => {
                x.len() as u64
            }
            Kernel::Map { expr, out, .. } => (expr.len() * out.len()) as u64,
            Kernel::Softmax { x, .. } => 4 * x.len() as u64,
            Kernel::SoftmaxGrad { y, .. } => 4 * y.len() as u64,
            Kernel::L2Norm { x, .. } => 3 * x.len() as u64,
            Kernel::L2NormGrad { x, .. } => 7 * x.len() as u64,
            Kernel::BnStats { x, .. } => 3 * x.len() as u64,
            Kernel::BnApply { x, .. } => 4 * x.len() as u64,
            Kernel::BnGrad { dy, .. } => 8 * dy.len() as u64,
            Kernel::Loss { pred, .. } | Kernel::LossGrad { pred, .. } => 4 * pred.len() as u64,
        }
    }
}

/// A lowered graph: buffers, kernels in order, and where the results the caller reads are.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The graph's name.
    pub name: String,
    /// Examples per run.
    pub batch: usize,
    /// Every buffer.
    pub buffers: Vec<Buffer>,
    /// The `prepare` phase: kernels that compute derived parameters (buffers the step kernels
    /// read, such as folded or pre-packed weights) from the parameters, run whenever the
    /// parameters change. Empty for now: every kernel reads the parameters themselves.
    pub prepare: Vec<Kernel>,
    /// Kernels in execution order.
    pub kernels: Vec<Kernel>,
    /// Fed inputs in order: `(name, shape with batch, dtype)`.
    pub inputs: Vec<(String, Vec<usize>, DType)>,
    /// Values the caller reads after a run, by purpose.
    pub results: Vec<(Purpose, View)>,
}

impl Program {
    /// The view of the value read for `purpose`.
    pub fn result(&self, purpose: &Purpose) -> Option<&View> {
        self.results.iter().find(|(p, _)| p == purpose).map(|(_, v)| v)
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print::program(self))
    }
}
