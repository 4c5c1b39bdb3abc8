//! Element-wise arithmetic (`a − b`, `a·b`, `|x|`, `x²`) and L2 normalization over the last axis,
//! forward and backward, computed the plain way.

use super::{Tensor, View};
use cnnc_compiler::ir::op::{Arith, L2NormOp};
use ndarray::{Axis, Zip};

/// The result of `op` on `inputs`.
pub(super) fn forward(op: Arith, inputs: &[View]) -> Tensor {
    let x = &inputs[0];
    match op {
        Arith::Sub => x - &inputs[1],
        Arith::Mul => x * &inputs[1],
        Arith::Abs => x.mapv(f32::abs),
        Arith::Square => x.mapv(|v| v * v),
    }
}

/// The gradient with respect to input `wrt`, from the output's gradient `dy` and the input the
/// rule reads (`read`: the other factor of a product, or `x`).
pub(super) fn vjp(op: Arith, wrt: usize, read: Option<&View>, dy: &View) -> Tensor {
    match (op, read) {
        (Arith::Sub, _) if wrt == 0 => dy.to_owned(),
        (Arith::Sub, _) => dy.mapv(|g| -g),
        (Arith::Mul, Some(other)) => dy * other,
        (Arith::Abs, Some(x)) => {
            let mut out = dy.to_owned();
            Zip::from(&mut out).and(x).for_each(|o, &x| {
                *o = if x > 0.0 {
                    *o
                } else if x < 0.0 {
                    -*o
                } else {
                    0.0
                }
            });
            out
        }
        (Arith::Square, Some(x)) => {
            let mut out = dy.to_owned();
            Zip::from(&mut out).and(x).for_each(|o, &x| *o *= 2.0 * x);
            out
        }
        (_, None) => unreachable!("the rule reads an input for {op:?}"),
    }
}

/// Each row's `‖x‖₂` (over the last axis), in f64, kept as `[.., 1]`.
fn norms(x: &View) -> Tensor {
    let last = Axis(x.ndim() - 1);
    x.map_axis(last, |row| row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32)
        .insert_axis(last)
}

/// `x / max(‖x‖₂, eps)` over the last axis.
pub(super) fn l2norm(op: L2NormOp, x: &View) -> Tensor {
    let n = norms(x).mapv(|v| v.max(op.eps));
    x / &n
}

/// `dx = (dy − y·Σ(y·dy)) / ‖x‖` where `‖x‖ > eps`, else `dy / eps` (the norm is then the
/// constant eps).
pub(super) fn l2norm_vjp(op: L2NormOp, x: &View, dy: &View) -> Tensor {
    let last = Axis(x.ndim() - 1);
    let n = norms(x);
    let y = x / &n.mapv(|v| v.max(op.eps));
    let dot = (&y * dy).sum_axis(last).insert_axis(last);
    let mut dx = dy - &(&y * &dot);
    Zip::from(dx.lanes_mut(last)).and(n.lanes(last)).and(dy.lanes(last)).for_each(|mut row, norm, g| {
        let norm = norm[0];
        if norm > op.eps {
            row.mapv_inplace(|v| v / norm);
        } else {
            row.assign(&g.mapv(|v| v / op.eps));
        }
    });
    dx
}
