//! Element-wise activations (and softmax over the last axis), PReLU, and dropout.

use super::{map, need, Built, GradRule, LayerSpec, OpRule, ParamNeed, Tensors};
use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Init, Op, ParamRole, Read};
use crate::lir::lower::Lowerer;
use crate::lir::{Expr, Kernel};
use crate::shape::{Inferred, Shape, ShapeFault};
use std::fmt;

/// Activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`
    Relu,
    /// `x` if positive, else `alpha·x`.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
    /// Softmax over the last axis.
    Softmax,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
        })
    }
}

/// Leaky ReLU with a learned slope per channel ([`Op::PRelu`]). Inputs: x, slopes `[c]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PRelu;

/// Attributes of [`Op::Dropout`]: zeroes a fraction of values while training (inverted: kept
/// values scaled by `1/(1 − rate)`); inference graphs have none.
#[derive(Clone, Debug, PartialEq)]
pub struct DropoutOp {
    /// Fraction of values zeroed while training.
    pub rate: f32,
    /// Part of the mask's hash, fixed from the layer's name when it is built, so that passes
    /// that renumber nodes never change a mask.
    pub salt: u64,
}

const fn simple(name: &'static str, doc: &'static str, build: fn(&mut LayerArgs) -> Option<Built>) -> LayerSpec {
    LayerSpec { name, tensors: Tensors::One, params: &[], signature: name, doc, build }
}

/// `relu`.
pub const RELU: LayerSpec = simple("relu", "max(x, 0).", |_| Some((Op::Activation(Activation::Relu), vec![])));
/// `tanh`.
pub const TANH: LayerSpec = simple("tanh", "Hyperbolic tangent.", |_| Some((Op::Activation(Activation::Tanh), vec![])));
/// `sigmoid`.
pub const SIGMOID: LayerSpec =
    simple("sigmoid", "Logistic sigmoid.", |_| Some((Op::Activation(Activation::Sigmoid), vec![])));
/// `softmax`.
pub const SOFTMAX: LayerSpec =
    simple("softmax", "Softmax over the last axis.", |_| Some((Op::Activation(Activation::Softmax), vec![])));

/// `leaky_relu(alpha)`.
pub const LEAKY_RELU: LayerSpec = LayerSpec {
    name: "leaky_relu",
    tensors: Tensors::One,
    params: &[("alpha", false)],
    signature: "leaky_relu(alpha: 0.01)",
    doc: "x if positive, else alpha·x.",
    build: |a| {
        let alpha = a.float("alpha", "a leaky ReLU slope", (0.0, 1.0, true), Some(0.01))?;
        Some((Op::Activation(Activation::LeakyRelu { alpha }), vec![]))
    },
};

/// `prelu`.
pub const PRELU: LayerSpec = simple("prelu", "Leaky ReLU with a learned slope per channel.", |a| {
    let c = a.x().channels();
    Some((Op::PRelu, vec![ParamNeed::new(ParamRole::Slope, vec![c], Init::Fill(0.25))]))
});

/// `dropout(rate)`.
pub const DROPOUT: LayerSpec = LayerSpec {
    name: "dropout",
    tensors: Tensors::One,
    params: &[("rate", true)],
    signature: "dropout(rate)",
    doc: "Zeroes a fraction of values while training.",
    build: |a| {
        let rate = a.float("rate", "a dropout rate", (0.0, 1.0, false), None)?;
        Some((Op::Dropout(DropoutOp { rate, salt: a.salt() }), vec![]))
    },
};

fn same_shape(inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
    Ok(need(inputs, 1)?.clone().into())
}

impl OpRule for Activation {
    fn mnemonic(&self) -> String {
        self.to_string()
    }

