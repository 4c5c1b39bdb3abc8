//! The reference executor's ops: one plain, obviously correct function per op, forward and
//! backward (vector-Jacobian product), over ndarray. Tensors carry the batch as their first axis.
//! This is the oracle that faster executors are tested against.

mod arith;
mod conv;
mod elementwise;
mod loss;
mod norm;
mod pool;
mod structure;

use cnnc_compiler::ir::op::{BackwardOp, Op, Read};
use ndarray::{ArrayD, ArrayViewD};

pub use elementwise::{keep as elementwise_keep, sigmoid, softmax};
pub use norm::batch_statistics;
pub use structure::gram;

/// A tensor: batch axis first, then the IR shape.
pub type Tensor = ArrayD<f32>;

/// A borrowed tensor: an operand, a parameter in the flat store, or a fed batch.
pub type View<'a> = ArrayViewD<'a, f32>;

/// What an op may depend on besides its operands: the seed and step that, with a dropout
/// layer's salt, fix its mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ctx {
    /// Seed of the run.
    pub seed: u64,
    /// Training step.
    pub step: u64,
    /// Where this batch starts in the global batch of a data-parallel step, in examples (0 in
    /// one process): dropout draws each example's mask by its place in the global batch.
    pub first: u64,
    /// Examples in this batch (0: not known, and no offset).
    pub batch: u64,
}

impl Ctx {
    /// What dropout adds to the index of each element of a tensor of `len` elements over this
    /// batch: the elements of the examples before it in the global batch.
    pub fn offset(&self, len: usize) -> u64 {
        if self.first == 0 || self.batch == 0 {
            return 0;
        }
        self.first * (len as u64 / self.batch)
    }
}

/// The results of `op` on `inputs` (operands in port order): one tensor per result.
pub fn forward(op: &Op, inputs: &[View], ctx: Ctx) -> Vec<Tensor> {
    let x = || &inputs[0];
    let one = |t: Tensor| vec![t];
    match op {
        Op::Conv(c) => one(conv::forward(c, x(), &inputs[1], inputs.get(2))),
        Op::Pool(p) => one(pool::forward(p, x())),
        Op::GlobalPool(k) => one(pool::global_forward(*k, x())),
        Op::Dense(_) => one(structure::dense_forward(x(), &inputs[1], inputs.get(2))),
        Op::Flatten => {
            let n = x().shape()[0];
            one(structure::reshape(x(), &[x().len() / n.max(1)]))
        }
        Op::Reshape(r) => one(structure::reshape(x(), &r.shape)),
        Op::ChannelSlice(s) => one(structure::channel_slice(x(), s.start, s.len)),
        Op::BatchNorm(b) => norm::forward(b, inputs),
        Op::Dropout(d) => one(elementwise::dropout(d.rate, d.salt, x(), ctx)),
        Op::Activation(a) => one(elementwise::activation(*a, x())),
        Op::PRelu => one(elementwise::prelu(x(), &inputs[1])),
        Op::Add => one(structure::add(inputs)),
        Op::Arith(a) => one(arith::forward(*a, inputs)),
        Op::L2Norm(o) => one(arith::l2norm(*o, x())),
        Op::Concat => one(structure::concat(inputs)),
        Op::Pad(p) => one(structure::pad(p, x())),
        Op::Gram => one(structure::gram(x())),
        Op::Loss(l) => one(loss::forward(l.kind, x(), &inputs[1])),
        Op::Backward(b) => backward(b, inputs, ctx),
        Op::Input(_) | Op::Param(_) => one(x().to_owned()),
    }
}

/// Per-example losses `[n]` of `pred` against `target` (class indices for softmax
/// cross-entropy), as the `loss` op computes them.
pub fn loss(kind: cnnc_compiler::ir::op::LossKind, pred: &View, target: &View) -> Tensor {
    loss::forward(kind, pred, target)
}

/// A backward node's operands, found by what they are.
pub(crate) struct Args<'a, 'v> {
    op: &'a BackwardOp,
    operands: &'a [View<'v>],
    batch: usize,
}

impl<'a, 'v> Args<'a, 'v> {
    fn get(&self, read: Read) -> &'a View<'v> {
        let port = self.op.reads.iter().position(|&r| r == read);
        // The verifier checked `reads` against the gradient rules, which name what they read.
        &self.operands[port.unwrap_or_else(|| panic!("the rule reads {read}, which autodiff wired"))]
    }

    /// Forward input `i`.
    fn x(&self, i: usize) -> &'a View<'v> {
        self.get(Read::Input(i))
    }

    /// Forward result `r`.
    fn y(&self, r: u16) -> &'a View<'v> {
        self.get(Read::Result(r))
    }

