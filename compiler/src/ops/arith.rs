//! Element-wise arithmetic on tensors beyond `+`, and L2 normalization: what a verification
//! head (`σ(Σ w_k |f(a)_k − f(b)_k| + b)`) and a metric-learning encoder (embeddings on the unit
//! sphere) are written with.

use super::{map, need, GradRule, LayerSpec, OpRule, Tensors};
use crate::ir::op::{Op, Read};
use crate::lir::lower::Lowerer;
use crate::lir::{Expr, Kernel};
use crate::shape::{Inferred, Shape, ShapeFault};

/// Element-wise arithmetic ([`Op::Arith`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    /// `a − b`, of one shape.
    Sub,
    /// `a · b`, of one shape.
    Mul,
    /// `|x|`.
    Abs,
    /// `x²`.
    Square,
}

impl Arith {
    /// Whether it takes two tensors.
    fn binary(self) -> bool {
        matches!(self, Arith::Sub | Arith::Mul)
    }
}

/// Attributes of [`Op::L2Norm`]: `x / max(‖x‖₂, eps)` over the last axis (PyTorch's
/// `F.normalize`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct L2NormOp {
    /// The smallest norm divided by.
    pub eps: f32,
}

/// `sub(a, b)`, also written `a - b`.
pub const SUB: LayerSpec = LayerSpec {
    name: "sub",
    tensors: Tensors::Many(2),
    params: &[],
    signature: "sub(a, b)",
    doc: "Element-wise difference of two tensors of one shape; `a - b` is the same.",
    build: |_| Some((Op::Arith(Arith::Sub), vec![])),
};

/// `mul(a, b)`, also written `a * b`.
pub const MUL: LayerSpec = LayerSpec {
    name: "mul",
    tensors: Tensors::Many(2),
    params: &[],
    signature: "mul(a, b)",
    doc: "Element-wise product of two tensors of one shape; `a * b` is the same.",
    build: |_| Some((Op::Arith(Arith::Mul), vec![])),
};

/// `abs`.
pub const ABS: LayerSpec = LayerSpec {
    name: "abs",
    tensors: Tensors::One,
    params: &[],
    signature: "abs",
    doc: "Absolute value, element-wise.",
    build: |_| Some((Op::Arith(Arith::Abs), vec![])),
};

/// `square`.
pub const SQUARE: LayerSpec = LayerSpec {
    name: "square",
    tensors: Tensors::One,
    params: &[],
    signature: "square",
    doc: "x², element-wise.",
    build: |_| Some((Op::Arith(Arith::Square), vec![])),
};

/// `l2norm(eps)`.
pub const L2NORM: LayerSpec = LayerSpec {
    name: "l2norm",
    tensors: Tensors::One,
    params: &[("eps", false)],
    signature: "l2norm(eps: 1e-12)",
    doc: "x / max(‖x‖₂, eps) over the last axis: vectors of unit length.",
    build: |a| {
        let eps = a.float("eps", "`eps`", (0.0, 1.0, false), Some(1e-12))?;
        Some((Op::L2Norm(L2NormOp { eps }), vec![]))
    },
};

impl OpRule for Arith {
    fn mnemonic(&self) -> String {
        match self {
            Arith::Sub => "sub",
            Arith::Mul => "mul",
            Arith::Abs => "abs",
            Arith::Square => "square",
        }
        .into()
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let first = need(inputs, if self.binary() { 2 } else { 1 })?;
        if let Some(other) = inputs.get(1).filter(|o| **o != first) {
            let verb = if *self == Arith::Sub { "subtract" } else { "multiply" };
            return Err(ShapeFault::ElementwiseMismatch { verb, first: first.clone(), other: (*other).clone() });
        }
        Ok(first.clone().into())
    }

    fn arity(&self, n: usize) -> bool {
        n == if self.binary() { 2 } else { 1 }
    }