    fn attributes(&self) -> String {
        match self {
            Activation::LeakyRelu { alpha } => format!("[alpha={alpha}]"),
            Activation::Relu | Activation::Tanh | Activation::Sigmoid | Activation::Softmax => String::new(),
        }
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        same_shape(inputs)
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// Every activation's derivative is a function of its output (ReLU: y > 0, for slopes ≥ 0),
    /// so the forward may overwrite its input.
    fn reads(&self, _: usize) -> Vec<Read> {
        vec![Read::Result(0), Read::Grad]
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let y = l.output(0);
        let expr = match *self {
            Activation::Softmax => {
                let x = l.contiguous(x);
                l.emit(Kernel::Softmax { x, y });
                return Ok(());
            }
            Activation::Relu => vec![Expr::Input(0), Expr::Relu(0)],
            Activation::LeakyRelu { alpha } => {
                vec![Expr::Input(0), Expr::Const(alpha), Expr::Mul(1, 0), Expr::Positive { c: 0, a: 0, b: 2 }]
            }
            Activation::Tanh => vec![Expr::Input(0), Expr::Tanh(0)],
            Activation::Sigmoid => vec![Expr::Input(0), Expr::Sigmoid(0)],
        };
        l.emit(map(expr, vec![x], vec![], y));
        Ok(())
    }

    /// From the output y and its gradient g: ReLU g·[y > 0]; leaky ReLU g or α·g; tanh
    /// g·(1 − y²); sigmoid g·y·(1 − y); softmax y·(g − Σ g·y).
    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let (y, dy) = (l.read(Read::Result(0))?, l.read(Read::Grad)?);
        let dx = l.output(0);
        let (yi, g) = (Expr::Input(0), Expr::Input(1));
        let expr = match *self {
            Activation::Softmax => {
                l.emit(Kernel::SoftmaxGrad { y, dy, dx });
                return Ok(());
            }
            Activation::Relu => vec![yi, g, Expr::Const(0.0), Expr::Positive { c: 0, a: 1, b: 2 }],
            Activation::LeakyRelu { alpha } => {
                vec![yi, g, Expr::Const(alpha), Expr::Mul(2, 1), Expr::Positive { c: 0, a: 1, b: 3 }]
            }
            Activation::Tanh => vec![
                yi,
                g,
                Expr::Mul(0, 0),
                Expr::Const(-1.0),
                Expr::Mul(3, 2),
                Expr::Const(1.0),
                Expr::Add(5, 4),
                Expr::Mul(1, 6),
            ],
            Activation::Sigmoid => vec![
                yi,
                g,
                Expr::Mul(1, 0),
                Expr::Const(-1.0),
                Expr::Mul(3, 0),
                Expr::Const(1.0),
                Expr::Add(5, 4),
                Expr::Mul(2, 6),
            ],
        };
        l.emit(map(expr, vec![y, dy], vec![], dx));
        Ok(())
    }
}

impl OpRule for PRelu {
    fn mnemonic(&self) -> String {
        "prelu".into()
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        let c = Shape(vec![x.channels()]);
        if let Some(p) = inputs[1..].iter().find(|p| ***p != c) {
            return Err(ShapeFault::ParamShape { expected: c, got: (*p).clone() });
        }
        Ok(x.clone().into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 2
    }

    fn param_ports(&self) -> bool {
        true
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// Learned slopes may be negative, so the sign of x is not that of y.
    fn reads(&self, wrt: usize) -> Vec<Read> {
        match wrt {
            0 => vec![Read::Input(0), Read::Input(1), Read::Grad],
            _ => vec![Read::Input(0), Read::Grad],
        }
    }

    /// x if positive, else a·x with the channel's slope a.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let (x, a) = (l.input(0)?, l.input(1)?);
        let y = l.output(0);
        let expr = vec![Expr::Input(0), Expr::Channel(0), Expr::Mul(1, 0), Expr::Positive { c: 0, a: 0, b: 2 }];
        l.emit(map(expr, vec![x], vec![a], y));
        Ok(())
    }

    /// dx = g or a·g; da = Σ over positions of g·x where x ≤ 0.
    fn lower_grad(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String> {
        let (x, dy) = (l.read(Read::Input(0))?, l.read(Read::Grad)?);
        for (k, &w) in wrt.iter().enumerate() {
            let out = l.output(k as u16);
            if w == 0 {
                let a = l.read(Read::Input(1))?;
                let expr = vec![
                    Expr::Input(0),
                    Expr::Input(1),
                    Expr::Channel(0),
                    Expr::Mul(2, 1),
                    Expr::Positive { c: 0, a: 1, b: 3 },
                ];
                l.emit(map(expr, vec![x.clone(), dy.clone()], vec![a], out));
            } else {
                let t = l.temp("slope_terms", dy.shape.clone());
                let expr = vec![
                    Expr::Input(0),
                    Expr::Input(1),
                    Expr::Mul(1, 0),
                    Expr::Const(0.0),
                    Expr::Positive { c: 0, a: 3, b: 2 },
                ];
                l.emit(map(expr, vec![x.clone(), dy.clone()], vec![], t.clone()));
                l.emit(Kernel::SumRows { x: t.matrix(), y: out });
            }
        }
        Ok(())
    }
}

impl OpRule for DropoutOp {
    fn mnemonic(&self) -> String {
        "dropout".into()
    }

    fn attributes(&self) -> String {
        format!("[rate={},salt={:016x}]", self.rate, self.salt)
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        same_shape(inputs)
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// The mask is a hash of (seed, step, salt, element): recomputed, not stored.
    fn reads(&self, _: usize) -> Vec<Read> {
        vec![Read::Grad]
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let y = l.output(0);
        l.emit(map(
            vec![Expr::Input(0), Expr::Keep { rate: self.rate, salt: self.salt }, Expr::Mul(0, 1)],
            vec![x],
            vec![],
            y,
        ));
        Ok(())
    }

    /// The same mask on the gradient.
    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        let dx = l.output(0);
        l.emit(map(
            vec![Expr::Input(0), Expr::Keep { rate: self.rate, salt: self.salt }, Expr::Mul(0, 1)],
            vec![dy],
            vec![],
            dx,
        ));
        Ok(())
    }
}
