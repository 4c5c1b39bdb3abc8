//! Batch normalization over the channel (last) axis.

use super::{need, Built, GradRule, LayerSpec, OpRule, ParamNeed, Tensors};
use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Init, Op, ParamRole, Read};
use crate::lir::lower::Lowerer;
use crate::lir::Kernel;
use crate::shape::{Inferred, Shape, ShapeFault};

/// Attributes of [`Op::BatchNorm`].
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormOp {
    /// Added to the variance.
    pub eps: f32,
    /// Weight of the new batch statistics in the running averages.
    pub momentum: f32,
    /// Normalize with the batch's statistics (and give them as results 1 and 2), not the
    /// running ones.
    pub training: bool,
}

/// `batchnorm(eps, momentum)`.
pub const BATCHNORM: LayerSpec = LayerSpec {
    name: "batchnorm",
    tensors: Tensors::One,
    params: &[("eps", false), ("momentum", false)],
    signature: "batchnorm(eps: 1e-5, momentum: 0.1)",
    doc: "Batch normalization over the channel axis.",
    build,
};

fn build(a: &mut LayerArgs) -> Option<Built> {
    let eps = a.float("eps", "`eps`", (0.0, 1.0, true), Some(1e-5))?;
    let momentum = a.float("momentum", "`momentum`", (0.0, 1.0, true), Some(0.1))?;
    let c = a.x().channels();
    let params = vec![
        ParamNeed::new(ParamRole::Gamma, vec![c], Init::Ones),
        ParamNeed::new(ParamRole::Beta, vec![c], Init::Zeros),
        ParamNeed::new(ParamRole::RunningMean, vec![c], Init::Zeros),
        ParamNeed::new(ParamRole::RunningVar, vec![c], Init::Ones),
    ];
    Some((Op::BatchNorm(BatchNormOp { eps, momentum, training: false }), params))
}

impl OpRule for BatchNormOp {
    fn mnemonic(&self) -> String {
        if self.training { "batchnorm.train" } else { "batchnorm" }.into()
    }

    fn attributes(&self) -> String {
        format!("[eps={},momentum={}]", self.eps, self.momentum)
    }

    /// Inference: x, γ, β, running mean, running var to y. Training: x, γ, β to y and the
    /// batch's mean and biased variance per channel.
    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        let c = Shape(vec![x.channels()]);
        if let Some(p) = inputs[1..].iter().find(|p| ***p != c) {
            return Err(ShapeFault::ParamShape { expected: c, got: (*p).clone() });
        }
        if self.training {
            Ok(Inferred { shape: x.clone(), extra: vec![c.clone(), c], unread: Vec::new() })
        } else {
            Ok(x.clone().into())
        }
    }

    fn arity(&self, n: usize) -> bool {
        n == if self.training { 3 } else { 5 }
    }

    fn param_ports(&self) -> bool {
        true
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::Grouped
    }

    fn reads(&self, wrt: usize) -> Vec<Read> {
        use Read::{Grad, Input, Result};
        match (self.training, wrt) {
            // dx needs x̂ (from x and the saved statistics) and γ; dγ needs x̂; dβ only dy.
            (true, 0) => vec![Input(0), Input(1), Result(1), Result(2), Grad],
            (true, 1) => vec![Input(0), Result(1), Result(2), Grad],
            (false, 0) => vec![Input(1), Input(4), Grad],
            (false, 1) => vec![Input(0), Input(3), Input(4), Grad],
            (_, _) => vec![Grad],
        }
    }

    /// Training: the batch's statistics, then the normalization; inference: the running ones.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let x = l.contiguous(x).matrix();
        let (gamma, beta) = (l.input(1)?, l.input(2)?);
        let y = l.output(0).matrix();
        let (mean, var) = if self.training {
            let (mean, var) = (l.output(1), l.output(2));
            l.emit(Kernel::BnStats { x: x.clone(), mean: mean.clone(), var: var.clone() });
            (mean, var)
        } else {
            (l.input(3)?, l.input(4)?)
        };
        l.emit(Kernel::BnApply { x, mean, var, gamma, beta, y, eps: self.eps });
        Ok(())
    }

    fn lower_grad(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?.matrix();
        let wants = |w: usize| wrt.contains(&w);
        let x = if wants(0) || wants(1) { Some(l.read(Read::Input(0))?.matrix()) } else { None };
        let gamma = if wants(0) { Some(l.read(Read::Input(1))?) } else { None };
        let (mean, var) = if self.training {
            let stats = wants(0) || wants(1);
            (
                if stats { Some(l.read(Read::Result(1))?) } else { None },
                if stats { Some(l.read(Read::Result(2))?) } else { None },
            )
        } else {
            (
                if wants(1) { Some(l.read(Read::Input(3))?) } else { None },
                if wants(0) || wants(1) { Some(l.read(Read::Input(4))?) } else { None },
            )
        };
        let mut outs = [None, None, None];
        for (k, &w) in wrt.iter().enumerate() {
            let out = l.output(k as u16);
            outs[w.min(2)] = Some(if w == 0 { out.matrix() } else { out });
        }
        let [dx, dgamma, dbeta] = outs;
        l.emit(Kernel::BnGrad { x, mean, var, gamma, dy, dx, dgamma, dbeta, eps: self.eps, training: self.training });
        Ok(())
    }
}
