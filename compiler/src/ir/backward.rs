//! The backward op: the vector-Jacobian products of a forward op, wired by autodiff to exactly
//! what each gradient rule reads ([`OpRule::reads`]), so liveness sees the true data flow: a
//! convolution's bias gradient reads only `dy`, ReLU's reads its output (so the forward may run
//! in place), and identity gradients are aliases, not nodes that copy.

use crate::lir::lower::Lowerer;
use crate::ops::{GradRule, OpRule};
use crate::shape::{self, Inferred, Shape, ShapeFault};
use std::fmt;

use super::op::Op;

/// What a backward node reads, in the order of its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Read {
    /// Forward input (port) `i`.
    Input(usize),
    /// Forward result `r` (0 is the output).
    Result(u16),
    /// The gradient of the forward output.
    Grad,
}

impl fmt::Display for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Input(i) => write!(f, "x{i}"),
            Read::Result(r) => write!(f, "y{r}"),
            Read::Grad => f.write_str("dy"),
        }
    }
}

/// Attributes of [`Op::Backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardOp {
    /// The forward op.
    pub of: Box<Op>,
    /// Which of its inputs the gradients are for, one result each, in this order.
    pub wrt: Vec<usize>,
    /// What each operand is, in port order.
    pub reads: Vec<Read>,
    /// The shapes of the forward op's inputs (so the verifier can check every operand and
    /// result, and rules that need only a shape read no tensor).
    pub inputs: Vec<Shape>,
}

impl OpRule for BackwardOp {
    fn mnemonic(&self) -> String {
        format!("vjp.{}", self.of.mnemonic())
    }

    fn attributes(&self) -> String {
        let inner = self.of.attributes();
        let inner = inner.trim_start_matches('[').trim_end_matches(']');
        let wrt: Vec<String> = self.wrt.iter().map(|w| w.to_string()).collect();
        let reads: Vec<String> = self.reads.iter().map(|r| r.to_string()).collect();
        let head = format!("wrt={};reads={}", wrt.join(","), reads.join(","));
        if inner.is_empty() {
            format!("[{head}]")
        } else {
            format!("[{head};{inner}]")
        }
    }

    /// Every operand has the shape of what it reads, and each result the shape of the forward
    /// input it is the gradient of.
    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        if inputs.len() != self.reads.len() {
            return Err(ShapeFault::Arity { expected: self.reads.len(), got: inputs.len() });
        }
        let forward_inputs: Vec<&Shape> = self.inputs.iter().collect();
        let forward = shape::infer(&self.of, &forward_inputs)?;
        for (port, (read, got)) in self.reads.iter().zip(inputs).enumerate() {
            let expected = match read {
                Read::Input(i) => self.inputs.get(*i),
                Read::Result(0) | Read::Grad => Some(&forward.shape),
                Read::Result(r) => forward.extra.get(usize::from(*r) - 1),
            };
            let Some(expected) = expected else {
                return Err(ShapeFault::Arity { expected: self.inputs.len(), got: port });
            };
            if expected != *got {
                return Err(ShapeFault::BackwardOperand { port, expected: expected.clone(), got: (*got).clone() });
            }
        }
        let mut results = Vec::with_capacity(self.wrt.len());
        for &w in &self.wrt {
            results.push(
                self.inputs.get(w).cloned().ok_or(ShapeFault::Arity { expected: w + 1, got: self.inputs.len() })?,
            );
        }
        let mut results = results.into_iter();
        let shape = results.next().ok_or(ShapeFault::Arity { expected: 1, got: 0 })?;
        Ok(Inferred { shape, extra: results.collect(), unread: Vec::new() })
    }

    fn arity(&self, n: usize) -> bool {
        n == self.reads.len()
    }

    /// The backward of a convolution or dense layer costs twice its forward (dx and dW); the
    /// count is per gradient.
    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        let inputs: Vec<&Shape> = self.inputs.iter().collect();
        match shape::infer(&self.of, &inputs) {
            Ok(out) => {
                let per_input = self.of.rule().macs(&inputs, &out.shape);
                per_input.saturating_mul(self.wrt.iter().filter(|&&w| w < 2).count() as u64)
            }
            Err(_) => 0,
        }
    }

    /// Gradients are not differentiated again.
    fn grad(&self) -> GradRule {
        GradRule::Leaf
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        Vec::new()
    }

    /// The forward op's gradient lowering, for the inputs `wrt`.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        self.of.rule().lower_grad(l, &self.wrt)
    }

    fn lower_grad(&self, _: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        crate::ops::not_lowered("a gradient's gradient")
    }
}
