//! The closed set of operations: one variant per op, each with an attribute struct from its
//! family module ([`crate::ops`]), which holds everything about it. [`Op::rule`] is the one
//! match over the variants; every other question is asked through it.

use crate::ops::{self, OpRule};

pub use super::backward::{BackwardOp, Read};
pub use crate::ops::activation::{Activation, DropoutOp};
pub use crate::ops::arith::{Arith, L2NormOp};
pub use crate::ops::conv::ConvOp;
pub use crate::ops::dense::DenseOp;
pub use crate::ops::loss::{DetectLoss, LossKind, LossOp, TripletLoss};
pub use crate::ops::norm::BatchNormOp;
pub use crate::ops::pad::PadOp;
pub use crate::ops::pool::{PoolKind, PoolOp};
pub use crate::ops::structure::{Init, InputOp, ParamOp, ParamRole, ReshapeOp, SliceOp};

/// An operation of the graph IR.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input; its shape is declared.
    Input(InputOp),
    /// A learned (or constant) tensor: weights, biases, batchnorm scale and statistics.
    Param(ParamOp),
    /// Convolution over 1, 2 or 3 spatial axes. Inputs: x, weight `[f.., c_in/groups, filters]`, bias?
    Conv(ConvOp),
    /// Max or average pooling over windows.
    Pool(PoolOp),
    /// Max or average over all spatial positions: `[.., c]` to `[c]`.
    GlobalPool(PoolKind),
    /// Fully connected layer. Inputs: x `[n]`, weight `[n, units]`, bias?
    Dense(DenseOp),
    /// Any shape to `[product]`.
    Flatten,
    /// Batch normalization over the last axis. In inference: inputs x, gamma, beta, running mean,
    /// running var; one result. In training: inputs x, gamma, beta; results y and the batch's
    /// mean and (biased) variance per channel, which backward and the running averages read.
    BatchNorm(BatchNormOp),
    /// Zeroes a fraction of values while training; identity at inference.
    Dropout(DropoutOp),
    /// An element-wise (or, for softmax, last-axis) activation.
    Activation(Activation),
    /// Leaky ReLU with a learned slope per channel. Inputs: x, slopes `[c]`.
    PRelu,
    /// Element-wise sum of two or more tensors of one shape.
    Add,
    /// Element-wise arithmetic: the difference or product of two tensors of one shape, or the
    /// absolute value or square of one.
    Arith(Arith),
    /// `x / max(‖x‖₂, eps)` over the last axis.
    L2Norm(L2NormOp),
    /// Concatenation along the channel (last) axis; other axes must agree.
    Concat,
    /// Zeros around the spatial axes and after the channels.
    Pad(PadOp),
    /// The same values in another shape of as many elements: an alias, no data moves (the
    /// gradient of `flatten`).
    Reshape(ReshapeOp),
    /// Channels `start .. start + len` of the last axis: a view, no data moves (the gradient of
    /// `concat` for one of its inputs).
    ChannelSlice(SliceOp),
    /// The Gram matrix of a feature map, `AᵀA` over positions: `[.., c]` to `[c, c]`.
    Gram,
    /// A weighted loss per example (a scalar `[]`). Inputs: prediction, target.
    Loss(LossOp),
    /// The vector-Jacobian products of a forward op with respect to its inputs `wrt`: the
    /// gradients of the loss with respect to them, one result each. Its operands are only what
    /// the rule reads ([`Read`]): some forward inputs, some forward results, and the gradient of
    /// the forward output (absent for a loss, whose gradient is weight/batch per example).
    Backward(BackwardOp),
}

impl Op {
    /// What this op knows about itself: its family's rule.
    pub fn rule(&self) -> &dyn OpRule {
        match self {
            Op::Input(o) => o,
            Op::Param(o) => o,
            Op::Conv(o) => o,
            Op::Pool(o) => o,
            Op::GlobalPool(PoolKind::Max) => &ops::pool::GLOBAL_MAX,
            Op::GlobalPool(PoolKind::Avg) => &ops::pool::GLOBAL_AVG,
            Op::Dense(o) => o,
            Op::Flatten => &ops::structure::Flatten,
            Op::BatchNorm(o) => o,
            Op::Dropout(o) => o,
            Op::Activation(o) => o,
            Op::PRelu => &ops::activation::PRelu,
            Op::Add => &ops::structure::Add,
            Op::Arith(o) => o,
            Op::L2Norm(o) => o,
            Op::Concat => &ops::structure::Concat,
            Op::Pad(o) => o,
            Op::Reshape(o) => o,
            Op::ChannelSlice(o) => o,
            Op::Gram => &ops::gram::Gram,
            Op::Loss(o) => o,
            Op::Backward(o) => o,
        }
    }

    /// The op's name in IR text and summaries.
    pub fn mnemonic(&self) -> String {
        self.rule().mnemonic()
    }

    /// The attributes as `[k=v,...]`, empty when there are none.
    pub fn attributes(&self) -> String {
        self.rule().attributes()
    }
}
