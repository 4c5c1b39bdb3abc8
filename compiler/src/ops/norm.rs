//! Batch normalization over the channel (last) axis.

use super::{need, Built, GradRule, LayerSpec, OpRule, ParamNeed, Tensors};
use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Init, Op, ParamRole, Read};
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
}
