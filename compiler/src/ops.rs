//! The op families. Each module holds everything about its ops: the attribute structs, the layer
//! specs users see (name, signature, doc) with their builders, the shape rule, MACs, the
//! attributes as printed, and the backward operand table (what each gradient reads). [`Op`]
//! lists the variants once and hands each to its family through [`Op::rule`], with no catch-all
//! arm, so the compiler names every place a new op must be handled.
//!
//! Adding a layer: its family module (or a new one), a row in [`LAYERS`], its reference kernel
//! (`runtime/src/reference/`), a row of the layers table in `docs/language.md` (a test compares
//! them), and a case in the gradient property tests.

pub mod activation;
pub mod arith;
pub mod conv;
pub mod dense;
pub mod gram;
pub mod loss;
pub mod norm;
pub mod pad;
pub mod pool;
pub mod structure;

use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Init, Op, ParamRole, Read};
use crate::lir::lower::Lowerer;
use crate::lir::{Expr, Kernel, View};
use crate::shape::{AxisCalc, Inferred, Shape, ShapeFault};
use std::sync::Arc;

/// How the gradients of an op's inputs are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradRule {
    /// Not differentiated (inputs and parameters are where gradients end).
    Leaf,
    /// Every input's gradient is the output's gradient itself (`add`).
    Alias,
    /// The input's gradient is the output's gradient in the input's shape (`flatten`, `reshape`).
    Reshape,
    /// Each input's gradient is its channel range of the output's gradient (`concat`).
    Slice,
    /// One backward node per input that needs a gradient.
    PerInput,
    /// One backward node for all inputs that need a gradient, one result each (batchnorm: its
    /// three gradients share the normalized input and two reductions).
    Grouped,
}

/// A window op's geometry, for explaining its output size.
#[derive(Clone, Debug, PartialEq)]
pub struct Window<'a> {
    /// Window size per axis.
    pub size: &'a [usize],
    /// Stride per axis.
    pub stride: &'a [usize],
    /// Padding before and after, per axis.
    pub pad: &'a [(usize, usize)],
    /// Dilation per axis.
    pub dilation: Vec<usize>,
    /// Ceil rounding.
    pub ceil: bool,
}

/// What every op knows about itself. The methods without a default are what each op must
/// decide; the defaults are the absence of a feature (no attributes, no parameter ports, no
/// window).
pub trait OpRule {
    /// Its name in IR text and summaries.
    fn mnemonic(&self) -> String;

    /// Its attributes as `[k=v,...]`, empty when there are none.
    fn attributes(&self) -> String {
        String::new()
    }

    /// The shapes of its results from its operands' shapes (weights included, in port order).
    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault>;

    /// Whether `n` operands is a valid count.
    fn arity(&self, n: usize) -> bool;

    /// Whether every operand after the first must be a parameter.
    fn param_ports(&self) -> bool {
        false
    }

    /// Multiply-accumulates per example, given its operands' shapes and its output's.
    fn macs(&self, inputs: &[&Shape], output: &Shape) -> u64;

    /// How autodiff differentiates it.
    fn grad(&self) -> GradRule;

    /// What the gradient with respect to input `wrt` reads, in a canonical order (forward
    /// inputs, then forward results, then the output's gradient).
    fn reads(&self, wrt: usize) -> Vec<Read>;

    /// Its window, for a windowed op.
    fn window(&self) -> Option<Window<'_>> {
        None
    }

    /// Emits the kernels that compute its results from its operands.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String>;

    /// Emits the kernels of its gradients with respect to inputs `wrt`, result `k` for `wrt[k]`,
    /// on a backward node that reads what [`OpRule::reads`] names.
    fn lower_grad(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String>;
}

/// The kernel `out = expr(inputs)` with `channels` broadcast per channel.
pub(crate) fn map(expr: Vec<Expr>, inputs: Vec<View>, channels: Vec<View>, out: View) -> Kernel {
    Kernel::Map { expr, inputs, channels, out }
}

/// For lowerings that only a driver or no graph reaches.
pub(crate) fn not_lowered(what: &str) -> Result<(), String> {
    Err(format!("{what} is not lowered by its op"))
}

/// What one backward node for the gradients of `wrt` of `op` reads: the union of each rule's.
pub fn reads_all(op: &Op, wrt: &[usize]) -> Vec<Read> {
    let mut all: Vec<Read> = wrt.iter().flat_map(|&w| op.rule().reads(w)).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// How many tensors a layer takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensors {
    /// One, piped or first positional.
    One,
    /// Two or more (`add`) or one or more (`concat`), all positional.
    Many(usize),
}

/// A layer as it is written, and the function that builds it from a call's arguments.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec {
    /// Its name in `.cnn` files.
    pub name: &'static str,
    /// Tensor inputs.
    pub tensors: Tensors,
    /// Value parameters in positional order, with whether each is required.
    pub params: &'static [(&'static str, bool)],
    /// The signature as documented.
    pub signature: &'static str,
    /// One line on what it computes.
    pub doc: &'static str,
    /// Builds the op and the parameters it needs; `None` after reporting a bad argument.
    pub(crate) build: fn(&mut LayerArgs) -> Option<Built>,
}

