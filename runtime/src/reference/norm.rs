//! Batch normalization over the channel (last) axis. Training mode normalizes with the batch's
//! statistics (over the batch and all positions) and gives them as results; inference mode uses
//! the running ones. Backward computes the gradients asked for in one pass over x̂.

use super::{Args, Tensor, View};
use cnnc_compiler::ir::op::BatchNormOp;
use ndarray::{Array1, Array2, Axis};

/// `[n, .., c]` as `[rows, c]`.
fn rows(x: &View) -> Array2<f32> {
    let c = x.shape()[x.ndim() - 1];
    x.as_standard_layout().to_owned().into_shape_with_order((x.len() / c.max(1), c)).expect("rows view")
}

fn vector(t: &View) -> Array1<f32> {
    t.view().into_dimensionality::<ndarray::Ix1>().expect("a per-channel vector").to_owned()
}

/// The batch's mean and (biased) variance per channel.
pub fn batch_statistics(x: &View) -> (Array1<f32>, Array1<f32>) {
    let r = rows(x);
    let mean = column_sums(&r).mapv(|s| (s / r.nrows() as f64) as f32);
    let var = column_sums(&(&r - &mean).mapv(|v| v * v)).mapv(|s| (s / r.nrows() as f64) as f32);
    (mean, var)
}

/// Each column's sum, accumulated in f64: over a batch's every position (tens of thousands of
/// rows) an f32 sum drifts.
fn column_sums(r: &Array2<f32>) -> Array1<f64> {
    let mut out = Array1::<f64>::zeros(r.ncols());
    for row in r.rows() {
        out.iter_mut().zip(row.iter()).for_each(|(o, &v)| *o += f64::from(v));
    }
    out
}

/// The batch statistics of every process training together ([`crate::dist`]).
fn synchronized((mut mean, mut var): (Array1<f32>, Array1<f32>), x: &View) -> (Array1<f32>, Array1<f32>) {
    if crate::dist::group().is_some() {
        let rows = x.len() / mean.len().max(1);
        let (m, v) = (mean.as_slice_mut(), var.as_slice_mut());
        if let (Some(m), Some(v)) = (m, v) {
            crate::dist::batch_stats(m, v, rows);
        }
    }
    (mean, var)
}

fn inv_std(b: &BatchNormOp, var: &Array1<f32>) -> Array1<f32> {
    var.mapv(|v| 1.0 / (v + b.eps).sqrt())
}

/// Training: `[y, mean, var]`; inference: `[y]`.
pub(super) fn forward(b: &BatchNormOp, inputs: &[View]) -> Vec<Tensor> {
    let x = &inputs[0];
    let (mean, var) =
        if b.training { synchronized(batch_statistics(x), x) } else { (vector(&inputs[3]), vector(&inputs[4])) };
    let (gamma, beta) = (vector(&inputs[1]), vector(&inputs[2]));
    let y = (rows(x) - &mean) * &(inv_std(b, &var) * &gamma) + &beta;
    let y = y.into_shape_with_order(x.raw_dim()).expect("same shape");
    if b.training {
        vec![y, mean.into_dyn(), var.into_dyn()]
    } else {
        vec![y]
    }
}

/// The gradients with respect to the inputs `wrt` (0: x, 1: γ, 2: β), in that order.
pub(super) fn backward(b: &BatchNormOp, wrt: &[usize], a: &Args) -> Vec<Tensor> {
    let dy = rows(a.dy());
    // The statistics: the saved batch ones in training, the running ones in inference.
    let stats = || {
        if b.training {
            (vector(a.y(1)), vector(a.y(2)))
        } else {
            let mean = if wrt.contains(&1) { vector(a.x(3)) } else { Array1::zeros(dy.ncols()) };
            (mean, vector(a.x(4)))
        }
    };
    let xhat = || {
        let (mean, var) = stats();
        (rows(a.x(0)) - &mean) * &inv_std(b, &var)
    };
    wrt.iter()
        .map(|&w| match w {
            1 => (&dy * &xhat()).sum_axis(Axis(0)).into_dyn(),
            2 => dy.sum_axis(Axis(0)).into_dyn(),
            _ => {
                let gamma = vector(a.x(1));
                let (_, var) = stats();
                let inv = inv_std(b, &var);
                let dx = if b.training {
                    let xhat = xhat();
                    let m = dy.nrows() as f32;
                    let dxhat = &dy * &gamma;
                    let mut sum = column_sums(&dxhat).mapv(|v| v as f32);
                    let mut dot = column_sums(&(&dxhat * &xhat)).mapv(|v| v as f32);
                    // Fresh one-axis arrays: contiguous.
                    if let (Some(s), Some(d)) = (sum.as_slice_mut(), dot.as_slice_mut()) {
                        crate::dist::batch_sums_pair(s, d, dy.nrows());
                    }
                    (dxhat * m - &sum - &xhat * &dot) * &(inv / m)
                } else {
                    &dy * &(inv * &gamma)
                };
                dx.into_shape_with_order(a.dy().raw_dim()).expect("same shape")
            }
        })
        .collect()
}
