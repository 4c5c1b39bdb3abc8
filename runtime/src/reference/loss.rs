//! Losses per example, and their gradients seeded with weight/batch (the total loss is the
//! weighted mean over the batch).

use super::elementwise::{sigmoid, softmax};
use super::{Tensor, View};
use cnnc_compiler::ir::op::LossKind;
use ndarray::{Array1, ArrayD, Axis, Zip};

/// Per-example losses `[n]`. For softmax cross-entropy the target holds class indices.
pub(super) fn forward(kind: LossKind, pred: &View, target: &View) -> Tensor {
    let n = pred.shape()[0];
    if let LossKind::Triplet(t) = kind {
        let (emb, labels) = batch_of(pred, target);
        return Array1::from(crate::metric::triplet_losses(&t, &emb, pred.len() / n.max(1), &labels)).into_dyn();
    }
    let mut out = Array1::<f32>::zeros(n);
    for b in 0..n {
        let p = pred.index_axis(Axis(0), b);
        let t = target.index_axis(Axis(0), b);
        out[b] = match kind {
            LossKind::SoftmaxCrossEntropy => {
                let max = p.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let lse = p.mapv(|v| (v - max).exp()).sum().ln() + max;
                let label = t.iter().next().copied().unwrap_or(0.0) as usize;
                lse - p[label]
            }
            LossKind::SigmoidCrossEntropy => {
                Zip::from(&p).and(&t).fold(0.0, |acc, &z, &y| acc + z.max(0.0) - z * y + (1.0 + (-z.abs()).exp()).ln())
            }
            LossKind::L2 => Zip::from(&p).and(&t).fold(0.0, |acc, &a, &b| acc + 0.5 * (a - b) * (a - b)),
            LossKind::Detect(d) => {
                let per = crate::detect::slot_len(&d, *pred.shape().last().unwrap_or(&1));
                let (p, t) = (p.iter().copied().collect::<Vec<_>>(), t.iter().copied().collect::<Vec<_>>());
                crate::detect::loss(&d, per, &p, &t)
            }
            LossKind::GivenTriplet { margin } => {
                crate::metric::given_triplet_loss(&p.iter().copied().collect::<Vec<_>>(), margin)
            }
            // Over the whole batch, above.
            LossKind::Triplet(_) => 0.0,
        };
    }
    out.into_dyn()
}

/// A batch's embeddings, row after row, and its identities.
fn batch_of(pred: &View, target: &View) -> (Vec<f32>, Vec<usize>) {
    (pred.iter().copied().collect(), target.iter().map(|&v| v.max(0.0) as usize).collect())
}

pub(super) fn vjp(kind: LossKind, weight: f32, wrt: usize, pred: &View, target: &View) -> Tensor {
    let n = pred.shape()[0] as f32;
    let scale = weight / n;
    if wrt == 1 {
        // Targets are data, never trained; their gradient is defined for completeness.
        return match kind {
            LossKind::L2 => (target - pred) * scale,
            _ => ArrayD::zeros(target.raw_dim()),
        };
    }
    match kind {
        LossKind::SoftmaxCrossEntropy => {
            let mut g = softmax(pred);
            for (b, mut row) in g.axis_iter_mut(Axis(0)).enumerate() {
                let label = target.index_axis(Axis(0), b).iter().next().copied().unwrap_or(0.0) as usize;
                row[label] -= 1.0;
            }
            g * scale
        }
        LossKind::SigmoidCrossEntropy => Zip::from(pred).and(target).map_collect(|&z, &y| (sigmoid(z) - y) * scale),
        LossKind::L2 => (pred - target) * scale,
        LossKind::Triplet(t) => {
            let (emb, labels) = batch_of(pred, target);
            let mut g = vec![0.0; emb.len()];
            crate::metric::triplet_grad(&t, &emb, emb.len() / labels.len().max(1), &labels, scale, &mut g);
            ArrayD::from_shape_vec(pred.raw_dim(), g).expect("the gradient has the embeddings' shape")
        }
        LossKind::GivenTriplet { margin } => {
            let mut g = ArrayD::zeros(pred.raw_dim());
            for b in 0..pred.shape()[0] {
                let p: Vec<f32> = pred.index_axis(Axis(0), b).iter().copied().collect();
                let mut out = vec![0.0; p.len()];
                crate::metric::given_triplet_grad(&p, margin, scale, &mut out);
                g.index_axis_mut(Axis(0), b).iter_mut().zip(out).for_each(|(o, v)| *o = v);
            }
            g
        }
        LossKind::Detect(d) => {
            let per = crate::detect::slot_len(&d, *pred.shape().last().unwrap_or(&1));
            let mut g = ArrayD::zeros(pred.raw_dim());
            for b in 0..pred.shape()[0] {
                let p: Vec<f32> = pred.index_axis(Axis(0), b).iter().copied().collect();
                let t: Vec<f32> = target.index_axis(Axis(0), b).iter().copied().collect();
                let mut out = vec![0.0; p.len()];
                crate::detect::loss_grad(&d, per, &p, &t, scale, &mut out);
                g.index_axis_mut(Axis(0), b).iter_mut().zip(out).for_each(|(o, v)| *o = v);
            }
            g
        }
    }
}
