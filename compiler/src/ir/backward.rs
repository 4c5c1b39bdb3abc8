//! The backward operand table: how autodiff differentiates each op, and what each gradient rule
//! reads. A backward node is wired to exactly these operands, so liveness sees the true data
//! flow: a convolution's bias gradient reads only `dy`, ReLU's reads its output (so the forward
//! may run in place), and identity gradients are aliases, not nodes that copy.

use super::op::{Activation, Op, PoolKind, Read};

/// How the gradients of an op's inputs are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
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

/// How `op` is differentiated.
pub fn rule(op: &Op) -> Rule {
    match op {
        Op::Input(_) | Op::Param(_) | Op::Backward(_) => Rule::Leaf,
        Op::Add => Rule::Alias,
        Op::Flatten | Op::Reshape(_) => Rule::Reshape,
        Op::Concat => Rule::Slice,
        Op::BatchNorm(_) => Rule::Grouped,
        Op::Conv(_)
        | Op::Pool(_)
        | Op::GlobalPool(_)
        | Op::Dense(_)
        | Op::Dropout(_)
        | Op::Activation(_)
        | Op::PRelu
        | Op::ChannelSlice(_)
        | Op::Loss(_) => Rule::PerInput,
    }
}

/// What the gradient of `op` with respect to its input `wrt` reads, in a canonical order (forward
/// inputs, then forward results, then the output's gradient).
pub fn reads(op: &Op, wrt: usize) -> Vec<Read> {
    use Read::{Grad, Input, Result};
    match op {
        // dx = dy ⋆ W (a convolution of dy with the rotated filters), dW = x ⋆ dy, db = Σ dy.
        Op::Conv(_) | Op::Dense(_) => match wrt {
            0 => vec![Input(1), Grad],
            1 => vec![Input(0), Grad],
            _ => vec![Grad],
        },
        // Max routes dy to each window's maximum (found again in x); average spreads it evenly.
        Op::Pool(p) => match p.kind {
            PoolKind::Max => vec![Input(0), Grad],
            PoolKind::Avg => vec![Grad],
        },
        Op::GlobalPool(PoolKind::Max) => vec![Input(0), Result(0), Grad],
        Op::GlobalPool(PoolKind::Avg) => vec![Grad],
        // The mask is a hash of (seed, step, salt, element): recomputed, not stored.
        Op::Dropout(_) => vec![Grad],
        // Every activation's derivative is a function of its output (ReLU: y > 0).
        Op::Activation(Activation::Relu | Activation::LeakyRelu { .. })
        | Op::Activation(Activation::Tanh | Activation::Sigmoid | Activation::Softmax) => vec![Result(0), Grad],
        // Learned slopes may be negative, so the sign of x is not that of y.
        Op::PRelu => match wrt {
            0 => vec![Input(0), Input(1), Grad],
            _ => vec![Input(0), Grad],
        },
        Op::BatchNorm(b) if b.training => match wrt {
            // dx needs x̂ (from x and the saved statistics) and γ; dγ needs x̂; dβ only dy.
            0 => vec![Input(0), Input(1), Result(1), Result(2), Grad],
            1 => vec![Input(0), Result(1), Result(2), Grad],
            _ => vec![Grad],
        },
        Op::BatchNorm(_) => match wrt {
            0 => vec![Input(1), Input(4), Grad],
            1 => vec![Input(0), Input(3), Input(4), Grad],
            _ => vec![Grad],
        },
        Op::ChannelSlice(_) => vec![Grad],
        Op::Loss(_) => vec![Input(0), Input(1)],
        Op::Add | Op::Flatten | Op::Reshape(_) | Op::Concat | Op::Input(_) | Op::Param(_) | Op::Backward(_) => {
            Vec::new()
        }
    }
}

/// What one backward node for the gradients of `wrt` reads: the union of each rule's reads.
pub fn reads_all(op: &Op, wrt: &[usize]) -> Vec<Read> {
    let mut all: Vec<Read> = wrt.iter().flat_map(|&w| reads(op, w)).collect();
    all.sort_unstable();
    all.dedup();
    all
}
