//! Fully connected layers.

use super::{elements, need, Built, GradRule, LayerSpec, OpRule, ParamNeed, Tensors};
use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Op, ParamRole, Read};
use crate::lir::lower::Lowerer;
use crate::lir::Kernel;
use crate::shape::{Inferred, Shape, ShapeFault};

/// Attributes of [`Op::Dense`]. Inputs: x `[n]`, weight `[n, units]`, bias?
#[derive(Clone, Debug, PartialEq)]
pub struct DenseOp {
    /// Output size.
    pub units: usize,
}

/// `dense(units, ...)`.
pub const DENSE: LayerSpec = LayerSpec {
    name: "dense",
    tensors: Tensors::One,
    params: &[("units", true), ("bias", false), ("init", false)],
    signature: "dense(units, bias: true, init: glorot)",
    doc: "Fully connected layer on a flat [n] input.",
    build,
};

fn build(a: &mut LayerArgs) -> Option<Built> {
    let units = a.int("units", "a unit count", 1, None)?;
    let bias = a.flag("bias", "`bias`", true)?;
    let init = super::conv::init(a.choice("init", "an initializer", &["he", "glorot"], "glorot")?);
    let x = a.x();
    // A non-flat input is reported by the shape rule; the weight shape then does not matter.
    let n = if x.rank() == 1 { x.0[0] } else { 0 };
    let mut params = vec![ParamNeed::new(ParamRole::Weight, vec![n, units], init)];
    if bias {
        params.push(ParamNeed::new(ParamRole::Bias, vec![units], crate::ir::op::Init::Zeros));
    }
    Some((Op::Dense(DenseOp { units }), params))
}

impl OpRule for DenseOp {
    fn mnemonic(&self) -> String {
        "dense".into()
    }

    fn attributes(&self) -> String {
        format!("[units={}]", self.units)
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 2)?;
        if x.rank() != 1 {
            return Err(ShapeFault::DenseUnflattened { got: x.clone() });
        }
        let w = inputs.get(1).ok_or(ShapeFault::Arity { expected: 2, got: inputs.len() })?;
        let expected = Shape(vec![x.0[0], self.units]);
        if **w != expected {
            return Err(ShapeFault::ParamShape { expected, got: (*w).clone() });
        }
        if let Some(b) = inputs.get(2) {
            if **b != Shape(vec![self.units]) {
                return Err(ShapeFault::ParamShape { expected: Shape(vec![self.units]), got: (*b).clone() });
            }
        }
        Ok(Shape(vec![self.units]).into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 2 || n == 3
    }

    fn param_ports(&self) -> bool {
        true
    }

    fn macs(&self, inputs: &[&Shape], _: &Shape) -> u64 {
        inputs.first().map_or(0, |x| elements(x)).saturating_mul(self.units as u64)
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// dx = dy·Wᵀ, dW = xᵀ·dy, db = Σ dy.
    fn reads(&self, wrt: usize) -> Vec<Read> {
        match wrt {
            0 => vec![Read::Input(1), Read::Grad],
            1 => vec![Read::Input(0), Read::Grad],
            _ => vec![Read::Grad],
        }
    }

    /// y = x·W (+ b).
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let (x, w, bias) = (l.input(0)?, l.input(1)?, l.input(2).ok());
        let y = l.output(0);
        l.emit(Kernel::Gemm { a: x, b: w, c: y, ta: false, tb: false, accumulate: false, bias, epilogue: None });
        Ok(())
    }

    /// dx = dy·Wᵀ, dW = xᵀ·dy, db = Σ dy.
    fn lower_grad(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        for (k, &w) in wrt.iter().enumerate() {
            let out = l.output(k as u16);
            let kernel = match w {
                0 => Kernel::Gemm {
                    a: dy.clone(),
                    b: l.read(Read::Input(1))?,
                    c: out,
                    ta: false,
                    tb: true,
                    accumulate: false,
                    bias: None,
                    epilogue: None,
                },
                1 => Kernel::Gemm {
                    a: l.read(Read::Input(0))?,
                    b: dy.clone(),
                    c: out,
                    ta: true,
                    tb: false,
                    accumulate: false,
                    bias: None,
                    epilogue: None,
                },
                _ => Kernel::SumRows { x: dy.clone(), y: out },
            };
            l.emit(kernel);
        }
        Ok(())
    }
}
