//! Optimizers (SGD with momentum or Nesterov momentum, Adam; weight decay as an L2 term added to
//! the gradient) and learning-rate schedules (constant, step, cosine).

use crate::params::Params;
use crate::reference::Tensor;
use cnnc_compiler::train::{Arg, FnCall};
use std::collections::BTreeMap;

/// An optimizer and its per-parameter state.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    kind: Kind,
    /// Base learning rate.
    pub lr: f32,
    weight_decay: f32,
    schedule: Schedule,
    /// First-moment (momentum) buffers by parameter name.
    pub m: BTreeMap<String, Tensor>,
    /// Second-moment buffers (Adam) by parameter name.
    pub v: BTreeMap<String, Tensor>,
    /// Updates applied so far.
    pub t: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sgd { momentum: f32, nesterov: bool },
    Adam { beta1: f32, beta2: f32, eps: f32 },
}

/// How the learning rate changes over training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiplied by `gamma` every `every` epochs.
    Step { every: usize, gamma: f32 },
    /// Half a cosine from the base rate down to `min_lr` over all steps.
    Cosine { min_lr: f32 },
}

fn num(call: &FnCall, name: &str, default: f64) -> f32 {
    call.num(name, default) as f32
}

impl Optimizer {
    /// The optimizer and schedule of a train section (checked by the compiler).
    pub fn new(optimizer: Option<&FnCall>, schedule: Option<&FnCall>) -> Self {
        let (kind, lr, weight_decay) = match optimizer {
            Some(c) if c.name == "adam" => (
                Kind::Adam { beta1: num(c, "beta1", 0.9), beta2: num(c, "beta2", 0.999), eps: num(c, "eps", 1e-8) },
                num(c, "lr", 0.001),
                num(c, "weight_decay", 0.0),
            ),
            Some(c) => (
                Kind::Sgd {
                    momentum: num(c, "momentum", 0.0),
                    nesterov: matches!(c.args.get("nesterov"), Some(Arg::Bool(true))),
                },
                num(c, "lr", 0.01),
                num(c, "weight_decay", 0.0),
            ),
            None => (Kind::Sgd { momentum: 0.0, nesterov: false }, 0.01, 0.0),
        };
        let schedule = match schedule {
            Some(c) if c.name == "step" => {
                Schedule::Step { every: num(c, "every", 1.0).max(1.0) as usize, gamma: num(c, "gamma", 0.1) }
            }
            Some(c) if c.name == "cosine" => Schedule::Cosine { min_lr: num(c, "min_lr", 0.0) },
            _ => Schedule::Constant,
        };
        Optimizer { kind, lr, weight_decay, schedule, m: BTreeMap::new(), v: BTreeMap::new(), t: 0 }
    }

    /// The learning rate at `epoch` (0-based) and global `step` of `total` steps.
    pub fn lr_at(&self, epoch: usize, step: u64, total: u64) -> f32 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step { every, gamma } => self.lr * gamma.powi((epoch / every) as i32),
            Schedule::Cosine { min_lr } => {
                let progress = step as f32 / total.max(1) as f32;
                min_lr + (self.lr - min_lr) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos())
            }
        }
    }

    /// Applies one update with learning rate `lr` from `grads` (by parameter name).
    pub fn step(&mut self, params: &mut Params, grads: &[(String, Tensor)], lr: f32) {
        self.t += 1;
        for (name, g) in grads {
            let Some(w) = params.values.get_mut(name) else { continue };
            let g = if self.weight_decay != 0.0 { g + &(&*w * self.weight_decay) } else { g.clone() };
            match self.kind {
                Kind::Sgd { momentum, nesterov } => {
                    if momentum == 0.0 {
                        *w -= &(g * lr);
                        continue;
                    }
                    let m = self.m.entry(name.clone()).or_insert_with(|| Tensor::zeros(g.raw_dim()));
                    *m = &*m * momentum + &g;
                    let update = if nesterov { &g + &(&*m * momentum) } else { m.clone() };
                    *w -= &(update * lr);
                }
                Kind::Adam { beta1, beta2, eps } => {
                    let m = self.m.entry(name.clone()).or_insert_with(|| Tensor::zeros(g.raw_dim()));
                    *m = &*m * beta1 + &(&g * (1.0 - beta1));
                    let v = self.v.entry(name.clone()).or_insert_with(|| Tensor::zeros(g.raw_dim()));
                    *v = &*v * beta2 + &(g.mapv(|x| x * x) * (1.0 - beta2));
                    let c1 = 1.0 - beta1.powi(self.t as i32);
                    let c2 = 1.0 - beta2.powi(self.t as i32);
                    let update =
                        ndarray::Zip::from(&*m).and(&*v).map_collect(|&m, &v| (m / c1) / ((v / c2).sqrt() + eps));
                    *w -= &(update * lr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn sgd(momentum: f64, nesterov: bool) -> Optimizer {
        let mut args = BTreeMap::new();
        args.insert("lr".to_string(), Arg::Num(0.1));
        args.insert("momentum".to_string(), Arg::Num(momentum));
        args.insert("nesterov".to_string(), Arg::Bool(nesterov));
        Optimizer::new(Some(&FnCall { name: "sgd".into(), args, loc: Default::default() }), None)
    }

    fn params(v: f32) -> Params {
        let mut p = Params::default();
        p.values.insert("w".into(), arr1(&[v]).into_dyn());
        p
    }

    #[test]
    fn momentum_accumulates_velocity() {
        let mut opt = sgd(0.9, false);
        let mut p = params(1.0);
        let g = vec![("w".to_string(), arr1(&[1.0f32]).into_dyn())];
        opt.step(&mut p, &g, 0.1);
        opt.step(&mut p, &g, 0.1);
        // v1 = 1, w = 0.9; v2 = 0.9 + 1 = 1.9, w = 0.9 − 0.19 = 0.71
        assert!((p.values["w"][0] - 0.71).abs() < 1e-6);
        let mut opt = sgd(0.9, true);
        let mut p = params(1.0);
        opt.step(&mut p, &g, 0.1);
        // Nesterov: v1 = 1, update = g + 0.9·v1 = 1.9
        assert!((p.values["w"][0] - 0.81).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_the_learning_rate() {
        let mut opt =
            Optimizer::new(Some(&FnCall { name: "adam".into(), args: BTreeMap::new(), loc: Default::default() }), None);
        let mut p = params(1.0);
        opt.step(&mut p, &[("w".to_string(), arr1(&[5.0f32]).into_dyn())], 0.001);
        assert!((p.values["w"][0] - 0.999).abs() < 1e-6);
    }

    #[test]
    fn schedules() {
        let mut opt = sgd(0.0, false);
        opt.schedule = Schedule::Step { every: 2, gamma: 0.5 };
        assert_eq!(
            [opt.lr_at(0, 0, 10), opt.lr_at(1, 0, 10), opt.lr_at(2, 0, 10), opt.lr_at(5, 0, 10)],
            [0.1, 0.1, 0.05, 0.025]
        );
        opt.schedule = Schedule::Cosine { min_lr: 0.0 };
        assert!((opt.lr_at(0, 0, 10) - 0.1).abs() < 1e-7);
        assert!((opt.lr_at(0, 5, 10) - 0.05).abs() < 1e-6);
        assert!(opt.lr_at(0, 10, 10).abs() < 1e-7);
    }
}
