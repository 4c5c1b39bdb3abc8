//! Optimizers (SGD with momentum or Nesterov momentum, Adam; weight decay as an L2 term added to
//! the gradient) and learning-rate schedules (constant, step, cosine), over the flat buffers:
//! one loop over each trainable parameter's slice, nothing allocated per step.

use crate::params::{Layout, Params};
use cnnc_compiler::train::{OptimizerSpec, ScheduleSpec};
use std::sync::Arc;

/// An optimizer and its state, in the parameters' layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    /// What it does.
    pub spec: OptimizerSpec,
    /// How the learning rate changes.
    pub schedule: ScheduleSpec,
    /// First moments (momentum buffers); empty until needed.
    pub m: Vec<f32>,
    /// Second moments (Adam); empty until needed.
    pub v: Vec<f32>,
    /// Updates applied so far.
    pub t: u64,
    layout: Arc<Layout>,
}

impl Optimizer {
    /// An optimizer for parameters laid out as `layout`, its state zero.
    pub fn new(spec: OptimizerSpec, schedule: ScheduleSpec, layout: &Arc<Layout>) -> Self {
        Self::sized(spec, schedule, layout.clone(), layout.len())
    }

    /// An optimizer for one flat buffer of `n` values (the pixels of style transfer), its state
    /// zero; [`Optimizer::step_flat`] updates it.
    pub fn flat(spec: OptimizerSpec, n: usize) -> Self {
        Self::sized(spec, ScheduleSpec::Constant, Arc::default(), n)
    }

    fn sized(spec: OptimizerSpec, schedule: ScheduleSpec, layout: Arc<Layout>, n: usize) -> Self {
        let (m, v) = match spec {
            OptimizerSpec::Sgd { momentum: 0.0, .. } => (Vec::new(), Vec::new()),
            OptimizerSpec::Sgd { .. } => (vec![0.0; n], Vec::new()),
            OptimizerSpec::Adam { .. } => (vec![0.0; n], vec![0.0; n]),
        };
        Optimizer { spec, schedule, m, v, t: 0, layout }
    }

    /// The learning rate at `epoch` (0-based) and global `step` of `total` steps.
    pub fn lr_at(&self, epoch: usize, step: u64, total: u64) -> f32 {
        let lr = self.spec.lr();
        match self.schedule {
            ScheduleSpec::Constant => lr,
            ScheduleSpec::Step { every, gamma } => lr * gamma.powi((epoch / every.max(1)) as i32),
            ScheduleSpec::Cosine { min_lr } => {
                let progress = step as f32 / total.max(1) as f32;
                min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos())
            }
        }
    }

    /// Applies one update with learning rate `lr` from `grads` (in the same layout) to every
    /// trainable parameter.
    pub fn step(&mut self, params: &mut Params, grads: &[f32], lr: f32) {
        self.t += 1;
        let layout = self.layout.clone();
        for e in layout.entries().iter().filter(|e| e.trainable) {
            let r = e.range();
            self.update(&mut params.data_mut()[r.clone()], &grads[r.clone()], r, lr);
        }
    }

    /// Applies one update with learning rate `lr` from `grads` to the flat buffer `values`.
    pub fn step_flat(&mut self, values: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        self.update(values, grads, 0..values.len(), lr);
    }

    /// The update of `w` (values `r` of the state) from `g`.
    fn update(&mut self, w: &mut [f32], g: &[f32], r: std::ops::Range<usize>, lr: f32) {
        let t = self.t as i32;
        match self.spec {
            OptimizerSpec::Sgd { momentum, nesterov, weight_decay, .. } => {
                if momentum == 0.0 {
                    for (w, &g) in w.iter_mut().zip(g) {
                        *w -= lr * (g + weight_decay * *w);
                    }
                    return;
                }
                for ((w, &g), m) in w.iter_mut().zip(g).zip(&mut self.m[r]) {
                    let g = g + weight_decay * *w;
                    *m = *m * momentum + g;
                    *w -= lr * if nesterov { g + momentum * *m } else { *m };
                }
            }
            OptimizerSpec::Adam { beta1, beta2, eps, weight_decay, .. } => {
                let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
                let (m, v) = (&mut self.m[r.clone()], &mut self.v[r]);
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
                    let g = g + weight_decay * *w;
                    *m = *m * beta1 + g * (1.0 - beta1);
                    *v = *v * beta2 + g * g * (1.0 - beta2);
                    *w -= lr * ((*m / c1) / ((*v / c2).sqrt() + eps));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_compiler::ir::op::ParamRole;

    fn one_param(v: f32) -> Params {
        let src = "model M {\n    input x: [1]\n    output y = x |> dense(1, bias: false)\n}\n";
        let c = cnnc_compiler::compile_source("m.cnn", None, src.as_bytes());
        let mut p = Params::init(&c.models[0].graph, 0);
        assert_eq!(p.layout.entries()[0].role, ParamRole::Weight);
        p.data_mut()[0] = v;
        p
    }

    fn sgd(momentum: f32, nesterov: bool, layout: &Arc<Layout>) -> Optimizer {
        let spec = OptimizerSpec::Sgd { lr: 0.1, momentum, nesterov, weight_decay: 0.0 };
        Optimizer::new(spec, ScheduleSpec::Constant, layout)
    }

    #[test]
    fn momentum_accumulates_velocity() {
        let mut p = one_param(1.0);
        let mut opt = sgd(0.9, false, &p.layout);
        opt.step(&mut p, &[1.0], 0.1);
        opt.step(&mut p, &[1.0], 0.1);
        // v1 = 1, w = 0.9; v2 = 0.9 + 1 = 1.9, w = 0.9 − 0.19 = 0.71
        assert!((p.data()[0] - 0.71).abs() < 1e-6);
        let mut p = one_param(1.0);
        let mut opt = sgd(0.9, true, &p.layout);
        opt.step(&mut p, &[1.0], 0.1);
        // Nesterov: v1 = 1, update = g + 0.9·v1 = 1.9
        assert!((p.data()[0] - 0.81).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_the_learning_rate() {
        let mut p = one_param(1.0);
        let spec = OptimizerSpec::Adam { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Optimizer::new(spec, ScheduleSpec::Constant, &p.layout);
        opt.step(&mut p, &[5.0], 0.001);
        assert!((p.data()[0] - 0.999).abs() < 1e-6);
    }

    #[test]
    fn schedules() {
        let p = one_param(1.0);
        let mut opt = sgd(0.0, false, &p.layout);
        opt.schedule = ScheduleSpec::Step { every: 2, gamma: 0.5 };
        assert_eq!(
            [opt.lr_at(0, 0, 10), opt.lr_at(1, 0, 10), opt.lr_at(2, 0, 10), opt.lr_at(5, 0, 10)],
            [0.1, 0.1, 0.05, 0.025]
        );
        opt.schedule = ScheduleSpec::Cosine { min_lr: 0.0 };
        assert!((opt.lr_at(0, 0, 10) - 0.1).abs() < 1e-7);
        assert!((opt.lr_at(0, 5, 10) - 0.05).abs() < 1e-6);
        assert!(opt.lr_at(0, 10, 10).abs() < 1e-7);
    }
}