/// An op and the parameters it needs, as a builder makes them.
pub(crate) type Built = (Op, Vec<ParamNeed>);

/// Every built-in layer, in the order completion and documentation list them.
pub static LAYERS: &[LayerSpec] = &[
    conv::CONV,
    pool::MAXPOOL,
    pool::AVGPOOL,
    pool::GLOBAL_AVGPOOL,
    pool::GLOBAL_MAXPOOL,
    dense::DENSE,
    structure::FLATTEN,
    norm::BATCHNORM,
    activation::DROPOUT,
    activation::RELU,
    activation::LEAKY_RELU,
    activation::PRELU,
    activation::TANH,
    activation::SIGMOID,
    activation::SOFTMAX,
    structure::ADD,
    arith::SUB,
    arith::MUL,
    arith::ABS,
    arith::SQUARE,
    arith::L2NORM,
    structure::CONCAT,
    pad::PAD,
    gram::GRAM,
];

/// The built-in layer called `name`.
pub fn spec(name: &str) -> Option<&'static LayerSpec> {
    LAYERS.iter().find(|l| l.name == name)
}

/// A parameter a layer needs.
#[derive(Clone, Debug)]
pub(crate) struct ParamNeed {
    pub role: ParamRole,
    pub shape: Shape,
    pub init: Init,
    pub value: Option<Arc<[f32]>>,
    pub frozen: bool,
}

impl ParamNeed {
    pub fn new(role: ParamRole, shape: Vec<usize>, init: Init) -> Self {
        ParamNeed { role, shape: Shape(shape), init, value: None, frozen: false }
    }
}

/// The first operand, or an arity fault.
pub(crate) fn need<'a>(inputs: &[&'a Shape], expected: usize) -> Result<&'a Shape, ShapeFault> {
    inputs.first().copied().ok_or(ShapeFault::Arity { expected, got: 0 })
}

/// Window ops take `[n, n_C]`, `[n_H, n_W, n_C]` or `[n_D, n_H, n_W, n_C]`.
pub(crate) fn conv_rank(x: &Shape) -> Result<(), ShapeFault> {
    if (2..=4).contains(&x.rank()) {
        Ok(())
    } else {
        Err(ShapeFault::Rank { expected: "[n, n_C], [n_H, n_W, n_C] or [n_D, n_H, n_W, n_C]", got: x.clone() })
    }
}

/// The per-axis arithmetic of a window op on `x`.
pub(crate) fn windows(x: &Shape, w: &Window) -> Result<Vec<AxisCalc>, ShapeFault> {
    let spatial = x.spatial();
    let n = spatial.len();
    if w.size.len() != n || w.stride.len() != n || w.pad.len() != n || w.dilation.len() != n {
        return Err(ShapeFault::Rank { expected: "as many spatial axes as the window has", got: x.clone() });
    }
    if w.size.contains(&0) {
        return Err(ShapeFault::Zero { what: "window size" });
    }
    if w.stride.contains(&0) {
        return Err(ShapeFault::Zero { what: "stride" });
    }
    if w.dilation.contains(&0) {
        return Err(ShapeFault::Zero { what: "dilation" });
    }
    Ok((0..n)
        .map(|axis| AxisCalc {
            axis,
            n: spatial[axis],
            pad: w.pad[axis],
            f: w.size[axis],
            dilation: w.dilation[axis],
            s: w.stride[axis],
            ceil: w.ceil,
        })
        .collect())
}

/// The output of a window op: each axis's size, then `channels`; axes that leave input unread.
pub(crate) fn finish_windows(calcs: Vec<AxisCalc>, channels: usize) -> Result<Inferred, ShapeFault> {
    let mut out = Vec::with_capacity(calcs.len() + 1);
    for c in &calcs {
        out.push(c.out().ok_or_else(|| ShapeFault::OutputTooSmall { calc: c.clone() })?);
    }
    out.push(channels);
    Ok(Inferred {
        shape: Shape(out),
        extra: Vec::new(),
        unread: calcs.into_iter().filter(|c| c.unread() > 0).collect(),
    })
}

/// `[3, 3]` as `3x3`.
pub(crate) fn axes_text(v: &[usize]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x")
}

/// Paddings as `1x1`, or `0+1x0+1` where before and after differ.
pub(crate) fn pads_text(v: &[(usize, usize)]) -> String {
    if v.iter().all(|(a, b)| a == b) {
        v.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join("x")
    } else {
        v.iter().map(|(a, b)| format!("{a}+{b}")).collect::<Vec<_>>().join("x")
    }
}

/// Elements of a shape as a MAC factor.
pub(crate) fn elements(s: &Shape) -> u64 {
    s.elements().unwrap_or(0) as u64
}