    fn macs(&self, _: &[&Shape], output: &Shape) -> u64 {
        if *self == Arith::Mul {
            super::elements(output)
        } else {
            0
        }
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// `d(a − b)`: g and −g; `d(a·b)`: g·b and g·a; `d|x|`: g·sign(x); `d(x²)`: 2·x·g.
    fn reads(&self, wrt: usize) -> Vec<Read> {
        match (self, wrt) {
            (Arith::Sub, _) => vec![Read::Grad],
            (Arith::Mul, 0) => vec![Read::Input(1), Read::Grad],
            (Arith::Mul, _) => vec![Read::Input(0), Read::Grad],
            (Arith::Abs | Arith::Square, _) => vec![Read::Input(0), Read::Grad],
        }
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let inputs = l.inputs()?;
        let y = l.output(0);
        let (a, b) = (Expr::Input(0), Expr::Input(1));
        let expr = match self {
            Arith::Sub => vec![a, b, Expr::Const(-1.0), Expr::Mul(1, 2), Expr::Add(0, 3)],
            Arith::Mul => vec![a, b, Expr::Mul(0, 1)],
            Arith::Abs => vec![a, Expr::Const(-1.0), Expr::Mul(0, 1), Expr::Positive { c: 0, a: 0, b: 2 }],
            Arith::Square => vec![a, Expr::Mul(0, 0)],
        };
        l.emit(map(expr, inputs, vec![], y));
        Ok(())
    }

    fn lower_grad(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        for (k, &w) in wrt.iter().enumerate() {
            let out = l.output(k as u16);
            let (inputs, expr) = match (self, w) {
                (Arith::Sub, 0) => (vec![dy.clone()], vec![Expr::Input(0)]),
                (Arith::Sub, _) => (vec![dy.clone()], vec![Expr::Input(0), Expr::Const(-1.0), Expr::Mul(0, 1)]),
                (Arith::Mul, w) => {
                    let other = l.read(Read::Input(1 - w.min(1)))?;
                    (vec![other, dy.clone()], vec![Expr::Input(0), Expr::Input(1), Expr::Mul(0, 1)])
                }
                // g where x > 0, −g where x < 0, 0 at 0 (PyTorch's sign(0) = 0).
                (Arith::Abs, _) => (
                    vec![l.read(Read::Input(0))?, dy.clone()],
                    vec![
                        Expr::Input(0),
                        Expr::Input(1),
                        Expr::Const(-1.0),
                        Expr::Mul(0, 2),
                        Expr::Mul(1, 2),
                        Expr::Const(0.0),
                        Expr::Positive { c: 3, a: 4, b: 5 },
                        Expr::Positive { c: 0, a: 1, b: 6 },
                    ],
                ),
                (Arith::Square, _) => (
                    vec![l.read(Read::Input(0))?, dy.clone()],
                    vec![Expr::Input(0), Expr::Input(1), Expr::Const(2.0), Expr::Mul(0, 1), Expr::Mul(3, 2)],
                ),
            };
            l.emit(map(expr, inputs, vec![], out));
        }
        Ok(())
    }
}

impl OpRule for L2NormOp {
    fn mnemonic(&self) -> String {
        "l2norm".into()
    }

    fn attributes(&self) -> String {
        format!("[eps={}]", self.eps)
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        Ok(need(inputs, 1)?.clone().into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    fn macs(&self, _: &[&Shape], output: &Shape) -> u64 {
        super::elements(output)
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// `dx = (g − y·(y·g)) / ‖x‖` where `‖x‖ > eps`, else `g / eps`.
    fn reads(&self, _: usize) -> Vec<Read> {
        vec![Read::Input(0), Read::Grad]
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let x = l.contiguous(x).matrix();
        let y = l.output(0).matrix();
        l.emit(Kernel::L2Norm { x, y, eps: self.eps });
        Ok(())
    }

    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let x = l.read(Read::Input(0))?;
        let x = l.contiguous(x).matrix();
        let dy = l.read(Read::Grad)?;
        let dy = l.contiguous(dy).matrix();
        let dx = l.output(0).matrix();
        l.emit(Kernel::L2NormGrad { x, dy, dx, eps: self.eps });
        Ok(())
    }
}
