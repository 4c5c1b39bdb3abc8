//! Batch normalization over the channel (last) axis. Training mode normalizes with the batch's
//! statistics (over the batch and all positions); inference mode with the running ones.

use super::Tensor;
use cnnc_compiler::ir::op::BatchNormOp;
use ndarray::{Array1, Array2, Axis};

/// `[n, .., c]` as `[rows, c]`.
fn rows(x: &Tensor) -> Array2<f32> {
    let c = x.shape()[x.ndim() - 1];
    x.as_standard_layout().to_owned().into_shape_with_order((x.len() / c.max(1), c)).expect("rows view")
}

fn vector(t: &Tensor) -> Array1<f32> {
    t.view().into_dimensionality::<ndarray::Ix1>().expect("a per-channel vector").to_owned()
}

/// The batch's mean and (biased) variance per channel.
pub fn batch_statistics(x: &Tensor) -> (Array1<f32>, Array1<f32>) {
    let r = rows(x);
    let mean = r.mean_axis(Axis(0)).expect("at least one row");
    let var = (&r - &mean).mapv(|v| v * v).mean_axis(Axis(0)).expect("at least one row");
    (mean, var)
}

fn statistics(b: &BatchNormOp, x: &Tensor, inputs: &[&Tensor], training: bool) -> (Array1<f32>, Array1<f32>) {
    let (mean, var) = if training { batch_statistics(x) } else { (vector(inputs[3]), vector(inputs[4])) };
    let inv_std = var.mapv(|v| 1.0 / (v + b.eps).sqrt());
    (mean, inv_std)
}

pub(super) fn forward(b: &BatchNormOp, inputs: &[&Tensor], training: bool) -> Tensor {
    let x = inputs[0];
    let (mean, inv_std) = statistics(b, x, inputs, training);
    let (gamma, beta) = (vector(inputs[1]), vector(inputs[2]));
    let y = (rows(x) - &mean) * &(inv_std * &gamma) + &beta;
    y.into_shape_with_order(x.raw_dim()).expect("same shape")
}

pub(super) fn vjp(b: &BatchNormOp, wrt: usize, inputs: &[&Tensor], dy: &Tensor, training: bool) -> Tensor {
    let x = inputs[0];
    let (mean, inv_std) = statistics(b, x, inputs, training);
    let gamma = vector(inputs[1]);
    let dy = rows(dy);
    let xhat = (rows(x) - &mean) * &inv_std;
    match wrt {
        1 => (&dy * &xhat).sum_axis(Axis(0)).into_dyn(),
        2 => dy.sum_axis(Axis(0)).into_dyn(),
        0 if training => {
            let m = dy.nrows() as f32;
            let dxhat = &dy * &gamma;
            let sum = dxhat.sum_axis(Axis(0));
            let dot = (&dxhat * &xhat).sum_axis(Axis(0));
            let dx = (dxhat * m - &sum - &xhat * &dot) * &(inv_std / m);
            dx.into_shape_with_order(x.raw_dim()).expect("same shape")
        }
        0 => (dy * &(inv_std * &gamma)).into_shape_with_order(x.raw_dim()).expect("same shape"),
        _ => unreachable!("running statistics are not differentiated"),
    }
}
