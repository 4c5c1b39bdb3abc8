//! The reference executor's ops: one plain, obviously correct function per op, forward and
//! backward (vector-Jacobian product), over ndarray. Tensors carry the batch as their first axis.
//! This is the oracle that faster executors are tested against.

mod conv;
mod elementwise;
mod loss;
mod norm;
mod pool;
mod structure;

use cnnc_compiler::ir::op::Op;

pub use elementwise::softmax;
use ndarray::ArrayD;
pub use norm::batch_statistics;

/// A tensor: batch axis first, then the IR shape.
pub type Tensor = ArrayD<f32>;

/// What a forward or backward op may depend on besides its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// Training mode: batch statistics in batchnorm, dropout active.
    pub training: bool,
    /// Seed of the run; with `step` and `node` it fixes dropout masks.
    pub seed: u64,
    /// Training step.
    pub step: u64,
    /// Index of the forward node (dropout masks differ per node).
    pub node: u32,
}

impl Ctx {
    /// Inference mode.
    pub fn eval() -> Self {
        Ctx { training: false, seed: 0, step: 0, node: 0 }
    }
}

/// The forward computation of `op` on `inputs` (operands in port order).
pub fn forward(op: &Op, inputs: &[&Tensor], ctx: Ctx) -> Tensor {
    match op {
        Op::Conv(c) => conv::forward(c, inputs[0], inputs[1], inputs.get(2).copied()),
        Op::Pool(p) => pool::forward(p, inputs[0]),
        Op::GlobalPool(k) => pool::global_forward(*k, inputs[0]),
        Op::Dense(_) => structure::dense_forward(inputs[0], inputs[1], inputs.get(2).copied()),
        Op::Flatten => structure::flatten(inputs[0]),
        Op::BatchNorm(b) => norm::forward(b, inputs, ctx.training),
        Op::Dropout(d) => elementwise::dropout(d.rate, inputs[0], ctx),
        Op::Activation(a) => elementwise::activation(*a, inputs[0]),
        Op::PRelu => elementwise::prelu(inputs[0], inputs[1]),
        Op::Add => structure::add(inputs),
        Op::Concat => structure::concat(inputs),
        Op::Loss(l) => loss::forward(l.kind, inputs[0], inputs[1]),
        Op::Backward(b) => {
            let n = b.arity;
            let dy = inputs.get(n + 1).copied();
            vjp(&b.of, b.wrt, &inputs[..n], inputs[n], dy, ctx)
        }
        Op::Input(_) | Op::Param(_) => inputs[0].clone(),
    }
}

/// The gradient of the loss with respect to input `wrt` of `op`, given the op's inputs, its output
/// `y` and the gradient `dy` of its output (`None` for a loss: the seed 1/batch).
pub fn vjp(op: &Op, wrt: usize, inputs: &[&Tensor], y: &Tensor, dy: Option<&Tensor>, ctx: Ctx) -> Tensor {
    if let Op::Loss(l) = op {
        return loss::vjp(l.kind, l.weight, wrt, inputs[0], inputs[1]);
    }
    let dy = dy.expect("the verifier guarantees a gradient operand for non-loss ops");
    match op {
        Op::Conv(c) => conv::vjp(c, wrt, inputs[0], inputs[1], dy),
        Op::Pool(p) => pool::vjp(p, inputs[0], dy),
        Op::GlobalPool(k) => pool::global_vjp(*k, inputs[0], y, dy),
        Op::Dense(_) => structure::dense_vjp(wrt, inputs[0], inputs[1], dy),
        Op::Flatten => dy
            .as_standard_layout()
            .to_owned()
            .into_shape_with_order(inputs[0].raw_dim())
            .expect("flatten keeps the element count"),
        Op::BatchNorm(b) => norm::vjp(b, wrt, inputs, dy, ctx.training),
        Op::Dropout(d) => elementwise::dropout(d.rate, dy, ctx),
        Op::Activation(a) => elementwise::activation_vjp(*a, inputs[0], y, dy),
        Op::PRelu => elementwise::prelu_vjp(wrt, inputs[0], inputs[1], dy),
        Op::Add => dy.clone(),
        Op::Concat => structure::concat_vjp(wrt, inputs, dy),
        Op::Loss(_) | Op::Backward(_) | Op::Input(_) | Op::Param(_) => {
            unreachable!("autodiff never differentiates {}", op.mnemonic())
        }
    }
}