    /// The gradient of the forward output.
    fn dy(&self) -> &'a View<'v> {
        self.get(Read::Grad)
    }

    /// The batch-inclusive shape of forward input `i`.
    fn shape(&self, i: usize) -> Vec<usize> {
        let mut out = vec![self.batch];
        out.extend_from_slice(&self.op.inputs[i].0);
        out
    }

    /// Whether forward input `i` is a parameter (no batch axis).
    fn is_param(&self, i: usize) -> bool {
        match &*self.op.of {
            Op::Conv(_) | Op::Dense(_) | Op::BatchNorm(_) | Op::PRelu => i > 0,
            _ => false,
        }
    }

    /// The shape of forward input `i` as a tensor has it.
    fn tensor_shape(&self, i: usize) -> Vec<usize> {
        if self.is_param(i) {
            self.op.inputs[i].0.clone()
        } else {
            self.shape(i)
        }
    }
}

/// The gradients of a backward node, one per `wrt`.
fn backward(b: &BackwardOp, operands: &[View], ctx: Ctx) -> Vec<Tensor> {
    let batch = batch_of(b, operands);
    let args = Args { op: b, operands, batch };
    if let Op::BatchNorm(bn) = &*b.of {
        return norm::backward(bn, &b.wrt, &args);
    }
    b.wrt.iter().map(|&wrt| vjp(&b.of, wrt, &args, ctx)).collect()
}

/// The batch size: the leading axis of any operand that is not a parameter.
fn batch_of(b: &BackwardOp, operands: &[View]) -> usize {
    let args = Args { op: b, operands, batch: 0 };
    for (port, read) in b.reads.iter().enumerate() {
        match read {
            Read::Input(i) if args.is_param(*i) => continue,
            _ => return operands[port].shape().first().copied().unwrap_or(1),
        }
    }
    1
}

/// The gradient of the loss with respect to input `wrt` of `op`.
fn vjp(op: &Op, wrt: usize, a: &Args, ctx: Ctx) -> Tensor {
    match op {
        Op::Loss(l) => loss::vjp(l.kind, l.weight, wrt, a.x(0), a.x(1)),
        Op::Conv(c) => match wrt {
            0 => conv::grad_input(c, &a.shape(0), a.x(1), a.dy()),
            1 => conv::grad_weight(c, a.x(0), &a.tensor_shape(1), a.dy()),
            _ => structure::sum_rows(a.dy()),
        },
        Op::Dense(_) => match wrt {
            0 => structure::dense_grad_input(a.x(1), a.dy()),
            1 => structure::dense_grad_weight(a.x(0), a.dy()),
            _ => structure::sum_rows(a.dy()),
        },
        Op::Pool(p) => {
            pool::vjp(p, &a.shape(0), (p.kind == cnnc_compiler::ir::op::PoolKind::Max).then(|| a.x(0)), a.dy())
        }
        Op::GlobalPool(k) => pool::global_vjp(*k, &a.shape(0), a, a.dy()),
        Op::Dropout(d) => elementwise::dropout(d.rate, d.salt, a.dy(), ctx),
        Op::Activation(act) => elementwise::activation_vjp(*act, a.y(0), a.dy()),
        Op::PRelu => match wrt {
            0 => elementwise::prelu_grad_input(a.x(0), a.x(1), a.dy()),
            _ => elementwise::prelu_grad_slope(a.x(0), &a.tensor_shape(1), a.dy()),
        },
        Op::ChannelSlice(s) => structure::unslice(a.dy(), &a.shape(0), s.start),
        Op::Flatten | Op::Reshape(_) => structure::reshape(a.dy(), &a.op.inputs[0].0),
        Op::Add => a.dy().to_owned(),
        Op::Arith(op) => {
            let read = a.op.reads.iter().find_map(|r| match r {
                Read::Input(i) => Some(a.x(*i)),
                _ => None,
            });
            arith::vjp(*op, wrt, read, a.dy())
        }
        Op::L2Norm(o) => arith::l2norm_vjp(*o, a.x(0), a.dy()),
        Op::Gram => structure::gram_vjp(a.x(0), a.dy()),
        Op::Pad(p) => structure::crop(p, a.dy(), &a.op.inputs[0].0),
        Op::Concat => {
            let start: usize = a.op.inputs[..wrt].iter().map(|s| s.channels()).sum();
            structure::channel_slice(a.dy(), start, a.op.inputs[wrt].channels())
        }
        Op::BatchNorm(_) | Op::Backward(_) | Op::Input(_) | Op::Param(_) => {
            unreachable!("autodiff never builds a per-input backward node of {}", op.mnemonic())
        }
    }
}
